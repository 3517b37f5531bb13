"""The pure planner by example: classification, stabilization, and every rule of `plan()`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from voicepool_operator.constants import BUSY_DELETION_COST, IDLE_DELETION_COST
from voicepool_operator.planner import (
    Condition,
    CreatePod,
    DeletePod,
    MarkDraining,
    Plan,
    PodState,
    Recommendation,
    SetEvictionHints,
    classify,
    plan,
    stabilize,
)
from voicepool_operator.podview import PodView
from voicepool_operator.spec import parse_spec

from .conftest import HASH, NOW, ago, later, make_pod, make_spec, spec_dict
from .conftest import OLD_HASH as OLD

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"]


# -- factories -------------------------------------------------------------------------------


def idle(name: str, *, age_s: float = 3600, **kw: Any) -> PodView:
    return make_pod(name, created=ago(age_s), ready_since=ago(age_s - 1), **kw)


def busy(name: str, sessions: int = 1, **kw: Any) -> PodView:
    kw.setdefault("safe_to_evict", "false")
    kw.setdefault("deletion_cost", BUSY_DELETION_COST)
    kw.setdefault("busy_label", "true")
    return make_pod(name, sessions=sessions, reported_state="busy", **kw)


def starting(name: str, *, age_s: float = 5, **kw: Any) -> PodView:
    fields: dict[str, Any] = {
        "created": ago(age_s),
        "ready": False,
        "ready_since": None,
        "sessions": None,
        "capacity": None,
        "reported_state": None,
        "safe_to_evict": None,
        "deletion_cost": None,
    }
    fields.update(kw)
    return make_pod(name, **fields)


def draining(name: str, sessions: int | None, *, since_s: float = 10, **kw: Any) -> PodView:
    fields: dict[str, Any] = {
        "ready": False,
        "sessions": sessions,
        "reported_state": "draining",
        "drain_requested": True,
        "drain_requested_at": ago(since_s),
        "safe_to_evict": "false" if sessions else "true",
        "deletion_cost": BUSY_DELETION_COST if sessions else IDLE_DELETION_COST,
        "busy_label": "true" if sessions else None,
    }
    fields.update(kw)
    return make_pod(name, **fields)


def unknown(name: str, sessions: int | None, *, not_ready_s: float, **kw: Any) -> PodView:
    """A pod that served (it reported) and then stopped being ready `not_ready_s` ago."""
    fields: dict[str, Any] = {
        "ready": False,
        "ready_since": ago(not_ready_s),
        "sessions": sessions,
        "reported_state": "busy" if sessions else "idle",
    }
    fields.update(kw)
    return make_pod(name, **fields)


def failed(name: str, **kw: Any) -> PodView:
    return make_pod(name, phase="Failed", ready=False, **kw)


def terminating(name: str, **kw: Any) -> PodView:
    return make_pod(name, terminating=True, **kw)


def creates(p: Plan) -> list[CreatePod]:
    return [a for a in p.actions if isinstance(a, CreatePod)]


def deleted(p: Plan) -> dict[str, str]:
    return {a.pod: a.reason for a in p.actions if isinstance(a, DeletePod)}


def drained(p: Plan) -> dict[str, str]:
    return {a.pod: a.reason for a in p.actions if isinstance(a, MarkDraining)}


def hints(p: Plan) -> dict[str, tuple[str, str]]:
    return {
        a.pod: (a.safe_to_evict, a.deletion_cost)
        for a in p.actions
        if isinstance(a, SetEvictionHints)
    }


def cond(p: Plan, type_: str) -> Condition:
    (found,) = [c for c in p.conditions if c.type == type_]
    return found


def reasons(p: Plan) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in p.conditions}


# -- classify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "state"),
    [
        (idle("a"), PodState.IDLE),
        (busy("a", 2), PodState.BUSY),
        # Ready but never reported: the readiness probe passes only once registered.
        # Ready and never reported: its calls are unknown, so it is not idle capacity.
        (make_pod("a", sessions=None, reported_state=None), PodState.UNREPORTED),
        (starting("a"), PodState.STARTING),
        (starting("a", reported_state="starting", sessions=0), PodState.STARTING),
        # Ready (kwok runs no probes) but the worker says it has not registered yet.
        (make_pod("a", reported_state="starting", sessions=0), PodState.STARTING),
        (make_pod("a", reported_state="starting", sessions=None), PodState.STARTING),
        (starting("a", age_s=86400), PodState.STARTING),  # stuck, still never served
        (unknown("a", 0, not_ready_s=5), PodState.UNKNOWN),
        (unknown("a", 3, not_ready_s=5), PodState.UNKNOWN),
        (starting("a", sessions=1), PodState.UNKNOWN),  # calls but no state: not starting
        (starting("a", reported_state="garbled"), PodState.UNKNOWN),
        (draining("a", 2), PodState.DRAINING),
        (draining("a", 0, ready=True), PodState.DRAINING),
        (make_pod("a", reported_state="draining"), PodState.DRAINING),  # the worker says so
        (make_pod("a", drain_requested=True), PodState.DRAINING),  # we asked
        (failed("a"), PodState.FAILED),
        (make_pod("a", phase="Succeeded"), PodState.FAILED),
        (make_pod("a", phase="Failed", ready=True, sessions=2), PodState.FAILED),
        (terminating("a"), PodState.TERMINATING),
        (terminating("a", phase="Failed", drain_requested=True), PodState.TERMINATING),
    ],
)
def test_classify(pod: PodView, state: PodState) -> None:
    """Each observed shape maps to one state; terminating and failed take precedence."""
    assert classify(pod, make_spec(), NOW) is state


@pytest.mark.parametrize("sessions", [None, 0])
@pytest.mark.parametrize("reported", [None, "starting"])
def test_not_ready_pods_are_never_idle(sessions: int | None, reported: str | None) -> None:
    """A pod that is not ready may be booting or hung: calling it idle would drain it."""
    pod = starting("a", sessions=sessions, reported_state=reported, age_s=10_000)
    assert classify(pod, make_spec(), NOW) is not PodState.IDLE


# -- stabilize -------------------------------------------------------------------------------


def test_stabilize_empty_history_takes_raw() -> None:
    """The first recommendation is the effective one and starts the history."""
    assert stabilize([], 3, NOW, 300) == (3, [Recommendation(NOW, 3)], None)


def test_stabilize_scale_up_is_immediate() -> None:
    """A higher recommendation wins at once, whatever the window says."""
    history = [Recommendation(ago(10), 2)]
    effective, kept, wake = stabilize(history, 5, NOW, 300)
    assert effective == 5 and wake is None
    assert kept == [Recommendation(ago(10), 2), Recommendation(NOW, 5)]


def test_stabilize_holds_a_drop_for_the_window() -> None:
    """A lower value takes effect only once the higher one is older than the window."""
    history = [Recommendation(ago(1000), 4)]
    effective, kept, wake = stabilize(history, 1, NOW, 300)
    assert (effective, wake) == (4, 300.0)
    assert kept[-1] == Recommendation(NOW, 1)

    effective, kept2, wake = stabilize(kept, 1, later(299), 300)
    assert (effective, wake) == (4, 1.0) and kept2 == kept

    effective, kept3, wake = stabilize(kept, 1, later(300), 300)
    assert (effective, wake) == (1, None)
    assert kept3 == [Recommendation(NOW, 1)]  # the old 4 can no longer matter


def test_stabilize_same_value_keeps_its_first_time() -> None:
    """An unchanged recommendation is not re-appended, so its age is when it first appeared."""
    history = [Recommendation(ago(50), 3)]
    assert stabilize(history, 3, NOW, 300) == (3, history, None)


def test_stabilize_highest_within_window_wins() -> None:
    """HPA rule: the max over everything that held during the window."""
    history = [
        Recommendation(ago(900), 9),
        Recommendation(ago(400), 5),
        Recommendation(ago(100), 4),
    ]
    effective, kept, wake = stabilize(history, 2, NOW, 300)
    assert effective == 5
    assert [r.desired for r in kept] == [5, 4, 2]  # 9 stopped holding 400s ago: out of window
    assert wake is not None and 0 < wake <= 300


def test_stabilize_wakes_at_the_first_partial_drop() -> None:
    """5 leaves the window before 4 does: wake then to drop to 4, not when 4 expires too."""
    history = [Recommendation(ago(400), 5), Recommendation(ago(100), 4)]
    effective, kept, wake = stabilize(history, 2, NOW, 300)
    assert effective == 5 and wake == pytest.approx(200)
    effective, _, wake = stabilize(kept, 2, later(200), 300)
    assert effective == 4 and wake == pytest.approx(100)


def test_stabilize_zero_window_drops_at_once() -> None:
    """Without a window, scale-down is as immediate as scale-up."""
    effective, kept, wake = stabilize([Recommendation(ago(1), 7)], 2, NOW, 0)
    assert (effective, kept, wake) == (2, [Recommendation(NOW, 2)], None)


def test_stabilize_accepts_unsorted_history() -> None:
    """History read back from status may come in any order."""
    history = [Recommendation(ago(10), 1), Recommendation(ago(100), 6)]
    effective, kept, _ = stabilize(history, 1, NOW, 300)
    assert effective == 6 and [r.desired for r in kept] == [6, 1]


# -- warm pool and desired replicas ----------------------------------------------------------


def test_empty_pool_creates_the_warm_pool() -> None:
    """A new pool creates ceil(warm sessions / sessionsPerPod) pods, reason WarmPool."""
    spec = make_spec(sessions_per_pod=2, idle_sessions=3)
    result = plan(spec, HASH, [], NOW)
    assert creates(result) == [CreatePod(HASH, "WarmPool", "warm pool of 3 idle session(s)")] * 2
    assert [a for a in result.actions if not isinstance(a, CreatePod)] == []
    assert result.status.desired_replicas == 2 and result.status.warm_target == 3
    assert result.history == [Recommendation(NOW, 2)]
    assert result.requeue_after is None
    assert reasons(result) == {
        "Ready": ("False", "NoReadyPods"),
        "Scaling": ("True", "ScalingUp"),
        "Progressing": ("False", "UpToDate"),
        "Draining": ("False", "NoDrains"),
        "Degraded": ("False", "AsExpected"),
    }


def test_empty_pool_respects_min_replicas_without_warm_pool() -> None:
    """minReplicas alone keeps pods around; they are created as ScaleUp, not WarmPool."""
    result = plan(make_spec(min_replicas=2, idle_sessions=0), HASH, [], NOW)
    assert [c.reason for c in creates(result)] == ["ScaleUp", "ScaleUp"]


def test_empty_pool_without_warm_or_min_stays_empty() -> None:
    """Scale to zero: nothing to keep warm, nothing created, and that is Ready."""
    result = plan(make_spec(min_replicas=0, idle_sessions=0), HASH, [], NOW)
    assert result.actions == [] and result.status.desired_replicas == 0
    assert reasons(result)["Ready"] == ("True", "WarmPoolReady")
    assert reasons(result)["Scaling"] == ("False", "Stable")


def test_idle_pods_warm_size_is_in_pods() -> None:
    """warmPool.idlePods counts whole pods: sessions = idlePods x sessionsPerPod."""
    spec = parse_spec(spec_dict(sessionsPerPod=3, minReplicas=0, warmPool={"idlePods": 2}))
    result = plan(spec, HASH, [], NOW)
    assert result.status.warm_target == 6 and len(creates(result)) == 2


@pytest.mark.parametrize(
    ("spp", "warm", "lo", "hi", "busy_sessions", "desired"),
    [
        (1, 0, 0, 10, [], 0),
        (1, 2, 0, 10, [], 2),
        (2, 2, 0, 10, [2, 1], 3),  # ceil((3 + 2) / 2)
        (4, 0, 0, 10, [1], 1),
        (4, 1, 0, 10, [3], 1),  # exactly full: 4 / 4
        (4, 2, 0, 10, [3], 2),  # one session over: ceil(5 / 4)
        (4, 0, 2, 10, [], 2),  # minReplicas floor
        (1, 2, 0, 3, [1, 1, 1], 3),  # maxReplicas ceiling
        (3, 0, 0, 10, [3, 3, 3], 3),
    ],
)
def test_desired_replicas_formula(
    spp: int, warm: int, lo: int, hi: int, busy_sessions: list[int], desired: int
) -> None:
    """desired = clamp(ceil((active + warm) / sessionsPerPod), minReplicas, maxReplicas)."""
    spec = make_spec(sessions_per_pod=spp, idle_sessions=warm, min_replicas=lo, max_replicas=hi)
    pods = [busy(f"b{i}", n) for i, n in enumerate(busy_sessions)]
    result = plan(spec, HASH, pods, NOW)
    assert result.status.desired_replicas == desired
    assert spec.desired_for(sum(busy_sessions), NOW)[0] == desired


def test_sessions_on_leaving_pods_do_not_count_towards_desired() -> None:
    """Calls on draining/unknown pods will not move: they need no new capacity, but count."""
    spec = make_spec(idle_sessions=1, sessions_per_pod=4)
    pods = [idle("a"), draining("d", 3), unknown("u", 2, not_ready_s=5)]
    result = plan(spec, HASH, pods, NOW)
    assert result.status.desired_replicas == 1
    assert result.status.active_sessions == 5
    assert creates(result) == []


def test_at_max_replicas_is_degraded() -> None:
    """Wanting more than maxReplicas is clamped and reported: callers may find no capacity."""
    spec = make_spec(max_replicas=2, idle_sessions=1)
    result = plan(spec, HASH, [busy("a"), busy("b"), busy("c")], NOW)
    assert result.status.desired_replicas == 2
    assert creates(result) == []
    degraded = cond(result, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "AtMaxReplicas")
    assert "4 pods wanted but maxReplicas is 2" in degraded.message


def test_history_from_a_higher_max_replicas_is_clamped() -> None:
    """A recommendation from before maxReplicas was lowered must not outgrow the new max."""
    spec = make_spec(max_replicas=3, idle_sessions=1)
    history = [Recommendation(ago(10), 8)]
    result = plan(spec, HASH, [], NOW, history)
    assert result.status.desired_replicas == 3
    assert len(creates(result)) == 3


# -- scaling ---------------------------------------------------------------------------------


def test_scale_up_is_immediate_despite_history() -> None:
    """Full warm capacity: a new pod is created in the same reconcile."""
    spec = make_spec(idle_sessions=1)
    history = [Recommendation(ago(5), 1)]
    result = plan(spec, HASH, [busy("a")], NOW, history)
    assert [c.reason for c in creates(result)] == ["ScaleUp"]
    assert "1 active + 1 warm session(s) need 2 pod(s)" in creates(result)[0].message
    assert result.status.desired_replicas == 2
    assert reasons(result)["Scaling"] == ("True", "ScalingUp")


def test_scale_up_counts_starting_pods() -> None:
    """Pods already starting are not created again."""
    spec = make_spec(idle_sessions=2)
    result = plan(spec, HASH, [busy("a"), starting("s")], NOW)
    assert len(creates(result)) == 1


def test_scale_down_waits_for_the_stabilization_window() -> None:
    """Calls end: the surplus idle pod is drained only once the window has passed."""
    spec = make_spec(idle_sessions=1, stabilization=300)
    a, b = busy("a"), busy("b")
    c = idle("c", age_s=600)
    first = plan(spec, HASH, [a, b, c], NOW)
    assert first.status.desired_replicas == 3 and first.actions == []
    assert first.requeue_after is None

    # The call on `a` ends a minute later: 1 active + 1 warm = 2 pods would do.
    a_idle = idle("a", age_s=3600)
    t1 = later(60)
    held = plan(spec, HASH, [a_idle, b, c], t1, first.history)
    assert held.status.desired_replicas == 3 and drained(held) == {}
    assert reasons(held)["Scaling"] == ("False", "ScaleDownStabilizing")
    assert held.requeue_after == pytest.approx(300)

    t2 = later(60 + 299)
    still = plan(spec, HASH, [a_idle, b, c], t2, held.history)
    assert drained(still) == {} and still.requeue_after == pytest.approx(1)

    t3 = later(60 + 300)
    done = plan(spec, HASH, [a_idle, b, c], t3, still.history)
    assert done.status.desired_replicas == 2
    assert drained(done) == {"c": "ScaleDown"}  # youngest idle pod first
    assert deleted(done) == {}
    assert reasons(done)["Scaling"] == ("True", "ScalingDown")
    assert done.requeue_after is None


def test_scale_down_within_window_after_a_brief_spike() -> None:
    """A spike inside the window still counts: HPA keeps the highest recent recommendation."""
    spec = make_spec(idle_sessions=0, stabilization=120)
    pods = [idle("a", age_s=900), idle("b", age_s=800), idle("c", age_s=700)]
    history = [Recommendation(ago(100), 3), Recommendation(ago(90), 1)]
    result = plan(spec, HASH, pods, NOW, history)
    assert result.status.desired_replicas == 3 and drained(result) == {}
    assert result.requeue_after is not None and 0 < result.requeue_after <= 120
    # The 3 stopped holding 90 s ago: 30 s from now only the 1 is left in the window.
    held = plan(spec, HASH, pods, later(29), result.history)
    assert held.status.desired_replicas == 3
    dropped = plan(spec, HASH, pods, later(30), result.history)
    assert dropped.status.desired_replicas == 1
    assert drained(dropped) == {"c": "ScaleDown", "b": "ScaleDown"}


def test_scale_down_drains_only_idle_pods() -> None:
    """Busy pods are never chosen, even when they make up the surplus."""
    spec = make_spec(stabilization=0)
    pods = [busy("b1"), busy("b2"), busy("b3"), idle("i1"), idle("i2")]
    result = plan(spec, HASH, pods, NOW)
    assert result.status.desired_replicas == 3
    assert drained(result) == {"i1": "ScaleDown", "i2": "ScaleDown"}
    assert deleted(result) == {}


def test_scale_down_never_touches_busy_pods_when_no_idle_pod_is_left() -> None:
    """4 pods with one call each but 4 sessions per pod: 1 pod would do, none can go."""
    spec = make_spec(sessions_per_pod=4, stabilization=0)
    pods = [busy(f"b{i}") for i in range(4)]
    result = plan(spec, HASH, pods, NOW)
    assert result.status.desired_replicas == 1
    assert result.actions == []
    assert reasons(result)["Scaling"] == ("True", "ScalingDown")


def test_scale_down_removes_never_served_pods_first() -> None:
    """A starting pod holds no calls: deleting it beats draining a warm pod."""
    spec = make_spec(idle_sessions=1, stabilization=0)
    result = plan(spec, HASH, [idle("a"), starting("s")], NOW)
    assert deleted(result) == {"s": "ScaleDown"}
    assert drained(result) == {}


def test_scale_down_drain_order_youngest_idle_first() -> None:
    """Among idle pods the youngest goes first (older pods have proven themselves)."""
    spec = make_spec(idle_sessions=1, stabilization=0)
    pods = [idle("old", age_s=9000), idle("young", age_s=100), idle("mid", age_s=3000)]
    result = plan(spec, HASH, pods, NOW)
    assert drained(result) == {"young": "ScaleDown", "mid": "ScaleDown"}


# -- draining --------------------------------------------------------------------------------


def test_draining_pod_is_deleted_when_its_calls_end() -> None:
    """Sessions at 0: the drain is complete."""
    result = plan(make_spec(), HASH, [draining("d", 0)], NOW)
    assert deleted(result) == {"d": "DrainComplete"}
    assert reasons(result)["Degraded"] == ("False", "AsExpected")


def test_draining_pod_with_calls_waits_for_them() -> None:
    """A draining pod with calls is kept, and the planner wakes at its deadline."""
    spec = make_spec(drain_timeout=600, sessions_per_pod=2)
    result = plan(spec, HASH, [draining("d", 2, since_s=100)], NOW)
    assert deleted(result) == {}
    assert result.requeue_after == pytest.approx(500)
    assert reasons(result)["Draining"] == ("True", "WaitingForCalls")
    assert result.status.draining_pods == 1 and result.status.active_sessions == 2


def test_draining_pod_past_its_deadline_is_deleted_and_degraded() -> None:
    """At the drain timeout the pod goes anyway: DrainTimeout, Degraded=True."""
    spec = make_spec(drain_timeout=600, sessions_per_pod=2)
    result = plan(spec, HASH, [draining("d", 2, since_s=600)], NOW)
    assert deleted(result) == {"d": "DrainTimeout"}
    (action,) = [a for a in result.actions if isinstance(a, DeletePod)]
    assert "2 call(s) still running after the drain timeout of 600s" in action.message
    degraded = cond(result, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "DrainTimeout")
    assert "pod d hit the drain timeout" in degraded.message


def test_draining_pod_without_a_start_time_gets_one_stamped() -> None:
    """A drain the operator did not request (hand-set, or the worker's own) gets a start time,
    so its drain timeout can run out instead of being pushed back at every reconcile."""
    spec = make_spec(drain_timeout=600)
    result = plan(spec, HASH, [draining("d", 2, drain_requested_at=None)], NOW)
    assert deleted(result) == {}
    assert drained(result) == {"d": "DrainObserved"}
    assert result.requeue_after == pytest.approx(600)


@pytest.mark.parametrize("state", ["busy", "draining"])
def test_draining_pod_with_an_unreadable_count_keeps_its_calls(state: str) -> None:
    """It says it has calls but the count is garbled: wait for the deadline, never delete."""
    spec = make_spec(drain_timeout=600)
    pod = draining("d", None, since_s=100, reported_state=state)
    assert deleted(plan(spec, HASH, [pod], NOW)) == {}
    late = draining("d", None, since_s=600, reported_state=state)
    assert deleted(plan(spec, HASH, [late], NOW)) == {"d": "DrainTimeout"}


def test_draining_pod_that_never_reported_is_deleted_at_once() -> None:
    """Never reported anything: it never served a call, so there is nothing to wait for."""
    pod = draining("d", None, reported_state=None)
    assert deleted(plan(make_spec(), HASH, [pod], NOW)) == {"d": "DrainComplete"}


def test_draining_pods_are_not_drained_again_nor_serving() -> None:
    """A draining pod takes no calls: replacement capacity is created, no second drain."""
    spec = make_spec(idle_sessions=1)
    result = plan(spec, HASH, [draining("d", 1)], NOW)
    assert drained(result) == {}
    assert len(creates(result)) == 1
    assert result.status.ready_pods == 0 and result.status.session_capacity == 0


# -- failed, unknown, starting ---------------------------------------------------------------


def test_failed_pod_is_replaced() -> None:
    """A crashed/evicted pod is deleted and a new one created in the same plan."""
    spec = make_spec(min_replicas=2)
    result = plan(spec, HASH, [idle("a"), failed("f")], NOW)
    assert deleted(result) == {"f": "Failed"}
    assert [c.reason for c in creates(result)] == ["Replace"]
    assert reasons(result)["Degraded"] == ("True", "PodsFailed")
    assert result.status.replicas == 2  # failed pods still exist until deleted


def test_unknown_idle_pod_removed_after_grace() -> None:
    """A pod that stopped being ready without calls goes after unreadyGraceSeconds."""
    spec = make_spec(min_replicas=1, grace=60)
    waiting = plan(spec, HASH, [unknown("u", 0, not_ready_s=20)], NOW)
    assert deleted(waiting) == {}
    assert waiting.requeue_after == pytest.approx(40)
    assert [c.reason for c in creates(waiting)] == ["Replace"]  # it does not serve meanwhile
    assert reasons(waiting)["Degraded"] == ("True", "PodsUnresponsive")
    assert waiting.status.unknown_pods == 1 and waiting.status.idle_pods == 0

    gone = plan(spec, HASH, [unknown("u", 0, not_ready_s=60)], NOW)
    assert deleted(gone) == {"u": "Unresponsive"}


def test_unknown_busy_pod_keeps_its_calls_until_the_drain_timeout() -> None:
    """Calls may still run on a pod that fails its probe: the grace is not enough."""
    spec = make_spec(min_replicas=0, grace=60, drain_timeout=600, sessions_per_pod=2)
    after_grace = plan(spec, HASH, [unknown("u", 2, not_ready_s=120)], NOW)
    assert deleted(after_grace) == {}
    assert after_grace.requeue_after == pytest.approx(480)
    assert after_grace.status.active_sessions == 2

    timed_out = plan(spec, HASH, [unknown("u", 2, not_ready_s=600)], NOW)
    assert deleted(timed_out) == {"u": "Unresponsive"}


def test_unknown_busy_pod_with_an_unreadable_count_gets_the_drain_timeout() -> None:
    """It said busy, the count is unreadable: treat it as holding calls, not as idle."""
    spec = make_spec(grace=60, drain_timeout=600)
    pod = unknown("u", None, not_ready_s=120, reported_state="busy")
    result = plan(spec, HASH, [pod], NOW)
    assert deleted(result) == {} and result.requeue_after == pytest.approx(480)


def test_unknown_pod_without_ready_since_counts_from_creation() -> None:
    """No Ready transition time: the pod's age is the conservative stand-in."""
    spec = make_spec(grace=60)
    pod = unknown("u", 0, not_ready_s=0, ready_since=None, created=ago(30))
    result = plan(spec, HASH, [pod], NOW)
    assert deleted(result) == {} and result.requeue_after == pytest.approx(30)


def test_unknown_pods_are_never_drained_as_idle() -> None:
    """Scale-down chooses among idle pods; an unknown pod with 0 sessions is not one."""
    spec = make_spec(stabilization=0)
    result = plan(spec, HASH, [unknown("u", 0, not_ready_s=5), idle("a")], NOW)
    assert drained(result) == {"a": "ScaleDown"}
    assert "u" not in deleted(result)


def test_starting_pods_are_not_idle_capacity() -> None:
    """A pod still booting cannot take a call: Ready stays False until it can."""
    spec = make_spec(idle_sessions=1)
    result = plan(spec, HASH, [starting("s")], NOW)
    assert result.actions == []
    assert (result.status.starting_pods, result.status.idle_pods) == (1, 0)
    assert result.status.idle_capacity == 0
    ready = cond(result, "Ready")
    assert (ready.status, ready.reason) == ("False", "NoReadyPods")
    assert ready.message == "0/1 pods ready (1 starting)"


def test_stuck_starting_pods_are_degraded_not_deleted() -> None:
    """Unschedulable pods are reported, not churned."""
    spec = make_spec(idle_sessions=1, grace=60)
    result = plan(spec, HASH, [starting("s", age_s=61)], NOW)
    assert result.actions == []
    degraded = cond(result, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "PodsNotReady")
    assert "1 pod(s) not ready after 60s" in degraded.message


def test_terminating_pods_are_left_alone() -> None:
    """The kubelet finishes them; they count as neither replicas nor serving."""
    spec = make_spec(idle_sessions=1)
    result = plan(spec, HASH, [terminating("t", sessions=2)], NOW)
    assert deleted(result) == {} and drained(result) == {} and hints(result) == {}
    assert len(creates(result)) == 1
    assert (result.status.replicas, result.status.terminating_pods) == (0, 1)
    assert result.status.active_sessions == 0


# -- rolling update --------------------------------------------------------------------------


@pytest.mark.parametrize("surge", [1, 2, 5])
def test_rollout_surge_is_bounded(surge: int) -> None:
    """New pods come up at most maxSurge above desired while old pods still serve."""
    spec = make_spec(idle_sessions=3, max_surge=surge)
    pods = [idle(n, template_hash=OLD) for n in "abc"]
    result = plan(spec, HASH, pods, NOW)
    assert [c.reason for c in creates(result)] == ["Rollout"] * min(surge, 3)
    assert all(c.template_hash == HASH for c in creates(result))
    assert drained(result) == {} and deleted(result) == {}
    assert reasons(result)["Progressing"] == ("True", "RollingUpdate")


def test_rollout_waits_while_new_pods_start() -> None:
    """Surge used up by a starting pod: nothing more until it is ready."""
    spec = make_spec(idle_sessions=3)
    pods = [idle(n, template_hash=OLD) for n in "abc"] + [starting("n1")]
    result = plan(spec, HASH, pods, NOW)
    assert result.actions == []


def test_rollout_drains_an_idle_old_pod_when_a_new_one_is_ready() -> None:
    """One old pod leaves per ready new pod; idle old pods before busy ones."""
    spec = make_spec(idle_sessions=2)
    pods = [
        busy("a", template_hash=OLD, created=ago(9000)),
        idle("b", template_hash=OLD, age_s=8000),
        idle("c", template_hash=OLD, age_s=7000),
        idle("n1", age_s=10),
    ]
    result = plan(spec, HASH, pods, NOW)
    assert result.status.desired_replicas == 3
    assert drained(result) == {"c": "Rollout"}
    assert creates(result) == []  # 4 serving = desired + maxSurge
    assert result.status.updated_pods == 1


def test_rollout_drains_busy_old_pods_but_never_deletes_them() -> None:
    """A busy old pod is drained and keeps its call; it goes when the call ends."""
    spec = make_spec(idle_sessions=2, drain_timeout=600)
    new = [idle("n1"), idle("n2"), idle("n3")]
    old = busy("a", template_hash=OLD)
    result = plan(spec, HASH, [old, *new], NOW)
    assert drained(result) == {"a": "Rollout"}
    assert deleted(result) == {}
    assert "1 call(s) to finish" in next(
        a.message for a in result.actions if isinstance(a, MarkDraining)
    )

    waiting = plan(spec, HASH, [draining("a", 1, template_hash=OLD), *new], NOW)
    assert deleted(waiting) == {}
    assert reasons(waiting)["Progressing"] == ("True", "RollingUpdate")  # still an old pod
    assert waiting.requeue_after == pytest.approx(590)

    ended = plan(spec, HASH, [draining("a", 0, template_hash=OLD), *new], NOW)
    assert deleted(ended) == {"a": "DrainComplete"}


def test_rollout_replaces_old_pods_that_never_served() -> None:
    """An old-template pod still starting is deleted at once and replaced."""
    spec = make_spec(idle_sessions=1)
    result = plan(spec, HASH, [starting("s", template_hash=OLD)], NOW)
    assert deleted(result) == {"s": "Rollout"}
    assert len(creates(result)) == 1


def test_rollout_old_starting_pod_gets_one_delete_and_scale_down_still_happens() -> None:
    """An old starting pod is deleted once; it does not use up the scale-down budget."""
    spec = make_spec(idle_sessions=0, stabilization=0)
    pods = [starting("s", template_hash=OLD), idle("a", age_s=500), idle("b", age_s=100)]
    result = plan(spec, HASH, pods, NOW)
    removed = [a.pod for a in result.actions if isinstance(a, DeletePod | MarkDraining)]
    assert sorted(removed) == ["a", "b", "s"]
    assert deleted(result) == {"s": "Rollout"}


def test_rollout_completes_step_by_step() -> None:
    """Walk a rollout to its end: never above desired + maxSurge, no pod deleted with calls."""
    spec = make_spec(idle_sessions=2, max_surge=1, stabilization=0)
    pods = {n: idle(n, template_hash=OLD, age_s=9000) for n in "bc"}
    pods["a"] = busy("a", template_hash=OLD, created=ago(9000))  # one old pod holds a call
    now = NOW
    history: list[Recommendation] = []
    seq = 0
    for _ in range(40):
        result = plan(spec, HASH, pods.values(), now, history)
        history = result.history
        if not result.actions and all(p.template_hash == HASH for p in pods.values()):
            break
        for action in result.actions:
            if isinstance(action, DeletePod):
                assert (pods[action.pod].sessions or 0) == 0, action
                del pods[action.pod]
            elif isinstance(action, MarkDraining):
                was = pods[action.pod]
                pods[action.pod] = draining(
                    action.pod,
                    was.sessions or 0,
                    template_hash=was.template_hash,
                    drain_requested_at=now,
                )
        for name, pod in list(pods.items()):  # pods seen starting are ready now
            if classify(pod, spec, now) is PodState.STARTING:
                pods[name] = idle(name, age_s=1)
        for _create in creates(result):
            seq += 1
            pods[f"n{seq}"] = starting(f"n{seq}")
        serving = [
            p
            for p in pods.values()
            if classify(p, spec, now) in (PodState.STARTING, PodState.IDLE, PodState.BUSY)
        ]
        assert len(serving) <= result.status.desired_replicas + spec.max_surge
        if pods.get("a") and pods["a"].drain_requested:  # the drained pod's call ends
            pods["a"] = draining("a", 0, template_hash=OLD, drain_requested_at=now)
        now += dt.timedelta(seconds=5)
    else:
        pytest.fail("the rollout did not finish")
    assert [p.template_hash for p in pods.values()] == [HASH, HASH]  # 0 calls + 2 warm
    final = plan(spec, HASH, pods.values(), now, history)
    assert reasons(final)["Progressing"] == ("False", "UpToDate")
    assert f"all pods run template {HASH}" in cond(final, "Progressing").message


# -- pool deletion ---------------------------------------------------------------------------


def test_pool_deletion_drains_everything_and_creates_nothing() -> None:
    """A deleted pool drains its serving pods; only never-served pods are deleted at once."""
    spec = make_spec(min_replicas=3, idle_sessions=4, sessions_per_pod=2)
    pods = [idle("a"), busy("b", 2), starting("s"), draining("d", 0), draining("e", 1)]
    result = plan(spec, HASH, pods, NOW, pool_deleting=True)
    assert creates(result) == []
    assert drained(result) == {"a": "PoolDeleted", "b": "PoolDeleted"}
    assert deleted(result) == {"d": "DrainComplete", "s": "PoolDeleted"}
    assert result.status.desired_replicas == 0
    ready = cond(result, "Ready")
    assert (ready.status, ready.reason) == ("False", "PoolDeleting")
    assert ready.message == "waiting for 3 call(s) to end"


def test_pool_deletion_deletes_pods_only_when_their_calls_end() -> None:
    """Drained busy pods are kept until their calls end (or the drain deadline)."""
    spec = make_spec(drain_timeout=600)
    waiting = plan(spec, HASH, [draining("b", 2, since_s=30)], NOW, pool_deleting=True)
    assert waiting.actions == [] and waiting.requeue_after == pytest.approx(570)
    done = plan(spec, HASH, [draining("b", 0, since_s=31)], NOW, pool_deleting=True)
    assert deleted(done) == {"b": "DrainComplete"}


def test_pool_deletion_ignores_history_and_max_replicas() -> None:
    """desired is 0 no matter the window; wanting too many pods is no longer a problem."""
    spec = make_spec(max_replicas=1, idle_sessions=5)
    history = [Recommendation(ago(10), 1)]
    result = plan(spec, HASH, [busy("a")], NOW, history, pool_deleting=True)
    assert result.status.desired_replicas == 0
    assert reasons(result)["Degraded"] == ("False", "AsExpected")


def test_pool_deletion_of_an_empty_pool_is_quiet() -> None:
    """Nothing left: no actions, nothing to wait for."""
    result = plan(make_spec(idle_sessions=2), HASH, [], NOW, pool_deleting=True)
    assert result.actions == [] and result.requeue_after is None


# -- eviction hints --------------------------------------------------------------------------


def test_eviction_hints_busy_pods_are_protected() -> None:
    """Busy pods: safe-to-evict false + high deletion cost; idle ones cheap."""
    spec = make_spec(idle_sessions=1)
    pods = [
        busy("b", safe_to_evict=None, deletion_cost=None),
        idle("i", safe_to_evict=None, deletion_cost=None),
    ]
    result = plan(spec, HASH, pods, NOW)
    assert hints(result) == {
        "b": ("false", BUSY_DELETION_COST),
        "i": ("true", IDLE_DELETION_COST),
    }


def test_eviction_hints_follow_the_sessions_not_stale_annotations() -> None:
    """A pod whose calls ended but still says 'not safe' is made cheap again, and back."""
    spec = make_spec(idle_sessions=1)
    pods = [
        idle("i", safe_to_evict="false", deletion_cost=BUSY_DELETION_COST),
        busy("b", safe_to_evict="true", deletion_cost=IDLE_DELETION_COST),
    ]
    result = plan(spec, HASH, pods, NOW)
    assert hints(result) == {
        "i": ("true", IDLE_DELETION_COST),
        "b": ("false", BUSY_DELETION_COST),
    }


def test_eviction_hints_for_draining_pods_with_calls() -> None:
    """A draining pod with calls is still precious to the cluster autoscaler."""
    spec = make_spec()
    pod = draining("d", 1, safe_to_evict="true", deletion_cost=None)
    assert hints(plan(spec, HASH, [pod], NOW)) == {"d": ("false", BUSY_DELETION_COST)}


def test_eviction_hints_not_written_when_already_right_or_pod_leaves() -> None:
    """No needless patches: correct hints, leaving pods and non-serving pods are skipped."""
    spec = make_spec(stabilization=0)
    pods = [
        idle("leaving", safe_to_evict=None, deletion_cost=None),  # scale-down drains it
        draining("done", 0, safe_to_evict=None),  # deleted in this plan
        starting("s", age_s=1),
        unknown("u", 1, not_ready_s=1, safe_to_evict=None),
        failed("f", safe_to_evict=None),
        terminating("t", safe_to_evict=None),
    ]
    result = plan(spec, HASH, pods, NOW)
    assert hints(result) == {}
    assert plan(spec, HASH, [busy("b")], NOW).actions == []


# -- status ----------------------------------------------------------------------------------


def test_status_counts() -> None:
    """Every count from one mixed pool, and the camelCase status dict."""
    spec = make_spec(sessions_per_pod=2, idle_sessions=1)
    pods = [
        idle("a"),
        busy("b", 2),
        busy("c", 1, template_hash=OLD),
        starting("s"),
        draining("d", 1),
        unknown("u", 1, not_ready_s=5),
        failed("f"),
        terminating("t"),
    ]
    st = plan(spec, HASH, pods, NOW).status
    assert st.to_status_dict() == {
        "replicas": 7,
        "readyPods": 3,
        "idlePods": 1,
        "busyPods": 2,
        "drainingPods": 1,
        "startingPods": 1,
        "unknownPods": 1,
        "unreportedPods": 0,
        "terminatingPods": 1,
        "updatedPods": 2,
        "activeSessions": 5,
        "sessionCapacity": 6,
        "idleCapacity": 3,
        "desiredReplicas": 2,  # ceil((3 serving sessions + 1 warm) / 2)
        "warmTarget": 1,
        "templateHash": HASH,
    }


def test_status_idle_capacity_never_negative() -> None:
    """A pod reporting more calls than its capacity contributes 0 idle, not less."""
    spec = make_spec(sessions_per_pod=2)
    st = plan(spec, HASH, [busy("a", 5), idle("b")], NOW).status
    assert (st.session_capacity, st.idle_capacity) == (4, 2)


# -- conditions ------------------------------------------------------------------------------


def test_conditions_come_in_a_fixed_order() -> None:
    """Ready, Scaling, Progressing, Draining, Degraded: one each."""
    result = plan(make_spec(idle_sessions=1), HASH, [idle("a")], NOW)
    assert [c.type for c in result.conditions] == [
        "Ready",
        "Scaling",
        "Progressing",
        "Draining",
        "Degraded",
    ]


def test_conditions_steady_warm_pool() -> None:
    """All desired pods ready with idle capacity: Ready, Stable, UpToDate, nothing wrong."""
    result = plan(make_spec(idle_sessions=2), HASH, [idle("a"), idle("b")], NOW)
    assert reasons(result) == {
        "Ready": ("True", "WarmPoolReady"),
        "Scaling": ("False", "Stable"),
        "Progressing": ("False", "UpToDate"),
        "Draining": ("False", "NoDrains"),
        "Degraded": ("False", "AsExpected"),
    }
    assert cond(result, "Ready").message == "2/2 pods ready, 2 idle session(s)"
    assert cond(result, "Scaling").message == "2 pods as desired"


def test_conditions_pods_starting() -> None:
    """Some ready, some still starting: Ready=False PodsStarting."""
    result = plan(make_spec(idle_sessions=1), HASH, [busy("a"), starting("s")], NOW)
    ready = cond(result, "Ready")
    assert (ready.status, ready.reason) == ("False", "PodsStarting")
    assert ready.message == "1/2 pods ready (1 starting)"


def test_conditions_ready_without_warm_pool_when_all_busy() -> None:
    """No warm pool asked for: full pods are as good as it gets."""
    result = plan(make_spec(idle_sessions=0), HASH, [busy("a")], NOW)
    assert reasons(result)["Ready"] == ("True", "WarmPoolReady")


def test_conditions_ready_at_max_replicas_even_when_full() -> None:
    """At maxReplicas nothing more can be done: Ready, but Degraded says why it is full."""
    spec = make_spec(max_replicas=1, idle_sessions=1)
    result = plan(spec, HASH, [busy("a")], NOW)
    assert reasons(result)["Ready"] == ("True", "WarmPoolReady")
    assert reasons(result)["Degraded"] == ("True", "AtMaxReplicas")


def test_conditions_scale_down_stabilizing_message() -> None:
    """While the window holds, Scaling says what would happen after it."""
    spec = make_spec(idle_sessions=0, stabilization=300)
    result = plan(spec, HASH, [idle("a"), idle("b")], NOW, [Recommendation(ago(10), 2)])
    scaling = cond(result, "Scaling")
    assert (scaling.status, scaling.reason) == ("False", "ScaleDownStabilizing")
    assert scaling.message == "holding 2 pods; 0 would do once the 300s window passes"


def test_conditions_degraded_lists_every_problem_first_reason_wins() -> None:
    """Several problems: the first one's reason, all their messages."""
    spec = make_spec(max_replicas=2, idle_sessions=5, drain_timeout=60, grace=10)
    pods = [
        draining("d", 1, since_s=61),
        failed("f"),
        starting("s", age_s=11),
        unknown("u", 0, not_ready_s=1),
    ]
    degraded = cond(plan(spec, HASH, pods, NOW), "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "DrainTimeout")
    for part in (
        "pod d hit the drain timeout",
        "1 pod(s) failed",
        "1 pod(s) not ready after 10s",
        "1 pod(s) stopped being ready",
        "5 pods wanted but maxReplicas is 2",
    ):
        assert part in degraded.message


def test_conditions_draining_counts() -> None:
    """Draining says how many pods wait for calls."""
    pods = [draining("d1", 1), draining("d2", 2)]
    draining_cond = cond(plan(make_spec(), HASH, pods, NOW), "Draining")
    assert (draining_cond.status, draining_cond.reason) == ("True", "WaitingForCalls")
    assert draining_cond.message.startswith("2 pod(s) draining")


def test_conditions_rolling_update_counts_old_draining_pods() -> None:
    """A rollout is not done while an old pod is still draining its calls."""
    spec = make_spec(idle_sessions=1)
    result = plan(spec, HASH, [idle("n"), draining("o", 1, template_hash=OLD)], NOW)
    progressing = cond(result, "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "RollingUpdate")
    assert progressing.message == "1 pod(s) of an older template left; 1 updated and ready"


# -- warm windows ----------------------------------------------------------------------------

OFFICE_HOURS = [{"start": "09:00", "end": "17:00", "days": WEEKDAYS, "idleSessions": 4}]


@pytest.mark.parametrize(
    ("when", "warm"),
    [
        (dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC), 4),  # Mon 13:00 Berlin
        (dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC), 4),  # Mon 09:00 Berlin: start inclusive
        (dt.datetime(2026, 3, 2, 7, 59, tzinfo=dt.UTC), 1),  # Mon 08:59 Berlin
        (dt.datetime(2026, 3, 2, 16, 0, tzinfo=dt.UTC), 1),  # Mon 17:00 Berlin: end exclusive
        (dt.datetime(2026, 3, 7, 12, 0, tzinfo=dt.UTC), 1),  # Saturday
        (dt.datetime(2026, 7, 6, 7, 30, tzinfo=dt.UTC), 4),  # Mon 09:30 CEST (summer time)
    ],
)
def test_warm_window_by_local_time_of_day(when: dt.datetime, warm: int) -> None:
    """Office hours in the pool's time zone change the warm target."""
    spec = make_spec(idle_sessions=1, schedule=OFFICE_HOURS, time_zone="Europe/Berlin")
    result = plan(spec, HASH, [], when)
    assert result.status.warm_target == warm
    assert len(creates(result)) == warm


NIGHT_SHIFT = [{"start": "22:00", "end": "06:00", "days": ["Fri"], "idlePods": 2}]


@pytest.mark.parametrize(
    ("when", "warm"),
    [
        (dt.datetime(2026, 3, 6, 23, 0, tzinfo=dt.UTC), 2),  # Fri 23:00
        (dt.datetime(2026, 3, 6, 22, 0, tzinfo=dt.UTC), 2),  # Fri 22:00
        (dt.datetime(2026, 3, 7, 3, 0, tzinfo=dt.UTC), 2),  # Sat 03:00: Friday's window
        (dt.datetime(2026, 3, 7, 5, 59, tzinfo=dt.UTC), 2),  # Sat 05:59
        (dt.datetime(2026, 3, 7, 6, 0, tzinfo=dt.UTC), 0),  # Sat 06:00: end exclusive
        (dt.datetime(2026, 3, 7, 23, 0, tzinfo=dt.UTC), 0),  # Sat 23:00: not a Friday
        (dt.datetime(2026, 3, 6, 3, 0, tzinfo=dt.UTC), 0),  # Fri 03:00: Thursday's, not set
        (dt.datetime(2026, 3, 6, 12, 0, tzinfo=dt.UTC), 0),  # Fri noon
    ],
)
def test_warm_window_past_midnight(when: dt.datetime, warm: int) -> None:
    """A window that wraps midnight belongs to the day it starts on."""
    spec = make_spec(idle_sessions=0, schedule=NIGHT_SHIFT)
    assert plan(spec, HASH, [], when).status.warm_target == warm


def test_warm_window_first_match_wins() -> None:
    """Overlapping windows: the first listed one decides."""
    schedule = [
        {"start": "12:00", "end": "13:00", "idleSessions": 7},
        {"start": "09:00", "end": "17:00", "idleSessions": 3},
    ]
    spec = make_spec(idle_sessions=1, schedule=schedule)
    assert spec.warm_sessions(NOW) == 7
    assert spec.warm_sessions(later(3600)) == 3
    assert spec.warm_sessions(later(6 * 3600)) == 1


def test_warm_window_closing_scales_down_after_the_window() -> None:
    """The end of office hours lowers desired, but only after stabilization."""
    schedule = [{"start": "09:00", "end": "17:00", "idleSessions": 3}]
    spec = make_spec(idle_sessions=1, schedule=schedule, stabilization=300)
    pods = [idle("a", age_s=9000), idle("b", age_s=8000), idle("c", age_s=7000)]
    in_window = plan(spec, HASH, pods, dt.datetime(2026, 3, 2, 16, 59, tzinfo=dt.UTC))
    assert in_window.status.desired_replicas == 3
    closed = dt.datetime(2026, 3, 2, 17, 0, tzinfo=dt.UTC)
    held = plan(spec, HASH, pods, closed, in_window.history)
    assert (held.status.warm_target, held.status.desired_replicas) == (1, 3)
    assert drained(held) == {}
    after = plan(spec, HASH, pods, closed + dt.timedelta(seconds=300), held.history)
    assert after.status.desired_replicas == 1
    assert drained(after) == {"c": "ScaleDown", "b": "ScaleDown"}


# -- requeue_after ---------------------------------------------------------------------------


def test_requeue_none_when_nothing_is_pending() -> None:
    """Steady pool, no windows: only events wake the planner."""
    result = plan(make_spec(idle_sessions=1), HASH, [idle("a")], NOW)
    assert result.actions == [] and result.requeue_after is None


def test_requeue_at_the_next_minute_with_warm_windows() -> None:
    """A schedule may open a window any minute: re-plan at the next minute boundary."""
    spec = make_spec(idle_sessions=1, schedule=OFFICE_HOURS)
    at = NOW + dt.timedelta(seconds=15)
    result = plan(spec, HASH, [idle("a"), idle("b"), idle("c"), idle("d")], at)
    assert result.actions == []
    assert result.requeue_after == pytest.approx(45)


def test_requeue_is_the_earliest_deadline() -> None:
    """Several clocks running: wake for the first one."""
    spec = make_spec(drain_timeout=600, grace=60, stabilization=300)
    pods = [
        draining("d", 1, since_s=400),  # 200 s left
        unknown("u", 0, not_ready_s=30),  # 30 s left
        idle("a"),
    ]
    result = plan(spec, HASH, pods, NOW, [Recommendation(ago(250), 5)])
    assert result.requeue_after == pytest.approx(30)


def test_requeue_has_a_floor() -> None:
    """A deadline a hair away does not make the operator spin."""
    spec = make_spec(drain_timeout=600)
    pod = draining("d", 1, drain_requested_at=NOW - dt.timedelta(seconds=599.999))
    assert plan(spec, HASH, [pod], NOW).requeue_after == pytest.approx(0.05)


# -- pods whose worker never reported -----------------------------------------------------------


def unreported(name: str, **kw: Any) -> PodView:
    return make_pod(name, sessions=None, reported_state=None, **kw)


def test_a_ready_pod_that_never_reported_is_not_warm_capacity() -> None:
    """One warm session wanted: a silent Ready pod does not count, so a second pod is made."""
    spec = make_spec(idle_sessions=1)
    result = plan(
        spec,
        HASH,
        [unreported("a", safe_to_evict="false", deletion_cost="10000", busy_label="true")],
        NOW,
    )
    assert [a.reason for a in result.actions if isinstance(a, CreatePod)] == ["ScaleUp"]
    assert (result.status.unreported_pods, result.status.idle_pods) == (1, 0)
    assert result.status.idle_capacity == 0 and result.status.desired_replicas == 2


def test_a_pod_that_never_reported_is_never_drained_as_idle() -> None:
    spec = make_spec(min_replicas=0, idle_sessions=0, stabilization=0)
    silent = unreported("a", safe_to_evict="false", deletion_cost="10000", busy_label="true")
    result = plan(spec, HASH, [silent, idle("b")], NOW)
    drained = [a.pod for a in result.actions if isinstance(a, MarkDraining | DeletePod)]
    assert drained == ["b"]


def test_silent_pods_degrade_the_pool_by_name_after_the_grace_period() -> None:
    spec = make_spec(grace=60, idle_sessions=0)
    young = unreported("young", ready_since=ago(10))
    old = unreported("old", ready_since=ago(120))
    result = plan(spec, HASH, [young, old], NOW)
    degraded = next(c for c in result.conditions if c.type == "Degraded")
    assert degraded.status == "True" and degraded.reason == "PodsNotReporting"
    assert "(old)" in degraded.message and "young" not in degraded.message
    assert result.requeue_after is not None and result.requeue_after <= 50
    # It may hold calls: eviction hints protect it like a busy pod.
    hints = {a.pod: a for a in result.actions if isinstance(a, SetEvictionHints)}
    assert hints["young"].safe_to_evict == "false" and hints["young"].busy_label == "true"
