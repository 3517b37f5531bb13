"""The early barge-in's energy onset (pure) and its pause/resume glue (a fake session's state)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voicepool_worker.audio.onset import EarlyBargeIn, SpeechOnset


def feed(onset: SpeechOnset, levels: list[float]) -> list[int]:
    """The indexes of the pieces that fired."""
    return [i for i, level in enumerate(levels) if onset.push(level)]


def test_a_voice_after_quiet_fires_on_its_third_loud_piece() -> None:
    onset = SpeechOnset()
    assert feed(onset, [30.0] * 100 + [3000.0] * 30) == [102]


def test_one_utterance_gives_one_onset_and_a_pause_rearms_it() -> None:
    onset = SpeechOnset()
    voice = [3000.0] * 30
    short_gap = [30.0] * 5  # between two words
    long_gap = [30.0] * 25
    got = feed(onset, [30.0] * 50 + voice + short_gap + voice + long_gap + voice)
    assert got == [52, 50 + 30 + 5 + 30 + 25 + 2]


def test_clicks_and_spikes_are_not_a_voice() -> None:
    onset = SpeechOnset()
    spikes = ([30.0] * 20 + [5000.0, 5000.0]) * 10  # two pieces, never three
    assert feed(onset, spikes) == []


def test_quiet_speech_below_the_floor_never_fires() -> None:
    assert feed(SpeechOnset(), [0.0] * 50 + [300.0] * 50) == []


def test_the_threshold_follows_the_line_noise() -> None:
    onset = SpeechOnset()
    noise = [600.0, 900.0, 700.0, 1100.0] * 100  # a noisy street, loud enough to pass the floor
    assert feed(onset, noise) == [2]  # before any noise is known, it looks like a voice ...
    assert onset.threshold > 2000  # ... then it is known: 12 dB above its low quantile
    assert feed(onset, [1500.0] * 30) == []  # a horn's swell within the noise's reach
    assert feed(onset, [2000.0] * 5) == []  # a caller no louder than the street
    assert len(feed(onset, [9000.0] * 10)) == 1  # a voice well above it still fires


@dataclass
class FakeAudio:
    can_pause: bool = True
    calls: list[str] = field(default_factory=list)

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


@dataclass
class FakeSpeech:
    allow_interruptions: bool = True


@dataclass
class FakeOutput:
    audio: FakeAudio


@dataclass
class FakeSession:
    """The four attributes of an ``AgentSession`` the glue reads."""

    output: FakeOutput
    agent_state: str = "speaking"
    user_state: str = "listening"
    current_speech: FakeSpeech | None = field(default_factory=FakeSpeech)


class Timers:
    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        self.due.append(fn)
        return self

    def cancel(self) -> None:
        self.due.clear()

    def run(self) -> None:
        due, self.due = self.due, []
        for fn in due:
            fn()


def barge(session: FakeSession) -> tuple[EarlyBargeIn, Timers]:
    timers = Timers()
    flush = lambda: session.output.audio.calls.append("flush")  # noqa: E731
    early = EarlyBargeIn(session, hold_s=0.5, flush=flush, call_later=timers.call_later)
    for level in [20.0] * 50 + [4000.0] * 3:
        early.piece(level)
    return early, timers


def session(**kw: Any) -> FakeSession:
    return FakeSession(output=FakeOutput(FakeAudio()), **kw)


def test_an_onset_the_vad_never_confirms_resumes_the_reply() -> None:
    s = session()
    early, timers = barge(s)
    assert s.output.audio.calls == ["pause", "flush"]
    for _ in range(30):  # a knock: over at once
        early.piece(20.0)
    timers.run()
    assert s.output.audio.calls == ["pause", "flush", "resume"]
    assert (early.paused, early.resumed) == (1, 1)


def test_once_the_framework_interrupts_the_pause_is_its_own() -> None:
    s = session()
    early, timers = barge(s)
    s.user_state, s.agent_state = "speaking", "listening"  # the VAD heard the caller
    timers.run()
    assert s.output.audio.calls == ["pause", "flush"]
    assert timers.due == [] and early.resumed == 0


def test_while_the_vad_hears_speech_the_pause_waits_for_the_framework() -> None:
    s = session()
    early, timers = barge(s)
    s.user_state = "speaking"
    timers.run()
    assert s.output.audio.calls == ["pause", "flush"] and len(timers.due) == 1
    s.user_state = "listening"  # a short sound: no interruption followed
    for _ in range(30):
        early.piece(20.0)
    timers.run()
    assert s.output.audio.calls == ["pause", "flush", "resume"]


def test_a_sound_that_goes_on_keeps_the_reply_paused_for_the_vad_up_to_a_limit() -> None:
    s = session()
    early, timers = barge(s)  # holds 0.5 s at a time
    for _ in range(45):  # a voice the VAD has not heard yet
        early.piece(4000.0)
    timers.run()
    assert s.output.audio.calls == ["pause", "flush"] and len(timers.due) == 1
    timers.run()  # 1.0 s: the longest a pause waits for the VAD (a television, music)
    assert s.output.audio.calls == ["pause", "flush", "resume"] and early.resumed == 1


def test_nothing_is_paused_unless_an_interruptible_reply_is_playing() -> None:
    for s in (
        session(agent_state="listening"),
        session(current_speech=FakeSpeech(allow_interruptions=False)),
        session(current_speech=None),
        FakeSession(output=FakeOutput(FakeAudio(can_pause=False))),
    ):
        early, timers = barge(s)
        assert s.output.audio.calls == [] and timers.due == [] and early.paused == 0


def test_a_failing_session_never_breaks_the_audio_path() -> None:
    class Broken:
        @property
        def current_speech(self) -> None:
            raise RuntimeError("gone")

    early = EarlyBargeIn(Broken(), call_later=lambda d, f: None)
    for level in [20.0] * 50 + [4000.0] * 3:
        early.piece(level)  # logs, does not raise


def test_a_reply_can_be_paused_from_its_first_moments() -> None:
    s = session()  # the agent has just started talking
    early = EarlyBargeIn(s, call_later=lambda d, f: None)
    for level in [20.0] * 50 + [4000.0] * 3:
        early.piece(level)
    assert s.output.audio.calls == ["pause"]
