"""The planner's safety rules, checked on random pools, pod sets, histories and clocks.

Each property is one promise from the planner's module docstring (and docs/design.md):
calls are never cut short before their deadline, serving pods are drained before they are
deleted, the pool never outgrows maxReplicas (+ maxSurge while rolling), and a closed loop of
planner + simulated cluster settles on the desired size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from voicepool_contract import ANN_DELETION_COST, ANN_SAFE_TO_EVICT, LABEL_BUSY
from voicepool_operator.constants import BUSY_DELETION_COST, IDLE_DELETION_COST
from voicepool_operator.planner import (
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
from voicepool_operator.podview import PodView, pod_view_from_dict
from voicepool_operator.spec import DAYS, PoolSpec, parse_spec

from .conftest import HASH, spec_dict
from .conftest import OLD_HASH as OLD

BASE = dt.datetime(2026, 3, 2, 0, 0, 0, tzinfo=dt.UTC)  # a Monday
SERVING = (PodState.STARTING, PodState.IDLE, PodState.BUSY, PodState.UNREPORTED)
#: Ready pods that hold a serving slot (a drain is how they leave).
READY_SERVING = (PodState.IDLE, PodState.BUSY, PodState.UNREPORTED)
FAST = settings(max_examples=200, deadline=None)

# -- strategies ------------------------------------------------------------------------------


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    start, end = draw(st.lists(st.integers(0, 24 * 60 - 1), min_size=2, max_size=2, unique=True))
    days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
    return {
        "start": _hhmm(start),
        "end": _hhmm(end),
        "days": days,
        "idleSessions": draw(st.integers(0, 6)),
    }


@st.composite
def pool_specs(draw: st.DrawFn, *, with_schedule: bool = True) -> PoolSpec:
    lo = draw(st.integers(0, 4))
    hi = draw(st.integers(max(lo, 1), lo + 6))
    spp = draw(st.integers(1, 4))
    warm: dict[str, Any] = {
        "timeZone": draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
    }
    if draw(st.booleans()):
        warm["idleSessions"] = draw(st.integers(0, 8))
    else:
        warm["idlePods"] = draw(st.integers(0, 3))
    if with_schedule and draw(st.booleans()):
        warm["schedule"] = draw(st.lists(windows(), min_size=1, max_size=2))
    return parse_spec(
        spec_dict(
            sessionsPerPod=spp,
            minReplicas=lo,
            maxReplicas=hi,
            warmPool=warm,
            scaleDown={"stabilizationWindowSeconds": draw(st.sampled_from([0, 30, 300]))},
            drain={"timeoutSeconds": draw(st.integers(1, 900))},
            updateStrategy={"maxSurge": draw(st.integers(1, 3))},
            unreadyGraceSeconds=draw(st.integers(0, 120)),
        )
    )


def before(now: dt.datetime, most: int = 7200) -> st.SearchStrategy[dt.datetime]:
    """A moment up to `most` seconds before `now`."""
    return st.integers(0, most).map(lambda s: now - dt.timedelta(seconds=s))


@st.composite
def pod_views(draw: st.DrawFn, name: str, now: dt.datetime) -> PodView:
    """Any pod the API could show us (mostly healthy), including garbled and contradictory ones."""
    created = draw(before(now))
    return PodView(
        name=name,
        template_hash=draw(st.sampled_from([HASH, HASH, OLD])),
        created=created,
        phase=draw(st.sampled_from(["Running"] * 6 + ["Pending", "Failed", "Succeeded"])),
        ready=draw(st.integers(0, 2)) > 0,
        ready_since=draw(st.none() | before(now)),
        terminating=draw(st.integers(0, 5)) == 0,
        sessions=draw(st.none() | st.integers(0, 5)),
        capacity=draw(st.none() | st.integers(0, 4)),
        reported_state=draw(
            st.sampled_from([None, "starting", "idle", "idle", "busy", "busy", "draining", "x"])
        ),
        drain_requested=draw(st.integers(0, 3)) == 0,
        drain_requested_at=draw(st.none() | before(now, 1200)),
        safe_to_evict=draw(st.sampled_from([None, "true", "false"])),
        deletion_cost=draw(st.sampled_from([None, IDLE_DELETION_COST, BUSY_DELETION_COST, "x"])),
    )


@st.composite
def scenarios(
    draw: st.DrawFn, *, with_schedule: bool = True
) -> tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]]:
    """A spec, a pod set, a clock anywhere in a fortnight, and a (possibly stale) history."""
    spec = draw(pool_specs(with_schedule=with_schedule))
    now = BASE + dt.timedelta(seconds=draw(st.integers(0, 14 * 86400)))
    n = draw(st.integers(0, 10))
    pods = [draw(pod_views(f"p{i}", now)) for i in range(n)]
    history = sorted(
        draw(
            st.lists(
                st.builds(Recommendation, before(now, 900), st.integers(0, 15)),
                max_size=4,
            )
        ),
        key=lambda r: r.time,
    )
    return spec, pods, now, history


# -- the rules, as checks ---------------------------------------------------------------------


def may_hold_calls(pod: PodView) -> bool:
    """It says it has calls, or says busy/draining without a readable count, or it is Ready
    and never reported (a worker that may not patch its pod may be serving calls)."""
    if pod.sessions is not None:
        return pod.sessions > 0
    if pod.reported_state is None:
        return pod.ready
    return pod.reported_state not in ("starting", "idle")


def check_safety(
    spec: PoolSpec,
    pods: list[PodView],
    now: dt.datetime,
    result: Plan,
    *,
    pool_deleting: bool = False,
) -> None:
    """Every rule one plan must keep, whatever it was given."""
    by_name = {p.name: p for p in pods}
    state = {p.name: classify(p, spec, now) for p in pods}
    timeout = dt.timedelta(seconds=spec.drain_timeout_seconds)
    leaving: list[str] = []

    for action in result.actions:
        if isinstance(action, CreatePod):
            assert action.template_hash == HASH
            assert not pool_deleting, "a deleted pool creates nothing"
            continue
        assert action.pod in by_name, f"action on a pod that does not exist: {action}"
        pod, st_ = by_name[action.pod], state[action.pod]
        if isinstance(action, DeletePod):
            leaving.append(action.pod)
            # Only pods that do not (or no longer) serve are deleted.
            assert st_ in (
                PodState.DRAINING,
                PodState.STARTING,
                PodState.FAILED,
                PodState.UNKNOWN,
            ), f"deleted a {st_} pod: {action}"
            if pod.ready and st_ is not PodState.FAILED:
                # A ready pod whose worker still says "starting" never took a call.
                assert st_ is PodState.DRAINING or (
                    st_ is PodState.STARTING and pod.reported_state == "starting"
                ), f"ready pod deleted without a drain: {action}"
            if may_hold_calls(pod) and st_ is not PodState.FAILED:
                if st_ is PodState.DRAINING:
                    assert pod.drain_requested_at is not None
                    assert now >= pod.drain_requested_at + timeout, f"cut calls short: {action}"
                    assert action.reason == "DrainTimeout"
                else:
                    assert st_ is PodState.UNKNOWN, f"deleted a pod with calls: {action}"
                    since = pod.ready_since or pod.created
                    assert now - since >= timeout, f"cut calls short: {action}"
        elif isinstance(action, MarkDraining):
            leaving.append(action.pod)
            if st_ is PodState.DRAINING:
                # Only to stamp the start of a drain the operator did not request itself.
                assert action.reason == "DrainObserved", f"drained twice: {action}"
                assert pod.drain_requested_at is None, f"drain start overwritten: {action}"
                continue
            assert st_ in READY_SERVING, f"drained a {st_} pod: {action}"
            if st_ in (PodState.BUSY, PodState.UNREPORTED):
                assert action.reason in ("Rollout", "PoolDeleted"), f"busy scale-down: {action}"
                if action.reason == "Rollout":
                    assert pod.template_hash != HASH
        else:
            assert isinstance(action, SetEvictionHints)
            busy = may_hold_calls(pod)
            assert (action.safe_to_evict, action.deletion_cost) == (
                ("false", BUSY_DELETION_COST) if busy else ("true", IDLE_DELETION_COST)
            )
    assert len(leaving) == len(set(leaving)), f"a pod got two leaving actions: {leaving}"
    hinted = [a.pod for a in result.actions if isinstance(a, SetEvictionHints)]
    assert not set(hinted) & set(leaving)

    # The serving pool never outgrows maxReplicas (+ maxSurge while old pods still serve).
    if pool_deleting:
        assert result.status.desired_replicas == 0
    else:
        assert spec.min_replicas <= result.status.desired_replicas <= spec.max_replicas
    serving = [p for p in pods if state[p.name] in SERVING]
    rolling = any(state[p.name] in READY_SERVING and p.template_hash != HASH for p in pods)
    limit = spec.max_replicas + (spec.max_surge if rolling else 0)
    n_create = sum(1 for a in result.actions if isinstance(a, CreatePod))
    if n_create:
        after = len([p for p in serving if p.name not in leaving]) + n_create
        assert after <= limit, f"{after} serving pods, limit {limit}"


@given(scenarios())
@FAST
def test_plan_keeps_every_safety_rule(
    case: tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]],
) -> None:
    """Random pool, pods, clock and history: no unsafe delete, drain or create."""
    spec, pods, now, history = case
    check_safety(spec, pods, now, plan(spec, HASH, pods, now, history))


@given(scenarios())
@FAST
def test_deleted_pool_drains_and_never_creates(
    case: tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]],
) -> None:
    """A deleted pool drains every serving pod and deletes only what holds no calls."""
    spec, pods, now, history = case
    result = plan(spec, HASH, pods, now, history, pool_deleting=True)
    check_safety(spec, pods, now, result, pool_deleting=True)
    drained = {a.pod for a in result.actions if isinstance(a, MarkDraining)}
    for p in pods:
        if classify(p, spec, now) in READY_SERVING:
            assert p.name in drained
    assert all(
        a.reason in ("PoolDeleted", "DrainObserved")
        for a in result.actions
        if isinstance(a, MarkDraining)
    )


@given(scenarios())
@FAST
def test_plan_is_deterministic_and_order_independent(
    case: tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]],
) -> None:
    """The watch cache has no order: the same pods in reverse give the same plan.

    (History keeps its order: it is stored as a list in status.)
    """
    spec, pods, now, history = case
    a = plan(spec, HASH, pods, now, history)
    b = plan(spec, HASH, list(reversed(pods)), now, history)
    assert (a.actions, a.status, a.conditions, a.history, a.requeue_after) == (
        b.actions,
        b.status,
        b.conditions,
        b.history,
        b.requeue_after,
    )


# -- stabilization -----------------------------------------------------------------------------


@given(
    history=st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 20)), max_size=6, unique_by=lambda t: t[0]
    ),
    raw=st.integers(0, 20),
    window=st.sampled_from([0, 1, 60, 300, 1200]),
    elapsed=st.integers(0, 3000),
)
@FAST
def test_stabilize_rules(
    history: list[tuple[int, int]], raw: int, window: int, elapsed: int
) -> None:
    """Up at once, down only after the window, and the history fed back converges to raw."""
    now = BASE + dt.timedelta(seconds=2000)
    recs = [Recommendation(now - dt.timedelta(seconds=age), d) for age, d in history]
    effective, kept, wake = stabilize(recs, raw, now, window)
    assert effective >= raw
    assert effective <= max([raw] + [r.desired for r in recs])
    if all(r.desired <= raw for r in recs):
        assert effective == raw  # scale-up (or staying put) is immediate
    assert kept[-1].desired == raw and len(kept) <= len(recs) + 1
    assert (wake is not None) == (effective > raw)
    if wake is not None:
        assert 0 < wake <= window
    # Anything that held within the window still counts.
    cutoff = now - dt.timedelta(seconds=window)
    ordered = sorted(recs, key=lambda r: r.time)
    for i, rec in enumerate(ordered):
        until = ordered[i + 1].time if i + 1 < len(ordered) else now
        if until > cutoff:
            assert effective >= rec.desired

    # With the raw value held and the history fed back, the effective value never rises and
    # reaches raw once the window has passed.
    later = now + dt.timedelta(seconds=elapsed)
    again, _, _ = stabilize(kept, raw, later, window)
    assert raw <= again <= effective
    if elapsed >= window:
        assert again == raw


# -- closed loop -------------------------------------------------------------------------------


class Cluster:
    """A toy cluster: creates start, then become ready; drains and deletes land at once.

    Sessions are held fixed, so busy pods stay busy: a drained busy pod leaves only at its
    drain deadline. Pods the planner saw starting are ready at the next step; deleted pods are
    terminating for one step, then gone.
    """

    def __init__(self, pods: list[PodView]) -> None:
        self.pods = {p.name: p for p in pods}
        self.seq = 0

    def apply(self, spec: PoolSpec, result: Plan, now: dt.datetime) -> None:
        seen = {n: classify(p, spec, now) for n, p in self.pods.items()}
        for name, state in seen.items():
            if state is PodState.TERMINATING:
                del self.pods[name]
        for action in result.actions:
            if isinstance(action, CreatePod):
                continue
            pod = self.pods[action.pod]
            if isinstance(action, DeletePod):
                self.pods[action.pod] = dataclasses.replace(pod, terminating=True)
            elif isinstance(action, MarkDraining):
                self.pods[action.pod] = dataclasses.replace(
                    pod, drain_requested=True, drain_requested_at=now
                )
            else:
                self.pods[action.pod] = dataclasses.replace(
                    pod,
                    safe_to_evict=action.safe_to_evict,
                    deletion_cost=action.deletion_cost,
                    busy_label=action.busy_label,
                )
        for name, state in seen.items():
            started = self.pods.get(name)
            if state is PodState.STARTING and started is not None and not started.terminating:
                self.pods[name] = dataclasses.replace(
                    started,
                    phase="Running",
                    ready=True,
                    ready_since=now,
                    sessions=0,
                    reported_state="idle",
                )
        for action in result.actions:
            if isinstance(action, CreatePod):
                self.seq += 1
                name = f"new-{self.seq}"
                self.pods[name] = PodView(
                    name=name,
                    template_hash=action.template_hash,
                    created=now,
                    phase="Pending",
                    ready=False,
                    ready_since=None,
                    terminating=False,
                    sessions=None,
                    capacity=None,
                    reported_state=None,
                    drain_requested=False,
                    drain_requested_at=None,
                    safe_to_evict=None,
                    deletion_cost=None,
                )


def _operator_drained(pod: PodView, now: dt.datetime) -> PodView:
    """Drains recorded by the operator always carry their request time."""
    if (pod.drain_requested or pod.reported_state == "draining") and not pod.drain_requested_at:
        return dataclasses.replace(pod, drain_requested_at=now)
    return pod


def run_to_fixed_point(
    spec: PoolSpec,
    pods: list[PodView],
    now: dt.datetime,
    history: list[Recommendation],
    *,
    pool_deleting: bool = False,
    max_steps: int = 100,
) -> tuple[Cluster, Plan, dt.datetime, int]:
    cluster = Cluster([_operator_drained(p, now) for p in pods])
    for step in range(max_steps):
        current = list(cluster.pods.values())
        result = plan(spec, HASH, current, now, history, pool_deleting=pool_deleting)
        check_safety(spec, current, now, result, pool_deleting=pool_deleting)
        history = result.history
        settled = not any(
            classify(p, spec, now) in (PodState.STARTING, PodState.TERMINATING) for p in current
        )
        if not result.actions and result.requeue_after is None and settled:
            return cluster, result, now, step
        cluster.apply(spec, result, now)
        wait = 1.0 if result.actions or not settled else (result.requeue_after or 1.0)
        now += dt.timedelta(seconds=wait)
    raise AssertionError(f"no fixed point after {max_steps} steps: {cluster.pods}")


@given(scenarios(with_schedule=False))
@FAST
def test_closed_loop_converges_to_desired(
    case: tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]],
) -> None:
    """Planner + toy cluster settle; then exactly the desired pods serve (busy ones excepted).

    Busy pods are never scaled down, and sessions are held fixed here, so a pool can settle
    above `desired` only by pods that all hold calls.
    """
    spec, pods, now, history = case
    cluster, final, now, _ = run_to_fixed_point(spec, pods, now, history)
    states = {n: classify(p, spec, now) for n, p in cluster.pods.items()}
    assert set(states.values()) <= {PodState.IDLE, PodState.BUSY, PodState.UNREPORTED}
    serving = list(cluster.pods.values())
    # A replacement that never reported is no replacement: old pods keep serving until one
    # does (the pool says PodsNotReporting meanwhile).
    stalled = any(
        states[p.name] is PodState.UNREPORTED and p.template_hash == HASH for p in serving
    )
    assert stalled or all(p.template_hash == HASH for p in serving), "old pods left behind"
    busy = [p for p in serving if states[p.name] in (PodState.BUSY, PodState.UNREPORTED)]
    # A count above the pod's capacity is unreadable and worth exactly that capacity; a pod
    # that never reported is planned as full.
    calls = sum(
        spec.sessions_per_pod
        if states[p.name] is PodState.UNREPORTED
        else min(p.sessions or 0, spec.sessions_per_pod)
        for p in busy
    )
    want, _ = spec.desired_for(calls, now)
    assert final.status.desired_replicas == want  # the window has passed
    current = [p for p in serving if p.template_hash == HASH]
    assert len(current) == max(want, len([p for p in busy if p.template_hash == HASH])) or (
        stalled and len(serving) <= spec.max_replicas + spec.max_surge
    )
    if not stalled:
        assert len(serving) == max(want, len(busy))
    # A fixed point is quiet: planning again changes nothing.
    again = plan(spec, HASH, serving, now, final.history)
    assert again.actions == [] and again.requeue_after is None


@given(scenarios(with_schedule=False))
@FAST
def test_closed_loop_deleted_pool_empties(
    case: tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]],
) -> None:
    """A deleted pool ends with no pods at all, calls finishing (or timing out) first."""
    spec, pods, now, history = case
    cluster, final, _, _ = run_to_fixed_point(spec, pods, now, history, pool_deleting=True)
    assert cluster.pods == {}
    assert final.status.replicas == 0


# -- eviction hints are sent once --------------------------------------------------------------


def _as_written(pod: PodView, hint: SetEvictionHints) -> PodView:
    """The pod after the operator's hint patch, read back the way the reconciler reads pods:
    the same annotation and label names `reconcile.apply` writes, through `pod_view_from_dict`."""
    raw = {
        "metadata": {
            "name": pod.name,
            "creationTimestamp": pod.created.isoformat(),
            "annotations": {
                ANN_SAFE_TO_EVICT: hint.safe_to_evict,
                ANN_DELETION_COST: hint.deletion_cost,
            },
            "labels": {LABEL_BUSY: hint.busy_label},
        }
    }
    back = pod_view_from_dict(raw)
    return dataclasses.replace(
        pod,
        safe_to_evict=back.safe_to_evict,
        deletion_cost=back.deletion_cost,
        busy_label=back.busy_label,
    )


@given(scenarios())
@FAST
def test_eviction_hints_once_written_are_not_sent_again(
    case: tuple[PoolSpec, list[PodView], dt.datetime, list[Recommendation]],
) -> None:
    """A hint patch that landed is not repeated on the next reconcile (nothing changed).

    The simulator once counted 30,859 SetEvictionHints on a run that needs a few hundred:
    the busy label it wrote was not part of what the planner compared, so every plan re-sent
    every busy pod's hints. Each would be an API write per pod per reconcile.
    """
    spec, pods, now, history = case
    first = plan(spec, HASH, pods, now, history)
    hints = {a.pod: a for a in first.actions if isinstance(a, SetEvictionHints)}
    after = [_as_written(p, hints[p.name]) if p.name in hints else p for p in pods]
    again = plan(spec, HASH, after, now, history)
    resent = [a for a in again.actions if isinstance(a, SetEvictionHints) and a.pod in hints]
    assert not resent, f"hints re-sent: {resent}"
