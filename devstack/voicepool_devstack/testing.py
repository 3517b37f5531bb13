"""Entry point the tests, benchmarks and demo share: a stack from the environment.

- ``VOICEPOOL_KUBECONFIG`` set: use that cluster (e.g. kind from ``kind-config.yaml``) instead
  of starting the embedded control plane.
- ``VOICEPOOL_LIVEKIT_URL`` + ``VOICEPOOL_LIVEKIT_API_KEY`` + ``VOICEPOOL_LIVEKIT_API_SECRET``
  set: use that LiveKit server; otherwise a local livekit-server is started on loopback.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .livekit import LiveKitInfo
from .prometheus import PrometheusInfo
from .regions import NamedStack
from .sip import SipInfo
from .stack import LocalStack, StackConfig

if TYPE_CHECKING:
    from kubernetes import client

T = TypeVar("T")


@dataclass(frozen=True)
class Environment:
    kubeconfig: str
    livekit: LiveKitInfo
    embedded: bool  # True when the control plane is the devstack's own (kwok nodes)
    prometheus: PrometheusInfo | None = None  # the stack's own Prometheus, when it runs one
    sip: SipInfo | None = None  # livekit-sip of the local stack (None with an external LiveKit)
    #: The local stack's servers by name: each PID leads the process group of its server.
    pids: Mapping[str, int] = field(default_factory=dict)


def _external_livekit() -> LiveKitInfo | None:
    url = os.environ.get("VOICEPOOL_LIVEKIT_URL")
    key = os.environ.get("VOICEPOOL_LIVEKIT_API_KEY")
    secret = os.environ.get("VOICEPOOL_LIVEKIT_API_SECRET")
    if not (url and key and secret):
        return None
    http = url.replace("wss://", "https://").replace("ws://", "http://")
    return LiveKitInfo(url, http, key, secret)


@contextlib.contextmanager
def environment(
    nodes: int = 2,
    node_cpu: str = "8",
    node_memory: str = "32Gi",
    node_pods: str = "110",
    *,
    sip: bool = True,
    prometheus: bool = True,
) -> Iterator[Environment]:
    """Start what the environment does not already provide; always stop what we started.
    ``sip``/``prometheus`` False: a lighter stack for a run that places no phone call."""
    external_kube = os.environ.get("VOICEPOOL_KUBECONFIG")
    external_lk = _external_livekit()
    need_kube = not external_kube
    need_lk = external_lk is None
    if not (need_kube or need_lk):
        yield Environment(str(external_kube), external_lk, embedded=False)  # type: ignore[arg-type]
        return
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-stack-"))
    stack = LocalStack(
        StackConfig(
            workdir=workdir,
            nodes=nodes,
            node_cpu=node_cpu,
            node_memory=node_memory,
            node_pods=node_pods,
            kubernetes=need_kube,
            livekit=need_lk,
            sip=sip,
            prometheus=prometheus,
        )
    )
    try:
        state = stack.start()
        kubeconfig = external_kube or state.kubeconfig
        livekit = external_lk or state.livekit
        assert kubeconfig is not None and livekit is not None
        yield Environment(
            kubeconfig,
            livekit,
            embedded=need_kube,
            prometheus=state.prometheus,
            sip=state.sip,
            pids=state.pids,
        )
    finally:
        stack.stop()


@contextlib.contextmanager
def second_stack(name: str, *, kubernetes: bool = True, sip: bool = False) -> Iterator[NamedStack]:
    """Another region beside the session's stack: its own kube-apiserver (one kwok node; with
    ``kubernetes=False`` none) and livekit-server, on other free loopback ports, stopped and
    removed afterwards. ``stop_livekit()``/``start_livekit()`` play its LiveKit going away and
    coming back on the same URL and keys (docs/routing.md)."""
    stack = NamedStack(name, kubernetes=kubernetes, sip=sip)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop(remove=not os.environ.get("VOICEPOOL_KEEP_LOGS"))


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value (bounded in time); return that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


#: The ServiceAccount the operator gives worker pods by default (the chart's worker account).
WORKER_SERVICE_ACCOUNT = "voicepool-worker"


def create_namespace(
    core: client.CoreV1Api,
    name: str,
    *,
    timeout: float = 30.0,
    worker_service_account: bool = True,
    labels: dict[str, str] | None = None,
) -> str:
    """Create namespace ``name`` and return once pods can be created in it.

    The apiserver refuses pods in a namespace until the controller-manager's service-account
    controller has made its ``default`` ServiceAccount (a second or so on a fresh stack), so
    a namespace is only ready for tests, benches and the demo once that account exists. Worker
    pods run as ``voicepool-worker`` unless their pool names another; the chart creates it in
    the namespaces it serves, and here it is created unless the chart will
    (``worker_service_account=False``).
    """
    from kubernetes import client

    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or None))
    )
    if worker_service_account:
        core.create_namespaced_service_account(
            name,
            client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=WORKER_SERVICE_ACCOUNT)),
        )

    def default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except client.ApiException as e:
            if e.status != 404:
                raise
            return False

    wait_for(default_account, timeout=timeout, what=f"the default ServiceAccount in {name}")
    return name
