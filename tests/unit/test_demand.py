"""The adaptive warm pool's measurements, and the warm size it asks for."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from voicepool_operator.demand import LONG_WINDOW_S, SHORT_WINDOW_S, Demand, Measured
from voicepool_operator.planner import plan
from voicepool_operator.podview import PodView
from voicepool_operator.spec import SpecError, parse_spec

T0 = dt.datetime(2026, 3, 2, 12, 0, 0, tzinfo=dt.UTC)


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def view(
    name: str, sessions: int | None, *, created: float = -3600, state: str = "idle"
) -> PodView:
    return PodView(
        name=name,
        template_hash="h",
        created=at(created),
        phase="Running",
        ready=state != "starting",
        ready_since=None,
        terminating=False,
        sessions=sessions,
        capacity=4,
        reported_state=state,
        drain_requested=False,
        drain_requested_at=None,
        safe_to_evict=None,
        deletion_cost=None,
    )


def spec(**warm: object) -> object:
    return parse_spec(
        {
            "agentName": "a",
            "livekit": {"url": "ws://lk", "credentialsSecretRef": {"name": "s"}},
            "template": {"image": "w"},
            "sessionsPerPod": 4,
            "minReplicas": 0,
            "maxReplicas": 100,
            "warmPool": warm,
        }
    )


def test_arrivals_are_rises_in_session_counts() -> None:
    d = Demand()
    d.observe([view("a", 0), view("b", 0)], at(0), 100)
    n = int(SHORT_WINDOW_S)  # one call a second for the short window
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
    assert d.measured(at(1)).arrival_rate == pytest.approx(4 / SHORT_WINDOW_S)


def test_cold_start_is_created_to_registered_of_pods_born_while_watched() -> None:
    d = Demand()
    d.observe([view("old", 0)], at(0), 4)  # was running before we looked: not measured
    d.observe([view("old", 0), view("new", None, created=10, state="starting")], at(10), 4)
    assert d.measured(at(10)).cold_start_s is None
    d.observe([view("old", 0), view("new", 0, created=10)], at(52), 4)
    assert d.measured(at(52)).cold_start_s == pytest.approx(42)


def test_adaptive_warm_size_follows_rate_times_cold_start_with_the_schedule_as_floor() -> None:
    s = spec(mode="adaptive", idleSessions=2, adaptive={"safetyFactor": 2, "coldStartSeconds": 30})
    assert s.warm_sessions(T0) == 2  # nothing measured yet: the floor
    assert s.warm_sessions(T0, Measured(0.25, None)) == 15  # 2 x 0.25/s x 30 s (assumed)
    assert s.warm_sessions(T0, Measured(0.25, 40.0)) == 20  # measured cold start wins
    assert s.warm_sessions(T0, Measured(0.01, 40.0)) == 2  # the floor holds
    static = spec(idleSessions=2)
    assert static.warm_sessions(T0, Measured(10.0, 40.0)) == 2  # static ignores measurements


def test_the_planner_sizes_an_adaptive_pool_from_the_measurement() -> None:
    s = spec(mode="adaptive", idleSessions=0, adaptive={"safetyFactor": 1})
    pods = [view("a", 4, state="busy")]
    quiet = plan(s, "h", pods, T0)
    assert quiet.status.warm_target == 0 and quiet.status.desired_replicas == 1
    busy = plan(s, "h", pods, T0, measured=Measured(0.5, 30.0))
    assert busy.status.warm_target == 15
    assert busy.status.desired_replicas == 1 + 4  # ceil((4 + 15) / 4)


@pytest.mark.parametrize(
    "warm",
    [{"mode": "sometimes"}, {"mode": "adaptive", "adaptive": {"safetyFactor": 0.05}}],
)
def test_bad_adaptive_settings_are_refused(warm: dict[str, object]) -> None:
    with pytest.raises(SpecError, match="warmPool"):
        spec(**warm)


def test_measured_is_plain_data() -> None:
    m = Measured(0.1, 12.0)
    assert dataclasses.replace(m, arrival_rate=0.2).warm_sessions(1.0, 30) == 3
