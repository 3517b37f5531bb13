"""The worker's own Pod: annotation reports (merge-patches) and the operator's drain request.

``PodReporter`` writes the ``PodReport``s that ``sessions.Sessions`` produces, in order, one
merge-patch each (a newer report queued behind a slow write supersedes the older one, so a
burst never costs more writes than events). ``DrainWatch`` watches this one pod with a
``metadata.name`` field selector and calls back once ``voicepool.dev/drain: "true"`` appears.
Both use kubernetes_asyncio, in-cluster config when ``KUBERNETES_SERVICE_HOST`` is set, else the
kubeconfig (``KUBECONFIG``) -- the devstack runner and the tests use the latter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ..config import ConfigError
from .sessions import ANN_DRAIN_REASON, PodReport, drain_requested

log = logging.getLogger("voicepool.worker.pod")

PATCH_ATTEMPTS = 5
WATCH_TIMEOUT_S = 60


async def api_client() -> client.ApiClient:
    """An API client for this pod's cluster; ConfigError (one line) when there is none."""
    cfg = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(client_configuration=cfg, persist_config=False)
    except (config.ConfigException, OSError, TypeError, ValueError) as e:
        raise ConfigError(
            "POD_NAME is set but no Kubernetes API access was found (in-cluster service "
            f"account or KUBECONFIG): {e}"
        ) from None
    return client.ApiClient(cfg)


class PodReporter:
    """Serialised writer of this pod's annotations (exactly one merge-patch per report)."""

    def __init__(
        self,
        api: client.ApiClient,
        name: str,
        namespace: str,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.name = name
        self.namespace = namespace
        self._latest: PodReport | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._on_result = on_result or (lambda _result: None)
        self.writes = 0
        #: Why the apiserver refuses our reports (401/403), while it does; the runtime is then
        #: not ready: a pod whose calls the operator cannot see must not take calls.
        self.refused: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pod-reporter")

    def submit(self, report: PodReport | None) -> None:
        if report is None:
            return
        self._latest = report
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every submitted report is written (or given up on); bound it outside."""
        await self._idle.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            report, self._latest = self._latest, None
            if report is not None:
                await self._write(report)
            if self._latest is None:
                self._idle.set()

    async def _write(self, report: PodReport) -> None:
        body: dict[str, Any] = {"metadata": {"annotations": report.annotations}}
        for attempt in range(1, PATCH_ATTEMPTS + 1):
            if self._latest is not None:  # superseded while we were retrying
                return
            try:
                await self._core.patch_namespaced_pod(
                    self.name,
                    self.namespace,
                    body,
                    _content_type="application/merge-patch+json",  # type: ignore[call-arg]
                )
                self.writes += 1
                if self.refused is not None:
                    log.info("pod reports accepted again", extra={"pod": self.name})
                    self.refused = None
                self._on_result("ok")
                log.info(
                    "pod annotations reported",
                    extra={"reason": report.reason, "annotations": report.annotations},
                )
                return
            except ApiException as e:
                if e.status == 404:
                    log.warning(
                        "own pod not found; annotations not reported", extra={"pod": self.name}
                    )
                    self._on_result("not_found")
                    return
                if e.status in (401, 403):  # no retry fixes RBAC: say so once, turn not ready
                    if self.refused is None:
                        log.error(
                            "pod reports refused: this pod's ServiceAccount may not patch its "
                            "own pod, so the operator cannot see its calls; not ready until it "
                            "may (use the chart's worker ServiceAccount)",
                            extra={"pod": self.name, "status": e.status, "error": str(e.reason)},
                        )
                    self.refused = f"{e.status} {e.reason}"
                    self._on_result("refused")
                    return
                error = f"{e.status} {e.reason}"
            except Exception as e:  # network trouble: bounded retry
                error = f"{type(e).__name__}: {e}"
            self._on_result("error")
            log.warning(
                "pod annotation patch failed",
                extra={"reason": report.reason, "attempt": attempt, "error": error},
            )
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


class DrainWatch:
    """Watches this pod; calls ``on_drain(reason)`` once when the drain annotation appears."""

    def __init__(
        self, api: client.ApiClient, name: str, namespace: str, on_drain: Callable[[str], None]
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.name = name
        self.namespace = namespace
        self._on_drain = on_drain
        self._task: asyncio.Task[None] | None = None
        self.fired = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="drain-watch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _check(self, pod: Any) -> bool:
        annotations = dict(pod.metadata.annotations or {}) if pod.metadata else {}
        if not drain_requested(annotations):
            return False
        self.fired = True
        reason = annotations.get(ANN_DRAIN_REASON, "") or "unspecified"
        self._on_drain(f"drain annotation ({reason})")
        return True

    async def _run(self) -> None:
        selector = f"metadata.name={self.name}"
        failures = 0
        while not self.fired:
            w = watch.Watch()
            try:
                # list first: the annotation may have been set before the watch started
                pods = await self._core.list_namespaced_pod(self.namespace, field_selector=selector)
                for pod in pods.items:
                    if self._check(pod):
                        return
                async with w.stream(
                    self._core.list_namespaced_pod,
                    self.namespace,
                    field_selector=selector,
                    resource_version=pods.metadata.resource_version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                ) as stream:
                    async for event in stream:
                        failures = 0
                        if event["type"] in ("ADDED", "MODIFIED") and self._check(event["object"]):
                            return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # reconnect with a bounded backoff
                failures += 1
                log.warning(
                    "pod watch interrupted, retrying",
                    extra={"error": f"{type(e).__name__}: {e}", "failures": failures},
                )
                await asyncio.sleep(min(0.5 * failures, 5.0))
            finally:
                w.stop()
