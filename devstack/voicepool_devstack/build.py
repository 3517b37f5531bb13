"""Build the pinned server binaries from the Go module proxy, once, into the cache.

The first build takes many minutes on a 2-core machine, so every step prints progress and a
finished binary is never rebuilt (a ``.complete`` stamp per component records that all of its
binaries were written by a successful build).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .errors import DevstackError
from .versions import (
    ALL_COMPONENTS,
    ETCD,
    GO_MODULES,
    HELM,
    KUBELET,
    KUBERNETES,
    KUBERNETES_VERSION,
    KWOK,
    LIVEKIT,
    SIP,
    Component,
)

Progress = Callable[[str], None]


def _stderr_progress(msg: str) -> None:
    print(f"[devstack] {msg}", file=sys.stderr, flush=True)


def _stamp(component: Component) -> Path:
    return component.directory / ".complete"


def is_built(component: Component) -> bool:
    """True when every binary of the component exists from a completed build."""
    return _stamp(component).exists() and all(
        component.path(b).exists() for b in component.binaries
    )


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise DevstackError(
            "Go toolchain not found on PATH: the local stack builds kube-apiserver, etcd, kwok "
            "and livekit-server from the Go module proxy. Install Go >= 1.24 "
            "(https://go.dev/doc/install) or point VOICEPOOL_KUBECONFIG at an existing cluster."
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _run_go(
    args: list[str], cwd: Path, what: str, progress: Progress, env: dict[str, str] | None = None
) -> None:
    """Run one go command, keeping its output only to explain a failure."""
    start = time.monotonic()
    progress(f"{what} ...")
    proc = subprocess.run(
        [_go(), *args],
        cwd=cwd,
        env={**_go_env(), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        hint = ""
        low = proc.stderr.lower()
        if "dial tcp" in low or "proxy" in low or "no such host" in low or "timeout" in low:
            hint = (
                f"\nThe Go module proxy (GOPROXY={os.environ.get('GOPROXY') or 'default'}) "
                "could not be reached; the first build needs network access to it."
            )
        raise DevstackError(f"{what} failed (go {' '.join(args[:2])}):\n{tail}{hint}")
    progress(f"{what} done in {time.monotonic() - start:.0f}s")


def _build_kubernetes(progress: Progress, component: Component = KUBERNETES) -> None:
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
        _run_go(
            [
                "build",
                "-trimpath",
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
    _run_go(
        ["build", "-trimpath", "-ldflags", "-s -w", "-o", str(ETCD.path("etcd")), "."],
        GO_MODULES / "etcd",
        f"building etcd {ETCD.version}",
        progress,
    )


def _build_kwok(progress: Progress) -> None:
    _run_go(
        ["install", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK.version}"],
        KWOK.directory,
        f"building kwok {KWOK.version}",
        progress,
        env={"GOBIN": str(KWOK.directory), "GOFLAGS": ""},
    )


def _build_livekit(progress: Progress) -> None:
    """Pinned to the newest 1.13.x whose go.mod has no replace directives.

    Later 1.13 releases replace pion modules with forks that the public module proxy does not
    serve, so they cannot be built from it; ``go install`` of v1.13.5 resolves everything there.
    """
    _run_go(
        ["install", f"github.com/livekit/livekit-server/cmd/server@{LIVEKIT.version}"],
        LIVEKIT.directory,
        f"building livekit-server {LIVEKIT.version}",
        progress,
        env={"GOBIN": str(LIVEKIT.directory), "GOFLAGS": ""},
    )
    built = LIVEKIT.directory / "server"
    if built.exists():
        built.replace(LIVEKIT.path("livekit-server"))


def _build_helm(progress: Progress) -> None:
    _run_go(
        ["install", f"helm.sh/helm/v3/cmd/helm@{HELM.version}"],
        HELM.directory,
        f"building helm {HELM.version}",
        progress,
        env={"GOBIN": str(HELM.directory), "GOFLAGS": ""},
    )


def _build_sip(progress: Progress) -> None:
    from . import sip  # its own module: SIP is a capability of the stack, not a build detail

    sip.build(progress)


_BUILDERS: dict[str, Callable[[Progress], None]] = {
    ETCD.name: _build_etcd,
    KWOK.name: _build_kwok,
    LIVEKIT.name: _build_livekit,
    KUBERNETES.name: _build_kubernetes,
    HELM.name: _build_helm,
    SIP.name: _build_sip,
    KUBELET.name: lambda progress: _build_kubernetes(progress, KUBELET),
}
#: Built in a thread beside the others: a separate Go module (its downloads and cgo compile
#: overlap the long Kubernetes build instead of queueing behind it).
_PARALLEL = frozenset({SIP.name})


def ensure_built(
    components: tuple[Component, ...] = ALL_COMPONENTS, progress: Progress = _stderr_progress
) -> None:
    """Build whatever is missing; a no-op (milliseconds) when the cache is warm."""
    missing = [c for c in components if not is_built(c)]
    if not missing:
        return
    progress(
        "building pinned binaries into "
        f"{missing[0].directory.parent} (first run only): "
        + ", ".join(f"{c.name} {c.version}" for c in missing)
    )
    side = [c for c in missing if c.name in _PARALLEL]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(side))) as pool:
        futures = [pool.submit(_build_one, c, progress) for c in side]
        try:
            for component in missing:
                if component.name not in _PARALLEL:
                    _build_one(component, progress)
        finally:
            for future in futures:
                future.result()  # re-raises a failed side build


def _build_one(component: Component, progress: Progress) -> None:
    component.directory.mkdir(parents=True, exist_ok=True)
    _BUILDERS[component.name](progress)
    absent = [b for b in component.binaries if not component.path(b).exists()]
    if absent:
        raise DevstackError(f"build of {component.name} produced no {', '.join(absent)}")
    _stamp(component).write_text(f"{component.version}\n")
