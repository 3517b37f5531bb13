"""The adaptive warm pool's measurements, and the warm size it asks for."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voicepool_operator.demand import (
    LONG_WINDOW_S,
    SERVED_WARM,
    SHORT_WINDOWS_S,
    Demand,
    Measured,
    base_stock,
    poisson_sf,
)
from voicepool_operator.planner import plan
from voicepool_operator.podview import PodView
from voicepool_operator.spec import SpecError, parse_spec

from .conftest import HASH, NOW, make_pod, spec_dict


def at(s: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=s)


def view(
    name: str, sessions: int | None, *, created: float = -3600, state: str = "idle"
) -> PodView:
    return make_pod(
        name,
        created=at(created),
        ready=state != "starting",
        ready_since=None,
        sessions=sessions,
        capacity=4,
        reported_state=state,
        safe_to_evict=None,
        deletion_cost=None,
    )


def spec(**warm: object) -> object:
    return parse_spec(spec_dict(sessionsPerPod=4, minReplicas=0, maxReplicas=100, warmPool=warm))


def test_arrivals_are_rises_in_session_counts() -> None:
    d = Demand()
    d.observe([view("a", 0), view("b", 0)], at(-LONG_WINDOW_S), 100)  # watched for long
    d.observe([view("a", 0), view("b", 0)], at(0), 100)
    n = int(SHORT_WINDOWS_S[-1])  # one call a second for the longest short window
    for i in range(1, n + 1):
        d.observe([view("a", (i + 1) // 2), view("b", i // 2)], at(i), 100)
    assert d.measured(at(n)).arrival_rate == pytest.approx(1.0)
    # Calls that end are not arrivals; the long window keeps the rate after a lull.
    d.observe([view("a", 0), view("b", 0)], at(n + 60), 100)
    assert d.measured(at(n + 60)).arrival_rate == pytest.approx(n / LONG_WINDOW_S)
    assert d.measured(at(n + LONG_WINDOW_S + 1)).arrival_rate == 0


def test_hostile_counts_are_clipped_to_capacity() -> None:
    d = Demand()
    d.observe([view("a", 0)], at(0), 4)
    d.observe([view("a", 10**24)], at(1), 4)
    # Four arrivals at most (the capacity), read over the shortest window that shows a burst.
    assert d.measured(at(1)).arrival_rate == pytest.approx(4 / SHORT_WINDOWS_S[0])


def test_cold_start_is_created_to_registered_of_pods_born_while_watched() -> None:
    d = Demand()
    d.observe([view("old", 0)], at(0), 4)  # was running before we looked: not measured
    d.observe([view("old", 0), view("new", None, created=10, state="starting")], at(10), 4)
    assert d.measured(at(10)).cold_start_s is None
    d.observe([view("old", 0), view("new", 0, created=10)], at(52), 4)
    assert d.measured(at(52)).cold_start_s == pytest.approx(42)


def test_adaptive_warm_size_is_the_base_stock_with_the_schedule_as_floor() -> None:
    s = spec(mode="adaptive", idleSessions=2, adaptive={"safetyFactor": 2, "coldStartSeconds": 30})
    assert s.warm_sessions(NOW) == 2  # nothing measured yet: the floor
    # No call ends: every caller during the 2 x 30 s lead needs a slot, Poisson(15) at 99 %.
    assert s.warm_sessions(NOW, Measured(0.25, None)) == 26
    assert poisson_sf(26, 15) <= 1 - SERVED_WARM < poisson_sf(25, 15)
    assert s.warm_sessions(NOW, Measured(0.25, 40.0)) == base_stock(20, 0)  # measured cold wins
    assert s.warm_sessions(NOW, Measured(0.0001, 40.0)) == 2  # the floor holds (base stock 1)
    static = spec(idleSessions=2)
    assert static.warm_sessions(NOW, Measured(10.0, 40.0)) == 2  # static ignores measurements


def test_ending_calls_and_the_stabilization_window_need_fewer_warm_sessions() -> None:
    busy_day = Measured(0.5, 30.0, departure_rate=0.5)
    arrivals_only = Measured(0.5, 30.0)
    assert busy_day.warm_sessions(1, 30) < arrivals_only.warm_sessions(1, 30)
    # A 90-s window keeps the pods of the highest demand of the last 60 s beyond the start.
    assert busy_day.warm_sessions(1, 30, window_s=90) < busy_day.warm_sessions(1, 30)
    # A window no longer than the cold start holds nothing ready.
    assert busy_day.warm_sessions(1, 30, window_s=30) == busy_day.warm_sessions(1, 30)


def test_the_planner_sizes_an_adaptive_pool_from_the_measurement() -> None:
    s = spec(mode="adaptive", idleSessions=0, adaptive={"safetyFactor": 1})
    pods = [view("a", 4, state="busy")]
    quiet = plan(s, HASH, pods, NOW)
    assert quiet.status.warm_target == 0 and quiet.status.desired_replicas == 1
    busy = plan(s, HASH, pods, NOW, measured=Measured(0.5, 30.0))
    # 15 arrivals expected over the 30-s start; the default 60-s window holds 30 s of them.
    warm = base_stock(15, 0, 15)
    assert busy.status.warm_target == warm == 23
    assert busy.status.desired_replicas == 1 + math.ceil(warm / 4)


@pytest.mark.parametrize(
    "warm",
    [{"mode": "sometimes"}, {"mode": "adaptive", "adaptive": {"safetyFactor": 0.05}}],
)
def test_bad_adaptive_settings_are_refused(warm: dict[str, object]) -> None:
    with pytest.raises(SpecError, match="warmPool"):
        spec(**warm)


def test_measured_is_plain_data() -> None:
    m = Measured(0.1, 12.0)
    assert dataclasses.replace(m, arrival_rate=0.2).warm_sessions(1.0, 30) == base_stock(2.4, 0)


def _skellam_tail(a: float, d: float, w: int) -> float:
    """P(A - D >= w) by a plain double sum (an independent check of `base_stock`)."""

    def pmf(mean: float, k: int) -> float:
        return math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1)) if mean > 0 else k == 0

    top = int(a + d + 12 * math.sqrt(a + d) + 30)
    return sum(
        pmf(a, i) * pmf(d, j) for i in range(top) for j in range(top if d > 0 else 1) if i - j >= w
    )


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(0.05, 40),
    d=st.floats(0, 40),
)
def test_base_stock_is_the_smallest_stock_that_answers_99_percent(a: float, d: float) -> None:
    w = base_stock(a, d)
    miss = 1 - SERVED_WARM
    assert _skellam_tail(a, d, w) <= miss + 1e-9
    assert w == 0 or _skellam_tail(a, d, w - 1) > miss - 1e-9


@settings(max_examples=80, deadline=None)
@given(
    a=st.floats(0, 300),
    d=st.floats(0, 300),
    held=st.floats(0, 300),
    more=st.floats(0, 50),
)
def test_base_stock_rises_with_arrivals_and_falls_with_departures_and_held(
    a: float, d: float, held: float, more: float
) -> None:
    w = base_stock(a, d, held)
    assert w >= 0
    assert base_stock(a + more, d, held) >= w
    assert base_stock(a, d + more, held) <= w
    assert base_stock(a, d, held + more) <= w


def test_the_normal_approximation_takes_over_smoothly() -> None:
    # Exact below 400 expected events per cold start, normal above: no jump at the seam.
    exact, normal = base_stock(199, 199), base_stock(201, 201)
    assert 0 <= normal - exact <= 1


def test_a_burst_shows_within_seconds_and_noise_does_not() -> None:
    d = Demand()
    calls = 0
    d.observe([view("a", 0)], at(0), 10**6)
    for s in range(1, 301):  # a steady 0.2/s for the long window
        calls += s % 5 == 0
        d.observe([view("a", calls)], at(s), 10**6)
    assert d.measured(at(300)).arrival_rate == pytest.approx(0.2, abs=0.01)
    d.observe([view("a", calls + 2)], at(305), 10**6)  # a little above the mean: noise
    assert d.measured(at(305)).arrival_rate < 0.25
    d.observe([view("a", calls + 8)], at(308), 10**6)  # 8 in 8 s where 1.6 were due
    assert d.measured(at(308)).arrival_rate >= 1.0


def test_departures_are_falls_and_a_deleted_pod_frees_nothing() -> None:
    d = Demand()
    d.observe([view("a", 3), view("b", 2)], at(-LONG_WINDOW_S), 4)  # watched for long
    d.observe([view("a", 3), view("b", 2)], at(0), 4)
    d.observe([view("a", 1)], at(10), 4)  # two calls ended on a; b was deleted
    m = d.measured(at(10))
    assert m.departure_rate == pytest.approx(2 / LONG_WINDOW_S)
    assert m.arrival_rate == 0


def test_a_replica_that_just_took_over_measures_over_what_it_watched() -> None:
    """The history is one replica's memory: after a failover the new active replica starts
    empty, and 60 s of a steady 0.25/s must read 0.25/s, not 15 calls / 300 s."""
    d = Demand()
    calls = 0
    for s in range(0, 61):
        calls += s % 4 == 0 and s > 0
        d.observe([view("a", calls)], at(s), 10**6)
    assert d.measured(at(60)).arrival_rate == pytest.approx(0.25)
    assert d.measured(at(60)).cold_start_s is None  # the spec's guess until a pod registers
    fresh = Demand()
    fresh.observe([view("a", 7)], at(0), 10**6)  # calls already running are no arrivals
    assert fresh.measured(at(0)).arrival_rate == 0


def test_waiting_callers_are_arrivals_once() -> None:
    d = Demand()
    d.observe([view("a", 4)], at(0), 4)  # full
    d.observe([view("a", 4)], at(1), 4, waiting=3)  # three callers find no slot
    assert d.measured(at(1)).arrival_rate == pytest.approx(3 / SHORT_WINDOWS_S[0])
    # One call ends and a waiting caller takes its slot: no new arrival, one departure.
    d.observe([view("a", 4)], at(2), 4, waiting=2)
    d.observe([view("a", 3)], at(3), 4, waiting=2)
    d.observe([view("a", 4)], at(4), 4, waiting=1)
    m = d.measured(at(4))
    assert m.arrival_rate == pytest.approx(3 / SHORT_WINDOWS_S[0])
