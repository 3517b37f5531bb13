"""Thin kopf glue for VoiceRoutes: one loop per route keeps a ``RegionObserver`` per region,
folds their observations into the route's status (``status.fold``, pure) and writes it when it
changed, with an Event when a region goes down or comes back.

Registered by ``main`` next to the pool and telephony handlers. Only the active replica runs
it (kopf peering pauses daemons on the standby), and everything it writes is derived from
what it observes, so a new active replica starts from scratch without losing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from voicepool_contract import ROUTE_PLURAL

from ..constants import GROUP, VERSION
from ..kube import ApiError, Kube, api_path, login
from ..metrics import API_WRITES
from . import metrics
from .kubeclient import ClusterClient
from .livekit_ops import session
from .observe import RegionObserver
from .spec import RegionSpec, RouteSpec, RouteSpecError, parse_route
from .status import changed, fold, invalid, stale_seen

log = logging.getLogger("voicepool.operator.routing")

#: The loop re-folds at least this often without events (staleness of a silent cluster).
RESYNC_S = 10.0
#: Observations arriving together are folded into one status write.
SETTLE_S = 0.05

_wakeups: dict[tuple[str, str], asyncio.Event] = {}
_generations: dict[tuple[str, str], Any] = {}


@kopf.on.startup()
async def remember_login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """This cluster's credentials, for the watches of its own pools (as the operator logs in)."""
    memo.routing_login = login(settings=settings)


@kopf.on.event(GROUP, VERSION, ROUTE_PLURAL)
async def route_changed(
    namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any
) -> None:
    """A new spec generation (not our own status writes) wakes the route's loop."""
    key = (namespace or "", name)
    if type == "DELETED":
        _generations.pop(key, None)
        return
    generation = (body.get("metadata") or {}).get("generation")
    if _generations.get(key) != generation:
        _generations[key] = generation
        event = _wakeups.get(key)
        if event is not None:
            event.set()


@kopf.daemon(GROUP, VERSION, ROUTE_PLURAL, cancellation_timeout=10.0, backoff=5.0)
async def run_route(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """One loop per VoiceRoute for as long as it exists."""
    key = (namespace or "", name)
    wake = _wakeups.setdefault(key, asyncio.Event())
    loop = RouteLoop(memo.kube, memo.routing_login, key[0], name, wake)
    try:
        await loop.run(body, stopped)
    finally:
        await loop.close()
        if _wakeups.get(key) is wake:
            del _wakeups[key]


class RouteLoop:
    """Observers per region, the fold and the status writes of one route."""

    def __init__(
        self,
        kube: Kube,
        local: kopf.ConnectionInfo,
        namespace: str,
        name: str,
        wake: asyncio.Event,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.wake = wake
        self.local = local  # this cluster, as the operator logs in
        self.client = ClusterClient(self.local, user_agent="voicepool-operator/routing")
        self.http = session()
        self.observers: dict[str, tuple[RegionSpec, RegionObserver]] = {}
        self.written: dict[str, Any] | None = None
        self.spec_error: str | None = None
        self.down: dict[str, str] = {}  # region -> the reason we sent a Warning Event for

    async def close(self) -> None:
        for _, observer in self.observers.values():
            await observer.stop()
        metrics.forget_route(self.namespace, self.name, list(self.observers))
        self.observers.clear()
        await self.http.close()
        await self.client.close()

    async def run(self, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
        while not stopped:
            self.wake.clear()
            try:
                await self.step(body)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("%s/%s: status write failed: %s", self.namespace, self.name, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=RESYNC_S)
            await asyncio.sleep(SETTLE_S)

    async def step(self, body: Mapping[str, Any]) -> None:
        now = dt.datetime.now(dt.UTC)
        meta = body.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        old = dict(body.get("status") or {})
        if self.written is None:
            self.written = old
        try:
            route = parse_route(body.get("spec") or {}, self.namespace)
        except RouteSpecError as e:
            await self._sync_observers(None)
            new = invalid(
                str(e), now=now, generation=generation, old_conditions=old.get("conditions") or []
            )
            if self.spec_error != str(e):
                self.spec_error = str(e)
                await self.kube.event(
                    body, reason="InvalidSpec", action="Route", note=str(e), type_="Warning"
                )
            await self._write(body, new)
            return
        self.spec_error = None
        await self._sync_observers(route)
        new = fold(
            route,
            {n: o.cluster for n, (_, o) in self.observers.items() if o.cluster is not None},
            {n: o.livekit for n, (_, o) in self.observers.items() if o.livekit is not None},
            now=now,
            generation=generation,
            old_conditions=(self.written or old).get("conditions") or [],
        )
        await self._events(body, new)
        for region in new["regions"]:
            metrics.REGION_READY.labels(self.namespace, self.name, region["name"]).set(
                1 if region["ready"] else 0
            )
            metrics.REGION_IDLE.labels(self.namespace, self.name, region["name"]).set(
                region["idleSessions"]
            )
        await self._write(body, new)

    async def _sync_observers(self, route: RouteSpec | None) -> None:
        """Start an observer per region; restart one whose region spec changed."""
        wanted = {r.name: r for r in route.regions} if route is not None else {}
        for name in list(self.observers):
            spec, observer = self.observers[name]
            if wanted.get(name) != spec:
                await observer.stop()
                del self.observers[name]
                metrics.forget_route(self.namespace, self.name, [name])
        for name, spec in wanted.items():
            if name not in self.observers:
                assert route is not None
                observer = RegionObserver(
                    self.namespace,
                    spec,
                    self.kube,
                    self.local,
                    self.http,
                    self.wake.set,
                    route.probe_interval_s,
                )
                observer.start()
                self.observers[name] = (spec, observer)

    async def _events(self, body: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """A Warning when a region goes down (once per cause), Normal when it is back."""
        for region in new["regions"]:
            name, reason = region["name"], region["reason"]
            if region["ready"] or reason == "Pending":
                if self.down.pop(name, None) is not None and region["ready"]:
                    await self.kube.event(
                        body,
                        reason="RegionReady",
                        action="Route",
                        note=f"region {name} is ready again ({region['idleSessions']} idle)",
                    )
                continue
            if self.down.get(name) != reason:
                self.down[name] = reason
                await self.kube.event(
                    body,
                    reason="RegionDown",
                    action="Route",
                    note=f"region {name}: {reason}: {region['message']}",
                    type_="Warning",
                )

    async def _write(self, body: Mapping[str, Any], new: dict[str, Any]) -> None:
        before = self.written or {}
        if not changed(before, new) and not stale_seen(before, new):
            return
        path = api_path(
            "apis", GROUP, VERSION, "namespaces", self.namespace, ROUTE_PLURAL, self.name, "status"
        )
        API_WRITES.labels("patch_route_status").inc()
        try:
            await self.client.patch_status(path, new)
        except ApiError as e:
            if e.status == 404:  # the route is being deleted: nothing to report on
                return
            raise
        self.written = new
