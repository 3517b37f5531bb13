"""Pinned versions of every server binary in the local stack, and where their builds are cached.

One place to bump a version: the Go wrapper modules under ``devstack/go`` pin the same numbers
(their go.sum locks the whole dependency graph), and the cache path includes the version so an
upgrade never reuses a stale binary.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"
LIVEKIT_VERSION = "v1.13.5"
HELM_VERSION = "v3.22.0"
#: The newest livekit/sip the module proxy serves whose psrpc matches livekit-server 1.13.5.
LIVEKIT_SIP_VERSION = "v1.8.0"

#: Repository root (devstack/voicepool_devstack/versions.py -> ../..).
REPO_ROOT = Path(__file__).resolve().parents[2]
GO_MODULES = REPO_ROOT / "devstack" / "go"


def cache_root() -> Path:
    """Where built binaries live; ``VOICEPOOL_CACHE`` overrides ``~/.cache/voicepool``."""
    env = os.environ.get("VOICEPOOL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "voicepool"


@dataclass(frozen=True)
class Component:
    """A group of binaries built from one pinned Go source."""

    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}"

    def path(self, binary: str) -> Path:
        return self.directory / binary


KUBERNETES = Component(
    "kubernetes",
    KUBERNETES_VERSION,
    ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
)
ETCD = Component("etcd", ETCD_VERSION, ("etcd",))
KWOK = Component("kwok", KWOK_VERSION, ("kwok",))
LIVEKIT = Component("livekit-server", LIVEKIT_VERSION, ("livekit-server",))

HELM = Component("helm", HELM_VERSION, ("helm",))


def _content_hash(root: Path) -> str:
    """Short hash of a Go module's sources: our own test phone is rebuilt when it changes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


#: livekit-sip and the voicepool test phone, built together with cgo from ``devstack/go/sip``.
SIP = Component(
    "livekit-sip",
    f"{LIVEKIT_SIP_VERSION}-{_content_hash(GO_MODULES / 'sip')}",
    ("livekit-sip", "voicepool-phone"),
)
#: Debian packages SIP needs: cgo headers to build livekit-sip, redis for its RPC, sipp.
SIP_DEBIAN_PACKAGES = (
    "pkg-config",
    "libopus-dev",
    "libopusfile-dev",
    "libsoxr-dev",
    "redis-server",
    "sip-tester",
)
#: The real node's kubelet (``up --node``), built from the same pinned module as the control
#: plane; its own cache dir, so it is built (about 8 min on 2 cores) only where a node runs.
KUBELET = Component("kubelet", KUBERNETES_VERSION, ("kubelet",))

#: Servers of the local stack.
STACK_COMPONENTS = (ETCD, KWOK, LIVEKIT, KUBERNETES, SIP)
#: Everything `voicepool-devstack build` prepares (servers + the helm CLI for chart tests).
ALL_COMPONENTS = (*STACK_COMPONENTS, HELM)
