"""The worker pod a pool asks for: pinned CPU, drain-length grace period, restricted security.

Pure functions: the same spec always renders the same pod, and `template_hash` changes exactly
when a pod built from the spec would differ (that is what starts a rolling update).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import voicepool_contract as contract

from .constants import (
    GROUP,
    KIND,
    LABEL_BUSY,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_POOL,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    PART_OF,
    PROMETHEUS_ANNOTATIONS,
    VERSION,
    WORKER_HTTP_PORT,
    WORKER_NAME,
)
from .spec import PoolSpec
from .telephony.spec import outbound_env

#: Seconds on top of the drain timeout before the kubelet may SIGKILL: time to hang up cleanly.
GRACE_MARGIN_SECONDS = 30


def _pod_inputs(spec: PoolSpec) -> dict[str, Any]:
    return {
        "agentName": spec.agent_name,
        "livekit": dataclasses.asdict(spec.livekit),
        "sessionsPerPod": spec.sessions_per_pod,
        "cpuPinning": spec.cpu_pinning,
        "template": spec.template,
        "conversation": dataclasses.asdict(spec.conversation),
        "env": _settings_env("", spec),  # the call settings, not the numbers
        "drainTimeoutSeconds": spec.drain_timeout_seconds,
        "cpu": spec.cpu,
        "memory": spec.memory,
    }


def template_hash(spec: PoolSpec) -> str:
    """Short, stable hash of everything that shapes a worker pod (not scaling knobs)."""
    blob = json.dumps(_pod_inputs(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def pod_labels(pool: str, thash: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    labels = dict(extra or {})
    labels.update(
        {
            LABEL_NAME: WORKER_NAME,
            LABEL_INSTANCE: pool,
            LABEL_COMPONENT: "worker",
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_PART_OF: PART_OF,
            LABEL_POOL: pool,
            LABEL_TEMPLATE_HASH: thash,
        }
    )
    return labels


#: How many host ports a hostNetwork pool may spread its workers over (8081, 8082, ...).
HOST_PORT_SPAN = 64


def _http_port_of(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http":
                return int(port.get("containerPort") or 0) or None
    return None


def free_host_port(pods: Iterable[Mapping[str, Any]]) -> int:
    """The lowest worker HTTP port no pod of the pool holds (hostNetwork workers share one
    network namespace, so two on one node must not both listen on 8081)."""
    taken = {_http_port_of(p) for p in pods}
    for port in range(WORKER_HTTP_PORT, WORKER_HTTP_PORT + HOST_PORT_SPAN):
        if port not in taken:
            return port
    raise ValueError(f"all {HOST_PORT_SPAN} worker host ports from {WORKER_HTTP_PORT} are taken")


def _settings_env(pool: str, spec: PoolSpec) -> list[dict[str, Any]]:
    """What the pool tells its workers beyond where they are: conversation, outbound trunk,
    call settings and privacy (all part of the template hash)."""
    out: list[dict[str, Any]] = []
    if spec.conversation.system_prompt:
        out.append({"name": contract.ENV_SYSTEM_PROMPT, "value": spec.conversation.system_prompt})
    if spec.conversation.greeting is not None:
        out.append({"name": contract.ENV_GREETING, "value": spec.conversation.greeting})
    out += outbound_env(pool, spec.telephony)
    out += [{"name": name, "value": value} for name, value in spec.calls]
    for value, name in (
        (spec.privacy.mask_phone_numbers, contract.ENV_MASK_PHONE_NUMBERS),
        (spec.privacy.log_transcripts, contract.ENV_LOG_TRANSCRIPTS),
    ):
        if value is not None:
            out.append({"name": name, "value": "true" if value else "false"})
    return out


def _env(pool: str, spec: PoolSpec, http_port: int) -> list[dict[str, Any]]:
    lk = spec.livekit

    def secret(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": lk.credentials_secret, "key": key}}

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    ours: list[dict[str, Any]] = [
        {"name": contract.ENV_POD_NAME, "valueFrom": field("metadata.name")},
        {"name": contract.ENV_POD_NAMESPACE, "valueFrom": field("metadata.namespace")},
        {"name": contract.ENV_LIVEKIT_URL, "value": lk.url},
        {"name": contract.ENV_LIVEKIT_API_KEY, "valueFrom": secret(lk.api_key_key)},
        {"name": contract.ENV_LIVEKIT_API_SECRET, "valueFrom": secret(lk.api_secret_key)},
        {"name": contract.ENV_AGENT_NAME, "value": spec.agent_name},
        {"name": contract.ENV_POOL, "value": pool},
        {"name": contract.ENV_SESSIONS_PER_POD, "value": str(spec.sessions_per_pod)},
        {"name": contract.ENV_DRAIN_TIMEOUT, "value": str(spec.drain_timeout_seconds)},
        {"name": contract.ENV_HTTP_PORT, "value": str(http_port)},
        {"name": contract.ENV_CPUS, "value": spec.cpu},
        *_settings_env(pool, spec),
    ]
    user = [dict(e) for e in spec.template.get("env") or []]
    overridden = {e.get("name") for e in user}
    return [e for e in ours if e["name"] not in overridden] + user


def _resources(spec: PoolSpec) -> dict[str, Any]:
    if spec.cpu_pinning:  # requests == limits, integer CPU: Guaranteed QoS, exclusive cores
        both = {"cpu": spec.cpu, "memory": spec.memory}
        return {"requests": dict(both), "limits": dict(both)}
    return {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": {"memory": spec.memory}}


def build_pod(
    pool: str,
    namespace: str,
    pool_uid: str,
    spec: PoolSpec,
    thash: str,
    http_port: int = WORKER_HTTP_PORT,
    *,
    service_account: str | None = None,
) -> dict[str, Any]:
    """The worker pod manifest for one replica of `pool` at template `thash`.

    ``http_port`` only differs from 8081 for hostNetwork pools (see `free_host_port`);
    ``service_account`` is the one the operator's policy gives the pool (`policy.py`).
    """
    t = spec.template
    probe_port = {"port": "http"}
    container: dict[str, Any] = {
        "name": "worker",
        "image": t["image"],
        "imagePullPolicy": t.get("imagePullPolicy") or "IfNotPresent",
        "env": _env(pool, spec, http_port),
        "ports": [{"name": "http", "containerPort": http_port, "protocol": "TCP"}],
        "resources": _resources(spec),
        # timeoutSeconds 3, not the default 1: a worker whose pinned core is busy with a call
        # (or a node starting another worker) answered late on a real kubelet, and a pod that
        # blinks NotReady is not capacity -- the pool showed 0 ready pods for seconds.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **probe_port},
            "periodSeconds": 2,
            "failureThreshold": 2,
            "timeoutSeconds": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **probe_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", **probe_port},
            "periodSeconds": 2,
            "failureThreshold": 90,
            "timeoutSeconds": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if t.get("args"):
        container["args"] = list(t["args"])
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": spec.drain_timeout_seconds + GRACE_MARGIN_SECONDS,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if t.get("hostNetwork"):
        pod_spec["hostNetwork"] = True
    account = service_account or t.get("serviceAccountName")
    if account:
        pod_spec["serviceAccountName"] = account
    for src, dst in (
        ("nodeSelector", "nodeSelector"),
        ("affinity", "affinity"),
        ("tolerations", "tolerations"),
        ("priorityClassName", "priorityClassName"),
        ("imagePullSecrets", "imagePullSecrets"),
    ):
        if t.get(src):
            pod_spec[dst] = t[src]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{pool}-",
            "namespace": namespace,
            "labels": pod_labels(pool, thash, t.get("labels")),
            "annotations": {**PROMETHEUS_ANNOTATIONS, **(t.get("annotations") or {})},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": pool,
                    "uid": pool_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


#: "All of them": no busy pod may be evicted. An integer minAvailable, not maxUnavailable: 0,
#: because the disruption controller resolves maxUnavailable (and percentages) through the
#: owner's scale subresource, which a VoiceAgentPool has not -- the budget would sit in
#: SyncFailed and block only by accident. An integer needs no owner: it counts the pods.
BUSY_PDB_MIN_AVAILABLE = 2**31 - 1


def busy_pdb_name(pool: str) -> str:
    return f"{pool}-busy"


def busy_pdb(pool: str, namespace: str, pool_uid: str) -> dict[str, Any]:
    """The PodDisruptionBudget that keeps `kubectl drain` and the autoscaler off busy pods.

    It selects the pool's pods that carry the operator's busy label, and allows none of them
    to be evicted (the effect of maxUnavailable: 0); idle pods are not selected, so a node
    drain evicts them at once (the pool replaces them). Owned by the pool: deleted with it.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": busy_pdb_name(pool),
            "namespace": namespace,
            "labels": {
                LABEL_NAME: WORKER_NAME,
                LABEL_INSTANCE: pool,
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_PART_OF: PART_OF,
                LABEL_POOL: pool,
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": pool,
                    "uid": pool_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "minAvailable": BUSY_PDB_MIN_AVAILABLE,
            "selector": {"matchLabels": {LABEL_POOL: pool, LABEL_BUSY: "true"}},
        },
    }
