"""The demo on the real node: the chart's operator and the workers run as real containers.

``demo.py`` uses this when ``node.unsupported_reason()`` is None; otherwise it falls back to
worker processes beside kwok pods (``runner.py``) and says so. On 2 cores the node has 1900m
allocatable, so the demo's scaling pool asks for 500m per worker without pinning, and a short
last step shows pinning with one Guaranteed ``cpu: 1`` worker and its cpuset.
"""

from __future__ import annotations

import threading
from typing import Any

from voicepool_contract import LABEL_POOL

from . import node as node_mod
from . import prometheus as prom
from .ports import free_port
from .stack import StackState

#: Chart operator pod label (the chart's Deployment).
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"


def apiserver_env(state: StackState) -> list[dict[str, str]]:
    """No kube-proxy on the node: in-cluster clients are told where the apiserver listens."""
    assert state.apiserver_url is not None
    port = state.apiserver_url.rsplit(":", 1)[1]
    return [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": port},
    ]


def images(state: StackState) -> dict[str, str]:
    assert state.node is not None
    return dict(state.node["images"])


def chart_values(state: StackState, worker_namespaces: list[str], peering: str) -> dict[str, Any]:
    """Helm values that run the chart's operator from the local image on the real node."""
    repo, tag = images(state)["operator"].rsplit(":", 1)
    return {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "peering": {"name": peering},
        "metrics": {"port": free_port()},  # hostNetwork: the node's ports, pick free ones
        "operator": {
            "replicas": 1,  # hostNetwork: two replicas on one node would share its ports
            "hostNetwork": True,
            "livenessPort": free_port(),
            "extraEnv": apiserver_env(state),
            # kopf's in-cluster login dials https://kubernetes.default.svc (port 443): no
            # cluster DNS here, so the name points at the apiserver on 127.0.0.1:443.
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["kubernetes.default.svc"]}],
            "logFormat": "plain",
            **node_mod.placement(),
        },
        "worker": {"namespaces": worker_namespaces},
        # The real node has no pod network: workers run in the node's network namespace.
        "workerPolicy": {"allowHostNetwork": True},
    }


def worker_template(state: StackState, template: dict[str, Any]) -> dict[str, Any]:
    """A pool template adjusted for the real node: local image, hostNetwork, placement."""
    env = [*template.get("env", []), *apiserver_env(state)]
    return {
        **template,
        "image": images(state)["worker"],
        "imagePullPolicy": "Never",
        "hostNetwork": True,
        "env": env,
        **node_mod.placement(),
    }


def worker_targets(pods: list[Any]) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Prometheus targets (address, discovery labels) per worker pod on the real node.

    The pods are hostNetwork, so each container port is a port of the node itself and is
    reached on loopback. Only pods the kubelet started (Running, or ended but not yet deleted,
    so a crashed worker shows as ``up == 0`` rather than a gap) get targets.
    """
    out: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for pod in pods:
        spec, status = pod.spec, pod.status
        if spec.node_name != node_mod.NODE_NAME or not spec.host_network:
            continue
        if status is None or status.phase not in ("Running", "Succeeded", "Failed"):
            continue
        for container in spec.containers:
            for port in container.ports or []:
                labels = prom.pod_discovery_labels(
                    namespace=pod.metadata.namespace,
                    pod=pod.metadata.name,
                    labels=dict(pod.metadata.labels or {}),
                    container=container.name,
                    port_name=port.name or "",
                    port=port.container_port,
                    phase=status.phase,
                )
                address = f"127.0.0.1:{port.container_port}"
                out.setdefault(pod.metadata.name, []).append((address, labels))
    return out


class NodeDiscovery:
    """Plays Prometheus' Kubernetes pod discovery for the real node's workers.

    Debian's prometheus has no Kubernetes discovery (see ``prometheus.py``); on kwok the
    runner writes the targets, on the real node nobody runs the workers but the kubelet, so
    this thread lists the namespace's pods every second and keeps the file_sd targets in step.
    """

    def __init__(self, core: Any, info: prom.PrometheusInfo | None, namespace: str) -> None:
        self.core, self.info, self.namespace = core, info, namespace
        self._stop = threading.Event()
        self._known: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="node-discovery", daemon=True)

    def start(self) -> None:
        if self.info is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for name in self._known:
            prom.unregister_worker(self.info, self.namespace, name)

    def sync(self) -> None:
        pods = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=LABEL_POOL,  # every pool pod has it
        ).items
        targets = worker_targets(pods)
        for ports in targets.values():
            for address, labels in ports:
                prom.register_worker(self.info, address, labels)
        for gone in self._known - set(targets):
            prom.unregister_worker(self.info, self.namespace, gone)
        self._known = set(targets)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.sync()
            except Exception:
                continue
