"""The demo on the real node: the chart's operator and the workers run as real containers.

``demo.py`` uses this when ``node.unsupported_reason()`` is None; otherwise it falls back to
worker processes beside kwok pods (``runner.py``) and says so. On 2 cores the node has 1900m
allocatable, so the demo's scaling pool asks for 500m per worker without pinning, and a short
last step shows pinning with one Guaranteed ``cpu: 1`` worker and its cpuset.
"""

from __future__ import annotations

from typing import Any

from . import node as node_mod
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
    from .stack import free_port

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
    }


def worker_template(state: StackState, template: dict[str, Any]) -> dict[str, Any]:
    """A pool template adjusted for the real node: local image, hostNetwork, placement."""
    env = [*template.get("env", []), *apiserver_env(state)]
    return {
        **template,
        "image": images(state)["worker"],
        "imagePullPolicy": "Never",
        "hostNetwork": True,
        "serviceAccountName": "voicepool-worker",
        "env": env,
        **node_mod.placement(),
    }
