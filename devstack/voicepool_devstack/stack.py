"""Start and stop the embedded local stack: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok (fake nodes) and livekit-server, all on 127.0.0.1 with free ports.

Every server runs in its own process group with its log in ``<workdir>/logs``; ``stop()`` kills
the groups (SIGTERM, then SIGKILL) in reverse start order, so a failed test never leaves
orphans. The state file lets ``cluster-down`` stop a stack started by another process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import pki as pki_mod
from . import prometheus as prometheus_mod
from . import sip as sip_mod
from .build import Progress, _stderr_progress, ensure_built
from .errors import DevstackError
from .versions import ETCD, KUBERNETES, KWOK, LIVEKIT, SIP, STACK_COMPONENTS

KWOK_STAGES = Path(__file__).with_name("kwok") / "stages.yaml"
STATE_FILE = "state.json"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally`/`with` blocks stop the servers (no orphans).

    Python's default SIGTERM action kills the process without unwinding; `kill` from a CI
    runner or a terminal would then leave etcd and the apiserver running.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def _raise(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _raise)


def free_port() -> int:
    """A port the kernel says is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveKitInfo:
    url: str
    http_url: str
    api_key: str
    api_secret: str
    #: livekit-server posts its webhooks to http://127.0.0.1:<port>/livekit/webhook, where
    #: an operator started with --webhook-port=<port> listens (0: no webhook configured).
    webhook_port: int = 0

    def env(self) -> dict[str, str]:
        return {
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }


@dataclass
class StackState:
    """What ``cluster-down`` needs to find and stop a running stack."""

    workdir: str
    kubeconfig: str | None = None
    livekit: LiveKitInfo | None = None
    pids: dict[str, int] = field(default_factory=dict)
    apiserver_url: str | None = None
    prometheus: prometheus_mod.PrometheusInfo | None = None
    sip: sip_mod.SipInfo | None = None
    node: dict[str, Any] | None = None  # the real node's record (node.NodeRecord), if any

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> StackState:
        raw = json.loads(path.read_text())
        lk = raw.pop("livekit", None)
        prom = raw.pop("prometheus", None)
        sip = raw.pop("sip", None)
        return cls(
            **raw,
            livekit=LiveKitInfo(**lk) if lk else None,
            prometheus=prometheus_mod.PrometheusInfo(**prom) if prom else None,
            sip=sip_mod.SipInfo(**sip) if sip else None,
        )


@dataclass
class StackConfig:
    workdir: Path
    nodes: int = 2
    node_cpu: str = "8"
    node_memory: str = "32Gi"
    node_pods: str = "110"
    kubernetes: bool = True
    livekit: bool = True
    prometheus: bool = True  # optional: missing or failing costs one line, not the stack
    sip: bool = True  # redis + livekit-sip beside livekit-server (sip.py)
    node: bool = False  # one real kubelet + containerd node beside the kwok nodes (node.py)
    node_kubelet_config: dict[str, Any] = field(default_factory=dict)  # over node.py's own
    startup_timeout: float = 90.0
    progress: Progress = _stderr_progress


class LocalStack:
    """One local stack. Use as a context manager, or call ``start()``/``stop()``."""

    def __init__(self, config: StackConfig) -> None:
        self.cfg = config
        self.workdir = config.workdir
        self.logs = self.workdir / "logs"
        self.state = StackState(workdir=str(self.workdir))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pki: pki_mod.Pki | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StackState:
        with_sip = self.cfg.livekit and self.cfg.sip
        components = tuple(
            c
            for c in STACK_COMPONENTS
            if (c is LIVEKIT and self.cfg.livekit)
            or (c is SIP and with_sip)
            or (c not in (LIVEKIT, SIP) and self.cfg.kubernetes)
        )
        ensure_built(components, self.cfg.progress)
        images = None
        if self.cfg.node:
            from .node import ensure_node_artifacts

            images = ensure_node_artifacts(self.cfg.progress)
        _exit_on_sigterm()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        t0 = time.monotonic()
        try:
            if self.cfg.kubernetes:
                self._start_kubernetes()
            if self.cfg.livekit:
                self._start_livekit()
            if self.cfg.prometheus and self.cfg.kubernetes:
                self.state.prometheus = prometheus_mod.start(self)
            if images is not None:
                self._start_node(images)
        except BaseException:
            self.stop(remove=False)
            raise
        self.state.dump(self.workdir / STATE_FILE)
        self.cfg.progress(f"stack ready in {time.monotonic() - t0:.1f}s")
        return self.state

    def stop(self, remove: bool = True) -> None:
        """Stop every server (reverse order) and remove the work directory."""
        if self.state.node is not None:
            self._stop_node()
        names = list(self._procs) or list(self.state.pids)
        for name in reversed(names):
            proc = self._procs.get(name)
            pid = proc.pid if proc else self.state.pids.get(name)
            if pid is not None:
                _kill_group(pid, proc)
        self._procs.clear()
        self.state.pids.clear()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() kills children too
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        log.close()
        self._procs[name] = proc
        self.state.pids[name] = proc.pid

    def _log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(
        self, name: str, check: Callable[[], bool], what: str, timeout: float | None = None
    ) -> None:
        """Poll ``check`` until true; fail fast with the server's log if it died."""
        deadline = time.monotonic() + (timeout or self.cfg.startup_timeout)
        t0 = time.monotonic()
        while True:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                tail = self._log_tail(name)
                hint = ""
                if "address already in use" in tail.lower() or "bind:" in tail.lower():
                    hint = "\nA port it needs is already in use (port clash); retry or free it."
                raise DevstackError(
                    f"{name} exited with code {proc.returncode} while starting ({what}).\n"
                    f"Last lines of {self.logs / (name + '.log')}:\n{tail}{hint}"
                )
            with contextlib.suppress(Exception):
                if check():
                    self.cfg.progress(f"{what} ({time.monotonic() - t0:.1f}s)")
                    return
            if time.monotonic() > deadline:
                raise DevstackError(
                    f"timed out after {timeout or self.cfg.startup_timeout:.0f}s waiting for "
                    f"{what}. Last lines of {name}.log:\n{self._log_tail(name)}"
                )
            time.sleep(0.2)

    # -- kubernetes ----------------------------------------------------------------------------

    def _start_kubernetes(self) -> None:
        progress = self.cfg.progress
        pki = self._pki = pki_mod.generate(self.workdir / "pki")
        etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        progress(f"starting etcd {ETCD.version} on {etcd_url}")
        self._spawn(
            "etcd",
            [
                str(ETCD.path("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # throwaway test data: fsync only slows the tests down
                "--log-level=warn",
            ],
        )
        self._wait(
            "etcd", lambda: b'"health":"true"' in _http_get(f"{etcd_url}/health"), "etcd healthy"
        )

        port = free_port()
        if self.cfg.node and _port_free(443):
            # In-cluster clients on the real node (kopf hard-codes https://kubernetes.default.svc)
            # reach the apiserver where a Service would: 127.0.0.1:443 (node.py, hostAliases).
            port = 443
        server = f"https://127.0.0.1:{port}"
        self.state.apiserver_url = server
        progress(f"starting kube-apiserver {KUBERNETES.version} on {server}")
        issuer = "https://kubernetes.default.svc.cluster.local"
        self._spawn(
            "kube-apiserver",
            [
                str(KUBERNETES.path("kube-apiserver")),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--etcd-servers={etcd_url}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--kubelet-client-certificate={pki.kubelet_client.cert}",
                f"--kubelet-client-key={pki.kubelet_client.key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={issuer}",
                f"--api-audiences={issuer}",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--profiling=false",
                "--event-ttl=1h",
            ],
        )
        ctx = self._client_ssl(pki.admin)
        self._wait(
            "kube-apiserver",
            lambda: _http_get(f"{server}/readyz", ctx) == b"ok",
            "kube-apiserver ready",
        )

        kubeconfig = self.workdir / "kubeconfig"
        _write_kubeconfig(kubeconfig, server, pki.ca, pki.admin, "voicepool-admin")
        self.state.kubeconfig = str(kubeconfig)
        kcm_cfg = self.workdir / "controller-manager.kubeconfig"
        _write_kubeconfig(
            kcm_cfg, server, pki.ca, pki.controller_manager, "system:kube-controller-manager"
        )
        sched_cfg = self.workdir / "scheduler.kubeconfig"
        _write_kubeconfig(sched_cfg, server, pki.ca, pki.scheduler, "system:kube-scheduler")
        kwok_cfg = self.workdir / "kwok.kubeconfig"
        _write_kubeconfig(kwok_cfg, server, pki.ca, pki.kwok, "voicepool-kwok")

        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        progress("starting kube-controller-manager (garbage collector, service accounts, ...)")
        self._spawn(
            "kube-controller-manager",
            [
                str(KUBERNETES.path("kube-controller-manager")),
                f"--kubeconfig={kcm_cfg}",
                f"--authentication-kubeconfig={kcm_cfg}",
                f"--authorization-kubeconfig={kcm_cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca.cert}",
                "--cluster-name=voicepool-devstack",
                "--controllers=*",
            ],
        )
        progress("starting kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(KUBERNETES.path("kube-scheduler")),
                f"--kubeconfig={sched_cfg}",
                f"--authentication-kubeconfig={sched_cfg}",
                f"--authorization-kubeconfig={sched_cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs of loopback components
        self._wait(
            "kube-controller-manager",
            lambda: _http_get(f"https://127.0.0.1:{kcm_port}/healthz", insecure) == b"ok",
            "kube-controller-manager healthy",
        )
        self._wait(
            "kube-scheduler",
            lambda: _http_get(f"https://127.0.0.1:{sched_port}/healthz", insecure) == b"ok",
            "kube-scheduler healthy",
        )

        progress(
            f"starting kwok {KWOK.version} with {self.cfg.nodes} fake nodes "
            f"({self.cfg.node_cpu} CPU / {self.cfg.node_memory} each)"
        )
        self._spawn(
            "kwok",
            [
                str(KWOK.path("kwok")),
                f"--kubeconfig={kwok_cfg}",
                f"--config={KWOK_STAGES}",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.1/16",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
        )
        for i in range(self.cfg.nodes):
            self.api("POST", "/api/v1/nodes", self._node_manifest(f"kwok-node-{i}"))
        self._wait("kwok", self._nodes_ready, f"{self.cfg.nodes} kwok nodes Ready")
        default_sa = "/api/v1/namespaces/default/serviceaccounts/default"
        self._wait(
            "kube-controller-manager",
            lambda: self.api("GET", default_sa) is not None,
            "service-account controller running (default ServiceAccount exists)",
        )

    def _node_manifest(self, name: str) -> dict[str, Any]:
        resources = {
            "cpu": self.cfg.node_cpu,
            "memory": self.cfg.node_memory,
            "pods": self.cfg.node_pods,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "status": {"allocatable": resources, "capacity": resources},
        }

    def _nodes_ready(self) -> bool:
        nodes = self.api("GET", "/api/v1/nodes") or {}
        ready = 0
        for node in nodes.get("items", []):
            for cond in node.get("status", {}).get("conditions", []) or []:
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    ready += 1
        return ready >= self.cfg.nodes

    def _client_ssl(self, pair: pki_mod.CertPair) -> ssl.SSLContext:
        assert self._pki is not None
        ctx = ssl.create_default_context(cafile=str(self._pki.ca.cert))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Minimal admin API call used only while bootstrapping (before any client exists)."""
        assert self._pki is not None and self.state.apiserver_url
        req = urllib.request.Request(
            self.state.apiserver_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(
                req, context=self._client_ssl(self._pki.admin), timeout=10
            ) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET":
                return None
            raise DevstackError(f"{method} {path} -> {e.code}: {e.read()[:500]!r}") from e

    # -- real node -----------------------------------------------------------------------------

    def _start_node(self, images: Any) -> None:
        from .node import RealNode

        assert self.state.apiserver_url is not None
        node = RealNode(
            self.workdir,
            self.workdir / "pki",
            self.state.apiserver_url,
            lambda name, args: self._spawn(name, args),
            self._wait,
            self.api,
            self.cfg.progress,
            kubelet_config=self.cfg.node_kubelet_config,
        )
        self.state.node = node.record.to_dict()
        self.state.dump(self.workdir / STATE_FILE)  # a failed start is still undone by `down`
        try:
            node.start(images, lambda: dict(self.state.pids))
        finally:
            self.state.node = node.record.to_dict()

    def _stop_node(self) -> None:
        from .node import NodeRecord, stop_node

        assert self.state.node is not None
        record = NodeRecord.from_dict(self.state.node)
        names = {pid: name for name, pid in self.state.pids.items()}

        def kill(pid: int) -> None:
            name = names.get(pid)
            _kill_group(pid, self._procs.pop(name, None) if name else None)
            if name:
                self.state.pids.pop(name, None)

        stop_node(record, kill, self.cfg.progress)
        self.state.node = None

    # -- livekit -------------------------------------------------------------------------------

    def _start_livekit(self) -> None:
        redis = sip_mod.start_redis(self) if self.cfg.sip else None
        port, tcp_port, udp_start = free_port(), free_port(), free_port()
        api_key = "APIvp" + secrets.token_hex(6)
        api_secret = secrets.token_urlsafe(32)
        config = {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": tcp_port,
                "port_range_start": udp_start,
                "port_range_end": udp_start + 200,
                "use_external_ip": False,
                "node_ip": "127.0.0.1",
            },
            "keys": {api_key: api_secret},
            "logging": {"level": "info", "json": False},
            **(sip_mod.livekit_settings(redis) if redis else {}),
        }
        webhook_port = free_port()  # for the operator: room events for scale from zero
        config["webhook"] = {
            "api_key": api_key,
            "urls": [f"http://127.0.0.1:{webhook_port}/livekit/webhook"],
        }
        cfg_path = self.workdir / "livekit.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        cfg_path.chmod(0o600)
        url = f"ws://127.0.0.1:{port}"
        self.cfg.progress(f"starting livekit-server {LIVEKIT.version} (dev mode) on {url}")
        self._spawn(
            "livekit-server",
            [
                str(LIVEKIT.path("livekit-server")),
                "--dev",
                f"--config={cfg_path}",
                "--bind=127.0.0.1",
                "--node-ip=127.0.0.1",
            ],
        )
        http_url = f"http://127.0.0.1:{port}"
        self._wait(
            "livekit-server", lambda: _http_get(http_url + "/") == b"OK", "livekit-server ready"
        )
        self.state.livekit = LiveKitInfo(url, http_url, api_key, api_secret, webhook_port)
        values = self.state.livekit.env()
        if redis:
            self.state.sip = sip_mod.start_sip(self, url, api_key, api_secret, redis)
            values.update(self.state.sip.env())
        env = "".join(f"{k}={v}\n" for k, v in values.items())
        env_path = self.workdir / "livekit.env"
        env_path.write_text(env)
        env_path.chmod(0o600)


# -- helpers ---------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` now (SO_REUSEADDR, like Go's: TIME_WAIT is ok)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _http_get(url: str, ctx: ssl.SSLContext | None = None) -> bytes:
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return bytes(resp.read()).strip()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_kubeconfig(
    path: Path, server: str, ca: pki_mod.CertPair, user: pki_mod.CertPair, user_name: str
) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "voicepool-devstack",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca.cert_pem())},
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": _b64(user.cert_pem()),
                    "client-key-data": _b64(user.key_pem()),
                },
            }
        ],
        "contexts": [
            {
                "name": "voicepool-devstack",
                "context": {
                    "cluster": "voicepool-devstack",
                    "user": user_name,
                    "namespace": "default",
                },
            }
        ],
        "current-context": "voicepool-devstack",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)


def _kill_group(pid: int, proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers; tolerate already-dead groups."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not _alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of someone else still answers kill(0); check /proc state
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    return True


@contextlib.contextmanager
def running_stack(config: StackConfig) -> Iterator[LocalStack]:
    stack = LocalStack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
