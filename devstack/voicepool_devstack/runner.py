"""A stand-in for the kubelet on the local stack: real worker processes for kwok pods.

kwok only pretends containers run. For the demo (and end-to-end tests) this runner starts one
``voicepool-worker`` process per Running worker pod, with the pod's env resolved the way the
kubelet would (literal values, downward-API fields, Secret keys), and on pod deletion sends
SIGTERM -- the worker drains -- and, when the process has exited, confirms the deletion with a
zero grace period, exactly the kubelet's last step. Each worker gets its own HTTP port
(``VOICEPOOL_HTTP_PORT``) because they share one host.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from voicepool_contract import ANN_DRAIN, ANN_KWOK_REPORT, KWOK_REPORT_STARTING_ONLY

from . import prometheus as prom
from .kubeconfig import service_account_kubeconfig
from .ports import free_port

log = logging.getLogger(__name__)
MANAGED = "app.kubernetes.io/managed-by=voicepool-operator"
#: ``template.annotations`` of a pool whose pods a PodRunner runs: kwok reports "starting" only,
#: and the real worker reports "idle" once it is registered with LiveKit, as on a kubelet.
RUNNER_POD_ANNOTATIONS = {ANN_KWOK_REPORT: KWOK_REPORT_STARTING_ONLY}


@dataclass
class WorkerProcess:
    pod: str
    namespace: str
    proc: subprocess.Popen[bytes]
    http_port: int
    log_path: Path
    terminating: bool = False


@dataclass
class PodRunner:
    """Runs workers for pods of one namespace until ``stop()``."""

    api: client.ApiClient
    namespace: str
    kubeconfig: str
    log_dir: Path
    command: list[str] = field(
        default_factory=lambda: [sys.executable, "-m", "voicepool_worker.runtime.server"]
    )
    extra_env: Mapping[str, str] = field(default_factory=dict)
    on_event: Callable[[str], None] = print
    prometheus: prom.PrometheusInfo | None = None  # the stack's, to register workers with
    #: Run each worker as its pod's ServiceAccount, with a token bound to the pod (what the
    #: kubelet mounts), instead of ``kubeconfig``'s identity: the chart's RBAC and admission
    #: policy then apply to its reports exactly as on a real node.
    as_service_account: bool = False

    def __post_init__(self) -> None:
        # Any: the generated models make every field Optional; these objects come from the API.
        self.core: Any = client.CoreV1Api(self.api)
        self.workers: dict[str, WorkerProcess] = {}
        self.finished: set[str] = set()  # pods whose worker drained and exited
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """SIGTERM every worker (they drain), then SIGKILL stragglers after a bound."""
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait(timeout=5)

    # -- pod lifecycle ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for ev in w.stream(  # type: ignore[no-untyped-call]
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=MANAGED,
                    timeout_seconds=2,
                ):
                    self._handle(ev["type"], ev["object"])
                    if self._stop.is_set():
                        break
            except Exception as e:  # watch hiccups: retry until stopped
                log.debug("pod watch restarted: %s", e)
                self._stop.wait(0.5)
            finally:
                w.stop()  # type: ignore[no-untyped-call]
            self._reap()

    def _handle(self, kind: str, pod: Any) -> None:
        name = pod.metadata.name
        with self._lock:
            worker = self.workers.get(name)
        if kind == "DELETED" or pod.metadata.deletion_timestamp:
            if worker and not worker.terminating:
                worker.terminating = True
                self.on_event(f"pod {name} deleted -> SIGTERM to its worker (it drains)")
                with contextlib.suppress(ProcessLookupError):  # PID 1 only, like the kubelet
                    os.kill(worker.proc.pid, signal.SIGTERM)
            elif worker is None and kind != "DELETED":
                self._confirm_deleted(name)
            return
        if (
            worker is None
            and name not in self.finished
            and pod.status
            and (pod.status.phase == "Running")
        ):
            self._spawn(pod)

    def _reap(self) -> None:
        """Confirm deletion of pods whose worker exited; restart crashed ones (like kubelet)."""
        with self._lock:
            items = list(self.workers.items())
        for name, w in items:
            code = w.proc.poll()
            if code is None:
                continue
            with self._lock:
                self.workers.pop(name, None)
            if w.terminating:
                self.on_event(f"worker for {name} exited with code {code}; pod removed")
                self._confirm_deleted(name)
            elif code == 0 and self._draining(name):
                # The kubelet would restart the container; the operator deletes a drained pod
                # within milliseconds, so the stand-in just waits for that instead.
                self.finished.add(name)
                prom.unregister_worker(self.prometheus, self.namespace, name)
                self.on_event(f"worker for {name} finished its drain (exit 0)")
            else:
                self.on_event(f"worker for {name} exited with code {code}; see {w.log_path}")

    def _draining(self, name: str) -> bool:
        try:
            pod = self.core.read_namespaced_pod(name, self.namespace)
        except client.ApiException:
            return False
        return bool((pod.metadata.annotations or {}).get(ANN_DRAIN) == "true")

    def _confirm_deleted(self, name: str) -> None:
        prom.unregister_worker(self.prometheus, self.namespace, name)
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)

    def _spawn(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        env = self._resolve_env(pod, container.env or [])
        port = free_port()
        kubeconfig = self.kubeconfig
        if self.as_service_account:
            kubeconfig = service_account_kubeconfig(
                self.api,
                self.namespace,
                pod.spec.service_account_name or "default",
                self.log_dir / f"{pod.metadata.name}.kubeconfig",
                pod=(pod.metadata.name, pod.metadata.uid),
            )
        env.update(
            {
                "KUBECONFIG": kubeconfig,
                "VOICEPOOL_HTTP_PORT": str(port),
                **self.extra_env,
            }
        )
        log_path = self.log_dir / f"{pod.metadata.name}.log"
        out = log_path.open("ab")
        proc = subprocess.Popen(
            [*self.command, *(container.args or [])],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        with self._lock:
            self.workers[pod.metadata.name] = WorkerProcess(
                pod.metadata.name, self.namespace, proc, port, log_path
            )
        self.on_event(
            f"pod {pod.metadata.name} Running -> started its worker (pid {proc.pid}, http :{port})"
        )
        self._discover(pod, container, port)

    def _discover(self, pod: Any, container: Any, port: int) -> None:
        """Tell the stack's Prometheus about this pod's port, as Kubernetes discovery would."""
        for p in container.ports or []:
            prom.register_worker(
                self.prometheus,
                f"127.0.0.1:{port}",
                prom.pod_discovery_labels(
                    namespace=pod.metadata.namespace,
                    pod=pod.metadata.name,
                    labels=dict(pod.metadata.labels or {}),
                    container=container.name,
                    port_name=p.name or "",
                    port=p.container_port,
                ),
            )

    def _resolve_env(self, pod: Any, env: list[Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for var in env:
            if var.value is not None:
                out[var.name] = var.value
            elif var.value_from is not None:
                resolved = self._value_from(pod, var.value_from)
                if resolved is not None:
                    out[var.name] = resolved
        return out

    def _value_from(self, pod: Any, src: Any) -> str | None:
        if src.field_ref is not None:
            path = src.field_ref.field_path
            fields: dict[str, Any] = {
                "metadata.name": pod.metadata.name,
                "metadata.namespace": pod.metadata.namespace,
                "metadata.uid": pod.metadata.uid,
                "spec.nodeName": pod.spec.node_name,
                "status.podIP": pod.status.pod_ip if pod.status else None,
            }
            value = fields.get(path)
            return None if value is None else str(value)
        if src.secret_key_ref is not None:
            ref = src.secret_key_ref
            try:
                secret = self.core.read_namespaced_secret(ref.name, self.namespace)
            except client.ApiException:
                return None
            raw = (secret.data or {}).get(ref.key)
            return base64.b64decode(raw).decode() if raw is not None else None
        return None
