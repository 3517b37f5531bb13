"""List + watch against any cluster: this one (the operator's own login) or a region's, from
a kubeconfig kept in a Secret.

The operator's ``kube.Kube`` speaks to its own cluster only and never streams; routing needs to
*watch* a pool in another cluster, and the router to watch VoiceRoutes, so this module adds the
one streaming verb on the same footing: paths only through ``kube.api_path`` (every segment
quoted), TLS from ``kube.ssl_context``, no generated client library. A kubeconfig from a Secret
must be self-contained (inline certificate data or a token): file paths and exec plugins would
read the operator's own filesystem or run programs, and are refused.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml
import yarl

from ..constants import FIELD_MANAGER
from ..kube import MERGE_PATCH, ApiError, answer, ssl_context

log = logging.getLogger(__name__)

#: The server ends each watch after this long; the client re-watches from the last
#: resourceVersion, which also proves the cluster still answers.
WATCH_TIMEOUT_S = 30


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be used; the message says why (never its content)."""


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (ValueError, TypeError) as e:
        raise KubeconfigError(f"{what} is not base64") from e


def connection_from_kubeconfig(text: str) -> kopf.ConnectionInfo:
    """The current context of a self-contained kubeconfig as kopf's ConnectionInfo."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"not YAML ({type(e).__name__})") from None
    if not isinstance(doc, Mapping):
        raise KubeconfigError("not a kubeconfig (no mapping at the top)")

    def named(section: str, name: str) -> Mapping[str, Any]:
        for item in doc.get(section) or []:
            if isinstance(item, Mapping) and item.get("name") == name:
                body = item.get(section[:-1])
                if isinstance(body, Mapping):
                    return body
        raise KubeconfigError(f"no {section[:-1]} named {name!r}")

    current = doc.get("current-context")
    contexts = [c for c in doc.get("contexts") or [] if isinstance(c, Mapping)]
    if not current:
        if len(contexts) != 1:
            raise KubeconfigError("no current-context")
        current = contexts[0].get("name")
    context = named("contexts", str(current))
    cluster = named("clusters", str(context.get("cluster")))
    user = named("users", str(context.get("user"))) if context.get("user") else {}
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise KubeconfigError("the cluster has no https:// server")
    for refused in ("certificate-authority", "client-certificate", "client-key", "tokenFile"):
        if cluster.get(refused) or user.get(refused):
            raise KubeconfigError(f"{refused!r} names a file; use inline *-data instead")
    if user.get("exec") or user.get("auth-provider"):
        raise KubeconfigError("exec and auth-provider credentials are not supported")
    ca = cluster.get("certificate-authority-data")
    cert, key = user.get("client-certificate-data"), user.get("client-key-data")
    token = user.get("token")
    if not token and not (cert and key):
        raise KubeconfigError("the user has neither a token nor client-certificate/key data")
    return kopf.ConnectionInfo(
        server=server,
        ca_data=_b64(ca, "certificate-authority-data") if ca else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        certificate_data=_b64(cert, "client-certificate-data") if cert else None,
        private_key_data=_b64(key, "client-key-data") if key else None,
        token=str(token) if token else None,
        scheme="Bearer" if token else None,
    )


class ClusterClient:
    """GET, status merge-patch and watch on one cluster."""

    def __init__(self, info: kopf.ConnectionInfo, user_agent: str = "voicepool-routing") -> None:
        self.server = info.server.rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="voicepool-routing-")
        self._ssl = ssl_context(info, Path(self._tmp.name))
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        if info.token:
            self._headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
                read_bufsize=2**22,  # one watch line holds a whole object
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tmp.cleanup()

    def _url(self, path: str) -> yarl.URL:
        return yarl.URL(self.server + path, encoded=True)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        async with self._client().get(
            self._url(path),
            params=dict(params or {}),
            timeout=aiohttp.ClientTimeout(total=15, connect=5),
        ) as resp:
            return await answer(resp)

    async def patch_status(self, path: str, status: Mapping[str, Any]) -> None:
        """Merge-patch ``{"status": status}`` at ``path`` (a ``.../status`` subresource)."""
        async with self._client().patch(
            self._url(path),
            data=json.dumps({"status": dict(status)}),
            params={"fieldManager": FIELD_MANAGER},
            headers={"Content-Type": MERGE_PATCH},
            timeout=aiohttp.ClientTimeout(total=15, connect=5),
        ) as resp:
            if resp.status >= 400:
                await answer(resp)  # raises ApiError with the apiserver's message

    async def stream(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request, until the server ends it."""
        query = {
            **params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        async with self._client().get(
            self._url(path),
            params=query,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=5, sock_connect=5, sock_read=WATCH_TIMEOUT_S + 15
            ),
        ) as resp:
            if resp.status >= 400:
                await answer(resp)  # raises ApiError with the apiserver's message
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


class Gone(Exception):
    """The resourceVersion to watch from is too old (410): list again."""


async def list_and_watch(
    client: ClusterClient,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    on_list: Callable[[list[dict[str, Any]]], Awaitable[None]],
    on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
    on_alive: Callable[[], Awaitable[None]],
) -> None:
    """List ``path`` once, then watch it from that resourceVersion for ever.

    Returns never; raises what the cluster answered (``ApiError``, connection errors) so the
    caller can say why the cluster is down, and re-calls it. ``on_alive`` runs whenever the
    server answered (a list, an event, a bookmark, a watch ended on time).
    """
    params = dict(params or {})
    while True:
        listing = await client.get(path, params)
        await on_alive()
        await on_list(list(listing.get("items") or []))
        version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        try:
            while True:
                async for event in client.stream(path, {**params, "resourceVersion": version}):
                    kind = str(event.get("type") or "")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone()
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    await on_alive()
                    if kind != "BOOKMARK":
                        await on_event(kind, obj)
                await on_alive()  # the server ended the watch on time: it still answers
        except Gone:
            continue
        except ApiError as e:
            if e.status == 410:
                continue
            raise


def describe(exc: BaseException) -> str:
    """A one-line cause for a status message (no secrets: never a request body)."""
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}: {exc.message}"[:300]
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
