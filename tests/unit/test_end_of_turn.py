"""End of turn by the audio model: the pure window and policy, then the real Smart Turn v3.2
file (from the installed pipecat-ai wheel) through livekit-agents' streaming interface."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from voicepool_worker import config
from voicepool_worker.audio.end_of_turn import (
    FEATURE_FRAMES,
    SAMPLE_RATE,
    EndOfTurnPolicy,
    fit_features,
    last_voiced_end,
    model_window,
)
from voicepool_worker.config import ConfigError

BASE = {"LIVEKIT_URL": "ws://x", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}


def tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def test_the_model_sees_exactly_0_2_s_of_silence_after_the_last_voiced_frame() -> None:
    """It reads a long silence as "done" whatever was said; so the window ends 0.2 s after
    the voice, however late the framework asks."""
    audio = np.concatenate([tone(1.0), silence(0.9)])
    assert last_voiced_end(audio) == SAMPLE_RATE
    clip = model_window(audio)
    assert clip is not None and len(clip) == 8 * SAMPLE_RATE  # always 8 s, left-padded
    assert abs(float(clip.mean())) < 1e-3 and abs(float(clip.std()) - 1) < 1e-2
    # the voice ends 0.2 s before the window does; the padding is one constant before it
    voiced = np.flatnonzero(np.abs(np.diff(clip)) > 1e-3)
    assert voiced[0] >= int(6.8 * SAMPLE_RATE) - 2 and voiced[-1] < len(clip) - 0.19 * SAMPLE_RATE
    assert model_window(silence(2.0)) is None  # nothing voiced: nothing to judge


def test_the_features_are_pipecats_own() -> None:
    """The same numbers as the vendored extractor in the pipecat-ai wheel (its module loaded
    from the file alone: pipecat's own imports need packages the worker does not install)."""
    import importlib.util

    from faster_whisper.feature_extractor import FeatureExtractor
    from voicepool_worker.audio import smart_turn

    ref_path = smart_turn.model_path().parents[1] / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", ref_path)
    assert spec is not None and spec.loader is not None
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    audio = np.concatenate([tone(1.5), silence(0.4)])
    window = model_window(audio)
    assert window is not None
    ours = fit_features(FeatureExtractor(feature_size=80, chunk_length=8)(window, padding=0))
    end = last_voiced_end(audio)
    assert end is not None
    raw = audio[: end + int(0.2 * SAMPLE_RATE)]
    theirs = ref.compute_whisper_log_mel_features(np.pad(raw, (8 * SAMPLE_RATE - len(raw), 0)))
    assert ours.shape == (1, 80, FEATURE_FRAMES)
    assert float(np.abs(ours[0] - theirs).max()) < 1e-4


def test_the_window_is_the_last_8_s_and_the_features_are_left_padded() -> None:
    clip = model_window(np.concatenate([tone(12.0), silence(0.5)]))
    assert clip is not None and len(clip) == 8 * SAMPLE_RATE
    short = fit_features(np.ones((80, 300), np.float32))
    assert short.shape == (1, 80, FEATURE_FRAMES) and short[0, :, :500].sum() == 0
    long = fit_features(np.arange(80 * 900, dtype=np.float32).reshape(80, 900))
    assert long.shape == (1, 80, FEATURE_FRAMES) and long[0, 0, -1] == 899


def test_the_verdict_picks_the_short_wait_or_the_ceiling() -> None:
    policy = EndOfTurnPolicy(threshold=0.5, complete_delay_s=0.2, ceiling_s=1.2)
    assert policy.wait_s(0.97) == 0.2 and policy.complete(0.5)
    assert policy.wait_s(0.01) == 1.2 and not policy.complete(0.49)
    assert policy.wait_s(None) == 0.2  # no verdict in time: silence decides
    with pytest.raises(ValueError):
        EndOfTurnPolicy(threshold=1.5)
    with pytest.raises(ValueError):
        EndOfTurnPolicy(complete_delay_s=2.0, ceiling_s=1.0)


def test_smart_turn_is_a_setting_and_silence_only_stays_one() -> None:
    assert config.load(BASE).turn_detection == "vad"
    cfg = config.load({**BASE, "VOICEPOOL_TURN_DETECTION": "smart-turn"})
    assert cfg.turn_detection == "smart-turn" and cfg.eot_threshold == 0.5
    assert cfg.endpointing_max_delay_s == 1.2  # the ceiling of a turn the model calls unfinished
    for env, message in (
        ({"VOICEPOOL_VAD_MIN_SILENCE": "0.2"}, "needs VOICEPOOL_VAD_MIN_SILENCE >= 0.25"),
        ({"VOICEPOOL_EOT_THRESHOLD": "2"}, "VOICEPOOL_EOT_THRESHOLD=2.0 must be between 0 and 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            config.load({**BASE, "VOICEPOOL_TURN_DETECTION": "smart-turn", **env})


# -- the real model --------------------------------------------------------------------------


def piper16k(text: str) -> np.ndarray:
    from voicepool_worker.caller import speech_frames

    frames = np.frombuffer(b"".join(speech_frames(text)), dtype="<i2")  # 48 kHz
    return (frames[::3].astype(np.float32) / 32768.0).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> object:
    from voicepool_worker.audio import smart_turn

    return smart_turn.SmartTurnModel()


def test_the_model_file_comes_from_the_installed_wheel() -> None:
    from voicepool_worker.audio import smart_turn

    path = smart_turn.model_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx" and "site-packages" in str(path)
    assert path.stat().st_size > 8_000_000


def test_a_question_is_complete_and_a_trailing_if_is_not(model: object) -> None:
    from voicepool_worker.audio.smart_turn import SmartTurnModel

    assert isinstance(model, SmartTurnModel)
    done = model.probability(
        np.concatenate([piper16k("What are your opening hours?"), silence(0.6)])
    )
    cut = model.probability(
        np.concatenate([piper16k("My tooth hurts and I was wondering if"), silence(0.6)])
    )
    assert done is not None and cut is not None
    assert done > 0.5 > cut, (done, cut)


async def test_the_stream_is_livekits_streaming_turn_detector(model: object) -> None:
    """The framework takes it as a streaming detector (audio pushed, a verdict per pause)."""
    from livekit import rtc
    from livekit.agents.voice.turn import _StreamingTurnDetector, _StreamingTurnDetectorStream
    from voicepool_worker.audio.smart_turn import SmartTurnDetector, SmartTurnModel

    assert isinstance(model, SmartTurnModel)
    det = SmartTurnDetector(model, EndOfTurnPolicy())
    assert isinstance(det, _StreamingTurnDetector)
    stream = det.stream()
    assert isinstance(stream, _StreamingTurnDetectorStream)
    audio = np.concatenate([piper16k("Could you tell me how much a cleaning costs?"), silence(0.3)])
    pcm48 = np.repeat((audio * 32767).astype("<i2"), 3)  # 48 kHz, as the room delivers it
    for i in range(0, len(pcm48) - 960, 960):  # 20 ms frames
        stream.push_audio(rtc.AudioFrame(pcm48[i : i + 960].tobytes(), 48000, 1, 960))
    event = await asyncio.wait_for(stream.predict(), 10)
    assert event.end_of_turn_probability > 0.5
    assert await stream.unlikely_threshold(None) == 0.5
    stream.flush("turn committed")  # the next turn is judged on its own audio
    none_yet = await asyncio.wait_for(stream.predict(), 10)
    assert none_yet.end_of_turn_probability == 1.0  # nothing voiced: silence decides
    await stream.aclose()


def test_a_corrupt_or_missing_model_is_one_line_and_no_detector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicepool_worker.audio import smart_turn

    bad = tmp_path / "smart-turn.onnx"
    bad.write_bytes(b"not an onnx file" * 100)
    with pytest.raises(smart_turn.ModelUnavailable) as e:
        smart_turn.SmartTurnModel(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)

    monkeypatch.setattr(smart_turn, "DISTRIBUTION", "voicepool-no-such-wheel")
    monkeypatch.setattr(smart_turn, "_SHARED", [])
    why = smart_turn.check()
    assert why is not None and "is not installed" in why and "\n" not in why
    assert smart_turn.detector(EndOfTurnPolicy()) is None  # the call then ends turns on silence
