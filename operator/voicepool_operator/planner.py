"""The pure planner: (spec, observed pods, clock, history) -> actions, status, conditions.

No I/O happens here, so every rule is unit-tested with plain data. The safety rules that must
never break (property-tested in tests/unit):

* a pod that reports sessions > 0 is never deleted, except when its drain deadline passed;
* a pod whose session count is unreadable (not an integer in [0, sessionsPerPod]) is taken
  as full: never deleted before its deadline, never warm, and worth no more than its capacity;
* a Ready pod whose worker never reported is planned as full too: not warm capacity, never
  drained as idle (its worker may be serving calls it cannot report);
* a pod is deleted only after it was marked draining (or it never served: starting/failed);
* the serving pool never grows beyond maxReplicas (+ maxSurge during a rollout);
* scale-up is immediate, scale-down waits for the stabilization window (HPA-style: the
  highest recommendation within the window wins).

`plan()` runs named phases in order: classify, retire leaving pods, desired replicas, then
either pool deletion or roll out + scale down, eviction hints, and status and conditions.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from .conditions import Condition
from .constants import BUSY_DELETION_COST, IDLE_DELETION_COST
from .demand import Measured
from .podview import PodView
from .spec import PoolSpec
from .status import PoolStatus, Recommendation

__all__ = [
    "Action",
    "Condition",
    "CreatePod",
    "DeletePod",
    "InvalidReport",
    "MarkDraining",
    "Plan",
    "PodState",
    "PoolStatus",
    "Recommendation",
    "SetEvictionHints",
    "classify",
    "plan",
    "stabilize",
]


class PodState(enum.StrEnum):
    STARTING = "starting"  # not yet ready; never took a call
    IDLE = "idle"  # ready, 0 sessions
    BUSY = "busy"  # ready, >= 1 session
    DRAINING = "draining"  # takes no new calls; deleted when its calls end
    UNKNOWN = "unknown"  # was serving, stopped being ready: its calls may still run
    UNREPORTED = "unreported"  # ready, but its worker never reported: planned as full
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


@dataclass(frozen=True)
class DeletePod:
    pod: str
    reason: str  # DrainComplete | DrainTimeout | ScaleDown | Rollout | Failed | Unresponsive
    message: str


@dataclass(frozen=True)
class SetEvictionHints:
    """Annotations for the autoscaler and ReplicaSet-style deleters, and the busy label."""

    pod: str
    safe_to_evict: str
    deletion_cost: str
    reason: str = "EvictionHints"
    busy_label: str = "false"  # "true" while the pod may hold calls: the PDB protects it


Action = CreatePod | MarkDraining | DeletePod | SetEvictionHints


@dataclass(frozen=True)
class InvalidReport:
    """A pod whose session count is unreadable; it is planned as a full pod."""

    pod: str
    value: str  # what the pod wrote, quoted and shortened
    capacity: int


@dataclass
class Plan:
    actions: list[Action]
    status: PoolStatus
    conditions: list[Condition]
    history: list[Recommendation]
    requeue_after: float | None = None
    invalid_reports: list[InvalidReport] = field(default_factory=list)


# -- classification -------------------------------------------------------------------------


def classify(pod: PodView, spec: PoolSpec, now: dt.datetime) -> PodState:
    """One pod's state, read conservatively: anything unclear is never called idle."""
    if pod.terminating:
        return PodState.TERMINATING
    if pod.phase in ("Failed", "Succeeded"):
        return PodState.FAILED
    if pod.drain_requested or pod.reported_state == "draining":
        return PodState.DRAINING
    if pod.ready and not pod.reported:
        # Ready by its probe, yet no report: a worker that may not patch its pod (or no
        # voicepool worker at all). Its calls are unknown, so it is neither idle nor warm.
        return PodState.UNREPORTED
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
    if pod.reported_state is None:
        return not pod.ready  # a Ready pod that never reported may be serving calls
    return pod.reported_state in ("starting", "idle")


def _capacity(pod: PodView, spec: PoolSpec) -> int:
    return spec.sessions_per_pod


def bounded(pod: PodView, spec: PoolSpec) -> tuple[PodView, InvalidReport | None]:
    """The pod with a readable count: an integer in [0, capacity], else taken as full.

    One pod's word must never move the whole pool: a garbled or hostile count (24 digits,
    "-1", "lots") is worth exactly the pod's own capacity, and the pod counts as busy.
    """
    cap = _capacity(pod, spec)
    if pod.report_error is not None:
        bad = pod.report_error
    elif pod.sessions is not None and pod.sessions > cap:
        bad = repr(str(pod.sessions)) if pod.sessions < 10**9 else "'<10+ digits>'"
    else:
        return pod, None
    return replace(pod, sessions=cap), InvalidReport(pod.name, bad, cap)


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


@dataclass
class _Pool:
    """What the phases share: the classified pods and what has been decided so far."""

    spec: PoolSpec
    template_hash: str
    now: dt.datetime
    pods: list[PodView]
    states: dict[str, PodState]
    by_state: dict[PodState, list[PodView]]
    unreadable: set[str]
    actions: list[Action] = field(default_factory=list)
    wakeups: list[float] = field(default_factory=list)
    degraded: list[tuple[str, str]] = field(default_factory=list)

    def wake_in(self, seconds: float) -> None:
        self.wakeups.append(max(0.05, seconds))

    def calls(self, pod: PodView) -> str:
        """A pod's call count for messages: 'unknown' when it is not readable."""
        if pod.name in self.unreadable or pod.sessions is None:
            return "unknown"
        return str(pod.sessions)


@dataclass(frozen=True)
class _Desired:
    raw: int
    unclamped: int
    desired: int
    history: list[Recommendation]
    warm: int
    serving_sessions: int
    waiting: int = 0  # callers waiting in LiveKit rooms for this pool's agent


def _drain_order(pod: PodView, thash: str) -> tuple[int, int, float]:
    """Which serving pod to give up first: old template, then fewest calls, then youngest."""
    return (0 if pod.template_hash != thash else 1, _sessions(pod), -pod.created.timestamp())


def _classify_all(
    spec: PoolSpec, template_hash: str, pods: Iterable[PodView], now: dt.datetime
) -> tuple[_Pool, list[InvalidReport]]:
    ordered = sorted(pods, key=lambda p: (p.created, p.name))
    readable: list[PodView] = []
    invalid: list[InvalidReport] = []
    for p in ordered:
        pod, bad = bounded(p, spec)
        readable.append(pod)
        if bad is not None:
            invalid.append(bad)
    states = {p.name: classify(p, spec, now) for p in readable}
    by_state: dict[PodState, list[PodView]] = {s: [] for s in PodState}
    for p in readable:
        by_state[states[p.name]].append(p)
    pool = _Pool(spec, template_hash, now, readable, states, by_state, {r.pod for r in invalid})
    return pool, invalid


def _retire_draining(pool: _Pool) -> None:
    """Draining pods: delete when their calls ended or the deadline passed."""
    spec, now = pool.spec, pool.now
    timeout = dt.timedelta(seconds=spec.drain_timeout_seconds)
    for p in pool.by_state[PodState.DRAINING]:
        if _no_calls(p):
            pool.actions.append(DeletePod(p.name, "DrainComplete", "all calls ended"))
        elif p.drain_requested_at is None:
            # Draining on its own (or a hand-set annotation): stamp the start so the drain
            # timeout can run out, and survives an operator restart.
            pool.actions.append(
                MarkDraining(
                    p.name,
                    "DrainObserved",
                    f"pod drains with {pool.calls(p)} call(s); the drain timeout of "
                    f"{spec.drain_timeout_seconds}s starts now",
                )
            )
            pool.wake_in(timeout.total_seconds())
        elif now >= p.drain_requested_at + timeout:
            pool.actions.append(
                DeletePod(
                    p.name,
                    "DrainTimeout",
                    f"{_sessions(p)} call(s) still running after the drain timeout of "
                    f"{spec.drain_timeout_seconds}s",
                )
            )
            pool.degraded.append(("DrainTimeout", f"pod {p.name} hit the drain timeout"))
        else:
            pool.wake_in((p.drain_requested_at + timeout - now).total_seconds())


def _retire_failed(pool: _Pool) -> None:
    """Failed pods never serve again: replace them."""
    failed = pool.by_state[PodState.FAILED]
    for p in failed:
        pool.actions.append(DeletePod(p.name, "Failed", f"pod phase {p.phase}; replacing it"))
    if failed:
        pool.degraded.append(("PodsFailed", f"{len(failed)} pod(s) failed"))


def _retire_unknown(pool: _Pool) -> None:
    """Unknown pods do not serve. Idle ones go after the grace; busy ones keep their calls
    until the drain timeout (counted from when they stopped being ready)."""
    spec, now = pool.spec, pool.now
    for p in pool.by_state[PodState.UNKNOWN]:
        since = p.ready_since or p.created
        grace = dt.timedelta(seconds=spec.unready_grace_seconds)
        limit = grace if _no_calls(p) else dt.timedelta(seconds=spec.drain_timeout_seconds)
        if now - since >= limit:
            pool.actions.append(
                DeletePod(
                    p.name,
                    "Unresponsive",
                    f"not ready for {int((now - since).total_seconds())}s with "
                    f"{_sessions(p)} reported call(s)",
                )
            )
        else:
            pool.wake_in((since + limit - now).total_seconds())
    crashing = [
        p for s in (PodState.STARTING, PodState.UNKNOWN) for p in pool.by_state[s] if p.problem
    ]
    if crashing:
        # Not replaced: a new pod would crash the same way. It stays, counted as starting (so no
        # pod-creation loop), and the kubelet's own back-off paces its restarts.
        pool.degraded.append(
            (
                "PodsCrashing",
                "; ".join(f"pod {p.name}: {p.problem}" for p in crashing[:3])
                + "; no new pods until it runs (a new one would crash the same way)",
            )
        )
    stuck = [
        p
        for p in pool.by_state[PodState.STARTING]
        if (now - p.created).total_seconds() > spec.unready_grace_seconds
    ]
    if stuck:
        pool.degraded.append(
            (
                "PodsNotReady",
                f"{len(stuck)} pod(s) not ready after "
                f"{spec.unready_grace_seconds}s (unschedulable or not starting?)",
            )
        )
    if pool.by_state[PodState.UNKNOWN]:
        pool.degraded.append(
            (
                "PodsUnresponsive",
                f"{len(pool.by_state[PodState.UNKNOWN])} pod(s) stopped being ready",
            )
        )
    _unreported(pool)


def _unreported(pool: _Pool) -> None:
    """Ready pods that never reported are kept (they may hold calls) and, after the grace
    period, named in Degraded: they cost a slot and give no capacity until fixed."""
    spec, now = pool.spec, pool.now
    grace = dt.timedelta(seconds=spec.unready_grace_seconds)
    silent = []
    for p in pool.by_state[PodState.UNREPORTED]:
        since = p.ready_since or p.created
        if now - since >= grace:
            silent.append(p.name)
        else:
            pool.wake_in((since + grace - now).total_seconds())
    if silent:
        names = ", ".join(silent[:5]) + (f" and {len(silent) - 5} more" if len(silent) > 5 else "")
        pool.degraded.append(
            (
                "PodsNotReporting",
                f"{len(silent)} ready pod(s) never reported their calls ({names}): the worker "
                "may not patch its pod (ServiceAccount?) or does not keep the pod contract; "
                "they are planned as full and never drained as idle",
            )
        )


def retire_leaving(pool: _Pool) -> None:
    """Phase: pods that no longer serve (draining, failed, unknown) go when they may."""
    _retire_draining(pool)
    _retire_failed(pool)
    _retire_unknown(pool)


def desired_replicas(
    pool: _Pool,
    history: Sequence[Recommendation],
    pool_deleting: bool,
    measured: Measured | None = None,
    waiting: int = 0,
) -> _Desired:
    """Phase: active + waiting calls + warm sessions -> pods, clamped, then stabilized."""
    spec, now = pool.spec, pool.now
    serving_sessions = sum(_sessions(p) for p in pool.by_state[PodState.BUSY]) + sum(
        _capacity(p, spec) for p in pool.by_state[PodState.UNREPORTED]
    )
    warm = spec.warm_sessions(now, measured)
    raw, unclamped = spec.desired_for(serving_sessions + waiting, now, measured)
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
        pool.wake_in(stab_wake)
    if spec.warm_windows:
        pool.wake_in(60 - now.second)  # re-evaluate at the next minute: a window may open
    return _Desired(raw, unclamped, desired, history_out, warm, serving_sessions, waiting)


def delete_pool(pool: _Pool) -> None:
    """Phase (pool deleted): pods that never served go now; the others drain their calls."""
    for p in pool.by_state[PodState.STARTING]:
        pool.actions.append(DeletePod(p.name, "PoolDeleted", "pool deleted; pod never served"))
    for p in _serving_ready(pool):
        pool.actions.append(
            MarkDraining(p.name, "PoolDeleted", f"pool deleted; {pool.calls(p)} call(s) to finish")
        )


def _serving_ready(pool: _Pool) -> list[PodView]:
    """Ready pods that hold a serving slot: idle, busy, and those that never reported."""
    return (
        pool.by_state[PodState.IDLE]
        + pool.by_state[PodState.BUSY]
        + pool.by_state[PodState.UNREPORTED]
    )


@dataclass
class _Serving:
    """The serving pods as the rollout leaves them, for scale-down and the conditions."""

    serving: list[PodView]
    old: list[PodView]


def roll_out(pool: _Pool, want: _Desired) -> _Serving:
    """Phase: replace old-template pods and create up to the desired count.

    Old pods that never served are deleted at once; new pods are created up to desired (at
    most maxSurge above it while old pods remain); old pods are retired as ready new pods
    take their place, idle ones first.
    """
    spec, thash, desired = pool.spec, pool.template_hash, want.desired
    starting = pool.by_state[PodState.STARTING]
    ready = _serving_ready(pool)
    serving = starting + ready
    new = [p for p in serving if p.template_hash == thash]
    ready_names = {p.name for p in ready}
    starting_names = {p.name for p in starting}
    # A new pod that never reported is no replacement: the old ones keep serving.
    new_ready = [
        p for p in new if p.name in ready_names and pool.states[p.name] is not PodState.UNREPORTED
    ]

    old = [p for p in serving if p.template_hash != thash]
    for p in old:
        if p.name in starting_names:
            pool.actions.append(DeletePod(p.name, "Rollout", "template changed before it served"))
    old = [p for p in old if p.name not in starting_names]
    serving = [p for p in serving if p.template_hash == thash or p.name in ready_names]

    cap = desired + spec.max_surge if old else desired
    to_create = max(0, min(desired - len(new), cap - len(serving)))
    for _ in range(to_create):
        if old:
            reason, msg = "Rollout", f"new template {thash}"
        elif pool.by_state[PodState.FAILED] or pool.by_state[PodState.UNKNOWN]:
            reason, msg = "Replace", "replacing a failed or unresponsive pod"
        elif want.waiting and not ready:
            reason, msg = "WaitingCall", f"{want.waiting} caller(s) wait in LiveKit for the agent"
        elif not ready and not starting and want.warm > 0 and want.serving_sessions == 0:
            reason, msg = "WarmPool", f"warm pool of {want.warm} idle session(s)"
        else:
            reason, msg = (
                "ScaleUp",
                f"{want.serving_sessions} active + {want.warm} warm session(s) need "
                f"{desired} pod(s)",
            )
        pool.actions.append(CreatePod(thash, reason, msg))

    retire = max(0, len(new_ready) + len(old) - desired) if old else 0
    for p in sorted(old, key=lambda q: _drain_order(q, thash))[:retire]:
        pool.actions.append(
            MarkDraining(
                p.name,
                "Rollout",
                f"replaced by template {thash}; {pool.calls(p)} call(s) to finish",
            )
        )
    return _Serving(serving, old)


def scale_down(pool: _Pool, want: _Desired, current: _Serving) -> None:
    """Phase: only idle pods (or pods that never served), after the window, none mid-rollout."""
    if current.old:
        return
    starting_names = {p.name for p in pool.by_state[PodState.STARTING]}
    excess = len(current.serving) - want.desired
    # Old-template starting pods were deleted by the rollout and are not in `serving`.
    never_served = [p for p in current.serving if p.name in starting_names]
    for p in sorted(never_served, key=lambda q: q.created, reverse=True):
        if excess <= 0:
            break
        pool.actions.append(DeletePod(p.name, "ScaleDown", "not needed; never served"))
        excess -= 1
    idle = sorted(pool.by_state[PodState.IDLE], key=lambda q: _drain_order(q, pool.template_hash))
    for p in idle:
        if excess <= 0:
            break
        pool.actions.append(
            MarkDraining(
                p.name,
                "ScaleDown",
                f"{want.serving_sessions} active + {want.warm} warm session(s) need "
                f"{want.desired} pod(s)",
            )
        )
        excess -= 1


def eviction_hints(pool: _Pool) -> None:
    """Phase: hints and the busy label on pods that stay: busy pods are precious."""
    leaving = {a.pod for a in pool.actions if isinstance(a, DeletePod | MarkDraining)}
    for p in pool.pods:
        st = pool.states[p.name]
        if p.name in leaving or st not in (
            PodState.IDLE,
            PodState.BUSY,
            PodState.DRAINING,
            PodState.UNREPORTED,
        ):
            continue
        busy = not _no_calls(p)
        want = ("false", BUSY_DELETION_COST) if busy else ("true", IDLE_DELETION_COST)
        # An idle pod needs no label; a pod that may hold calls needs busy=true.
        label_ok = (p.busy_label == "true") == busy
        if (p.safe_to_evict, p.deletion_cost) != want or not label_ok:
            pool.actions.append(
                SetEvictionHints(p.name, want[0], want[1], busy_label="true" if busy else "false")
            )


def pool_status(pool: _Pool, want: _Desired) -> PoolStatus:
    """Phase: the counts `kubectl get vap` shows; always bounded integers."""
    spec, by_state = pool.spec, pool.by_state
    ready = by_state[PodState.IDLE] + by_state[PodState.BUSY]
    active = sum(
        _sessions(p)
        for s in (PodState.BUSY, PodState.DRAINING, PodState.UNKNOWN)
        for p in by_state[s]
    )
    return PoolStatus(
        replicas=sum(1 for p in pool.pods if pool.states[p.name] is not PodState.TERMINATING),
        ready_pods=len(ready),
        idle_pods=len(by_state[PodState.IDLE]),
        busy_pods=len(by_state[PodState.BUSY]),
        draining_pods=len(by_state[PodState.DRAINING]),
        starting_pods=len(by_state[PodState.STARTING]),
        unknown_pods=len(by_state[PodState.UNKNOWN]),
        unreported_pods=len(by_state[PodState.UNREPORTED]),
        terminating_pods=len(by_state[PodState.TERMINATING]),
        updated_pods=sum(1 for p in ready if p.template_hash == pool.template_hash),
        active_sessions=active,
        session_capacity=sum(_capacity(p, spec) for p in ready),
        idle_capacity=sum(max(0, _capacity(p, spec) - _sessions(p)) for p in ready),
        desired_replicas=want.desired,
        warm_target=want.warm,
        template_hash=pool.template_hash,
    )


def plan(
    spec: PoolSpec,
    template_hash: str,
    pods: Iterable[PodView],
    now: dt.datetime,
    history: Sequence[Recommendation] = (),
    *,
    pool_deleting: bool = False,
    measured: Measured | None = None,
    waiting_calls: int = 0,
) -> Plan:
    """The whole plan; `measured` (arrival rate, cold start) feeds an adaptive warm pool,
    `waiting_calls` (rooms waiting for the agent, from LiveKit's webhook) scales from zero."""
    pool, invalid = _classify_all(spec, template_hash, pods, now)
    retire_leaving(pool)
    want = desired_replicas(pool, history, pool_deleting, measured, waiting_calls)
    if pool_deleting:
        delete_pool(pool)
        serving = pool.by_state[PodState.STARTING] + _serving_ready(pool)
        current = _Serving(serving, [p for p in serving if p.template_hash != template_hash])
    else:
        current = roll_out(pool, want)
        scale_down(pool, want, current)
    eviction_hints(pool)
    status = pool_status(pool, want)
    if invalid:
        pool.degraded.append(
            (
                "InvalidReports",
                f"{len(invalid)} pod(s) report an unreadable session count (taken as full): "
                + ", ".join(f"{r.pod}={r.value}" for r in invalid[:3]),
            )
        )
    old_left = len(current.old) + sum(
        1 for p in pool.by_state[PodState.DRAINING] if p.template_hash != template_hash
    )
    conditions = _conditions(
        spec,
        status,
        len(current.serving),
        want.raw,
        want.desired,
        want.unclamped,
        old_left=old_left,
        pool_deleting=pool_deleting,
        degraded=pool.degraded,
    )
    return Plan(
        actions=pool.actions,
        status=status,
        conditions=conditions,
        history=want.history,
        requeue_after=min(pool.wakeups) if pool.wakeups else None,
        invalid_reports=invalid,
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
