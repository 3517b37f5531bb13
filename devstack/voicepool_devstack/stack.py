"""Start and stop the embedded local stack: the Kubernetes control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kwok), livekit-server with SIP
(redis, livekit-sip), Prometheus and, on request, a real node -- all on 127.0.0.1, free ports.

This module only composes: each server lives in its own module (``control_plane``,
``livekit``, ``sip``, ``prometheus``, ``node``) and starts its processes through the stack's
one ``Processes`` (``procs.py``); ``stop()`` kills them in reverse start order, so a failed
test never leaves orphans. The state file lets ``cluster-down`` stop a stack started by
another process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import control_plane, helm, livekit, node, prometheus, sip
from .build import Builders
from .livekit import LiveKitInfo
from .procs import Processes, exit_on_sigterm
from .progress import Progress, stderr_progress
from .versions import LIVEKIT, SIP, STACK_COMPONENTS

STATE_FILE = "state.json"


def builders() -> Builders:
    """Every component's recipe, registered by the module that runs it."""
    registry = Builders()
    for module in (control_plane, livekit, sip, helm, node):
        module.register(registry)
    return registry


@dataclass
class StackState:
    """What ``cluster-down`` needs to find and stop a running stack."""

    workdir: str
    kubeconfig: str | None = None
    livekit: LiveKitInfo | None = None
    pids: dict[str, int] = field(default_factory=dict)
    apiserver_url: str | None = None
    prometheus: prometheus.PrometheusInfo | None = None
    sip: sip.SipInfo | None = None
    node: dict[str, Any] | None = None  # the real node's record (node.NodeRecord), if any

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> StackState:
        raw = json.loads(path.read_text())
        lk = raw.pop("livekit", None)
        prom = raw.pop("prometheus", None)
        sip_info = raw.pop("sip", None)
        return cls(
            **raw,
            livekit=LiveKitInfo(**lk) if lk else None,
            prometheus=prometheus.PrometheusInfo(**prom) if prom else None,
            sip=sip.SipInfo(**sip_info) if sip_info else None,
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
    progress: Progress = stderr_progress


class LocalStack:
    """One local stack. Use as a context manager, or call ``start()``/``stop()``."""

    def __init__(self, config: StackConfig) -> None:
        self.cfg = config
        self.workdir = config.workdir
        self.logs = self.workdir / "logs"
        self.state = StackState(workdir=str(self.workdir))
        # The state's PID table is the processes' own: state.json always lists what runs.
        self.procs = Processes(
            self.workdir, config.progress, config.startup_timeout, pids=self.state.pids
        )
        self.control_plane: control_plane.ControlPlane | None = None

    @classmethod
    def recorded(cls, workdir: Path) -> LocalStack:
        """The stack ``up`` recorded in ``workdir``, to stop it from another process."""
        stack = cls(StackConfig(workdir=workdir))
        stack.state = StackState.load(workdir / STATE_FILE)
        stack.procs.pids = stack.state.pids
        return stack

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StackState:
        cfg = self.cfg
        with_sip = cfg.livekit and cfg.sip
        components = tuple(
            c
            for c in STACK_COMPONENTS
            if (c is LIVEKIT and cfg.livekit)
            or (c is SIP and with_sip)
            or (c not in (LIVEKIT, SIP) and cfg.kubernetes)
        )
        registry = builders()
        registry.ensure_built(components, cfg.progress)
        images = node.ensure_node_artifacts(cfg.progress, builders=registry) if cfg.node else None
        exit_on_sigterm()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        t0 = time.monotonic()
        try:
            if cfg.kubernetes:
                self._start_kubernetes()
            if cfg.livekit:
                self._start_livekit()
            if cfg.prometheus and cfg.kubernetes:
                self.state.prometheus = prometheus.start(self.procs)
            if images is not None:
                self._start_node(images)
        except BaseException:
            self.stop(remove=False)
            raise
        self.state.dump(self.workdir / STATE_FILE)
        cfg.progress(f"stack ready in {time.monotonic() - t0:.1f}s")
        return self.state

    def stop(self, remove: bool = True) -> None:
        """Stop every server (reverse order) and remove the work directory."""
        if self.state.node is not None:
            self._stop_node()
        self.procs.stop_all()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _start_kubernetes(self) -> None:
        cfg = self.cfg
        shape = control_plane.NodeShape(cfg.nodes, cfg.node_cpu, cfg.node_memory, cfg.node_pods)
        plane = self.control_plane = control_plane.ControlPlane(self.procs, shape)
        try:
            plane.start(want_port_443=cfg.node)
        finally:
            self.state.apiserver_url = plane.apiserver_url
        self.state.kubeconfig = str(plane.kubeconfig)

    def _start_livekit(self) -> None:
        redis = sip.start_redis(self.procs) if self.cfg.sip else None
        info = livekit.start(self.procs, sip.livekit_settings(redis) if redis else None)
        self.state.livekit = info
        values = info.env()
        if redis:
            self.state.sip = sip.start_sip(
                self.procs, info.url, info.api_key, info.api_secret, redis
            )
            values.update(self.state.sip.env())
        env_path = self.workdir / "livekit.env"
        env_path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        env_path.chmod(0o600)

    def _start_node(self, images: Any) -> None:
        plane = self.control_plane
        assert plane is not None and plane.apiserver_url is not None
        real = node.RealNode(
            self.procs,
            self.workdir / "pki",
            plane.apiserver_url,
            plane.api,
            kubelet_config=self.cfg.node_kubelet_config,
        )
        self.state.node = real.record.to_dict()
        self.state.dump(self.workdir / STATE_FILE)  # a failed start is still undone by `down`
        try:
            real.start(images)
        finally:
            self.state.node = real.record.to_dict()

    def _stop_node(self) -> None:
        assert self.state.node is not None
        record = node.NodeRecord.from_dict(self.state.node)
        node.stop_node(record, self.procs.stop_pid, self.cfg.progress)
        self.state.node = None


@contextlib.contextmanager
def running_stack(config: StackConfig) -> Iterator[LocalStack]:
    stack = LocalStack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
