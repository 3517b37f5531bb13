"""Pure turn-latency bookkeeping."""

from __future__ import annotations

import math

import pytest
from voicepool_worker.latency import TurnLatency, TurnTracker, percentile, summarize


def test_reply_without_user_turn_is_not_a_turn() -> None:
    assert TurnTracker().agent_reply({"e2e_latency": 0.4}) is None  # e.g. the greeting


def test_pairs_user_turn_with_reply_once() -> None:
    t = TurnTracker()
    t.user_turn({"transcription_delay": 0.06, "end_of_turn_delay": 0.25, "stopped_speaking_at": 10})
    lat = t.agent_reply({"llm_node_ttft": 0.01, "tts_node_ttfb": 0.08, "e2e_latency": 0.5})
    assert lat == TurnLatency(0.06, 0.25, 0.01, 0.08, 0.5)
    assert t.agent_reply({"e2e_latency": 0.5}) is None


def test_ttfw_falls_back_to_timestamps() -> None:
    t = TurnTracker()
    t.user_turn({"stopped_speaking_at": 100.0})
    lat = t.agent_reply({"started_speaking_at": 100.7})
    assert lat is not None and lat.ttfw == pytest.approx(0.7)
    assert lat.as_dict() == {"ttfw": pytest.approx(0.7)}


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 1e9, "0.3", None, True])
def test_garbage_values_are_dropped(bad: object) -> None:
    t = TurnTracker()
    t.user_turn({"transcription_delay": bad})
    lat = t.agent_reply({"e2e_latency": bad, "llm_node_ttft": bad})
    assert lat is not None and lat.as_dict() == {}


def test_later_user_turn_replaces_unanswered_one() -> None:
    t = TurnTracker()
    t.user_turn({"transcription_delay": 1.0})
    t.user_turn({"transcription_delay": 2.0})
    lat = t.agent_reply({})
    assert lat is not None and lat.transcript == 2.0


def test_percentile() -> None:
    assert percentile([3.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(range(101), 95) == 95
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize() -> None:
    turns = [TurnLatency(0.1 * i, None, 0.01, None, 0.5 + i) for i in range(1, 5)]
    out = summarize(turns)
    assert set(out) == {"transcript", "llm_ttft", "ttfw"}
    assert out["ttfw"]["p50"] == pytest.approx(3.0)
    assert out["ttfw"]["n"] == 4
