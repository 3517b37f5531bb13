"""The caller's voice activity detector (silero), loaded once before call processes fork.

Any agent the runtime hosts may use it (``sdk.vad``): the pool's VAD settings
(``VOICEPOOL_VAD_*``) in one shared instance per process tree instead of one load per call.
"""

from __future__ import annotations

from typing import Any

from ..config import WorkerConfig

#: silero VADs by setting (min silence, activation, min speech), loaded before the fork.
VADS: dict[tuple[float, float, float], Any] = {}


def vad(min_silence_s: float, activation: float = 0.5, min_speech_s: float = 0.05) -> Any:
    """The preloaded VAD for this setting, else a freshly loaded one.

    The end of speech keeps silero's default deactivation (0.35) whatever the activation: a
    lower activation hears a caller start sooner without moving the end of a turn.
    """
    key = (min_silence_s, activation, min_speech_s)
    shared = VADS.get(key)
    if shared is not None:
        return shared
    from livekit.plugins import silero

    return silero.VAD.load(
        min_silence_duration=min_silence_s,
        activation_threshold=activation,
        deactivation_threshold=min(activation, DEACTIVATION),
        min_speech_duration=min_speech_s,
    )


#: silero's end-of-speech threshold with its default activation (0.5 - 0.15).
DEACTIVATION = 0.35


def preload_vad(cfg: WorkerConfig) -> Any:
    """Load (and keep for every process forked after this) the VAD ``cfg`` asks for."""
    key = (cfg.vad_min_silence_s, cfg.vad_activation, cfg.vad_min_speech_s)
    VADS[key] = vad(*key)
    return VADS[key]
