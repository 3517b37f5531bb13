"""The one layer that talks to the Kubernetes API (kubernetes_asyncio), with retries.

Transient failures (connection errors, 429, 5xx) are retried with tenacity; a 404 on delete is
success; a 409 on a guarded delete means the pod changed since it was planned (a session may
have started), which the caller must treat as "re-plan", never as "delete anyway".
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .constants import GROUP, PLURAL, VERSION
from .metrics import API_WRITES

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "voicepool.dev/operator"


class Conflict(Exception):
    """The object changed since it was read; re-plan instead of acting on stale data."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in (429, 500, 502, 503, 504)
    return isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError)


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(initial=0.1, max=3.0),
        reraise=True,
    )


async def load_config() -> client.ApiClient:
    """In-cluster config when running in a pod, else $KUBECONFIG (kopf uses the same)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


class Kube:
    """Typed verbs the operator needs, and nothing more."""

    def __init__(self, api: client.ApiClient, identity: str) -> None:
        self.api = api
        # Typed as Any: the generated stubs omit the per-call options (_content_type) we use.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.events: Any = client.EventsV1Api(api)
        self.identity = identity

    async def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        async for attempt in _retrying():
            with attempt:
                API_WRITES.labels("create_pod").inc()
                pod = await self.core.create_namespaced_pod(
                    namespace, dict(manifest), _preload_content=False
                )
                return dict(await pod.json())
        raise AssertionError("unreachable")

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> dict[str, Any] | None:
        """Merge-patch annotations; returns the updated pod, or None if it is gone."""
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            async for attempt in _retrying():
                with attempt:
                    API_WRITES.labels("patch_pod").inc()
                    resp = await self.core.patch_namespaced_pod(
                        name,
                        namespace,
                        body,
                        _content_type="application/merge-patch+json",
                        _preload_content=False,
                    )
                    return dict(await resp.json())
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        raise AssertionError("unreachable")

    async def delete_pod(
        self, namespace: str, name: str, *, uid: str | None, resource_version: str | None
    ) -> None:
        """Delete only the exact pod version we planned on (uid + resourceVersion guard)."""
        pre = client.V1Preconditions(uid=uid, resource_version=resource_version)
        try:
            async for attempt in _retrying():
                with attempt:
                    API_WRITES.labels("delete_pod").inc()
                    await self.core.delete_namespaced_pod(
                        name, namespace, body=client.V1DeleteOptions(preconditions=pre)
                    )
        except ApiException as e:
            if e.status == 404:
                return
            if e.status == 409:
                raise Conflict(f"pod {namespace}/{name} changed since it was planned") from e
            raise

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        try:
            async for attempt in _retrying():
                with attempt:
                    API_WRITES.labels("patch_status").inc()
                    await self.custom.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        name,
                        {"status": dict(status)},
                        _content_type="application/merge-patch+json",
                    )
        except ApiException as e:
            if e.status != 404:  # the pool was deleted meanwhile: nothing to report on
                raise

    async def event(
        self,
        regarding: Mapping[str, Any],
        *,
        reason: str,
        note: str,
        action: str,
        type_: str = "Normal",
        related: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a Kubernetes Event (events.k8s.io/v1); never fails the reconcile."""
        meta = regarding.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC)
        body = client.EventsV1Event(
            # Named like the kubelet's events (object.suffix); generateName may not end in ".".
            metadata=client.V1ObjectMeta(
                name=f"{meta.get('name', 'voicepool')}.{uuid.uuid4().hex[:16]}"
            ),
            event_time=now,
            action=action,
            reason=reason,
            note=note[:1024],
            type=type_,
            reporting_controller=REPORTING_CONTROLLER,
            reporting_instance=self.identity[:128],
            regarding=_ref(regarding),
            related=_ref(related) if related else None,
        )
        try:
            API_WRITES.labels("event").inc()
            await self.events.create_namespaced_event(namespace, body)
        except (ApiException, aiohttp.ClientError, TimeoutError) as e:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), e)


def _ref(obj: Mapping[str, Any]) -> client.V1ObjectReference:
    meta = obj.get("metadata", {})
    return client.V1ObjectReference(
        api_version=obj.get("apiVersion"),
        kind=obj.get("kind"),
        name=meta.get("name"),
        namespace=meta.get("namespace"),
        uid=meta.get("uid"),
        resource_version=meta.get("resourceVersion"),
    )
