"""Real ``voicepool-worker`` processes for the worker tests and the latency benchmark.

A ``WorkerProcess`` is the console script's module run as a subprocess (own process group,
JSON logs to a file) with the pod environment the operator would set; helpers read its JSON log
lines and its HTTP endpoints. Every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.ports import free_port


def agent_name() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


class WorkerProcess:
    """One worker subprocess; ``stop()`` always leaves nothing running."""

    def __init__(
        self,
        livekit: LiveKitInfo | None,
        log_dir: Path,
        *,
        agent: str,
        env: Mapping[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.agent = agent
        self.port = free_port()
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.err_path = self.log_path.with_suffix(".err")
        base: dict[str, str] = {
            "VOICEPOOL_AGENT_NAME": agent,
            "VOICEPOOL_HTTP_PORT": str(self.port),
            "VOICEPOOL_SESSIONS_PER_POD": "1",
            "VOICEPOOL_DRAIN_TIMEOUT_SECONDS": "120",
            "VOICEPOOL_LOG_LEVEL": "INFO",
            "VOICEPOOL_LOG_TRANSCRIPTS": "true",  # the tests compare what was said and heard
        }
        if livekit is not None:
            base.update(livekit.env())
        full = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEPOOL_", "POD_"))}
        full.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full.update(base)
        full.update(env or {})
        with self.log_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voicepool_worker.runtime.server"],
                env=full,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    # -- logs ------------------------------------------------------------------------------

    def lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for raw in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    obj = json.loads(raw)
                    if isinstance(obj, dict):
                        out.append(obj)
        return out

    def find(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [line for line in self.lines() if pred(line)]

    def msgs(self, msg: str) -> list[dict[str, Any]]:
        return self.find(lambda line: line.get("msg") == msg)

    def log_text(self) -> str:
        """Everything the worker wrote, stdout and stderr, as text."""
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace") + self.stderr()
        return self.stderr()

    def stderr(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.err_path.read_text(errors="replace")
        return ""

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            text = self.log_path.read_text(errors="replace").splitlines()[-n:]
            return "\n".join(text) + "\n--- stderr ---\n" + self.stderr()[-3000:]
        return ""

    def wait_log(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(pred)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker log never showed {what}\n{self.tail()}")

    # -- http ------------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"worker not ready within {timeout}s\n{self.tail()}")

    def wait_available(self, timeout: float = 30.0) -> None:
        """Wait until every call has ended and the worker told LiveKit it takes calls again.

        A call dispatched while the worker is still marked full is not offered to it again,
        so back-to-back calls to a capacity-1 worker wait for this first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = len(self.msgs("session started"))
            ended = len(self.msgs("session ended")) + len(self.msgs("session failed"))
            marks = self.find(
                lambda x: (
                    str(x.get("msg", "")).startswith("worker is ")
                    and "capacity" in str(x.get("msg", ""))
                )
            )
            available = not marks or "below capacity" in str(marks[-1].get("msg"))
            if started <= ended and available:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker not available again within {timeout}s\n{self.tail()}")

    def metric(self, name: str) -> float | None:
        """A sample's value from /metrics (summed over label sets)."""
        status, body = self.get("/metrics")
        if status != 200:
            return None
        total, seen = 0.0, False
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return total if seen else None

    # -- lifecycle -------------------------------------------------------------------------

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """To the main process only, as the kubelet does (call processes ignore it anyway)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s\n{self.tail()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        # the job processes live in the same process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def rss_tree(pid: int, field: str = "Rss") -> dict[int, float]:
    """Memory (MiB) of a process and each descendant: ``Rss``, or ``Pss`` (shared pages split).

    Call processes fork from livekit-agents' forkserver and share its pages copy-on-write,
    so summing ``Rss`` counts those pages once per process; ``Pss`` does not.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    out[p] = int(line.split()[1]) / 1024
    return out


def rss_mb(pid: int, field: str = "Rss") -> float:
    """Memory of a process and all its descendants, in MiB (see ``rss_tree``)."""
    return sum(rss_tree(pid, field).values())
