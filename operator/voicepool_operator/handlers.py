"""Thin kopf handlers: watch pools and their pods, wake the pool's reconcile loop.

Pods are watched once, by label, into a kopf index keyed by (namespace, pool); a pod event only
wakes its pool's daemon, which re-plans from the index. No pod is ever polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import kopf

from .constants import GROUP, LABEL_MANAGED_BY, LABEL_POOL, MANAGED_BY, PLURAL, VERSION
from .kube import Kube, login
from .policy import WorkerPolicy
from .reconcile import Reconciler
from .telephony.keeper import TelephonyKeeper
from .waiting import MAX_EVENT_AGE_SECONDS, RoomChange, Signer, waiting_keys
from .webhook import KeyRing, WebhookServer, record_on_pools

#: Re-plan at least this often even without events (clock-driven transitions are also
#: scheduled precisely through the planner's requeue_after).
RESYNC_SECONDS = 30.0
#: How long a replica's peering record outlives its last keep-alive, unless main() puts
#: `peering_lifetime` in the memo (--peering-lifetime).
DEFAULT_PEERING_LIFETIME = 15
MANAGED_PODS: dict[str, Any] = {
    LABEL_MANAGED_BY: MANAGED_BY,
    LABEL_POOL: kopf.PRESENT,
}

_wakeups: dict[tuple[str, str], asyncio.Event] = {}
#: Per pool, what of it last woke its loop (see `replan_key`).
_pool_seen: dict[tuple[str, str], tuple[Any, ...]] = {}


def replan_key(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What about a pool object changes the plan: its spec (generation), its deletion and
    the rooms waiting for its agent (annotations any replica's webhook receiver writes).

    Status and other metadata changes -- above all the operator's own status writes -- do
    not, so they must not wake another reconcile (GenerationChangedPredicate, in controller
    terms). The telephony keeper wakes the pool itself when a SIP sync has news.
    """
    meta = body.get("metadata") or {}
    rooms = waiting_keys(meta.get("annotations"))
    return (
        meta.get("uid"),
        meta.get("generation"),
        bool(meta.get("deletionTimestamp")),
        rooms,
    )


def _wake(namespace: str | None, pool: str | None) -> None:
    event = _wakeups.get((namespace or "", pool or ""))
    if event is not None:
        event.set()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"kopf.{GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=f"kopf.{GROUP}",
        key="last-handled-configuration",
        # No handler reacts to a pool's annotations, and the webhook receiver writes one per
        # waiting room: without this kopf would rewrite its diff-base after every room event.
        ignored_fields=[("metadata", "annotations")],
    )
    settings.posting.level = logging.WARNING  # our own Events describe actions; kopf: warnings
    settings.watching.server_timeout = 300
    settings.peering.lifetime = int(memo.get("peering_lifetime", DEFAULT_PEERING_LIFETIME))
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    memo.kube = Kube(login(settings=settings), identity)
    memo.reconciler = Reconciler(
        memo.kube,
        policy=memo.get("policy") or WorkerPolicy(),
        telephony=TelephonyKeeper(memo.kube, _wake),
    )
    memo.webhook = None
    port = int(memo.get("webhook_port", 0) or 0)
    if port:
        # Every replica serves it, active or not: the rooms go on the pools (waiting.py).
        key, secret = os.environ.get("LIVEKIT_API_KEY"), os.environ.get("LIVEKIT_API_SECRET")
        platform = Signer(key, secret) if key and secret else None
        kube, namespaces = memo.kube, list(memo.get("namespaces") or ())
        keys = KeyRing(kube, platform, namespaces)

        async def publish(change: RoomChange, signer: Signer) -> int:
            return await record_on_pools(kube, keys, change, signer, namespaces)

        server = WebhookServer(
            keys, publish, max_age=float(memo.get("webhook_max_age") or MAX_EVENT_AGE_SECONDS)
        )
        if await server.start(str(memo.get("webhook_address", "0.0.0.0")), port):
            memo.webhook = server


@kopf.on.login()
def authenticate(**kwargs: Any) -> kopf.ConnectionInfo:
    """Our own login handler, so kopf does not import client libraries to piggyback on."""
    return login(**kwargs)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    reconciler = getattr(memo, "reconciler", None)
    if reconciler is not None and reconciler.telephony is not None:
        await reconciler.telephony.close()
    kube = getattr(memo, "kube", None)
    if kube is not None:
        await kube.close()
    webhook = getattr(memo, "webhook", None)
    if webhook is not None:
        await webhook.stop()


def _slim(body: kopf.Body) -> dict[str, Any]:
    """A plain, immutable-enough copy of what the planner needs from a pod."""
    meta = body.get("metadata", {})
    status = body.get("status", {})
    containers = body.get("spec", {}).get("containers") or []
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
        },
        # The worker's HTTP port: hostNetwork workers each hold their own (free_host_port).
        "spec": {
            "containers": [
                {"name": c.get("name"), "ports": [dict(p) for p in c.get("ports") or []]}
                for c in containers
            ]
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": [dict(c) for c in status.get("conditions") or []],
            # Why a container cannot run (CrashLoopBackOff, ...): the pool's Degraded reason.
            "containerStatuses": [
                {
                    "name": c.get("name"),
                    "state": dict(c.get("state") or {}),
                    "lastState": dict(c.get("lastState") or {}),
                }
                for c in status.get("containerStatuses") or []
            ],
        },
    }


@kopf.index("pods", labels=MANAGED_PODS)
async def pods_by_pool(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "", labels[LABEL_POOL]): _slim(body)}


@kopf.on.event("pods", labels=MANAGED_PODS)
async def pod_changed(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    _wake(namespace, labels.get(LABEL_POOL))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def pool_changed(
    namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any
) -> None:
    key = (namespace or "", name)
    if type == "DELETED":
        _pool_seen.pop(key, None)
        return
    seen = replan_key(body)
    if _pool_seen.get(key) != seen:
        _pool_seen[key] = seen
        _wake(namespace, name)


def _pods(
    index: kopf.Index[tuple[str, str], dict[str, Any]], key: tuple[str, str]
) -> list[dict[str, Any]]:
    return list(index.get(key, []))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def run_pool(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """One loop per pool: reconcile, then sleep until an event or the planner's requeue."""
    key = (namespace or "", name)
    wake = _wakeups.setdefault(key, asyncio.Event())
    backoff = 1.0
    try:
        while not stopped:
            wake.clear()
            try:
                outcome = await memo.reconciler.reconcile(body, _pods(kwargs["pods_by_pool"], key))
                delay = outcome.requeue_after
                backoff = 1.0
            except Exception as e:  # keep the loop alive; the error is logged and counted
                from .metrics import RECONCILE_ERRORS

                RECONCILE_ERRORS.labels(key[0], name).inc()
                logger.error("reconcile failed (retrying in %.0fs): %s", backoff, e)
                delay, backoff = backoff, min(backoff * 2, 30.0)
            timeout = RESYNC_SECONDS if delay is None else max(0.0, min(delay, RESYNC_SECONDS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=timeout)
    finally:
        if _wakeups.get(key) is wake:
            del _wakeups[key]


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=1.0)
async def drain_pool(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Hold the pool (finalizer) until every pod has finished its calls and is deleted."""
    outcome = await memo.reconciler.reconcile(
        body, _pods(kwargs["pods_by_pool"], (namespace or "", name)), deleting=True
    )
    if outcome.remaining_pods:
        delay = min(outcome.requeue_after or 2.0, 2.0)
        raise kopf.TemporaryError(
            f"waiting for {outcome.remaining_pods} pod(s) to finish their calls", delay=delay
        )
    memo.reconciler.forget(namespace or "", name)
