"""The operator's eyes on one region: a watch of the region's pool in its cluster, and a probe
of its LiveKit with the route's key.

The pool is *watched* (list once, then a watch that the server ends every 30 s and we resume
from the last resourceVersion), in this cluster with the operator's own login or in another
one with the kubeconfig from the route's Secret (re-read at every reconnect, so a rotated
kubeconfig is picked up). The LiveKit probe is one cheap API call every
``probeIntervalSeconds``: it is what tells a stopped livekit-server or a wrong key. Each new
observation calls ``changed()``; the route's loop folds them (``status.fold``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

from ..constants import GROUP, PLURAL, VERSION
from ..kube import ApiError, Kube, api_path
from .kubeclient import (
    ClusterClient,
    KubeconfigError,
    connection_from_kubeconfig,
    describe,
    list_and_watch,
)
from .livekit_ops import RegionClient, RegionFailure
from .spec import RegionSpec
from .status import ClusterSeen, LiveKitSeen, pool_seen

log = logging.getLogger("voicepool.operator.routing")

#: Reconnect backoff of a failed watch: starts here, doubles, stops at the maximum (so a
#: recovered cluster is seen within RECONNECT_MAX_S).
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
#: A Secret's LiveKit key is re-read at least this often (and after the key was rejected).
SECRET_REFRESH_S = 60.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RegionObserver:
    """Watch one region's pool and probe its LiveKit until ``stop()``."""

    def __init__(
        self,
        namespace: str,
        region: RegionSpec,
        kube: Kube,
        local: kopf.ConnectionInfo,
        http: aiohttp.ClientSession,
        changed: Callable[[], None],
        probe_interval: float,
    ) -> None:
        self.namespace = namespace  # the route's: where its Secrets are
        self.region = region
        self.kube = kube
        self.local = local
        self.http = http
        self.changed = changed
        self.probe_interval = probe_interval
        self.cluster: ClusterSeen | None = None
        self.livekit: LiveKitSeen | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lk: RegionClient | None = None
        self._lk_read_at = 0.0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_forever(), name=f"watch-{self.region.name}"),
            asyncio.create_task(self._probe_forever(), name=f"probe-{self.region.name}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    # -- the pool watch -------------------------------------------------------------------

    def _set_cluster(self, seen: ClusterSeen) -> None:
        self.cluster = seen
        self.changed()

    async def _alive(self) -> None:
        seen = self.cluster
        if seen is not None and seen.ok:
            self.cluster = ClusterSeen(True, _now(), seen.pool)

    async def _listed(self, items: list[dict[str, Any]]) -> None:
        self._set_cluster(ClusterSeen(True, _now(), pool_seen(items[0] if items else None)))

    async def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self._set_cluster(ClusterSeen(True, _now(), pool_seen(None if kind == "DELETED" else obj)))

    async def _connection(self) -> kopf.ConnectionInfo:
        ref = self.region.pool.kubeconfig
        if ref is None:
            return self.local
        try:
            data = await self.kube.read_secret(self.namespace, ref.name)
        except ApiError as e:
            raise KubeconfigError(f"cannot read Secret {self.namespace}/{ref.name}: {e}") from e
        text = data.get(ref.keys[0])
        if not text:
            raise KubeconfigError(f"Secret {self.namespace}/{ref.name} has no key {ref.keys[0]!r}")
        try:
            return connection_from_kubeconfig(text)
        except KubeconfigError as e:
            raise KubeconfigError(f"Secret {self.namespace}/{ref.name}: {e}") from None

    async def _watch_forever(self) -> None:
        pool = self.region.pool
        path = api_path("apis", GROUP, VERSION, "namespaces", pool.namespace, PLURAL)
        where = "this cluster" if not pool.remote else "the region's cluster"
        backoff = RECONNECT_MIN_S
        while True:
            client: ClusterClient | None = None
            started = time.monotonic()
            try:
                info = await self._connection()
                client = ClusterClient(info, user_agent="voicepool-operator/routing")
                await list_and_watch(
                    client,
                    path,
                    params={"fieldSelector": f"metadata.name={pool.name}"},
                    on_list=self._listed,
                    on_event=self._event,
                    on_alive=self._alive,
                )
            except asyncio.CancelledError:
                raise
            except KubeconfigError as e:
                self._set_cluster(ClusterSeen(False, reason="KubeconfigUnreadable", message=str(e)))
            except ApiError as e:
                reason = "ClusterForbidden" if e.status in (401, 403) else "ClusterError"
                if e.status == 404:
                    reason = "PoolNotFound"
                self._set_cluster(
                    ClusterSeen(
                        False,
                        reason=reason,
                        message=f"{where} ({_server(client)}) answered {describe(e)}",
                    )
                )
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError) as e:
                self._set_cluster(
                    ClusterSeen(
                        False,
                        reason="ClusterUnreachable",
                        message=f"{where} ({_server(client)}) unreachable: {describe(e)}",
                    )
                )
            finally:
                if client is not None:
                    await client.close()
            if time.monotonic() - started > 2 * RECONNECT_MAX_S:
                backoff = RECONNECT_MIN_S  # it worked for a while: retry at once
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    # -- the LiveKit probe ----------------------------------------------------------------

    async def _client(self) -> RegionClient:
        """The region's LiveKit client with the key from the route's Secret."""
        if self._lk is not None and time.monotonic() - self._lk_read_at < SECRET_REFRESH_S:
            return self._lk
        ref = self.region.credentials
        try:
            data = await self.kube.read_secret(self.namespace, ref.name)
        except ApiError as e:
            raise RegionFailure(
                "CredentialsMissing", f"cannot read Secret {self.namespace}/{ref.name}: {e}"
            ) from e
        key, secret = data.get(ref.keys[0]), data.get(ref.keys[1])
        if not key or not secret:
            raise RegionFailure(
                "CredentialsMissing",
                f"Secret {self.namespace}/{ref.name} lacks keys {ref.keys[0]!r} and "
                f"{ref.keys[1]!r} (the LiveKit API key and secret)",
            )
        self._lk = RegionClient(
            self.region.livekit_url, self.region.livekit_http_url, key, secret, self.http
        )
        self._lk_read_at = time.monotonic()
        return self._lk

    async def _probe_forever(self) -> None:
        while True:
            try:
                client = await self._client()
                await client.probe()
                seen = LiveKitSeen(True, _now())
            except asyncio.CancelledError:
                raise
            except RegionFailure as e:
                if e.reason == "LiveKitKeyRejected":
                    self._lk = None  # re-read the Secret next time: it may have been fixed
                seen = LiveKitSeen(False, _now(), e.reason, str(e))
            if self.livekit is None or (self.livekit.ok, self.livekit.message) != (
                seen.ok,
                seen.message,
            ):
                self.livekit = seen
                self.changed()
            else:
                self.livekit = seen
            await asyncio.sleep(self.probe_interval)


def _server(client: ClusterClient | None) -> str:
    return client.server if client is not None else "?"
