"""The pure planner: (spec, observed pods, clock, history) -> actions, status, conditions.

No I/O happens here, so every rule is unit-tested with plain data. The safety rules that must
never break (property-tested in tests/unit):

* a pod that reports sessions > 0 is never deleted, except when its drain deadline passed;
* a pod is deleted only after it was marked draining (or it never served: starting/failed);
* the serving pool never grows beyond maxReplicas (+ maxSurge during a rollout);
* scale-up is immediate, scale-down waits for the stabilization window (HPA-style: the
  highest recommendation within the window wins).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .conditions import Condition
from .constants import BUSY_DELETION_COST, IDLE_DELETION_COST
from .podview import PodView
from .spec import PoolSpec

__all__ = [
    "Action",
    "Condition",
    "CreatePod",
    "DeletePod",
    "MarkDraining",
    "Plan",
    "PodState",
    "PoolStatus",
    "Recommendation",
    "SetEvictionHints",
    "classify",
    "plan",
]


class PodState(enum.StrEnum):
    STARTING = "starting"  # not yet ready; never took a call
    IDLE = "idle"  # ready, 0 sessions
    BUSY = "busy"  # ready, >= 1 session
    DRAINING = "draining"  # takes no new calls; deleted when its calls end
    UNKNOWN = "unknown"  # was serving, stopped being ready: its calls may still run
    FAILED = "failed"  # Failed/Succeeded phase (crash, eviction): replace
    TERMINATING = "terminating"  # deletionTimestamp set: the kubelet/kwok finishes it


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    template_hash: str
    reason: str  # WarmPool | ScaleUp | Rollout | Replace
    message: str


@dataclass(frozen=True)
class MarkDraining:
    pod: str
    reason: str  # event reason: ScaleDown | Rollout | PoolDeleted | DrainObserved
    message: str

    @property
    def drain_reason(self) -> str:
        return self.reason


@dataclass(frozen=True)
class DeletePod:
    pod: str
    reason: str  # DrainComplete | DrainTimeout | ScaleDown | Rollout | Failed | Unresponsive
    message: str


@dataclass(frozen=True)
class SetEvictionHints:
    pod: str
    safe_to_evict: str
    deletion_cost: str
    reason: str = "EvictionHints"


Action = CreatePod | MarkDraining | DeletePod | SetEvictionHints


@dataclass(frozen=True)
class Recommendation:
    """A raw desired-replica value and when it was first computed (stabilization history)."""

    time: dt.datetime
    desired: int


@dataclass(frozen=True)
class PoolStatus:
    replicas: int = 0
    ready_pods: int = 0
    idle_pods: int = 0
    busy_pods: int = 0
    draining_pods: int = 0
    starting_pods: int = 0
    unknown_pods: int = 0
    terminating_pods: int = 0
    updated_pods: int = 0
    active_sessions: int = 0
    session_capacity: int = 0
    idle_capacity: int = 0
    desired_replicas: int = 0
    warm_target: int = 0
    template_hash: str = ""

    def to_status_dict(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "readyPods": self.ready_pods,
            "idlePods": self.idle_pods,
            "busyPods": self.busy_pods,
            "drainingPods": self.draining_pods,
            "startingPods": self.starting_pods,
            "unknownPods": self.unknown_pods,
            "terminatingPods": self.terminating_pods,
            "updatedPods": self.updated_pods,
            "activeSessions": self.active_sessions,
            "sessionCapacity": self.session_capacity,
            "idleCapacity": self.idle_capacity,
            "desiredReplicas": self.desired_replicas,
            "warmTarget": self.warm_target,
            "templateHash": self.template_hash,
        }


@dataclass
class Plan:
    actions: list[Action]
    status: PoolStatus
    conditions: list[Condition]
    history: list[Recommendation]
    requeue_after: float | None = None
    notes: list[str] = field(default_factory=list)


# -- classification -------------------------------------------------------------------------


def classify(pod: PodView, spec: PoolSpec, now: dt.datetime) -> PodState:
    """One pod's state, read conservatively: anything unclear is never called idle."""
    if pod.terminating:
        return PodState.TERMINATING
    if pod.phase in ("Failed", "Succeeded"):
        return PodState.FAILED
    if pod.drain_requested or pod.reported_state == "draining":
        return PodState.DRAINING
    if pod.ready and pod.reported_state == "starting" and not _sessions(pod):
        # Ready by its probe (or by kwok, which runs none) but the worker itself says it is
        # not registered with LiveKit yet: it cannot take a call, so it is not capacity.
        return PodState.STARTING
    if pod.ready:
        return PodState.BUSY if (pod.sessions or 0) > 0 else PodState.IDLE
    # Not ready: never served yet (starting), or served and stopped answering (unknown).
    if pod.reported_state not in (None, "starting") or (pod.sessions or 0) > 0:
        return PodState.UNKNOWN
    return PodState.STARTING


def _sessions(pod: PodView) -> int:
    return pod.sessions or 0


def _no_calls(pod: PodView) -> bool:
    """Known to carry no call: 0 sessions, or no count and a state that holds none.

    A pod that says busy/draining but whose session count is missing or unreadable may hold
    calls, so it is never taken for empty.
    """
    if pod.sessions is not None:
        return pod.sessions == 0
    return pod.reported_state in (None, "starting", "idle")


def _capacity(pod: PodView, spec: PoolSpec) -> int:
    return spec.sessions_per_pod


# -- stabilization --------------------------------------------------------------------------


def stabilize(
    history: Sequence[Recommendation], raw: int, now: dt.datetime, window_s: int
) -> tuple[int, list[Recommendation], float | None]:
    """HPA-style scale-down stabilization.

    Each recommendation holds from its time until the next one. The effective value is the
    highest recommendation that held at any point within the window; the history is pruned to
    what can still matter. Returns (effective, history, seconds until it may drop).
    """
    items = sorted(history, key=lambda r: r.time)
    if not items or items[-1].desired != raw:
        items.append(Recommendation(now, raw))
    window = dt.timedelta(seconds=window_s)
    kept: list[Recommendation] = []
    for i, rec in enumerate(items):
        until = items[i + 1].time if i + 1 < len(items) else None
        if until is None or until > now - window:
            kept.append(rec)
    effective = max(r.desired for r in kept)
    wake: float | None = None
    if effective > raw:
        for i, rec in enumerate(kept):
            if rec.desired > raw and i + 1 < len(kept):
                expires = (kept[i + 1].time + window - now).total_seconds()
                wake = expires if wake is None else min(wake, expires)
    return effective, kept, wake


# -- the plan --------------------------------------------------------------------------------


def _drain_order(pod: PodView, thash: str) -> tuple[int, int, float]:
    """Which serving pod to give up first: old template, then fewest calls, then youngest."""
    return (0 if pod.template_hash != thash else 1, _sessions(pod), -pod.created.timestamp())


def plan(
    spec: PoolSpec,
    template_hash: str,
    pods: Iterable[PodView],
    now: dt.datetime,
    history: Sequence[Recommendation] = (),
    *,
    pool_deleting: bool = False,
) -> Plan:
    pods = sorted(pods, key=lambda p: (p.created, p.name))
    states = {p.name: classify(p, spec, now) for p in pods}
    by_state: dict[PodState, list[PodView]] = {s: [] for s in PodState}
    for p in pods:
        by_state[states[p.name]].append(p)
    actions: list[Action] = []
    wakeups: list[float] = []
    conditions_extra: list[Condition] = []
    degraded: list[tuple[str, str]] = []

    def wake_in(seconds: float) -> None:
        wakeups.append(max(0.05, seconds))

    # 1. Draining pods: delete when their calls ended or the deadline passed.
    for p in by_state[PodState.DRAINING]:
        timeout = dt.timedelta(seconds=spec.drain_timeout_seconds)
        if _no_calls(p):
            actions.append(DeletePod(p.name, "DrainComplete", "all calls ended"))
        elif p.drain_requested_at is None:
            # Draining on its own (or a hand-set annotation): stamp the start so the drain
            # timeout can run out, and survives an operator restart.
            actions.append(
                MarkDraining(
                    p.name,
                    "DrainObserved",
                    f"pod drains with {p.sessions if p.sessions is not None else 'unknown'} "
                    f"call(s); the drain timeout of "
                    f"{spec.drain_timeout_seconds}s starts now",
                )
            )
            wake_in(timeout.total_seconds())
        elif now >= p.drain_requested_at + timeout:
            actions.append(
                DeletePod(
                    p.name,
                    "DrainTimeout",
                    f"{_sessions(p)} call(s) still running after the drain timeout of "
                    f"{spec.drain_timeout_seconds}s",
                )
            )
            degraded.append(("DrainTimeout", f"pod {p.name} hit the drain timeout"))
        else:
            wake_in((p.drain_requested_at + timeout - now).total_seconds())

    # 2. Failed pods never serve again: replace them.
    for p in by_state[PodState.FAILED]:
        actions.append(DeletePod(p.name, "Failed", f"pod phase {p.phase}; replacing it"))
    if by_state[PodState.FAILED]:
        degraded.append(("PodsFailed", f"{len(by_state[PodState.FAILED])} pod(s) failed"))

    # 3. Unknown pods: not serving. Idle ones go after the grace; busy ones keep their calls
    #    until the drain timeout (counted from when they stopped being ready).
    for p in by_state[PodState.UNKNOWN]:
        since = p.ready_since or p.created
        grace = dt.timedelta(seconds=spec.unready_grace_seconds)
        limit = grace if _no_calls(p) else dt.timedelta(seconds=spec.drain_timeout_seconds)
        if now - since >= limit:
            actions.append(
                DeletePod(
                    p.name,
                    "Unresponsive",
                    f"not ready for {int((now - since).total_seconds())}s with "
                    f"{_sessions(p)} reported call(s)",
                )
            )
        else:
            wake_in((since + limit - now).total_seconds())
    stuck = [
        p
        for p in by_state[PodState.STARTING]
        if (now - p.created).total_seconds() > spec.unready_grace_seconds
    ]
    if stuck:
        degraded.append(
            (
                "PodsNotReady",
                f"{len(stuck)} pod(s) not ready after "
                f"{spec.unready_grace_seconds}s (unschedulable or not starting?)",
            )
        )
    if by_state[PodState.UNKNOWN]:
        degraded.append(
            ("PodsUnresponsive", f"{len(by_state[PodState.UNKNOWN])} pod(s) stopped being ready")
        )

    serving_sessions = sum(_sessions(p) for p in by_state[PodState.BUSY])
    active_sessions = serving_sessions + sum(
        _sessions(p) for s in (PodState.DRAINING, PodState.UNKNOWN) for p in by_state[s]
    )
    warm = spec.warm_sessions(now)
    raw, unclamped = spec.desired_for(serving_sessions, now)
    if pool_deleting:
        raw = 0
    desired, history_out, stab_wake = stabilize(
        history, raw, now, spec.stabilization_window_seconds
    )
    # The history may hold recommendations from before maxReplicas was lowered.
    desired = min(desired, spec.max_replicas)
    if pool_deleting:
        desired = 0
    if stab_wake is not None:
        wake_in(stab_wake)
    if spec.warm_windows:
        wake_in(60 - now.second)  # re-evaluate at the next minute: a window may open

    starting = by_state[PodState.STARTING]
    ready = by_state[PodState.IDLE] + by_state[PodState.BUSY]
    serving = starting + ready
    new = [p for p in serving if p.template_hash == template_hash]
    old = [p for p in serving if p.template_hash != template_hash]
    ready_names = {p.name for p in ready}
    starting_names = {p.name for p in starting}
    new_ready = [p for p in new if p.name in ready_names]

    if pool_deleting:
        for p in starting:
            actions.append(DeletePod(p.name, "PoolDeleted", "pool deleted; pod never served"))
        for p in ready:
            actions.append(
                MarkDraining(
                    p.name, "PoolDeleted", f"pool deleted; {_sessions(p)} call(s) to finish"
                )
            )
    else:
        # 4. Old-template pods that never served are replaced at once.
        for p in old:
            if p.name in starting_names:
                actions.append(DeletePod(p.name, "Rollout", "template changed before it served"))
        old = [p for p in old if p.name not in starting_names]
        serving = [p for p in serving if p.template_hash == template_hash or p.name in ready_names]

        # 5. Create: up to desired new pods, at most maxSurge above desired while old remain.
        cap = desired + spec.max_surge if old else desired
        to_create = max(0, min(desired - len(new), cap - len(serving)))
        for _ in range(to_create):
            if old:
                reason, msg = "Rollout", f"new template {template_hash}"
            elif by_state[PodState.FAILED] or by_state[PodState.UNKNOWN]:
                reason, msg = "Replace", "replacing a failed or unresponsive pod"
            elif not ready and not starting and warm > 0 and serving_sessions == 0:
                reason, msg = "WarmPool", f"warm pool of {warm} idle session(s)"
            else:
                reason, msg = (
                    "ScaleUp",
                    (f"{serving_sessions} active + {warm} warm session(s) need {desired} pod(s)"),
                )
            actions.append(CreatePod(template_hash, reason, msg))

        # 6. Rollout: retire old pods as ready new pods take their place (idle ones first).
        retire = max(0, len(new_ready) + len(old) - desired) if old else 0
        for p in sorted(old, key=lambda q: _drain_order(q, template_hash))[:retire]:
            actions.append(
                MarkDraining(
                    p.name,
                    "Rollout",
                    f"replaced by template {template_hash}; {_sessions(p)} call(s) to finish",
                )
            )

        # 7. Scale-down: only idle pods (or pods that never served), after the window.
        if not old:
            excess = len(serving) - desired
            # Old-template starting pods were deleted in step 4 and are not in `serving`.
            never_served = [p for p in serving if p.name in starting_names]
            for p in sorted(never_served, key=lambda q: q.created, reverse=True):
                if excess <= 0:
                    break
                actions.append(DeletePod(p.name, "ScaleDown", "not needed; never served"))
                excess -= 1
            idle = sorted(by_state[PodState.IDLE], key=lambda q: _drain_order(q, template_hash))
            for p in idle:
                if excess <= 0:
                    break
                actions.append(
                    MarkDraining(
                        p.name,
                        "ScaleDown",
                        f"{serving_sessions} active + {warm} warm session(s) need {desired} pod(s)",
                    )
                )
                excess -= 1

    # 8. Eviction hints on pods that stay: busy pods are precious, idle ones cheap.
    leaving = {a.pod for a in actions if isinstance(a, DeletePod | MarkDraining)}
    for p in pods:
        st = states[p.name]
        if p.name in leaving or st not in (PodState.IDLE, PodState.BUSY, PodState.DRAINING):
            continue
        busy = not _no_calls(p)
        want = ("false", BUSY_DELETION_COST) if busy else ("true", IDLE_DELETION_COST)
        if (p.safe_to_evict, p.deletion_cost) != want:
            actions.append(SetEvictionHints(p.name, want[0], want[1]))

    # -- status and conditions --------------------------------------------------------------
    n_draining = len(by_state[PodState.DRAINING])
    status = PoolStatus(
        replicas=sum(1 for p in pods if states[p.name] is not PodState.TERMINATING),
        ready_pods=len(ready),
        idle_pods=len(by_state[PodState.IDLE]),
        busy_pods=len(by_state[PodState.BUSY]),
        draining_pods=n_draining,
        starting_pods=len(starting),
        unknown_pods=len(by_state[PodState.UNKNOWN]),
        terminating_pods=len(by_state[PodState.TERMINATING]),
        updated_pods=sum(1 for p in ready if p.template_hash == template_hash),
        active_sessions=active_sessions,
        session_capacity=sum(_capacity(p, spec) for p in ready),
        idle_capacity=sum(max(0, _capacity(p, spec) - _sessions(p)) for p in ready),
        desired_replicas=desired,
        warm_target=warm,
        template_hash=template_hash,
    )
    conditions = _conditions(
        spec,
        status,
        len(serving),
        raw,
        desired,
        unclamped,
        old_left=len(old)
        + sum(1 for p in by_state[PodState.DRAINING] if p.template_hash != template_hash),
        pool_deleting=pool_deleting,
        degraded=degraded,
    )
    conditions.extend(conditions_extra)
    return Plan(
        actions=actions,
        status=status,
        conditions=conditions,
        history=history_out,
        requeue_after=min(wakeups) if wakeups else None,
    )


def _conditions(
    spec: PoolSpec,
    st: PoolStatus,
    serving: int,
    raw: int,
    desired: int,
    unclamped: int,
    *,
    old_left: int,
    pool_deleting: bool,
    degraded: list[tuple[str, str]],
) -> list[Condition]:
    out: list[Condition] = []
    if pool_deleting:
        out.append(
            Condition(
                "Ready", "False", "PoolDeleting", f"waiting for {st.active_sessions} call(s) to end"
            )
        )
    elif st.ready_pods >= desired and (
        st.idle_capacity > 0 or st.warm_target == 0 or desired >= spec.max_replicas
    ):
        out.append(
            Condition(
                "Ready",
                "True",
                "WarmPoolReady",
                f"{st.ready_pods}/{desired} pods ready, {st.idle_capacity} idle session(s)",
            )
        )
    elif st.ready_pods == 0:
        out.append(
            Condition(
                "Ready",
                "False",
                "NoReadyPods",
                f"0/{desired} pods ready ({st.starting_pods} starting)",
            )
        )
    else:
        out.append(
            Condition(
                "Ready",
                "False",
                "PodsStarting",
                f"{st.ready_pods}/{desired} pods ready ({st.starting_pods} starting)",
            )
        )

    if serving < desired:
        out.append(Condition("Scaling", "True", "ScalingUp", f"{serving} -> {desired} pods"))
    elif serving > desired and not old_left:
        out.append(
            Condition(
                "Scaling", "True", "ScalingDown", f"{serving} -> {desired} pods (idle pods only)"
            )
        )
    elif desired > raw:
        out.append(
            Condition(
                "Scaling",
                "False",
                "ScaleDownStabilizing",
                f"holding {desired} pods; {raw} would do once the "
                f"{spec.stabilization_window_seconds}s window passes",
            )
        )
    else:
        out.append(Condition("Scaling", "False", "Stable", f"{serving} pods as desired"))

    if old_left:
        out.append(
            Condition(
                "Progressing",
                "True",
                "RollingUpdate",
                f"{old_left} pod(s) of an older template left; {st.updated_pods} updated and ready",
            )
        )
    else:
        out.append(
            Condition(
                "Progressing", "False", "UpToDate", f"all pods run template {st.template_hash}"
            )
        )

    if st.draining_pods:
        out.append(
            Condition(
                "Draining",
                "True",
                "WaitingForCalls",
                f"{st.draining_pods} pod(s) draining; they go when their calls end",
            )
        )
    else:
        out.append(Condition("Draining", "False", "NoDrains", "no pod is draining"))

    if unclamped > spec.max_replicas and not pool_deleting:
        degraded.append(
            (
                "AtMaxReplicas",
                f"{unclamped} pods wanted but maxReplicas is {spec.max_replicas}; "
                "callers may find no warm capacity",
            )
        )
    if degraded:
        reason = degraded[0][0]
        out.append(Condition("Degraded", "True", reason, "; ".join(m for _, m in degraded)))
    else:
        out.append(Condition("Degraded", "False", "AsExpected", "no problems"))
    return out


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
