"""Glue between the pure planner and the API, in four steps: observe, plan, apply, write status.

* observe: the pool's spec and the pods from kopf's watch-fed index, with our own
  not-yet-watched writes laid over them (`expectations.py`);
* plan: the pure planner (`planner.py`);
* apply: each action through `kube.py`, with an Event for every create/drain/delete;
* write status: coalesced, so a burst of pod changes (a drain is four of them) costs one
  status write once the pool is quiet, not one per change.

Expectations and the coalescing are only optimisations over the API state: after a restart
the index is rebuilt from a fresh list, and every drain is recorded in pod annotations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .conditions import Condition, merge_conditions, with_degraded
from .constants import (
    ANN_DELETION_COST,
    ANN_DRAIN,
    ANN_DRAIN_REASON,
    ANN_DRAIN_REQUESTED_AT,
    ANN_SAFE_TO_EVICT,
    LABEL_BUSY,
    WORKER_HTTP_PORT,
)
from .demand import Demand
from .expectations import Expectations
from .kube import ApiError, Conflict, Kube
from .planner import (
    Action,
    CreatePod,
    DeletePod,
    InvalidReport,
    MarkDraining,
    Plan,
    SetEvictionHints,
    plan,
)
from .podtemplate import build_pod, busy_pdb, free_host_port, template_hash
from .podview import pod_view_from_dict
from .policy import WorkerPolicy, service_account
from .policy import check as check_policy
from .spec import PoolSpec, SpecError, deletion_spec, parse_spec
from .status import history_from_status, history_to_status, iso
from .telephony.keeper import TelephonyKeeper
from .waiting import waiting_rooms

log = logging.getLogger(__name__)

#: A status change is written once the pool has been quiet this long...
STATUS_QUIET_SECONDS = 1.0
#: ...or at the latest this long after the first unwritten change, under constant churn.
STATUS_MAX_DELAY_SECONDS = 10.0
#: How soon a pod create the apiserver refused is tried again.
CREATE_RETRY_SECONDS = 10.0
#: Pod deletions that mean something went wrong: Warning Events.
WARNING_DELETES = frozenset({"DrainTimeout", "Failed", "Unresponsive"})


@dataclass
class Outcome:
    requeue_after: float | None
    remaining_pods: int


@dataclass
class _PoolState:
    """What the reconciler remembers about one pool between reconciles."""

    expectations: Expectations = field(default_factory=Expectations)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    written: dict[str, Any] | None = None  # the last status we wrote
    pending: dict[str, Any] | None = None  # the newest status not yet written
    changed_at: float = 0.0  # when `pending` last changed
    dirty_since: float | None = None  # first unwritten change
    spec_error: str | None = None  # the last InvalidSpec message we reported
    invalid_seen: dict[str, str] = field(default_factory=dict)  # pod -> reported value
    pdb_for: str | None = None  # pool uid whose PodDisruptionBudget exists
    demand: Demand = field(default_factory=Demand)  # arrivals and cold starts (adaptive pool)
    degraded_warned: str | None = None  # the Degraded reason we last sent a Warning Event for
    create_error: str | None = None  # why the apiserver refused our last pod create, if it did


@dataclass(frozen=True)
class _Observed:
    spec: PoolSpec | None
    spec_error: str | None
    #: Why the pool may not run (InvalidSpec, or the policy's refusal), with spec_error.
    spec_error_reason: str
    raws: list[Mapping[str, Any]]
    generation: int
    old_status: Mapping[str, Any]


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: WorkerPolicy | None = None,
        telephony: TelephonyKeeper | None = None,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.policy = policy or WorkerPolicy()
        #: Keeps each pool's LiveKit SIP objects in line beside its reconcile (None: tests
        #: of the pod planning alone).
        self.telephony = telephony
        self._pools: dict[tuple[str, str], _PoolState] = {}

    def _state(self, key: tuple[str, str]) -> _PoolState:
        return self._pools.setdefault(key, _PoolState())

    def forget(self, namespace: str, name: str) -> None:
        self._pools.pop((namespace, name), None)
        if self.telephony is not None:
            self.telephony.forget(namespace, name)
        metrics.forget_pool(namespace, name)

    async def reconcile(
        self,
        pool: Mapping[str, Any],
        index_pods: Iterable[Mapping[str, Any]],
        *,
        deleting: bool = False,
    ) -> Outcome:
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        state = self._state(key)
        async with state.lock:
            started = time.perf_counter()
            metrics.RECONCILES.labels(*key).inc()
            try:
                return await self._reconcile(key, state, pool, index_pods, deleting)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _reconcile(
        self,
        key: tuple[str, str],
        state: _PoolState,
        pool: Mapping[str, Any],
        index_pods: Iterable[Mapping[str, Any]],
        deleting: bool,
    ) -> Outcome:
        now = dt.datetime.now(dt.UTC)
        seen = self.observe(state, pool, index_pods, deleting)
        # Rooms waiting for the agent, as any replica's webhook receiver recorded them.
        waiting_calls = waiting_rooms(pool["metadata"].get("annotations"), now.timestamp())
        if seen.spec is None:
            assert seen.spec_error is not None
            await self._report_spec_error(key, state, pool, seen, now)
            return Outcome(None, len(seen.raws))
        if state.spec_error is not None:
            state.spec_error = None
        thash = template_hash(seen.spec)
        views = [pod_view_from_dict(r) for r in seen.raws]
        state.demand.observe(views, now, seen.spec.sessions_per_pod, waiting_calls)
        result = plan(
            seen.spec,
            thash,
            views,
            now,
            history_from_status(seen.old_status),
            pool_deleting=deleting,
            measured=state.demand.measured(now),
            waiting_calls=0 if deleting else waiting_calls,
        )
        requeue = await self.apply(key, state, pool, seen, thash, result, now, deleting)
        phones, phones_due = (None, None)
        if self.telephony is not None and not deleting:
            phones, phones_due = self.telephony.poll(pool, seen.spec.phones)
        flush = await self.write_status(key, state, seen, result, now, waiting_calls, phones)
        await self._warn_degraded(pool, state, result.conditions)
        # Pods already terminating finish on their own grace period; the pool need not wait.
        remaining = sum(1 for r in seen.raws if not r["metadata"].get("deletionTimestamp"))
        return Outcome(_soonest(requeue, flush, phones_due), remaining)

    # -- 1. observe --------------------------------------------------------------------------

    def observe(
        self,
        state: _PoolState,
        pool: Mapping[str, Any],
        index_pods: Iterable[Mapping[str, Any]],
        deleting: bool,
    ) -> _Observed:
        raw_spec = pool.get("spec") or {}
        spec: PoolSpec | None = None
        error: str | None = None
        reason = "InvalidSpec"
        try:
            spec = parse_spec(raw_spec)
        except SpecError as e:
            error = str(e)
            if deleting:  # a deleted pool drains with what still reads
                spec = deletion_spec(raw_spec)
        if spec is not None and not deleting:
            refusal = check_policy(spec, self.policy)
            if refusal is not None:  # nothing is created for a pool outside the policy
                spec, error, reason = None, refusal.message, refusal.reason
        return _Observed(
            spec=spec,
            spec_error=error,
            spec_error_reason=reason,
            raws=state.expectations.observe(index_pods),
            generation=int(pool["metadata"].get("generation") or 0),
            old_status=pool.get("status") or {},
        )

    # -- 3. apply ----------------------------------------------------------------------------

    async def apply(
        self,
        key: tuple[str, str],
        state: _PoolState,
        pool: Mapping[str, Any],
        seen: _Observed,
        thash: str,
        result: Plan,
        now: dt.datetime,
        deleting: bool,
    ) -> float | None:
        assert seen.spec is not None
        requeue = result.requeue_after
        raw_by_name = {r["metadata"]["name"]: r for r in seen.raws}
        if not deleting:
            await self._ensure_pdb(key, state, pool)
        await self._report_invalid(key, state, pool, result.invalid_reports, raw_by_name)
        for action in result.actions:
            try:
                await self._apply(pool, key, state, seen.spec, action, raw_by_name, now)
            except Conflict as e:
                log.info("re-planning %s/%s: %s", key[0], key[1], e)
                requeue = 0.05
            except ApiError as e:
                if not isinstance(action, CreatePod) or e.status == 429 or e.status >= 500:
                    raise
                # Refused for good (a missing ServiceAccount, a quota, an admission policy):
                # say why once and try again later; the other creates would fail the same way.
                await self._create_refused(pool, state, e)
                return _soonest(requeue, CREATE_RETRY_SECONDS)
        return requeue

    async def _create_refused(
        self, pool: Mapping[str, Any], state: _PoolState, error: ApiError
    ) -> None:
        message = f"the apiserver refused a worker pod: {error.message}"
        metrics.ACTIONS.labels(*_key(pool), "CreatePodRefused", "PodCreateFailed").inc()
        if state.create_error != message:
            await self.kube.event(
                pool, reason="PodCreateFailed", action="CreatePod", note=message, type_="Warning"
            )
        state.create_error = message

    async def _warn_degraded(
        self, pool: Mapping[str, Any], state: _PoolState, conditions: Iterable[Condition]
    ) -> None:
        """One Warning Event when the pool turns Degraded because its pods crash (no action of
        ours reports that: the operator deliberately creates no replacement), not one per pass.
        """
        new = next((c for c in conditions if c.type == "Degraded"), None)
        reason = new.reason if new is not None and new.status == "True" else None
        if reason != "PodsCrashing":
            reason = None
        if reason == state.degraded_warned:
            return
        state.degraded_warned = reason
        if new is None or reason is None:
            return
        await self.kube.event(
            pool, reason=new.reason, action="Degraded", note=new.message, type_="Warning"
        )

    async def _apply(
        self,
        pool: Mapping[str, Any],
        key: tuple[str, str],
        state: _PoolState,
        spec: PoolSpec,
        action: Action,
        raw_by_name: dict[str, Mapping[str, Any]],
        now: dt.datetime,
    ) -> None:
        namespace, name = key
        metrics.ACTIONS.labels(namespace, name, type(action).__name__, action.reason).inc()
        if isinstance(action, CreatePod):
            port = WORKER_HTTP_PORT
            if spec.template.get("hostNetwork"):
                port = free_host_port(raw_by_name.values())
            manifest = build_pod(
                name,
                namespace,
                pool["metadata"]["uid"],
                spec,
                action.template_hash,
                port,
                service_account=service_account(spec, self.policy),
            )
            created = await self.kube.create_pod(namespace, manifest)
            state.create_error = None
            state.expectations.created(created)
            raw_by_name[created["metadata"]["name"]] = created  # next CreatePod sees its port
            await self.kube.event(
                pool,
                reason=action.reason,
                action="CreatePod",
                note=f"Created pod {created['metadata']['name']}: {action.message}",
                related=created,
            )
        elif isinstance(action, MarkDraining):
            patched = await self.kube.patch_pod_metadata(
                namespace,
                action.pod,
                annotations={
                    ANN_DRAIN: "true",
                    ANN_DRAIN_REQUESTED_AT: iso(now),
                    ANN_DRAIN_REASON: action.reason,
                },
                verb="mark_drain",
            )
            if patched is not None:
                state.expectations.patched(patched)
                await self.kube.event(
                    pool,
                    reason=action.reason,
                    action="DrainPod",
                    note=f"Draining pod {action.pod}: {action.message}",
                    related=patched,
                )
        elif isinstance(action, DeletePod):
            raw = raw_by_name.get(action.pod, {})
            rmeta = raw.get("metadata", {})
            await self.kube.delete_pod(
                namespace,
                action.pod,
                uid=rmeta.get("uid"),
                resource_version=rmeta.get("resourceVersion"),
            )
            state.expectations.deleted(action.pod)
            await self.kube.event(
                pool,
                reason=action.reason,
                action="DeletePod",
                note=f"Deleted pod {action.pod}: {action.message}",
                type_="Warning" if action.reason in WARNING_DELETES else "Normal",
                related=raw or None,
            )
        elif isinstance(action, SetEvictionHints):
            patched = await self.kube.patch_pod_metadata(
                namespace,
                action.pod,
                annotations={
                    ANN_SAFE_TO_EVICT: action.safe_to_evict,
                    ANN_DELETION_COST: action.deletion_cost,
                },
                labels={LABEL_BUSY: action.busy_label},
                verb="patch_hints",
            )
            if patched is not None:
                state.expectations.patched(patched)
        else:  # pragma: no cover - the planner's action set is closed
            raise TypeError(f"unknown action {action!r}")

    async def _ensure_pdb(
        self, key: tuple[str, str], state: _PoolState, pool: Mapping[str, Any]
    ) -> None:
        """The pool's busy-pod PodDisruptionBudget, created once per pool (and restart)."""
        uid = str(pool["metadata"].get("uid") or "")
        if state.pdb_for == uid:
            return
        if await self.kube.ensure_pdb(key[0], busy_pdb(key[1], key[0], uid)):
            state.pdb_for = uid
        else:
            state.pdb_for = uid  # not allowed: say so once, do not retry on every reconcile
            await self.kube.event(
                pool,
                reason="NoDisruptionBudget",
                action="Reconcile",
                note="could not create the busy-pod PodDisruptionBudget (RBAC?): node drains "
                "may evict pods with live calls",
                type_="Warning",
            )

    async def _report_invalid(
        self,
        key: tuple[str, str],
        state: _PoolState,
        pool: Mapping[str, Any],
        reports: list[InvalidReport],
        raw_by_name: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """One Warning Event and one count per pod and unreadable value, not per reconcile."""
        current = {r.pod: r.value for r in reports}
        for report in reports:
            if state.invalid_seen.get(report.pod) == report.value:
                continue
            metrics.INVALID_REPORTS.labels(key[0], key[1], report.pod).inc()
            await self.kube.event(
                pool,
                reason="InvalidReport",
                action="ReadReport",
                note=f"pod {report.pod} reports an unreadable session count {report.value} "
                f"(not an integer in [0, {report.capacity}]); it is taken as full and kept",
                type_="Warning",
                related=raw_by_name.get(report.pod),
            )
        state.invalid_seen = current

    # -- 4. write status ---------------------------------------------------------------------

    async def write_status(
        self,
        key: tuple[str, str],
        state: _PoolState,
        seen: _Observed,
        result: Plan,
        now: dt.datetime,
        waiting_calls: int = 0,
        telephony: Mapping[str, Any] | None = None,
    ) -> float | None:
        """The pool's whole status in one write: counts, conditions (telephony and a refused
        pod create folded into Degraded) and ``status.telephony``."""
        summary = result.status.to_status_dict()
        phone = telephony or {}
        problem = phone.get("problem")
        status: dict[str, Any] = {
            **summary,
            "waitingCalls": waiting_calls,
            "observedGeneration": seen.generation,
            "conditions": merge_conditions(
                seen.old_status.get("conditions") or [],
                with_degraded(
                    with_degraded(
                        result.conditions,
                        str(phone.get("reason") or "TelephonyDegraded"),
                        str(problem) if problem else None,
                    ),
                    "PodCreateFailed",
                    state.create_error,
                ),
                now,
                seen.generation,
            ),
            "scaleHistory": history_to_status(result.history),
        }
        if telephony is not None or seen.old_status.get("telephony") is not None:
            # null removes it in a merge patch: telephony removed and cleaned up in LiveKit
            status["telephony"] = dict(telephony) if telephony is not None else None
        self._export_metrics(key[0], key[1], summary)
        if seen.spec is not None:
            metrics.POOL_MAX_REPLICAS.labels(*key).set(seen.spec.max_replicas)
        return await self._write_status(key, state, seen, status)

    async def _write_status(
        self,
        key: tuple[str, str],
        state: _PoolState,
        seen: _Observed,
        status: dict[str, Any],
    ) -> float | None:
        """Write `status` if it differs, coalescing bursts; seconds until a deferred write."""
        old = seen.old_status
        if status == state.written or all(old.get(k) == v for k, v in status.items()):
            state.pending, state.dirty_since = None, None
            return None
        clock = self.clock()
        if status != state.pending:
            state.pending, state.changed_at = status, clock
        if state.dirty_since is None:
            state.dirty_since = clock
        due = min(
            state.changed_at + STATUS_QUIET_SECONDS, state.dirty_since + STATUS_MAX_DELAY_SECONDS
        )
        if not _urgent(old, status) and clock < due:
            return due - clock
        await self.kube.patch_pool_status(key[0], key[1], status)
        state.written, state.pending, state.dirty_since = status, None, None
        return None

    async def _report_spec_error(
        self,
        key: tuple[str, str],
        state: _PoolState,
        pool: Mapping[str, Any],
        seen: _Observed,
        now: dt.datetime,
    ) -> None:
        """A spec the CRD let through but the planner cannot use: say so once, act on nothing."""
        message = str(seen.spec_error)
        if state.spec_error != message:
            state.spec_error = message
            await self.kube.event(
                pool,
                reason=seen.spec_error_reason,
                action="Reconcile",
                note=message,
                type_="Warning",
            )
        reason = seen.spec_error_reason
        conditions = merge_conditions(
            seen.old_status.get("conditions") or [],
            [
                Condition("Ready", "False", reason, message),
                Condition("Degraded", "True", reason, message),
            ],
            now,
            seen.generation,
        )
        status = {"observedGeneration": seen.generation, "conditions": conditions}
        await self._write_status(key, state, seen, status)

    @staticmethod
    def _export_metrics(namespace: str, name: str, summary: Mapping[str, Any]) -> None:
        for state, field_ in (
            ("starting", "startingPods"),
            ("idle", "idlePods"),
            ("busy", "busyPods"),
            ("draining", "drainingPods"),
            ("unknown", "unknownPods"),
            ("unreported", "unreportedPods"),
            ("terminating", "terminatingPods"),
        ):
            metrics.POOL_PODS.labels(namespace, name, state).set(summary.get(field_, 0))
        metrics.POOL_SESSIONS.labels(namespace, name).set(summary.get("activeSessions", 0))
        metrics.POOL_CAPACITY.labels(namespace, name).set(summary.get("sessionCapacity", 0))
        metrics.POOL_DESIRED.labels(namespace, name).set(summary.get("desiredReplicas", 0))


def _key(pool: Mapping[str, Any]) -> tuple[str, str]:
    meta = pool["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def _urgent(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Written at once: a new spec generation, or a condition that turned bad."""
    if old.get("observedGeneration") != new.get("observedGeneration"):
        return True
    before = {c.get("type"): c.get("status") for c in old.get("conditions") or []}
    for c in new.get("conditions") or []:
        bad = "True" if c["type"] == "Degraded" else "False" if c["type"] == "Ready" else None
        if bad is not None and c["status"] == bad and before.get(c["type"]) != bad:
            return True
    return False


def _soonest(*delays: float | None) -> float | None:
    present = [d for d in delays if d is not None]
    return min(present) if present else None
