"""Load the embedded models once, in livekit-agents' forkserver, before call processes fork.

Every call runs in its own process; each used to load its own silero VAD, pocketsphinx
decoder and piper voice and render the TTS cache itself (~430 MB PSS per call, and a cache
that was still filling when the first caller spoke). Imported as a forkserver preload
module (``main.preload_modules``), this loads them in the forkserver, so every process it
forks starts with them in memory, shared copy-on-write; ``agent.prewarm`` and the providers
pick them up. ``VOICEPOOL_PRELOAD_MODELS=false`` turns it off (each process loads its own).
A failure here only costs memory: the warm processes then load their own models.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("voicepool.worker.preload")

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


def preload(env: dict[str, str] | None = None) -> list[str]:
    """Load what the configuration embeds; returns what was loaded (for the log)."""
    from . import config

    cfg = config.load(env if env is not None else dict(os.environ))
    loaded: list[str] = []

    VADS[cfg.vad_min_silence_s, cfg.vad_activation, cfg.vad_min_speech_s] = vad(
        cfg.vad_min_silence_s, cfg.vad_activation, cfg.vad_min_speech_s
    )
    loaded.append("silero")
    if "pocketsphinx" in cfg.stt_chain:
        from .providers import pocketsphinx_stt

        pocketsphinx_stt.preload(cfg.stt_grammar, second_pass=cfg.stt_second_pass)
        loaded.append("pocketsphinx")
    if cfg.turn_detection == "smart-turn":
        from . import smart_turn

        try:
            smart_turn.preload()
            loaded.append("smart-turn")
        except smart_turn.ModelUnavailable:
            pass  # the main process said why at start; turns end on silence alone
    if "piper" in cfg.tts_chain:
        from .phrases import known_phrases
        from .providers import piper_tts

        phrases = known_phrases(cfg) if cfg.tts_cache > 0 else []
        piper_tts.preload(phrases, cache_size=cfg.tts_cache, threads=cfg.tts_threads)
        loaded.append("piper")
    return loaded


def _on_import() -> None:
    if os.environ.get("VOICEPOOL_PRELOAD_MODELS", "true").strip().lower() in ("0", "false", "no"):
        return
    try:
        log.info("models loaded before fork", extra={"models": preload()})
    except Exception as e:  # the warm processes load their own
        log.warning("preloading models failed", extra={"error": str(e)})


_on_import()
