"""The one layer that talks to the Kubernetes API: a few REST verbs over aiohttp, with retries.

Credentials come from kopf's own login (service account in a pod, else $KUBECONFIG), so the
operator and its watches authenticate the same way. No generated client library is loaded:
kubernetes_asyncio alone costs ~70 MB of RSS for models we never use.

Transient failures (connection errors, 429, 5xx) are retried with tenacity; a 404 on delete is
success; a 409 on a guarded delete means the pod changed since it was planned (a session may
have started), which the caller must treat as "re-plan", never as "delete anyway".
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import ssl
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
import yarl
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .constants import FIELD_MANAGER, GROUP, PLURAL, VERSION
from .metrics import API_WRITES

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "voicepool.dev/operator"
MERGE_PATCH = "application/merge-patch+json"


def api_path(*segments: str) -> str:
    """An API path from its segments, each quoted as exactly one segment.

    The only way a path is built here: a name with "/", "%2e%2e" or any other escape stays
    inside its own segment, and "." or ".." (which an HTTP client or the apiserver would
    collapse into the parent) is refused, so no value can lead a request into another
    namespace or resource.
    """
    out = []
    for seg in segments:
        if seg in ("", ".", ".."):
            raise ValueError(f"refusing an API path with the segment {seg!r}")
        out.append(quote(seg, safe=""))
    return "/" + "/".join(out)


class ApiError(Exception):
    """A non-2xx answer from the apiserver, with its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


async def answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The apiserver's JSON body; ``ApiError`` with its own message for a non-2xx status."""
    data: dict[str, Any] = await resp.json(content_type=None) if resp.content_length != 0 else {}
    if resp.status >= 400:
        raise ApiError(resp.status, str((data or {}).get("message") or resp.reason))
    return data


class Conflict(Exception):
    """The object changed since it was read; re-plan instead of acting on stale data."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status in (429, 500, 502, 503, 504)
    return isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError)


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(initial=0.1, max=3.0),
        reraise=True,
    )


def login(**kwargs: Any) -> kopf.ConnectionInfo:
    """In-cluster service account first, then $KUBECONFIG (the same order kopf uses)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError("no credentials: not in a pod and no usable $KUBECONFIG")
    return info


def _pem(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return raw if b"-----BEGIN" in raw else base64.b64decode(raw)


def ssl_context(info: kopf.ConnectionInfo, tmp: Path) -> ssl.SSLContext | bool:
    """TLS settings from the login: CA, client certificate (kubeconfig) or none (token)."""
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=info.ca_path)
    if info.ca_data:
        ctx.load_verify_locations(cadata=_pem(info.ca_data).decode())
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        cert, key = str(tmp / "client.crt"), str(tmp / "client.key")
        for path, data in ((cert, info.certificate_data), (key, info.private_key_data)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_pem(data))
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


class Kube:
    """Typed verbs the operator needs, and nothing more."""

    def __init__(self, info: kopf.ConnectionInfo, identity: str) -> None:
        self.identity = identity
        self.server = info.server.rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="voicepool-operator-")
        self._ssl = ssl_context(info, Path(self._tmp.name))
        self._headers = {"Accept": "application/json", "User-Agent": "voicepool-operator"}
        if info.token:
            self._headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._tmp.cleanup()

    async def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16),
            )
        async with self._session.request(
            method,
            yarl.URL(self.server + path, encoded=True),
            json=body,
            params={"fieldManager": FIELD_MANAGER, **(params or {})}
            if method in ("POST", "PATCH")
            else params,
            headers={"Content-Type": content_type},
        ) as resp:
            return await answer(resp)

    async def _call(
        self, verb: str, method: str, path: str, body: Any = None, **kw: Any
    ) -> dict[str, Any]:
        async for attempt in _retrying():
            with attempt:
                API_WRITES.labels(verb).inc()
                return await self._request(method, path, body, **kw)
        raise AssertionError("unreachable")

    async def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(
            "create_pod",
            "POST",
            api_path("api", "v1", "namespaces", namespace, "pods"),
            dict(manifest),
        )

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        *,
        annotations: Mapping[str, str | None] | None = None,
        labels: Mapping[str, str | None] | None = None,
        verb: str = "patch_pod",
    ) -> dict[str, Any] | None:
        """Merge-patch annotations and labels in one write; the updated pod, or None if gone.

        `verb` names the purpose in `voicepool_api_writes_total` (drain marks vs hints).
        """
        meta: dict[str, Any] = {}
        if annotations:
            meta["annotations"] = dict(annotations)
        if labels:
            meta["labels"] = dict(labels)
        body = {"metadata": meta}
        try:
            return await self._call(
                verb,
                "PATCH",
                api_path("api", "v1", "namespaces", namespace, "pods", name),
                body,
                content_type=MERGE_PATCH,
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete_pod(
        self, namespace: str, name: str, *, uid: str | None, resource_version: str | None
    ) -> None:
        """Delete only the exact pod version we planned on (uid + resourceVersion guard)."""
        pre = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": pre}
        try:
            await self._call(
                "delete_pod",
                "DELETE",
                api_path("api", "v1", "namespaces", namespace, "pods", name),
                body,
            )
        except ApiError as e:
            if e.status == 404:
                return
            if e.status == 409:
                raise Conflict(f"pod {namespace}/{name} changed since it was planned") from e
            raise

    async def ensure_pdb(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create a PodDisruptionBudget unless one of that name exists; False if not allowed."""
        path = api_path("apis", "policy", "v1", "namespaces", namespace, "poddisruptionbudgets")
        try:
            await self._call("create_pdb", "POST", path, dict(manifest))
        except ApiError as e:
            if e.status == 409:
                return True
            if e.status == 403:
                log.warning("may not create PodDisruptionBudgets in %s: %s", namespace, e)
                return False
            raise
        return True

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data, decoded; {} when it does not exist (the caller names what lacks)."""
        try:
            raw = await self._request(
                "GET", api_path("api", "v1", "namespaces", namespace, "secrets", name)
            )
        except ApiError as e:
            if e.status == 404:
                return {}
            raise
        data = raw.get("data") or {}
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}

    async def list_pools(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every VoiceAgentPool (in `namespaces`, or in all): read straight from the API, so
        a standby replica, whose watches are paused, sees them too."""
        paths = [
            api_path("apis", GROUP, VERSION, "namespaces", ns, PLURAL) for ns in namespaces
        ] or [api_path("apis", GROUP, VERSION, PLURAL)]
        out: list[dict[str, Any]] = []
        for path in paths:
            async for attempt in _retrying():
                with attempt:
                    out += (await self._request("GET", path)).get("items") or []
        return out

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One VoiceAgentPool straight from the API; None when it does not exist."""
        path = api_path("apis", GROUP, VERSION, "namespaces", namespace, PLURAL, name)
        try:
            async for attempt in _retrying():
                with attempt:
                    return await self._request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        raise AssertionError("unreachable")

    async def list_objects(
        self, namespace: str, kind: str, *, labels: str = "", fields: str = ""
    ) -> list[dict[str, Any]]:
        """Pods (``kind="pods"``) or Events (``"events"``, events.k8s.io/v1) of one namespace,
        by label and field selector."""
        prefix = ("api", "v1") if kind == "pods" else ("apis", "events.k8s.io", "v1")
        if kind not in ("pods", "events"):
            raise ValueError(f"list_objects: {kind!r} is not pods or events")
        params = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        path = api_path(*prefix, "namespaces", namespace, kind)
        async for attempt in _retrying():
            with attempt:
                return (await self._request("GET", path, params=params)).get("items") or []
        raise AssertionError("unreachable")

    async def patch_pool_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> bool:
        """Merge-patch some of a pool's annotations (None deletes one); False if it is gone.

        Only the keys named change, so two writers of different keys never conflict.
        """
        path = api_path("apis", GROUP, VERSION, "namespaces", namespace, PLURAL, name)
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            await self._call("patch_pool", "PATCH", path, body, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = api_path("apis", GROUP, VERSION, "namespaces", namespace, PLURAL, name, "status")
        try:
            await self._call(
                "patch_status", "PATCH", path, {"status": dict(status)}, content_type=MERGE_PATCH
            )
        except ApiError as e:
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
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body: dict[str, Any] = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # Named like the kubelet's events (object.suffix); generateName may not end in ".".
            "metadata": {"name": f"{meta.get('name', 'voicepool')}.{uuid.uuid4().hex[:16]}"},
            "eventTime": now,
            "action": action,
            "reason": reason,
            "note": note[:1024],
            "type": type_,
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.identity[:128],
            "regarding": _ref(regarding),
        }
        if related:
            body["related"] = _ref(related)
        try:
            API_WRITES.labels("event").inc()
            await self._request(
                "POST",
                api_path("apis", "events.k8s.io", "v1", "namespaces", namespace, "events"),
                body,
            )
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), e)


def _ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    ref = {
        "apiVersion": obj.get("apiVersion") or "v1",
        "kind": obj.get("kind") or "Pod",
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {k: v for k, v in ref.items() if v}
