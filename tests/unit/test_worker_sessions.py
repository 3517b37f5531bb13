"""The pure session state machine: every transition and the annotations it reports."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from voicepool_worker.runtime import sessions as s

from .conftest import NOW


def registered(capacity: int = 2) -> s.Sessions:
    state, report = s.Sessions(capacity=capacity).register(NOW)
    assert report is not None
    return state


def test_starting_until_registered() -> None:
    fresh = s.Sessions(capacity=3)
    assert fresh.state is s.State.STARTING
    assert not fresh.ready and not fresh.accepting
    ann = fresh.annotations(NOW)
    assert ann[s.ANN_STATE] == "starting"
    assert ann[s.ANN_CAPACITY] == "3"


def test_register_reports_idle_once() -> None:
    state, report = s.Sessions(capacity=2).register(NOW)
    assert report is not None and report.annotations == {
        s.ANN_SESSIONS: "0",
        s.ANN_CAPACITY: "2",
        s.ANN_STATE: "idle",
        s.ANN_REPORTED_AT: "2026-03-02T12:00:00Z",
    }
    again, none = state.register(NOW)
    assert none is None and again is state


def test_session_start_and_end_report_all_keys_together() -> None:
    state = registered()
    state, started = state.start("job-1", NOW)
    assert started is not None
    assert set(started.annotations) == set(s.REPORTED_KEYS)
    assert started.annotations[s.ANN_SESSIONS] == "1"
    assert started.annotations[s.ANN_STATE] == "busy"
    state, ended = state.end("job-1", NOW + timedelta(seconds=5))
    assert ended is not None
    assert ended.annotations[s.ANN_SESSIONS] == "0"
    assert ended.annotations[s.ANN_STATE] == "idle"
    assert ended.annotations[s.ANN_REPORTED_AT] == "2026-03-02T12:00:05Z"
    assert (state.started_total, state.ended_total, state.failed_total) == (1, 1, 0)


def test_duplicate_and_unknown_events_do_not_patch() -> None:
    state, _ = registered().start("a", NOW)
    same, report = state.start("a", NOW)
    assert report is None and same is state
    same, report = state.end("zzz", NOW)
    assert report is None and same is state


def test_failed_session_counts() -> None:
    state, _ = registered().start("a", NOW)
    state, report = state.end("a", NOW, failed=True)
    assert report is not None and "failed" in report.reason
    assert state.failed_total == 1 and state.ended_total == 1


def test_capacity_and_load() -> None:
    state = registered(capacity=2)
    assert state.load == 0.0 and state.accepting
    state, _ = state.start("a", NOW)
    assert state.load == 0.5 and state.accepting
    state, _ = state.start("b", NOW)
    assert state.load == 1.0 and not state.accepting and state.ready  # full is still ready


@pytest.mark.parametrize("capacity", [1, 2, 3, 4, 7, 16])
def test_load_threshold_is_full_exactly_at_capacity(capacity: int) -> None:
    threshold = s.load_threshold(capacity)
    for active in range(capacity + 2):
        load = s.reported_load(min(1.0, active / capacity))
        assert (load >= threshold) == (active >= capacity)
        # livekit-server offers a job only below its target load: every free slot is offered
        assert (load < s.LIVEKIT_TARGET_LOAD) == (active < capacity)


def test_invalid_capacity() -> None:
    with pytest.raises(ValueError):
        s.Sessions(capacity=0)
    with pytest.raises(ValueError):
        s.load_threshold(0)


def test_drain_reports_once_and_stops_accepting() -> None:
    state, _ = registered().start("a", NOW)
    state, report = state.drain("SIGTERM", NOW)
    assert report is not None and report.annotations[s.ANN_STATE] == "draining"
    assert not state.ready and not state.accepting and not state.drained
    again, none = state.drain("annotation", NOW)
    assert none is None and again.drain_reason == "SIGTERM"
    state, ended = state.end("a", NOW)
    assert ended is not None and ended.annotations[s.ANN_STATE] == "draining"
    assert ended.annotations[s.ANN_SESSIONS] == "0"
    assert state.drained


def test_drain_before_registration() -> None:
    state, report = s.Sessions(capacity=1).drain("SIGTERM", NOW)
    assert report is not None and state.state is s.State.DRAINING and state.drained


def test_rfc3339_formats() -> None:
    assert s.rfc3339(datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    plus2 = timezone(timedelta(hours=2))
    assert s.rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=plus2)) == "2026-01-02T01:04:05Z"
    assert s.rfc3339(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, False),
        ({}, False),
        ({s.ANN_DRAIN: "true"}, True),
        ({s.ANN_DRAIN: "True "}, True),
        ({s.ANN_DRAIN: "false"}, False),
        ({s.ANN_DRAIN_REASON: "scale-down"}, False),
    ],
)
def test_drain_requested(annotations: dict[str, str] | None, expected: bool) -> None:
    assert s.drain_requested(annotations) is expected


EVENTS = st.lists(
    st.tuples(st.sampled_from(["start", "end", "fail", "drain", "register"]), st.integers(0, 4)),
    max_size=40,
)


@given(capacity=st.integers(1, 4), events=EVENTS)
def test_invariants_over_any_event_sequence(capacity: int, events: list[tuple[str, int]]) -> None:
    """One patch per effective event; annotations always consistent with the snapshot."""
    state = s.Sessions(capacity=capacity)
    clock = itertools.count()
    for kind, n in events:
        now = NOW + timedelta(seconds=next(clock))
        before = state
        if kind == "start":
            state, report = state.start(f"j{n}", now)
            effective = f"j{n}" not in before.active
        elif kind in ("end", "fail"):
            state, report = state.end(f"j{n}", now, failed=kind == "fail")
            effective = f"j{n}" in before.active
        elif kind == "drain":
            state, report = state.drain("test", now)
            effective = not before.draining
        else:
            state, report = state.register(now)
            effective = not before.registered
        assert (report is not None) == effective
        if report is not None:
            assert report.annotations == state.annotations(now)
        ann = state.annotations(now)
        assert ann[s.ANN_SESSIONS] == str(len(state.active))
        # the eviction hints are the operator's: a worker's report never carries them
        assert set(ann) == set(s.REPORTED_KEYS)
        assert state.started_total - state.ended_total == len(state.active)
        if state.draining:
            assert ann[s.ANN_STATE] == "draining" and not state.accepting


def test_processes_that_keep_failing_to_start_make_the_worker_unready_until_one_starts() -> None:
    w, _ = s.Sessions(capacity=2).register(NOW)
    for n in range(1, s.BROKEN_AFTER_FAILED_STARTS):
        w = w.process_started(ok=False)
        assert w.ready and w.accepting and not w.broken, n  # a retry may still start
    w = w.process_started(ok=False)
    assert w.broken and not w.ready and not w.accepting
    n = s.BROKEN_AFTER_FAILED_STARTS
    assert w.unready_reason == f"job processes fail to start: {n} in a row"
    assert w.state is s.State.IDLE  # the pod report is unchanged: readiness says it
    w = w.process_started(ok=True)
    assert w.ready and w.accepting and w.failed_starts == 0 and w.unready_reason == ""


def test_a_started_process_resets_the_count_and_a_ready_one_changes_nothing() -> None:
    w, _ = s.Sessions(capacity=1).register(NOW)
    assert w.process_started(ok=True) is w
    w = w.process_started(ok=False).process_started(ok=True).process_started(ok=False)
    assert w.failed_starts == 1 and w.ready


def test_the_start_backoff_grows_once_unready_and_stays_within_the_start_timeout() -> None:
    n = s.BROKEN_AFTER_FAILED_STARTS
    assert [s.start_backoff_s(f, 60.0) for f in range(n)] == [0.0] * n  # still ready: no wait
    waits = [s.start_backoff_s(n + k, 60.0) for k in range(8)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert s.start_backoff_s(n + 5, 5.0) == 2.5  # half the start timeout at most
    assert s.start_backoff_s(10**6, 60.0) == s.START_BACKOFF_MAX_S


def test_the_prewarm_keeps_its_whole_timeout_after_the_longest_wait() -> None:
    for timeout in (5.0, 60.0, 180.0):
        longest = s.start_backoff_s(10**6, timeout)
        assert s.start_deadline_s(timeout) - longest == timeout
