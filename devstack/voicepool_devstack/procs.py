"""The local stack's processes: each server in its own process group, its log in
``<workdir>/logs/<name>.log``, started and awaited the same way, stopped by PID only.

Every server module (control plane, LiveKit, SIP, Prometheus, the real node) starts its
processes through one ``Processes``; the stack composes them and stops them all in reverse
start order (SIGTERM, then SIGKILL), so a failed test never leaves orphans. Also the small
loopback helper they share: a plain HTTP GET for readiness checks (ports come from
``ports``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import DevstackError
from .progress import Progress, stderr_progress


def http_get(url: str, ctx: ssl.SSLContext | None = None) -> bytes:
    """The stripped body of a GET (2 s timeout): the readiness check of most servers."""
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return bytes(resp.read()).strip()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not; a process of another user does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of someone else still answers kill(0); check /proc state
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    return True


def kill_group(pid: int, proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
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
        elif not alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def exit_on_sigterm() -> None:
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


class Processes:
    """The servers of one stack, by name.

    ``pids`` may be the stack's recorded state (``StackState.pids``): it then always lists
    what runs, so ``voicepool-devstack down`` in another process can stop it.
    """

    def __init__(
        self,
        workdir: Path,
        progress: Progress = stderr_progress,
        startup_timeout: float = 90.0,
        pids: dict[str, int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.progress = progress
        self.startup_timeout = startup_timeout
        self.pids: dict[str, int] = pids if pids is not None else {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``args`` as server ``name`` in its own process group (``stop`` kills children
        too), its output appended to its log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        log.close()
        self.running[name] = proc
        self.pids[name] = proc.pid

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait(
        self, name: str, check: Callable[[], bool], what: str, timeout: float | None = None
    ) -> None:
        """Poll ``check`` until true; fail fast with the server's log if it died."""
        limit = timeout or self.startup_timeout
        t0 = time.monotonic()
        deadline = t0 + limit
        while True:
            proc = self.running.get(name)
            if proc is not None and proc.poll() is not None:
                tail = self.log_tail(name)
                hint = ""
                if "address already in use" in tail.lower() or "bind:" in tail.lower():
                    hint = "\nA port it needs is already in use (port clash); retry or free it."
                raise DevstackError(
                    f"{name} exited with code {proc.returncode} while starting ({what}).\n"
                    f"Last lines of {self.logs / (name + '.log')}:\n{tail}{hint}"
                )
            with contextlib.suppress(Exception):
                if check():
                    self.progress(f"{what} ({time.monotonic() - t0:.1f}s)")
                    return
            if time.monotonic() > deadline:
                raise DevstackError(
                    f"timed out after {limit:.0f}s waiting for "
                    f"{what}. Last lines of {name}.log:\n{self.log_tail(name)}"
                )
            time.sleep(0.2)

    def stop(self, name: str, grace: float = 10.0) -> None:
        """Stop server ``name`` (started here or only recorded in ``pids``) and forget it;
        SIGKILL after ``grace`` seconds (0: at once, a crash rather than a shutdown)."""
        proc = self.running.pop(name, None)
        pid = proc.pid if proc else self.pids.get(name)
        if pid is not None:
            kill_group(pid, proc, grace)
        self.pids.pop(name, None)

    def stop_pid(self, pid: int) -> None:
        """Stop the server with process group ``pid``, whatever its name."""
        names = [name for name, p in self.pids.items() if p == pid]
        if names:
            for name in names:
                self.stop(name)
        else:
            kill_group(pid, None)

    def stop_all(self) -> None:
        """Stop every server, the last started first."""
        for name in reversed(list(dict.fromkeys([*self.pids, *self.running]))):
            self.stop(name)
        self.running.clear()
        self.pids.clear()
