"""One real node beside the kwok nodes: containerd + a kubelet on loopback (``up --node``).

The node runs the project's own images (see ``images.py``) as real containers, with the static
CPU manager, real readiness probes and real SIGTERM / grace periods. Everything it runs lives
under ``<stack>/node``: containerd's state and socket, the containers, the kubelet's root and
certificates; only containerd's image store is a cache (``containerd_root``).
Three host quirks need workarounds (docs/real-node.md):

- W1: no CAP_SYS_RESOURCE, so containerd must not set a negative ``oom_score_adj``;
- W2: a CNI conflist with only ``loopback`` (present before containerd starts) makes the node
  Ready; pods must use ``hostNetwork``;
- W3: a loopback ``--node-ip`` is refused, so the kubelet runs as ``--hostname-override=localhost``
  (the apiserver dials ``localhost:<port>``) and the apiserver authenticates to it with its own
  kubelet client certificate. With ``--cloud-provider=external`` the kubelet leaves the node's
  addresses to a cloud controller; the stack plays that part (``_claim_loopback``): InternalIP
  127.0.0.1, so hostNetwork pods get 127.0.0.1 as their IP and the kubelet probes them there,
  not at the machine's own address.

``stop`` leaves the machine as it was: processes stopped by PID, mounts under the stack undone,
the node's cgroups removed, the three sysctls the kubelet changes put back, and the host
directories the kubelet and containerd create anyway removed when they did not exist before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import apt, kubeconfig
from . import pki as pki_mod
from .build import Builders
from .control_plane import build_kubernetes
from .errors import DevstackError
from .images import PAUSE_REF, REGISTRY, NodeImages, ensure_images
from .ports import free_port
from .procs import Processes, alive
from .progress import Progress, stderr_progress
from .versions import KUBELET, cache_root

NODE_NAME = "localhost"
#: Labels the tests and the demo select the real node by.
NODE_LABELS = {"voicepool.dev/node": "real"}
#: Only pods that ask for the real node land there (kwok-minded pods would fail to pull).
NODE_TAINT = {"key": "voicepool.dev/real-node", "value": "true", "effect": "NoSchedule"}
#: The node's address, and so every (hostNetwork) pod's IP: the kubelet probes pods there.
NODE_IP = "127.0.0.1"
#: Set by a kubelet with --cloud-provider=external until a cloud controller initialized it.
UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"


def placement() -> dict[str, Any]:
    """Pod spec fields that put a pod on the real node (merge into a pod or pool template)."""
    return {
        "nodeSelector": {"kubernetes.io/hostname": NODE_NAME, **NODE_LABELS},
        "tolerations": [{**NODE_TAINT, "operator": "Equal"}],
    }


PACKAGES = ("containerd", "runc")
#: The kubelet sets these at start; stop() restores the values found before.
SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
#: Host paths the kubelet / containerd create whatever their root dirs say.
HOST_DIRS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd")
#: One real node per machine: kubelets would fight over CPUs and the paths above.
LOCK = Path("/run/voicepool-real-node.json")
CGROUP_PARENT = "voicepool-node"


def unsupported_reason(check_lock: bool = True) -> str | None:
    """Why this machine cannot run the real node, or None when it can (tests skip with this)."""
    if os.environ.get("VOICEPOOL_NO_NODE"):
        return "VOICEPOOL_NO_NODE is set"
    if os.uname().sysname != "Linux":
        return "the real node needs Linux"
    if os.geteuid() != 0:
        return "the real node needs root (containerd and the kubelet manage cgroups and mounts)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem at /sys/fs/cgroup"
    if shutil.which("apt-get") is None and apt.missing(PACKAGES):
        return (
            f"containerd/runc missing and no apt-get; run: apt-get install -y {' '.join(PACKAGES)}"
        )
    other = _lock_holder() if check_lock else None
    if other is not None:
        return f"another real node is running on this machine (stack {other})"
    return None


def _lock_holder() -> str | None:
    try:
        raw = json.loads(LOCK.read_text())
    except (OSError, ValueError):
        return None
    if any(alive(int(p)) for p in raw.get("pids", [])):
        return str(raw.get("workdir"))
    return None


def register(builders: Builders) -> None:
    """The kubelet: built from the same pinned module as the control plane."""
    builders.register(KUBELET, lambda progress: build_kubernetes(progress, KUBELET))


def ensure_node_artifacts(
    progress: Progress = stderr_progress,
    go_first: Callable[[], None] | None = None,
    builders: Builders | None = None,
) -> NodeImages:
    """Packages, kubelet and images for the node, the image builds (mostly I/O: Debian and
    PyPI downloads, layer copies) beside the Go builds (CPU). ``go_first`` runs other Go
    builds before the kubelet on the same thread, so two compilers never share the 2 cores.
    ``builders``: the stack's registry (by default one with only the kubelet's recipe)."""
    import threading

    if builders is None:
        builders = Builders()
        register(builders)
    apt.ensure_packages(PACKAGES, "the real node (containerd + runc)", progress)
    errors: list[BaseException] = []

    def kubelet() -> None:
        try:
            if go_first is not None:
                go_first()
            builders.ensure_built((KUBELET,), progress)
        except BaseException as e:  # re-raised below, on the caller's thread
            errors.append(e)

    thread = threading.Thread(target=kubelet, name="kubelet-build")
    thread.start()
    try:
        _download_kube_source()  # pause.c comes from the pinned Kubernetes source
        images = ensure_images(progress)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return images


def _download_kube_source() -> None:
    from .versions import GO_MODULES, KUBERNETES_VERSION

    proc = subprocess.run(
        ["go", "mod", "download", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        cwd=GO_MODULES / "kube",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DevstackError(f"go mod download of k8s.io/kubernetes failed:\n{proc.stderr[-1500:]}")


@dataclass
class NodeRecord:
    """What ``stop`` needs, also from another process (kept in the stack's state.json)."""

    workdir: str
    pids: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    created_dirs: list[str] = field(default_factory=list)
    containerd_socket: str = ""
    kubelet_port: int = 0
    images: dict[str, str] = field(default_factory=dict)  # name -> ref in containerd

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NodeRecord:
        return cls(**raw)


class RealNode:
    """Started by ``LocalStack``, whose ``Processes`` own containerd's and the kubelet's."""

    def __init__(
        self,
        procs: Processes,
        pki_dir: Path,
        apiserver_url: str,
        api: Callable[..., Any],
        kubelet_config: dict[str, Any] | None = None,
    ) -> None:
        self.dir = procs.workdir / "node"
        self.kubelet_overrides = dict(kubelet_config or {})  # KubeletConfiguration fields
        self.pki_dir = pki_dir
        self.apiserver_url = apiserver_url
        self.procs = procs
        self.spawn = procs.spawn
        self.wait = procs.wait
        self.api = api
        self.progress = procs.progress
        self.record = NodeRecord(workdir=str(self.dir))

    # -- start ---------------------------------------------------------------------------------

    def start(self, images: NodeImages) -> NodeRecord:
        reason = unsupported_reason()
        if reason:
            raise DevstackError(f"cannot start the real node: {reason}")
        if not self.apiserver_url.endswith(":443"):
            raise DevstackError(
                "cannot start the real node: 127.0.0.1:443 is taken, and in-cluster clients on "
                "the node (kopf dials https://kubernetes.default.svc) need the apiserver there"
            )
        rec = self.record
        rec.created_dirs = [d for d in HOST_DIRS if not os.path.lexists(d)]
        rec.sysctls = {name: _sysctl(name) for name in SYSCTLS}
        self.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self._cgroup_parent()
        self._start_containerd()
        rec.pids.update(_own(self.procs.pids))
        self._write_lock()
        self._import(images)
        self._start_kubelet()
        rec.pids.update(_own(self.procs.pids))
        self._write_lock()
        self.wait("kubelet", self._registered, f"node {NODE_NAME} registered", 60.0)
        self._claim_loopback()
        self.wait("kubelet", self._ready, f"node {NODE_NAME} Ready (real kubelet)", 60.0)
        self.progress(f"real node up in {time.monotonic() - t0:.1f}s")
        return rec

    def _write_lock(self) -> None:
        LOCK.write_text(
            json.dumps({"workdir": str(self.dir), "pids": list(self.record.pids.values())})
        )

    def _cgroup_parent(self) -> None:
        """The kubelet's cgroupRoot must exist in every hierarchy; cpuset needs cpus/mems."""
        for mount in _cgroup_mounts():
            path = mount / CGROUP_PARENT
            path.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (mount / knob).exists() and not (path / knob).read_text().strip():
                    (path / knob).write_text((mount / knob).read_text())

    def _start_containerd(self) -> None:
        d = self.dir
        for sub in ("containerd", "cni/net.d", "cni/bin"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # W2: present before containerd starts (a later rename is not noticed).
        (d / "cni/net.d/10-hostnet-only.conflist").write_text(
            json.dumps(
                {"cniVersion": "0.4.0", "name": "hostnet-only", "plugins": [{"type": "loopback"}]}
            )
        )
        sock = d / "containerd" / "containerd.sock"
        self.record.containerd_socket = str(sock)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{containerd_root()}"
state = "{d / "containerd/state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd/opt"}"
[{cri}]
  sandbox_image = "{PAUSE_REF}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / "containerd/runc"}"
  [{cri}.cni]
    bin_dir = "{d / "cni/bin"}"
    conf_dir = "{d / "cni/net.d"}"
"""
        cfg = d / "containerd" / "config.toml"
        cfg.write_text(config)
        self.progress("starting containerd (own root, state and socket under the stack dir)")
        self.spawn("containerd", ["containerd", "--config", str(cfg)])
        self.wait("containerd", lambda: self._ctr("version").returncode == 0, "containerd up", 30.0)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ctr(self.record.containerd_socket, *args)

    def _import(self, images: NodeImages) -> None:
        """Import what the store lacks; drop older builds of ours (the store is a cache)."""
        present = set(self._ctr("image", "ls", "-q").stdout.split())
        wanted = {i.ref for i in images.all()}
        stale = [r for r in present if r.startswith(f"{REGISTRY}/") and r not in wanted]
        if stale:
            self._ctr("image", "rm", *stale)
        for image in images.all():
            self.record.images[image.name] = image.ref
            if image.ref in present:
                continue
            t0 = time.monotonic()
            proc = self._ctr("image", "import", str(image.archive))
            if proc.returncode != 0:
                raise DevstackError(f"ctr image import of {image.archive} failed:\n{proc.stderr}")
            self.progress(
                f"imported {image.ref} ({image.size_bytes / 1e6:.0f} MB) "
                f"in {time.monotonic() - t0:.1f}s"
            )

    def _start_kubelet(self) -> None:
        d = self.dir / "kubelet"
        (d / "root").mkdir(parents=True, exist_ok=True)
        ident = pki_mod.issue_from_ca(
            self.pki_dir, "kubelet", f"system:node:{NODE_NAME}", "system:nodes"
        )
        ca = pki_mod.CertPair(self.pki_dir / "ca.crt", self.pki_dir / "ca.key")
        config_path = d / "kubeconfig"
        # The user name must match the context's, or the kubelet silently runs anonymous.
        kubeconfig.write(config_path, self.apiserver_url, ca, ident, f"system:node:{NODE_NAME}")
        port, healthz = free_port(), free_port()
        self.record.kubelet_port = port
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.record.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_PARENT}",
            "cgroupsPerQOS": True,
            "failSwapOn": False,
            "failCgroupV1": False,
            "cpuManagerPolicy": "static",
            "cpuManagerReconcilePeriod": "5s",
            # 100m reserved: CPU 0 stays shared, the others can be exclusive (1900m on 2 cores).
            "kubeReserved": {"cpu": "100m"},
            "podLogsDir": str(self.dir / "pod-logs"),
            # Imported images cannot be pulled again: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 20,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            **self.kubelet_overrides,
        }
        cfg = d / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        self.progress(
            f"starting kubelet {KUBELET.version} (static CPU manager) as node {NODE_NAME}"
        )
        self.spawn(
            "kubelet",
            [
                str(KUBELET.path("kubelet")),
                f"--config={cfg}",
                f"--kubeconfig={config_path}",
                f"--root-dir={d / 'root'}",
                f"--cert-dir={d / 'pki'}",
                f"--hostname-override={NODE_NAME}",  # W3
                "--cloud-provider=external",  # W3: addresses from _claim_loopback
                f"--node-labels={labels}",
                "--register-with-taints={key}={value}:{effect}".format(**NODE_TAINT),
                "--v=2",
            ],
        )

    def _registered(self) -> bool:
        return bool(self.api("GET", f"/api/v1/nodes/{NODE_NAME}"))

    def _claim_loopback(self) -> None:
        """Play the cloud controller the kubelet waits for: the node's address is 127.0.0.1
        (a kubelet refuses a loopback --node-ip, the API does not) and it is initialized.

        The kubelet keeps addresses it finds set; hostNetwork pods take the node's InternalIP
        as their IP, so their probes, and anything that reads their IP, stay on loopback.
        """
        path = f"/api/v1/nodes/{NODE_NAME}"
        merge = "application/merge-patch+json"
        addresses = [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": NODE_NAME},
        ]
        self.api("PATCH", f"{path}/status", {"status": {"addresses": addresses}}, merge)
        node = self.api("GET", path) or {}
        taints = node.get("spec", {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != UNINITIALIZED_TAINT]
        if kept != taints:
            self.api("PATCH", path, {"spec": {"taints": kept}}, merge)
        self.progress(f"node {NODE_NAME}: InternalIP {NODE_IP} (pods and probes on loopback)")

    def _ready(self) -> bool:
        node = self.api("GET", f"/api/v1/nodes/{NODE_NAME}")
        if not node:
            return False
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = [
            t for t in node.get("spec", {}).get("taints") or [] if t["key"] != NODE_TAINT["key"]
        ]
        return conds.get("Ready") == "True" and not taints


def containerd_root() -> Path:
    """containerd's image store: a cache (like the built binaries), so the 1 GB worker image is
    imported and unpacked once per build, not at every stack start. Its state, socket and every
    container live under the stack dir and go with it."""
    return cache_root() / "node" / "containerd"


def _own(pids: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in pids.items() if k in ("containerd", "kubelet")}


def ctr(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", socket, "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def stop_node(
    rec: NodeRecord, kill_group: Callable[[int], None], progress: Progress = stderr_progress
) -> list[str]:
    """Undo everything ``start`` did; returns what could not be undone (empty when clean)."""
    problems: list[str] = []
    kubelet = rec.pids.pop("kubelet", None)
    if kubelet is not None:
        kill_group(kubelet)
    if rec.containerd_socket and Path(rec.containerd_socket).exists():
        _remove_containers(rec.containerd_socket)
    _kill_shims(rec.containerd_socket)
    containerd = rec.pids.pop("containerd", None)
    if containerd is not None:
        kill_group(containerd)
    problems += _unmount_under(Path(rec.workdir))
    problems += _unmount_under(containerd_root())
    problems += _remove_cgroups()
    for name, value in rec.sysctls.items():
        if _sysctl(name) != value:
            proc = subprocess.run(
                ["sysctl", "-q", "-w", f"{name}={value}"], capture_output=True, check=False
            )
            if proc.returncode != 0:
                problems.append(f"sysctl {name} not restored to {value}")
    for d in rec.created_dirs:
        problems += _unmount_under(Path(d))
        shutil.rmtree(d, ignore_errors=True)
        if os.path.lexists(d):
            problems.append(f"{d} not removed")
    with contextlib.suppress(OSError, ValueError):
        if json.loads(LOCK.read_text()).get("workdir") == rec.workdir:
            LOCK.unlink()
    for p in problems:
        progress(f"real node teardown: {p}")
    return problems


def _remove_containers(socket: str) -> None:
    """Kill and delete every task and container of the node (the kubelet is already gone)."""
    tasks = ctr(socket, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        ctr(socket, "tasks", "kill", "--signal", "SIGKILL", task)
    # A killed task is usually reaped (and gone) at once; only a task still listed is waited
    # for -- retrying the delete of one that no longer exists used to cost the whole 10 s.
    deadline = time.monotonic() + 10
    pending = set(tasks)
    while pending and time.monotonic() < deadline:
        for task in sorted(pending):
            proc = ctr(socket, "tasks", "delete", "--force", task)
            if proc.returncode == 0 or "not found" in proc.stderr:
                pending.discard(task)
        if pending:
            time.sleep(0.2)
            pending &= set(ctr(socket, "tasks", "ls", "-q").stdout.split())
    for container in ctr(socket, "containers", "ls", "-q").stdout.split():
        ctr(socket, "containers", "delete", container)


def _kill_shims(socket: str) -> None:
    """containerd-shim-runc-v2 processes of *this* containerd (matched by its socket path)."""
    if not socket:
        return
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"containerd-shim" in cmdline[0] and socket.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(root).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _unmount_under(root: Path) -> list[str]:
    problems = []
    for point in mounts_under(root):
        # the kubelet's rshared self-bind of its root can be stacked; repeat until gone
        for _ in range(5):
            if point not in mounts_under(root):
                break
            proc = subprocess.run(["umount", point], capture_output=True, check=False)
            if proc.returncode != 0:
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        if point in mounts_under(root):
            problems.append(f"mount {point} still present")
    return problems


def _cgroup_mounts() -> list[Path]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(fields[4]))
    return out


def node_cgroups() -> list[Path]:
    """Every cgroup directory of the node (in all hierarchies)."""
    found = []
    for mount in _cgroup_mounts():
        top = mount / CGROUP_PARENT
        if top.is_dir():
            found += [p for p in top.rglob("*") if p.is_dir()]
            found.append(top)
    return found


def pod_processes() -> list[int]:
    """The processes in the node's cgroups: its pods' containers."""
    pids: set[int] = set()
    for path in node_cgroups():
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in (path / "cgroup.procs").read_text().split()}
    return sorted(pids)


def _remove_cgroups() -> list[str]:
    problems = []
    for path in sorted(node_cgroups(), key=lambda p: -len(p.parts)):  # children first
        for _ in range(50):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)  # a task is still exiting
        if path.exists():
            problems.append(f"cgroup {path} not removed")
    return problems


def _sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def kubelet_log_tail(stack_dir: Path, lines: int = 30) -> str:
    path = stack_dir / "logs" / "kubelet.log"
    if not path.exists():
        return "(no kubelet log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
