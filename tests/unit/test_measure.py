"""Pure helpers of the voice-loop measurement: levels, WER, the caller's first word and stop,
time-to-first-word and barge-in splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from voicepool_worker.measure import (
    SPEECH_FLOOR_RMS,
    TtfwSummary,
    barge_in_split,
    edit_distance,
    first_word_at,
    fits,
    mix,
    recent,
    rms,
    stopped_at,
    ttfw_split,
    voiced,
    wer,
)

from .conftest import pcm


def test_rms_and_the_speech_floor() -> None:
    assert rms(b"") == 0.0
    assert rms(pcm(1000)) == pytest.approx(1000.0)
    assert voiced(pcm(int(SPEECH_FLOOR_RMS) + 1)) and not voiced(pcm(10))


def test_mix_clips_and_pads() -> None:
    out = np.frombuffer(mix(pcm(30000, 4), pcm(30000, 2), 1.0), dtype="<i2")
    assert list(out) == [32767, 32767, 30000, 30000]


def test_wer_counts_substitutions_insertions_deletions() -> None:
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert wer([("What time do you close?", "what time do you close")]) == 0.0
    assert wer([("a b c d", "a b"), ("e f", "e f")]) == pytest.approx(2 / 6)
    assert wer([]) == 0.0


def test_stopped_at_finds_the_last_loud_frame_before_a_silence() -> None:
    talk = [i * 0.01 for i in range(300)]  # the agent talks 0..3 s, then stops
    assert stopped_at(talk, 1.0, 0.6) is None  # no silence on record yet
    later = [*talk, 5.0]  # ... and answers again at 5 s
    assert stopped_at(later, 1.0, 0.6) == pytest.approx(2.99)
    assert stopped_at([0.1, 0.2], 1.0, 0.6) == 1.0  # already silent when the caller began
    gaps = [0.0, 0.3, 0.6, 0.9, 2.0]  # short pauses between words are not silence
    assert stopped_at(gaps, 0.0, 0.6) == pytest.approx(0.9)


def test_first_word_is_an_onset_not_a_talk_over() -> None:
    assert first_word_at([1.0, 1.01, 3.5, 3.51], end=3.0) == 3.5  # an answer after silence
    assert first_word_at([1.0], end=3.0) is None  # not answered yet
    # the agent answered the first clause and is still talking when the caller ends
    talk = [2.9 + i * 0.01 for i in range(50)]  # 2.90 .. 3.39
    assert first_word_at([*talk, 3.5], end=3.0) is None  # no real gap yet: not the answer
    assert first_word_at([*talk, 4.2, 4.21], end=3.0) == 4.2


def test_ttfw_summary_and_budget() -> None:
    s = TtfwSummary.of([500.0, 600.0, 700.0, None, 3500.0])
    assert (s.n, s.answered, s.max_ms) == (5, 4, 3500.0)
    assert s.late_share == pytest.approx(2 / 5)
    assert s.p50_ms == pytest.approx(650.0)
    assert any("p90" in f for f in s.failures())
    assert TtfwSummary.of([400.0, 500.0]).failures() == []
    assert TtfwSummary.of([900.0]).failures() == ["TTFW p50 900 ms > 800 ms"]
    assert TtfwSummary.of([500.0] * 8 + [1300.0] * 2).failures() == ["TTFW p90 1300 ms > 1200 ms"]
    counted = TtfwSummary.of([500.0, 600.0, 700.0, None, 3500.0], miss_ms=3000.0)
    assert (counted.answered, counted.p50_ms, counted.max_ms) == (4, 700.0, 3500.0)
    assert counted.p90_ms == pytest.approx(3300.0)  # the miss counts at the deadline
    empty = TtfwSummary.of([None])
    assert math.isnan(empty.p50_ms) and empty.failures() == ["no turn was answered"]


def test_a_reply_fits_when_it_answers_every_intent() -> None:
    hours = "We are open Monday to Friday from 9 AM to 6 PM."
    assert fits(hours, ["hours"]) and not fits(hours, ["hours", "address"])
    fallback = "Sorry, I can tell you our opening hours, our address, or book an appointment."
    assert not any(fits(fallback, [i]) for i in ("hours", "address", "prices", "booking"))
    assert fits("A cleaning costs 80 euros. Which day suits you?", ["prices", "booking"])
    assert fits("At what time on Tuesday?", ["booking"])  # a booking's follow-up engages it
    assert not fits("At what time on Tuesday?", ["hours"])


def test_ttfw_split_adds_up_to_the_caller_figure() -> None:
    s = ttfw_split(100.0, 900.0, 100.15, 100.6)
    assert s is not None
    assert (round(s.uplink_ms), round(s.agent_ms), round(s.downlink_ms)) == (150, 450, 300)
    assert s.uplink_ms + s.agent_ms + s.downlink_ms == pytest.approx(900.0)
    assert ttfw_split(100.0, None, 100.1, 100.5) is None  # unanswered
    assert ttfw_split(100.0, 900.0, None, 100.5) is None  # the worker logged no mark


def test_barge_in_split_takes_the_marks_after_the_caller_spoke() -> None:
    # an earlier turn's marks (99.0, 99.5) are not this barge-in's; the VAD may stamp its
    # start a little before the first voiced frame
    s = barge_in_split(100.0, 100.42, [99.0, 100.23, 100.9], [99.5, 100.35, 101.0])
    assert s is not None
    assert (round(s.detect_ms), round(s.interrupt_ms), round(s.drain_ms)) == (230, 120, 70)
    assert s.detect_ms + s.interrupt_ms + s.drain_ms == pytest.approx(420.0)
    early = barge_in_split(100.0, 100.3, [99.97], [100.2])
    assert early is not None and round(early.detect_ms) == -30
    assert barge_in_split(100.0, 100.4, [98.0], [100.3]) is None  # no start of speech
    assert barge_in_split(100.0, 100.4, [100.2], [100.1]) is None  # stopped before it spoke
    assert barge_in_split(100.0, None, [100.2], [100.3]) is None  # never went silent
    assert barge_in_split(None, 100.4, [100.2], [100.3]) is None


def test_the_recent_tail_gives_the_same_first_word() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        loud = sorted(float(x) for x in rng.uniform(0, 20, size=int(rng.integers(0, 300))))
        end = float(rng.uniform(0, 20))
        tail = recent(loud, end)
        assert first_word_at(tail, end) == first_word_at(loud, end)
        assert len(tail) <= len([t for t in loud if t > end]) + 1  # not the whole record


def test_the_recent_tail_gives_the_same_stop_time() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        loud = sorted(float(x) for x in rng.uniform(0, 20, size=int(rng.integers(0, 300))))
        start = float(rng.uniform(0, 20))
        assert stopped_at(recent(loud, start), start, 0.6) == stopped_at(loud, start, 0.6)
