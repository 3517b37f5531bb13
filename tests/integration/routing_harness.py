"""What the routing tests and the routing bench share: ``voicepool-router`` as a subprocess,
VoiceRoute manifests and their status, Secrets. The stand-in agent and a region's reader
kubeconfig are the devstack's (``voicepool_devstack.regions``), shared with the demo."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from voicepool_contract import GROUP, ROUTE_KIND, ROUTE_PLURAL, VERSION
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.ports import free_port
from voicepool_devstack.testing import wait_for


class RouterProcess:
    """``voicepool-router`` serving one namespace, as the chart runs it (token from env)."""

    def __init__(
        self, kubeconfig: str, namespace: str, token: str, *, cooldown: float = 5.0
    ) -> None:
        self.port = free_port()
        self.token = token
        self.log_path = Path(tempfile.mkstemp(prefix="voicepool-router-", suffix=".log")[1])
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "voicepool_operator.routing.router",
                    f"--namespace={namespace}",
                    "--address=127.0.0.1",
                    f"--port={self.port}",
                    f"--cooldown={cooldown}",
                ],
                env={**os.environ, "KUBECONFIG": kubeconfig, "VOICEPOOL_ROUTER_TOKEN": token},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited early:\n{self.log_tail()}")
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout=30, what="voicepool-router /readyz")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()
        except OSError:
            return 0, ""

    def post(
        self, path: str, body: dict[str, Any], token: str | None = "", timeout: float = 60
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers); ``token=""`` uses the router's own, None sends none."""
        headers = {"Content-Type": "application/json"}
        token = self.token if token == "" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.url(path), data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return int(r.status), json.loads(r.read() or b"{}"), dict(r.headers)
        except urllib.error.HTTPError as e:
            return int(e.code), json.loads(e.read() or b"{}"), dict(e.headers)

    def metric(self, name: str, **labels: str) -> float:
        """A counter's value from /metrics, summed over series matching ``labels``."""
        total = 0.0
        for line in self.get("/metrics")[1].splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_router(
    kubeconfig: str, namespace: str, token: str, **kw: Any
) -> Iterator[RouterProcess]:
    router = RouterProcess(kubeconfig, namespace, token, **kw)
    try:
        yield router
    finally:
        router.stop()


def route_manifest(name: str, regions: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": ROUTE_KIND,
        "metadata": {"name": name},
        "spec": {"regions": regions, **spec},
    }


def region(
    name: str,
    livekit: LiveKitInfo,
    secret: str,
    pool: str,
    *,
    priority: int = 0,
    weight: int = 100,
    kubeconfig_secret: str | None = None,
    pool_namespace: str | None = None,
    trunks: list[str] | None = None,
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": pool}
    if kubeconfig_secret:
        ref["kubeconfigSecretRef"] = {"name": kubeconfig_secret}
    if pool_namespace:
        ref["namespace"] = pool_namespace
    out: dict[str, Any] = {
        "name": name,
        "priority": priority,
        "weight": weight,
        "livekit": {"url": livekit.url, "credentialsSecretRef": {"name": secret}},
        "pool": ref,
    }
    if trunks:
        out["outboundTrunks"] = trunks
    return out


class Routes:
    """VoiceRoutes of one namespace, through the real API."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.ns = namespace

    def create(self, manifest: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, ROUTE_PLURAL, manifest)

    def get(self, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, ROUTE_PLURAL, name)
        )

    def delete(self, name: str) -> None:
        with contextlib.suppress(client.ApiException):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, ROUTE_PLURAL, name)

    def region(self, name: str, region: str) -> dict[str, Any]:
        for r in (self.get(name).get("status") or {}).get("regions") or []:
            if r.get("name") == region:
                return dict(r)
        return {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for c in (self.get(name).get("status") or {}).get("conditions") or []:
            if c.get("type") == type_:
                return dict(c)
        return {}

    def wait_region(
        self, name: str, region: str, timeout: float = 60, **want: Any
    ) -> dict[str, Any]:
        """Wait until the route's status shows ``region`` with the fields in ``want``."""

        def matches() -> dict[str, Any] | None:
            r = self.region(name, region)
            return r if r and all(r.get(k) == v for k, v in want.items()) else None

        return wait_for(matches, timeout=timeout, what=f"route {name} region {region} {want}")


def secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
    )


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (not verified: the room server does that when the client joins)."""
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
