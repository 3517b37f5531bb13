"""The stand-in agent (``stand_in_agent.py``) as a process: one per region's LiveKit in the
routing tests, bench and demo. Every wait is bounded; ``stop()`` leaves nothing running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import DevstackError
from .livekit import LiveKitInfo
from .ports import free_port


class AgentProcess:
    """``python -m voicepool_devstack.stand_in_agent`` registered with one LiveKit server."""

    def __init__(self, livekit: LiveKitInfo, agent: str, capacity: int = 16) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="voicepool-agent-", suffix=".log")[1])
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")},
            **livekit.env(),
            "AGENT": agent,
            "CAPACITY": str(capacity),
            "HTTP_PORT": str(free_port()),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voicepool_devstack.stand_in_agent"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def registrations(self) -> int:
        """How often LiveKit has registered it (again after each reconnect)."""
        return self._lines().count("registered")

    def jobs(self) -> list[str]:
        """The rooms of the jobs it accepted."""
        return [line.split(" ", 1)[1] for line in self._lines() if line.startswith("job ")]

    def wait_registered(self, more_than: int = 0, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DevstackError(
                    f"the stand-in agent exited:\n{self.log_path.read_text()[-3000:]}"
                )
            if self.registrations() > more_than:
                return
            time.sleep(0.1)
        raise DevstackError(f"the stand-in agent did not register within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
