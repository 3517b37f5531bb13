"""Glue between the pure planner and the API: observe → plan → act → report.

The planner sees pods from kopf's watch-fed index. That cache lags our own writes by a few
milliseconds, so the reconciler keeps short-lived *expectations* (the objects our writes
returned) and lays them over the index until the watch catches up. Without them a second
reconcile right after a create would create the pod again. Expectations are only an
optimisation over the API state: after a restart the index is rebuilt from a fresh list, and
every drain is recorded in pod annotations, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import metrics
from .conditions import merge_conditions
from .constants import (
    ANN_DELETION_COST,
    ANN_DRAIN,
    ANN_DRAIN_REASON,
    ANN_DRAIN_REQUESTED_AT,
    ANN_SAFE_TO_EVICT,
)
from .kube import Conflict, Kube
from .planner import (
    Action,
    CreatePod,
    DeletePod,
    MarkDraining,
    Recommendation,
    SetEvictionHints,
    plan,
)
from .podtemplate import build_pod, template_hash
from .podview import pod_view_from_dict
from .spec import SpecError, parse_spec

log = logging.getLogger(__name__)

#: How long an expectation may stand in for the watch before we trust the index again.
EXPECTATION_TTL = 30.0
_DELETED = "deleted"


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:  # opaque on some apiservers: then only equality is meaningful
        return 0


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_from_status(status: Mapping[str, Any]) -> list[Recommendation]:
    """Scale recommendations persisted in status, so a restart keeps the stabilization window."""
    out: list[Recommendation] = []
    for item in status.get("scaleHistory") or []:
        try:
            when = dt.datetime.fromisoformat(str(item["time"]).replace("Z", "+00:00"))
            out.append(Recommendation(time=when, desired=int(item["desired"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def history_to_status(history: Iterable[Recommendation]) -> list[dict[str, Any]]:
    return [{"time": _iso(r.time), "desired": r.desired} for r in history]


@dataclass
class Outcome:
    requeue_after: float | None
    remaining_pods: int


class Reconciler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._expect: dict[tuple[str, str], dict[str, tuple[Any, float]]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._last_spec_error: dict[tuple[str, str], str] = {}

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._expect.pop(key, None)
        self._locks.pop(key, None)
        self._last_spec_error.pop(key, None)
        metrics.forget_pool(namespace, name)

    # -- observation -------------------------------------------------------------------------

    def observed(
        self, key: tuple[str, str], index_pods: Iterable[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """Index pods with our own not-yet-watched writes laid over them."""
        by_name = {p["metadata"]["name"]: p for p in index_pods}
        pending = self._expect.get(key, {})
        now = time.monotonic()
        for name, (obj, expires) in list(pending.items()):
            current = by_name.get(name)
            if now > expires:
                del pending[name]
            elif obj == _DELETED:
                if current is None or current["metadata"].get("deletionTimestamp"):
                    del pending[name]
                else:
                    by_name.pop(name)
            elif current is not None and _rv(current) >= _rv(obj):
                del pending[name]
            else:
                by_name[name] = obj
        return list(by_name.values())

    def _expect_obj(self, key: tuple[str, str], name: str, obj: Any) -> None:
        self._expect.setdefault(key, {})[name] = (obj, time.monotonic() + EXPECTATION_TTL)

    # -- reconcile ---------------------------------------------------------------------------

    async def reconcile(
        self,
        pool: Mapping[str, Any],
        index_pods: Iterable[Mapping[str, Any]],
        *,
        deleting: bool = False,
    ) -> Outcome:
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            started = time.perf_counter()
            try:
                return await self._reconcile(key, pool, index_pods, deleting)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _reconcile(
        self,
        key: tuple[str, str],
        pool: Mapping[str, Any],
        index_pods: Iterable[Mapping[str, Any]],
        deleting: bool,
    ) -> Outcome:
        namespace, name = key
        meta = pool["metadata"]
        generation = int(meta.get("generation") or 0)
        old_status: Mapping[str, Any] = pool.get("status") or {}
        now = dt.datetime.now(dt.UTC)
        raws = self.observed(key, index_pods)

        try:
            spec = parse_spec(pool.get("spec") or {})
        except SpecError as e:
            await self._report_spec_error(pool, key, str(e), old_status, generation, now)
            return Outcome(None, len(raws))
        self._last_spec_error.pop(key, None)

        thash = template_hash(spec)
        views = [pod_view_from_dict(r) for r in raws]
        raw_by_name = {r["metadata"]["name"]: r for r in raws}
        result = plan(
            spec, thash, views, now, history_from_status(old_status), pool_deleting=deleting
        )

        requeue = result.requeue_after
        for action in result.actions:
            try:
                await self._apply(pool, key, spec, thash, action, raw_by_name, now)
            except Conflict as e:
                log.info("re-planning %s/%s: %s", namespace, name, e)
                requeue = 0.05

        summary = result.status.to_status_dict()
        new_status: dict[str, Any] = {
            **summary,
            "observedGeneration": generation,
            "conditions": merge_conditions(
                old_status.get("conditions") or [], result.conditions, now, generation
            ),
            "scaleHistory": history_to_status(result.history),
        }
        if any(old_status.get(k) != v for k, v in new_status.items()):
            await self.kube.patch_pool_status(namespace, name, new_status)
        self._export_metrics(namespace, name, summary)
        # Pods already terminating finish on their own grace period; the pool need not wait.
        remaining = sum(1 for r in raws if not r["metadata"].get("deletionTimestamp"))
        return Outcome(requeue, remaining)

    async def _apply(
        self,
        pool: Mapping[str, Any],
        key: tuple[str, str],
        spec: Any,
        thash: str,
        action: Action,
        raw_by_name: Mapping[str, Mapping[str, Any]],
        now: dt.datetime,
    ) -> None:
        namespace, name = key
        kind = type(action).__name__
        metrics.ACTIONS.labels(namespace, name, kind, action.reason).inc()
        if isinstance(action, CreatePod):
            manifest = build_pod(
                name, namespace, pool["metadata"]["uid"], spec, action.template_hash
            )
            created = await self.kube.create_pod(namespace, manifest)
            pod_name = created["metadata"]["name"]
            self._expect_obj(key, pod_name, created)
            await self.kube.event(
                pool,
                reason=action.reason,
                action="CreatePod",
                note=f"Created pod {pod_name}: {action.message}",
                related=created,
            )
        elif isinstance(action, MarkDraining):
            pod_name = _pod_name(action)
            patched = await self.kube.patch_pod_annotations(
                namespace,
                pod_name,
                {
                    ANN_DRAIN: "true",
                    ANN_DRAIN_REQUESTED_AT: _iso(now),
                    ANN_DRAIN_REASON: action.drain_reason,
                },
            )
            if patched is not None:
                self._expect_obj(key, pod_name, patched)
                await self.kube.event(
                    pool,
                    reason=action.reason,
                    action="DrainPod",
                    note=f"Draining pod {pod_name}: {action.message}",
                    related=patched,
                )
        elif isinstance(action, DeletePod):
            pod_name = _pod_name(action)
            raw = raw_by_name.get(pod_name, {})
            rmeta = raw.get("metadata", {})
            await self.kube.delete_pod(
                namespace,
                pod_name,
                uid=rmeta.get("uid"),
                resource_version=rmeta.get("resourceVersion"),
            )
            self._expect_obj(key, pod_name, _DELETED)
            warn = action.reason in ("DrainTimeout",)
            await self.kube.event(
                pool,
                reason=action.reason,
                action="DeletePod",
                note=f"Deleted pod {pod_name}: {action.message}",
                type_="Warning" if warn else "Normal",
                related=raw or None,
            )
        elif isinstance(action, SetEvictionHints):
            pod_name = _pod_name(action)
            patched = await self.kube.patch_pod_annotations(
                namespace,
                pod_name,
                {
                    ANN_SAFE_TO_EVICT: action.safe_to_evict,
                    ANN_DELETION_COST: action.deletion_cost,
                },
            )
            if patched is not None:
                self._expect_obj(key, pod_name, patched)
        else:  # pragma: no cover - the planner's action set is closed
            raise TypeError(f"unknown action {action!r}")

    async def _report_spec_error(
        self,
        pool: Mapping[str, Any],
        key: tuple[str, str],
        message: str,
        old_status: Mapping[str, Any],
        generation: int,
        now: dt.datetime,
    ) -> None:
        """A spec the CRD let through but the planner cannot use: say so, act on nothing."""
        if self._last_spec_error.get(key) != message:
            self._last_spec_error[key] = message
            await self.kube.event(
                pool, reason="InvalidSpec", action="Reconcile", note=message, type_="Warning"
            )
        from .planner import Condition  # local: only needed on this rare path

        conditions = merge_conditions(
            old_status.get("conditions") or [],
            [
                Condition("Ready", "False", "InvalidSpec", message),
                Condition("Degraded", "True", "InvalidSpec", message),
            ],
            now,
            generation,
        )
        await self.kube.patch_pool_status(
            key[0],
            key[1],
            {
                "observedGeneration": generation,
                "conditions": conditions,
            },
        )

    @staticmethod
    def _export_metrics(namespace: str, name: str, summary: Mapping[str, Any]) -> None:
        for state, field in (
            ("starting", "startingPods"),
            ("idle", "idlePods"),
            ("busy", "busyPods"),
            ("draining", "drainingPods"),
            ("unknown", "unknownPods"),
            ("terminating", "terminatingPods"),
        ):
            metrics.POOL_PODS.labels(namespace, name, state).set(summary.get(field, 0))
        metrics.POOL_SESSIONS.labels(namespace, name).set(summary.get("activeSessions", 0))
        metrics.POOL_CAPACITY.labels(namespace, name).set(summary.get("sessionCapacity", 0))
        metrics.POOL_DESIRED.labels(namespace, name).set(summary.get("desiredReplicas", 0))


def _pod_name(action: Any) -> str:
    pod = action.pod
    return pod if isinstance(pod, str) else str(pod.name)
