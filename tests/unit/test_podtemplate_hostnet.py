"""hostNetwork pools (the local real node): one HTTP port per worker, never a clash."""

from __future__ import annotations

from typing import Any

import pytest
from voicepool_operator.constants import WORKER_HTTP_PORT
from voicepool_operator.podtemplate import (
    HOST_PORT_SPAN,
    build_pod,
    free_host_port,
    template_hash,
)
from voicepool_operator.spec import parse_spec

RAW: dict[str, Any] = {
    "agentName": "receptionist",
    "livekit": {"url": "ws://127.0.0.1:7880", "credentialsSecretRef": {"name": "lk"}},
    "template": {"image": "voicepool.local/worker:abc", "hostNetwork": True},
}


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_default_pod_has_no_host_network_and_port_8081() -> None:
    spec = parse_spec({**RAW, "template": {"image": "x:1"}})
    pod = build_pod("p", "ns", "uid", spec, template_hash(spec))
    assert "hostNetwork" not in pod["spec"]
    assert pod["spec"]["containers"][0]["ports"][0]["containerPort"] == WORKER_HTTP_PORT
    assert _env(pod)["VOICEPOOL_HTTP_PORT"] == str(WORKER_HTTP_PORT)


def test_host_network_pod_listens_and_is_probed_on_its_port() -> None:
    spec = parse_spec(RAW)
    pod = build_pod("p", "ns", "uid", spec, template_hash(spec), 8083)
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["hostNetwork"] is True
    assert container["ports"] == [{"name": "http", "containerPort": 8083, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert _env(pod)["VOICEPOOL_HTTP_PORT"] == "8083"


def test_the_port_does_not_change_the_template_hash() -> None:
    spec = parse_spec(RAW)
    thash = template_hash(spec)
    a = build_pod("p", "ns", "uid", spec, thash, 8081)
    b = build_pod("p", "ns", "uid", spec, thash, 8090)
    assert a["metadata"]["labels"] == b["metadata"]["labels"]


def test_free_host_port_skips_ports_held_by_existing_pods() -> None:
    spec = parse_spec(RAW)
    thash = template_hash(spec)
    held = [build_pod("p", "ns", "uid", spec, thash, port) for port in (8081, 8082, 8084)]
    assert free_host_port([]) == WORKER_HTTP_PORT
    assert free_host_port(held) == 8083
    assert free_host_port([{"metadata": {}}]) == WORKER_HTTP_PORT  # no spec: holds nothing


def test_free_host_port_refuses_when_every_port_is_taken() -> None:
    spec = parse_spec(RAW)
    thash = template_hash(spec)
    ports = range(WORKER_HTTP_PORT, WORKER_HTTP_PORT + HOST_PORT_SPAN)
    with pytest.raises(ValueError, match="taken"):
        free_host_port([build_pod("p", "ns", "uid", spec, thash, p) for p in ports])


# -- a crashing worker container: Degraded with the pod's reason, no replacement loop ---------


def _crashing_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"voicepool.dev/template-hash": "h"}},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "worker",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}},
                }
            ],
        },
    }


def test_container_problem_names_reason_and_exit_code() -> None:
    from voicepool_operator.podview import container_problem

    assert (
        container_problem(_crashing_pod("a")["status"]) == "CrashLoopBackOff (exit code 2: Error)"
    )
    pulling = {
        "containerStatuses": [
            {"state": {"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}}}
        ]
    }
    assert container_problem(pulling) == "ErrImageNeverPull: not present"
    assert (
        container_problem(
            {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}
        )
        is None
    )
    assert container_problem({}) is None


def test_crashing_pod_degrades_the_pool_and_is_not_replaced() -> None:
    import datetime as dt

    from voicepool_operator.planner import CreatePod, DeletePod, plan
    from voicepool_operator.podview import pod_view_from_dict

    spec = parse_spec({**RAW, "minReplicas": 1, "maxReplicas": 3, "sessionsPerPod": 1,
                       "warmPool": {"idleSessions": 1}})  # fmt: skip
    thash = template_hash(spec)
    raw = _crashing_pod("p-1")
    raw["metadata"]["labels"]["voicepool.dev/template-hash"] = thash
    raw["metadata"]["creationTimestamp"] = "2026-03-02T12:00:00Z"
    now = dt.datetime(2026, 3, 2, 12, 0, 5, tzinfo=dt.UTC)
    result = plan(spec, thash, [pod_view_from_dict(raw)], now, [])
    assert not [a for a in result.actions if isinstance(a, CreatePod | DeletePod)]
    degraded = next(c for c in result.conditions if c.type == "Degraded")
    assert degraded.status == "True" and degraded.reason == "PodsCrashing"
    assert "pod p-1: CrashLoopBackOff (exit code 2: Error)" in degraded.message
