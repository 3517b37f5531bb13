"""The echo path's delay and gain, its presence and the residual echo gate: pure, on synthetic
envelopes (10 ms ticks), so every reading is exact."""

from __future__ import annotations

import numpy as np
import pytest
from voicepool_worker.audio.echo_delay import (
    EchoDelayEstimator,
    EchoPresence,
    ResidualEchoGate,
    gain_at,
)


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
