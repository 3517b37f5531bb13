"""The local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes), all on 127.0.0.1 with free ports, certificates from the
stack's own CA (``pki.py``).

``start`` brings them up in order and waits for each (etcd healthy, apiserver ready, both
controllers healthy, the kwok nodes Ready, the default ServiceAccount made); ``api`` is the
minimal admin client used while bootstrapping, before any real client exists.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import kubeconfig
from . import pki as pki_mod
from .build import GO_BUILD_FLAGS, Builders, go_install, run_go
from .errors import DevstackError
from .ports import free_port, port_free
from .procs import Processes, http_get
from .progress import Progress
from .versions import ETCD, GO_MODULES, KUBERNETES, KUBERNETES_VERSION, KWOK, Component

KWOK_STAGES = Path(__file__).with_name("kwok") / "stages.yaml"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


# -- build -------------------------------------------------------------------------------------


def build_kubernetes(progress: Progress, component: Component = KUBERNETES) -> None:
    """The component's binaries from the pinned k8s.io/kubernetes module (also the kubelet)."""
    module = GO_MODULES / "kube"
    minor = KUBERNETES_VERSION.lstrip("v").split(".")[1]
    ldflags = " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
            "-X k8s.io/component-base/version.gitMajor=1",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}",
        ]
    )
    for binary in component.binaries:
        out = component.path(binary)
        if out.exists():
            continue
        run_go(
            [
                "build",
                *GO_BUILD_FLAGS,
                "-ldflags",
                ldflags,
                "-o",
                str(out),
                f"k8s.io/kubernetes/cmd/{binary}",
            ],
            module,
            f"building {binary} {KUBERNETES_VERSION} (several minutes on 2 cores)",
            progress,
        )


def _build_etcd(progress: Progress) -> None:
    run_go(
        ["build", *GO_BUILD_FLAGS, "-ldflags", "-s -w", "-o", str(ETCD.path("etcd")), "."],
        GO_MODULES / "etcd",
        f"building etcd {ETCD.version}",
        progress,
    )


def _build_kwok(progress: Progress) -> None:
    go_install(KWOK, "sigs.k8s.io/kwok/cmd/kwok", progress)


def register(builders: Builders) -> None:
    builders.register(ETCD, _build_etcd)
    builders.register(KWOK, _build_kwok)
    builders.register(KUBERNETES, build_kubernetes)


# -- run ---------------------------------------------------------------------------------------


@dataclass
class NodeShape:
    """What each kwok node offers the scheduler."""

    count: int = 2
    cpu: str = "8"
    memory: str = "32Gi"
    pods: str = "110"


class ControlPlane:
    """The control plane of one stack; its processes belong to the stack's ``Processes``."""

    def __init__(self, procs: Processes, nodes: NodeShape) -> None:
        self.procs = procs
        self.nodes = nodes
        self.workdir = procs.workdir
        self.pki: pki_mod.Pki | None = None
        self.apiserver_url: str | None = None
        self.kubeconfig: Path | None = None

    def start(self, want_port_443: bool = False) -> None:
        """Start every server in order; ``want_port_443``: the apiserver on 127.0.0.1:443 when
        free (in-cluster clients on the real node dial https://kubernetes.default.svc)."""
        procs, progress = self.procs, self.procs.progress
        pki = self.pki = pki_mod.generate(self.workdir / "pki")
        etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        progress(f"starting etcd {ETCD.version} on {etcd_url}")
        procs.spawn(
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
        procs.wait(
            "etcd", lambda: b'"health":"true"' in http_get(f"{etcd_url}/health"), "etcd healthy"
        )

        port = free_port()
        if want_port_443 and port_free(443):
            # In-cluster clients on the real node (kopf hard-codes https://kubernetes.default.svc)
            # reach the apiserver where a Service would: 127.0.0.1:443 (node.py, hostAliases).
            port = 443
        server = f"https://127.0.0.1:{port}"
        self.apiserver_url = server
        progress(f"starting kube-apiserver {KUBERNETES.version} on {server}")
        issuer = "https://kubernetes.default.svc.cluster.local"
        procs.spawn(
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
        ctx = self.client_ssl(pki.admin)
        procs.wait(
            "kube-apiserver",
            lambda: http_get(f"{server}/readyz", ctx) == b"ok",
            "kube-apiserver ready",
        )

        admin = self.workdir / "kubeconfig"
        kubeconfig.write(admin, server, pki.ca, pki.admin, "voicepool-admin")
        self.kubeconfig = admin
        kcm_cfg = self.workdir / "controller-manager.kubeconfig"
        kubeconfig.write(
            kcm_cfg, server, pki.ca, pki.controller_manager, "system:kube-controller-manager"
        )
        sched_cfg = self.workdir / "scheduler.kubeconfig"
        kubeconfig.write(sched_cfg, server, pki.ca, pki.scheduler, "system:kube-scheduler")
        kwok_cfg = self.workdir / "kwok.kubeconfig"
        kubeconfig.write(kwok_cfg, server, pki.ca, pki.kwok, "voicepool-kwok")

        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        progress("starting kube-controller-manager (garbage collector, service accounts, ...)")
        procs.spawn(
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
        procs.spawn(
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
        procs.wait(
            "kube-controller-manager",
            lambda: http_get(f"https://127.0.0.1:{kcm_port}/healthz", insecure) == b"ok",
            "kube-controller-manager healthy",
        )
        procs.wait(
            "kube-scheduler",
            lambda: http_get(f"https://127.0.0.1:{sched_port}/healthz", insecure) == b"ok",
            "kube-scheduler healthy",
        )

        shape = self.nodes
        progress(
            f"starting kwok {KWOK.version} with {shape.count} fake nodes "
            f"({shape.cpu} CPU / {shape.memory} each)"
        )
        procs.spawn(
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
        for i in range(shape.count):
            self.api("POST", "/api/v1/nodes", self._node_manifest(f"kwok-node-{i}"))
        procs.wait("kwok", self._nodes_ready, f"{shape.count} kwok nodes Ready")
        default_sa = "/api/v1/namespaces/default/serviceaccounts/default"
        procs.wait(
            "kube-controller-manager",
            lambda: self.api("GET", default_sa) is not None,
            "service-account controller running (default ServiceAccount exists)",
        )

    def _node_manifest(self, name: str) -> dict[str, Any]:
        shape = self.nodes
        resources = {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.pods}
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
        return ready >= self.nodes.count

    def client_ssl(self, pair: pki_mod.CertPair) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx

    def api(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | list[Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Minimal admin API call used only while bootstrapping (before any client exists)."""
        assert self.pki is not None and self.apiserver_url
        req = urllib.request.Request(
            self.apiserver_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(
                req, context=self.client_ssl(self.pki.admin), timeout=10
            ) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET":
                return None
            raise DevstackError(f"{method} {path} -> {e.code}: {e.read()[:500]!r}") from e
