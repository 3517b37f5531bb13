"""The built-in receptionist, hosted like any team's agent: ``VOICEPOOL_AGENT`` defaults to
``voicepool_worker.agents.receptionist:app``. It uses the public API only (``sdk``) and the
public providers; docs/agents.md shows how a team's agent does the same.
"""

from __future__ import annotations

from ... import providers, sdk
from .agent import entrypoint, prewarm

__all__ = ["app", "entrypoint", "prewarm"]


def preload(cfg: sdk.Settings) -> list[str]:
    """What the forkserver imports before the fork: the embedded models' modules, then the
    preload that loads their weights once for every call process."""
    mods: list[str] = []
    if "pocketsphinx" in cfg.stt_chain:
        mods += ["pocketsphinx", "voicepool_worker.providers.pocketsphinx_stt"]
    if "piper" in cfg.tts_chain:
        mods += ["piper", "voicepool_worker.providers.piper_tts"]
    if cfg.turn_detection == "smart-turn":
        mods += ["onnxruntime", "voicepool_worker.audio.smart_turn"]
    if "whisper" in cfg.stt_chain:  # the module only: CTranslate2 loaded before a fork hangs
        mods += ["faster_whisper", "voicepool_worker.providers.whisper_stt"]
    if "openai" in (*cfg.stt_chain, *cfg.llm_chain, *cfg.tts_chain):
        mods.append("livekit.plugins.openai")
    if cfg.executor == "process":  # last: loads the models the modules above embed, once
        mods.append("voicepool_worker.agents.receptionist.preload_models")
    return mods


app = sdk.AgentApp(entrypoint=entrypoint, prewarm=prewarm, preload=preload, check=providers.check)
