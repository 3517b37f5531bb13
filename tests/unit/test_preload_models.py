"""Models loaded before the fork are the ones a call process's providers use."""

from __future__ import annotations

import os
from unittest import mock

from voicepool_worker.agents.receptionist import preload_models
from voicepool_worker.audio import vad as shared_vad
from voicepool_worker.providers import piper_tts, pocketsphinx_stt

from .conftest import LIVEKIT_ENV

ENV = {
    **LIVEKIT_ENV,
    "VOICEPOOL_TTS_CACHE": "2",
    "VOICEPOOL_STT": "pocketsphinx",  # the STT whose model is shared (whisper loads per process)
    "VOICEPOOL_GREETING": "Hello there.",
}


def test_preloaded_models_are_shared_with_the_providers() -> None:
    with mock.patch.dict(os.environ, ENV, clear=True):
        assert preload_models.preload(ENV) == ["silero", "pocketsphinx", "piper"]
    try:
        path = piper_tts._default_model_path()
        voice, cache = piper_tts._SHARED[(path, 1)]
        tts = piper_tts.PiperTTS(cache_size=2, threads=1)
        assert tts._voice is voice  # not a second copy of the weights
        assert tts.cache is cache and len(cache) == 2  # known clauses rendered (LRU of 2)
        assert shared_vad.vad(0.25) is shared_vad.VADS[0.25, 0.5, 0.05]
        decoder = pocketsphinx_stt._SHARED[(None, True)]  # with the second pass: the default
        assert pocketsphinx_stt.PocketsphinxSTT()._acquire() is decoder
    finally:
        piper_tts._SHARED.clear()
        pocketsphinx_stt._SHARED.clear()
        shared_vad.VADS.clear()


def test_a_lower_activation_keeps_the_end_of_speech() -> None:
    eager = shared_vad.vad(0.25, 0.3, 0.03)
    opts = eager._opts
    assert (opts.activation_threshold, opts.min_speech_duration) == (0.3, 0.03)
    assert opts.deactivation_threshold == 0.3  # never above the activation
    default = shared_vad.vad(0.25)._opts
    assert (default.activation_threshold, default.deactivation_threshold) == (0.5, 0.35)


def test_without_preload_each_process_loads_its_own() -> None:
    assert not piper_tts._SHARED
    tts = piper_tts.PiperTTS(cache_size=2, threads=1)
    assert len(tts.cache) == 0
    assert shared_vad.vad(0.3) is not shared_vad.vad(0.3)
