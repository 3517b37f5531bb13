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

from ... import sdk

log = logging.getLogger("voicepool.worker.preload")


def preload(env: dict[str, str] | None = None) -> list[str]:
    """Load what the configuration embeds; returns what was loaded (for the log)."""
    cfg = sdk.load_settings(env if env is not None else dict(os.environ))
    loaded: list[str] = []

    sdk.preload_vad(cfg)
    loaded.append("silero")
    if "pocketsphinx" in cfg.stt_chain:
        from ...providers import pocketsphinx_stt

        pocketsphinx_stt.preload(cfg.stt_grammar, second_pass=cfg.stt_second_pass)
        loaded.append("pocketsphinx")
    # a missing model: the runtime said why at start, and silence alone ends a turn
    if cfg.turn_detection == "smart-turn" and sdk.preload_turn_model():
        loaded.append("smart-turn")
    if "piper" in cfg.tts_chain:
        from ...providers import piper_tts
        from .phrases import known_phrases

        phrases = known_phrases(cfg) if cfg.tts_cache > 0 else []
        piper_tts.preload(
            phrases,
            cache_size=cfg.tts_cache,
            threads=cfg.tts_threads,
            store_dir=cfg.tts_cache_dir,
        )
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
