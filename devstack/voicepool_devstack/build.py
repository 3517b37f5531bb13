"""Build the pinned server binaries from the Go module proxy, once, into the cache.

Each server module registers how its component is built (``register(builders)``: a recipe per
component); ``Builders.ensure_built`` runs the recipes of whatever is missing. The first build
takes many minutes on a 2-core machine, so every step prints progress and a finished binary is
never rebuilt (a ``.complete`` stamp per component records that all of its binaries were
written by a successful build).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import DevstackError
from .progress import Progress, stderr_progress
from .versions import Component

#: Builds every binary of one component into ``component.directory``.
Builder = Callable[[Progress], None]


@dataclass(frozen=True)
class Recipe:
    component: Component
    build: Builder
    #: Built in a thread beside the others: a separate Go module whose downloads and cgo
    #: compile overlap the long Kubernetes build instead of queueing behind it.
    beside: bool = False


class Builders:
    """How each component is built: a registry the server modules fill (one recipe each)."""

    def __init__(self) -> None:
        self.recipes: dict[str, Recipe] = {}

    def register(self, component: Component, build: Builder, *, beside: bool = False) -> None:
        if component.name in self.recipes:
            raise DevstackError(f"two recipes for {component.name}")
        self.recipes[component.name] = Recipe(component, build, beside)

    def recipe(self, component: Component) -> Recipe:
        try:
            return self.recipes[component.name]
        except KeyError:
            raise DevstackError(f"no recipe registered for {component.name}") from None

    def ensure_built(
        self, components: Iterable[Component], progress: Progress = stderr_progress
    ) -> None:
        """Build whatever is missing; a no-op (milliseconds) when the cache is warm."""
        missing = [self.recipe(c) for c in components if not is_built(c)]
        if not missing:
            return
        progress(
            "building pinned binaries into "
            f"{missing[0].component.directory.parent} (first run only): "
            + ", ".join(f"{r.component.name} {r.component.version}" for r in missing)
        )
        side = [r for r in missing if r.beside]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(side))) as pool:
            futures = [pool.submit(_build_one, r, progress) for r in side]
            try:
                for recipe in missing:
                    if not recipe.beside:
                        _build_one(recipe, progress)
            finally:
                for future in futures:
                    future.result()  # re-raises a failed side build


def _stamp(component: Component) -> Path:
    return component.directory / ".complete"


def is_built(component: Component) -> bool:
    """True when every binary of the component exists from a completed build."""
    return _stamp(component).exists() and all(
        component.path(b).exists() for b in component.binaries
    )


def _build_one(recipe: Recipe, progress: Progress) -> None:
    component = recipe.component
    component.directory.mkdir(parents=True, exist_ok=True)
    recipe.build(progress)
    absent = [b for b in component.binaries if not component.path(b).exists()]
    if absent:
        raise DevstackError(f"build of {component.name} produced no {', '.join(absent)}")
    _stamp(component).write_text(f"{component.version}\n")


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


def run_go(
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


#: Every Go build: no paths of this machine in the binaries, and no DWARF from the compiler
#: either (the linker drops it anyway with ``-w``; not generating it saves about a tenth of the
#: compile on a cold cache: golang/go#38777). Nothing here debugs these servers.
GO_BUILD_FLAGS = ("-trimpath", "-gcflags=all=-dwarf=false")


def go_install(component: Component, package: str, progress: Progress) -> None:
    """``go install package@version`` into the component's directory (outside any module).

    Without symbol tables and DWARF (``-s -w``), like the other builds: the linker's slowest
    part on 2 cores.
    """
    run_go(
        ["install", *GO_BUILD_FLAGS, "-ldflags=-s -w", f"{package}@{component.version}"],
        component.directory,
        f"building {component.name} {component.version}",
        progress,
        env={"GOBIN": str(component.directory), "GOFLAGS": ""},
    )
