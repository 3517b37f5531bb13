"""Pure helpers of the voice-loop measurement and the echo reference schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from voicepool_worker.echo_delay import (
    EchoDelayEstimator,
    EchoPresence,
    ResidualEchoGate,
    gain_at,
)
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
from voicepool_worker.playout_tap import TICK_S, ReferenceSchedule


def pcm(value: int, n: int = 480) -> bytes:
    return np.full(n, value, dtype="<i2").tobytes()


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


def test_reference_schedule_knows_what_plays_when() -> None:
    s = ReferenceSchedule(24000)
    a, b = pcm(1000, 1200), pcm(2000, 1200)  # 50 ms at 24 kHz: five 10 ms pieces each
    s.push(a, plays_at=10.0)
    s.push(b, plays_at=10.05)  # continuous: follows on
    assert len(s) == 10
    assert s.at(9.99) is None  # nothing played yet: silence
    assert s.at(10.0) == pcm(1000, 240) and s.at(10.07) == pcm(2000, 240)
    assert s.at(10.1) is None


def test_reference_schedule_clear_drops_what_would_have_played() -> None:
    s = ReferenceSchedule(24000)
    s.push(pcm(1000, 2400), plays_at=1.0)  # 100 ms
    assert s.clear(1.03) == 7  # 1.03..1.09 never plays
    assert s.at(1.02) is not None and s.at(1.05) is None
    s.push(pcm(1000, 240), plays_at=2.0)  # a new run after silence starts at its own time
    assert s.at(1.5) is None and s.at(2.0) is not None
    s.push(pcm(1000, 240), plays_at=5.0)  # history older than KEEP_S is let go
    assert s.at(2.0) is None and TICK_S == 0.01


def test_echo_delay_is_found_from_the_envelopes() -> None:
    rng = np.random.default_rng(1)
    talk = np.repeat(rng.uniform(0, 1, 120) > 0.5, 10)  # syllables on and off, 10 ms ticks
    far = np.where(talk, 3000.0, 0.0) * rng.uniform(0.5, 1.5, talk.size)
    lag = 57  # 570 ms: beyond what the canceller aligns by itself
    near = np.concatenate([np.zeros(lag), far * 0.3])[: far.size] + rng.uniform(0, 30, far.size)
    est = EchoDelayEstimator(initial_s=0.1, window_s=6.0, max_lag_s=1.0)
    for f, n in zip(far, near, strict=True):
        est.push(f, n)
    assert est.estimate() == pytest.approx(0.57)
    assert est.peak > 0.8
    gain = est.measure_echo_gain()  # the echo's level: 0.3 of what played, give or take noise
    assert gain is not None and 0.2 < gain < 0.4


def test_an_echo_is_still_heard_when_the_delay_estimate_is_off_by_a_syllable() -> None:
    rng = np.random.default_rng(4)
    talk = np.repeat(rng.uniform(0, 1, 120) > 0.5, 10)
    far = np.where(talk, 3000.0, 0.0) * rng.uniform(0.5, 1.5, talk.size)
    lag = 19  # the 190 ms echo path a live call had, when a chance peak said 0 ms
    near = np.concatenate([np.zeros(lag), far * 0.3])[: far.size]  # digital silence between
    est = EchoDelayEstimator(initial_s=0.1, window_s=6.0, max_lag_s=1.0)
    for f, n in zip(far, near, strict=True):
        est.push(f, n)
    est.converged, est.delay_s = True, 0.0
    history = np.asarray(est._near_rms), np.asarray(est._far_rms)
    assert gain_at(*history, 0, 500.0, 8, 0.25) == 0.0  # at the wrong lag: as if none
    gain = est.measure_echo_gain()
    assert gain is not None and 0.2 < gain < 0.4


def test_too_little_agent_talk_gives_no_reading_not_the_last_one_again() -> None:
    rng = np.random.default_rng(5)
    talk = np.repeat(rng.uniform(0, 1, 120) > 0.5, 10)
    far = np.where(talk, 3000.0, 0.0)
    est = EchoDelayEstimator(initial_s=0.1, window_s=3.0, max_lag_s=1.0)
    for f in far:
        est.push(f, 0.0)  # a headset: the agent talked, nothing came back
    est.converged, est.delay_s = True, 0.2
    assert est.measure_echo_gain() == 0.0
    for _ in range(400):  # then replies cut short: the agent barely talks
        est.push(0.0, 0.0)
    assert est.measure_echo_gain() is None and est.echo_gain == 0.0


def test_no_echo_gain_from_a_chance_match_of_two_voices() -> None:
    rng = np.random.default_rng(3)
    talk = np.repeat(rng.uniform(0, 1, 120) > 0.5, 10)
    far = np.where(talk, 3000.0, 0.0)
    near = np.zeros(far.size) + rng.uniform(0, 30, far.size)  # a headset: nothing comes back
    near[600:700] = 3000.0  # ... but the caller talks over the agent for a second
    est = EchoDelayEstimator(initial_s=0.1, window_s=6.0, max_lag_s=1.0)
    for f, n in zip(far, near, strict=True):
        est.push(f, n)
    est.converged, est.delay_s = True, 0.4  # as if a chance peak had been taken for an echo
    gain = est.measure_echo_gain()
    assert gain is not None and gain < 0.03


def echo_history(rng: np.random.Generator, lag: int, ticks: int) -> tuple[np.ndarray, np.ndarray]:
    """Syllables played, and their echo ``lag`` ticks later at a third of the level."""
    talk = np.repeat(rng.uniform(0, 1, ticks // 10) > 0.5, 10)
    far = np.where(talk, 3000.0, 0.0) * rng.uniform(0.5, 1.5, talk.size)
    return far, np.concatenate([np.zeros(lag), far * 0.3])[: far.size]


def test_a_jump_of_the_echo_delay_is_taken_only_when_seen_twice_in_a_row() -> None:
    rng = np.random.default_rng(6)
    est = EchoDelayEstimator(initial_s=0.1, window_s=3.0, max_lag_s=1.0)
    for f, n in zip(*echo_history(rng, 15, 400), strict=True):
        est.push(f, n)
    assert est.estimate() == pytest.approx(0.15)
    for f, n in zip(*echo_history(rng, 33, 400), strict=True):  # the jitter buffers grew
        est.push(f, n)
    assert est.estimate() is None and est.delay_s == pytest.approx(0.15)  # seen once
    assert est.candidate_s == pytest.approx(0.33)
    assert est.estimate() == pytest.approx(0.33) and est.candidate_s is None  # seen again


def test_a_lone_far_peak_is_dropped_when_the_next_estimate_does_not_confirm_it() -> None:
    est = EchoDelayEstimator(initial_s=0.1, window_s=3.0, max_lag_s=1.0)
    est.converged, est.delay_s, est.candidate_s = True, 0.15, 0.0
    for _ in range(400):  # the agent fell silent: no clear peak anywhere
        est.push(0.0, 0.0)
    assert est.estimate() is None and est.candidate_s is None and est.delay_s == 0.15


def test_the_gate_window_covers_a_delay_not_yet_confirmed() -> None:
    est = EchoDelayEstimator(initial_s=0.1, window_s=3.0, max_lag_s=1.0)
    for i in range(400):  # loud only 33 ticks before the newest piece
        est.push(5000.0 if i == 399 - 33 else 0.0, 0.0)
    est.converged, est.delay_s = True, 0.15
    assert est.far_around_echo(0.05) == 0.0  # 0.10-0.20 s back: nothing played
    est.candidate_s = 0.33
    assert est.far_around_echo(0.05) == 5000.0  # ... but the echo may already come 0.33 s late


def test_echo_delay_is_kept_without_an_echo() -> None:
    rng = np.random.default_rng(2)
    est = EchoDelayEstimator(initial_s=0.12)
    for _ in range(800):
        est.push(float(rng.uniform(0, 5000)), float(rng.uniform(0, 30)))  # a headset: no echo
    assert est.estimate() is None and est.delay_s == 0.12


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


def test_the_echo_gate_mutes_echo_but_holds_open_for_a_talking_caller() -> None:
    gate = ResidualEchoGate(-8.0, hold_s=0.3)
    far = 4000.0  # the agent's voice that may be echoing
    assert gate.mute(0.00, 300.0, far)  # residual echo: far below the far end
    assert not gate.mute(0.005, 3000.0, far)  # a lone loud piece passes, but opens no hold
    assert gate.mute(0.007, 600.0, far)
    assert not gate.mute(0.01, 3000.0, far)  # the caller, louder than any echo ...
    assert not gate.mute(0.02, 3000.0, far)  # ... for two pieces in a row: the hold opens
    assert not gate.mute(0.20, 600.0, far)  # a quieter syllable of the same caller: held
    assert gate.mute(0.33, 300.0, far)  # the caller stopped: the gate closes again
    assert not gate.mute(0.34, 300.0, 0.0)  # nothing played: nothing can echo


def test_the_silence_before_a_reply_holds_no_gate_open_for_its_echo() -> None:
    gate = ResidualEchoGate(-8.0, hold_s=0.3)
    for i in range(50):  # the caller has stopped; nothing plays yet
        assert not gate.mute(i * 0.01, 0.0, 0.0)
    # the reply starts at 0.5 s; its echo comes back 0.2 s later, and the canceller has
    # not caught its first syllable: the gate is shut, not held open by the silence before
    assert gate.mute(0.70, 1400.0, 11000.0)
    assert gate.mute(0.71, 1400.0, 11000.0)


def test_a_hold_of_zero_is_the_bare_level_gate() -> None:
    gate = ResidualEchoGate(-8.0, hold_s=0.0, open_after=1)
    assert not gate.mute(0.0, 3000.0, 4000.0)
    assert gate.mute(0.01, 600.0, 4000.0)


def test_before_the_echo_path_is_known_the_gate_does_not_hold() -> None:
    gate = ResidualEchoGate(-8.0, hold_s=0.5)
    assert not gate.mute(0.00, 3000.0, 4000.0, hold=False)
    assert not gate.mute(0.01, 3000.0, 4000.0, hold=False)
    assert gate.mute(0.02, 600.0, 4000.0, hold=False)  # an unlearnt echo gets no hold


def test_echo_presence_goes_off_at_once_and_on_only_after_a_run() -> None:
    p = EchoPresence(min_gain=0.03, on_after=4)
    assert p.heard  # until measured, an echo may be there
    assert p.update(None) is False and p.heard  # the agent did not talk: no news
    assert p.update(0.01) is True and not p.heard  # off at the first quiet estimate
    # double talk at a chance lag: a short run of "echo" estimates does not turn it on
    assert [p.update(g) for g in (0.2, 0.2, 0.01)] == [False, False, False] and not p.heard
    assert [p.update(0.2) for _ in range(3)] == [False] * 3 and not p.heard
    assert p.update(None) is False and not p.heard  # a silent stretch keeps the state
    assert p.update(0.2) is True and p.heard  # a run of 4+ (the silent one counts as heard)
    assert p.update(0.5) is False and p.heard
    # an echo has been heard: one quiet reading (a reply cut short) does not turn it off
    assert [p.update(g) for g in (0.0, 0.01, 0.3, 0.0, 0.0)] == [False] * 5 and p.heard
    assert p.update(0.0) is True and not p.heard  # three quiet ones in a row do


def test_a_speakerphone_keeps_its_canceller_through_one_quiet_reading() -> None:
    p = EchoPresence(min_gain=0.03, on_after=4, off_after=3)
    assert p.update(0.3) is False and p.heard
    assert p.update(0.0) is False and p.heard
