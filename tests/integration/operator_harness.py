"""Run the real operator process against the test cluster, and play the worker's side.

The operator runs as ``voicepool-operator`` in a subprocess (so a test can SIGKILL and restart
it); workers are played by patching pod annotations exactly as the worker does. The
``DeletionAuditor`` watches pods and records the session count each pod reported when it was
deleted -- the evidence that no call was cut.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, utils, watch
from voicepool_contract import (
    ANN_CAPACITY,
    ANN_DRAIN_REASON,
    ANN_REPORTED_AT,
    ANN_SESSIONS,
    ANN_STATE,
    GROUP,
    LABEL_POOL,
    PLURAL,
    VERSION,
)
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.ports import free_port
from voicepool_devstack.testing import wait_for

REPO = Path(__file__).resolve().parents[2]
POOL_LABEL = LABEL_POOL


def install_crds(api: client.ApiClient) -> None:
    """Apply everything in crds/ (idempotent) and wait until the pool API is served."""
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            try:
                utils.create_from_dict(api, doc)
            except utils.FailToCreateError as e:
                if not all(getattr(x, "status", None) == 409 for x in e.api_exceptions):
                    raise

    def established() -> bool:
        for crd in ext.list_custom_resource_definition().items:
            if crd.spec.group == GROUP:
                return any(
                    c.type == "Established" and c.status == "True"
                    for c in (crd.status.conditions or [])
                )
        return False

    wait_for(established, timeout=30, what="VoiceAgentPool CRD established")
    create_peering(api, "voicepool")


def create_peering(api: client.ApiClient, name: str) -> None:
    """The ClusterKopfPeering object replicas of one operator coordinate through (idempotent)."""
    with contextlib.suppress(client.ApiException):
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "kopf.dev",
            "v1",
            "clusterkopfpeerings",
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": name},
            },
        )


class OperatorProcess:
    """``voicepool-operator`` as a child process with its own log file."""

    def __init__(
        self,
        kubeconfig: str,
        *,
        peering: str = "voicepool",
        python: str = sys.executable,
        identity: str | None = None,
        livekit: LiveKitInfo | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.livekit = livekit  # with a webhook port: serve LiveKit's webhook (scale from 0)
        self.peering = peering
        self.identity = identity  # POD_NAME: the reportingInstance of its Events
        self.python = python  # the bench runs the operator from an image-like minimal venv
        self.extra_args = extra_args  # e.g. the worker policy's --allow-* flags
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="voicepool-operator-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "voicepool_operator.main",
                f"--peering={self.peering}",
                f"--metrics-port={self.metrics_port}",
                "--metrics-address=127.0.0.1",
                f"--liveness-port={self.liveness_port}",
                "--verbose",
                *self._webhook_args(),
                *self.extra_args,
            ],
            env={
                **os.environ,
                "KUBECONFIG": self.kubeconfig,
                **({"POD_NAME": self.identity} if self.identity else {}),
                **(self.livekit.env() if self.livekit else {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def live() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.liveness_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(live, timeout=60, what="operator liveness endpoint")

    def _webhook_args(self) -> list[str]:
        if not self.livekit or not self.livekit.webhook_port:
            return []
        return [f"--webhook-port={self.livekit.webhook_port}", "--webhook-address=127.0.0.1"]

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class DeletionAuditor:
    """Records (pod, sessions reported, drain annotation) whenever a pod starts terminating."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.deleted: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DeletionAuditor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(
                    self.core.list_namespaced_pod, self.namespace, timeout_seconds=2
                ):
                    pod = ev["object"]
                    if pod.metadata.deletion_timestamp or ev["type"] == "DELETED":
                        name = pod.metadata.name
                        if name not in self.deleted:
                            ann = pod.metadata.annotations or {}
                            self.deleted[name] = {
                                "sessions": ann.get(ANN_SESSIONS),
                                "drain_reason": ann.get(ANN_DRAIN_REASON),
                            }
                    if self._stop.is_set():
                        break
            except Exception:  # watch hiccup (e.g. namespace going away): retry until stopped
                if self._stop.wait(0.2):
                    return
            finally:
                w.stop()

    def busy_deletions(self) -> dict[str, dict[str, Any]]:
        return {n: d for n, d in self.deleted.items() if d["sessions"] not in (None, "0")}


def pool_manifest(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "agentName": "support-agent",
        "livekit": {"url": "ws://127.0.0.1:7880", "credentialsSecretRef": {"name": "lk"}},
        "sessionsPerPod": 2,
        "minReplicas": 1,
        "maxReplicas": 8,
        "warmPool": {"idleSessions": 2},
        "template": {
            "image": "example.invalid/voicepool-worker:test",
            "resources": {"cpu": 1, "memory": "512Mi"},
        },
        "drain": {"timeoutSeconds": 300},
        "scaleDown": {"stabilizationWindowSeconds": 3},
    }
    for k, v in spec.items():
        base[k] = v
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VoiceAgentPool",
        "metadata": {"name": name},
        "spec": base,
    }


def zero_pool_manifest(name: str, agent: str) -> dict[str, Any]:
    """A pool that keeps no pod until a caller waits for ``agent`` (scale from zero)."""
    return pool_manifest(
        name,
        agentName=agent,
        minReplicas=0,
        warmPool={"idleSessions": 0},
        scaleDown={"stabilizationWindowSeconds": 0},
    )


class Cluster:
    """Small verbs the tests use; everything goes through the real API."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ns = namespace

    def create_pool(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)
        )

    def pool(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def patch_pool_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )

    def delete_pool(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def pool_exists(self, name: str) -> bool:
        try:
            self.pool(name)
            return True
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise

    def pods(self, pool: str, *, include_terminating: bool = False) -> list[client.V1Pod]:
        items = self.core.list_namespaced_pod(self.ns, label_selector=f"{POOL_LABEL}={pool}").items
        if not include_terminating:
            items = [p for p in items if not p.metadata.deletion_timestamp]
        return sorted(items, key=lambda p: p.metadata.name)

    def ready_pods(self, pool: str) -> list[client.V1Pod]:
        return [
            p
            for p in self.pods(pool)
            if p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        ]

    def report(self, pod: str, sessions: int, capacity: int = 2, state: str | None = None) -> None:
        """Play the worker: one patch per session start/end, like the real worker."""
        if state is None:
            state = "busy" if sessions else "idle"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.core.patch_namespaced_pod(
            pod,
            self.ns,
            {
                "metadata": {
                    "annotations": {
                        ANN_SESSIONS: str(sessions),
                        ANN_CAPACITY: str(capacity),
                        ANN_STATE: state,
                        ANN_REPORTED_AT: now,
                    }
                }
            },
        )

    def livekit_secret(self, lk: LiveKitInfo, name: str = "lk") -> None:
        """The pool's LiveKit credentials, as a user creates them (keys apiKey, apiSecret)."""
        self.core.create_namespaced_secret(
            self.ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name),
                string_data={"apiKey": lk.api_key, "apiSecret": lk.api_secret},
            ),
        )

    def annotations(self, pod: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_pod(pod, self.ns).metadata.annotations or {})

    def events(self, reason: str | None = None) -> list[Any]:
        # Raw JSON: events from other components (core/v1) lack eventTime, which the typed
        # client model refuses to deserialize.
        resp = client.EventsV1Api(self.core.api_client).list_namespaced_event(
            self.ns, _preload_content=False
        )
        evs = json.loads(resp.data)["items"]
        return [e for e in evs if reason is None or e.get("reason") == reason]


@contextlib.contextmanager
def running_operator(
    kubeconfig: str,
    peering: str = "voicepool",
    livekit: LiveKitInfo | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, peering=peering, livekit=livekit, extra_args=extra_args)
    op.start()
    try:
        yield op
    finally:
        op.stop()
