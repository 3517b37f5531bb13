"""The echo reference schedule: what the agent's audio plays when (pure)."""

from __future__ import annotations

from voicepool_worker.audio.playout_tap import TICK_S, ReferenceSchedule

from .conftest import pcm


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
