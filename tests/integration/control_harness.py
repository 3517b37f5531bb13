"""The control service as a real process for the session-control tests (and its bench).

``ControlService`` runs ``voicepool-control`` as a subprocess against the stack's apiserver,
with a tokens directory laid out as the chart mounts the Secret (``read.viewer``,
``control.alice``); ``request`` speaks HTTP to it and ``cli`` runs ``voicepool calls ...``.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from voicepool_devstack.ports import free_port

READER, CONTROLLER = "viewer", "alice"


class ControlService:
    def __init__(
        self,
        kubeconfig: str,
        workdir: Path,
        *,
        retention_s: float = 600,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens = workdir / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        self.read_token = secrets.token_urlsafe(24)
        self.control_token = secrets.token_urlsafe(24)
        (tokens / f"read.{READER}").write_text(self.read_token + "\n")
        (tokens / f"control.{CONTROLLER}").write_text(self.control_token + "\n")
        self.log_path = workdir / f"control-{self.port}.log"
        env = {**os.environ, "KUBECONFIG": kubeconfig}
        env.pop("POD_NAME", None)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "voicepool_operator.control.service",
                    f"--port={self.port}",
                    "--address=127.0.0.1",
                    f"--tokens={tokens}",
                    f"--retention-seconds={retention_s}",
                    *(f"--namespace={ns}" for ns in namespaces),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.request("GET", "/healthz", token=None)[0] == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"voicepool-control did not start\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = "control",
        timeout: float = 30.0,
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or text, headers); ``token`` "control", "read", None or a raw one."""
        raw = {"control": self.control_token, "read": self.read_token}.get(token or "", token)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if raw:
            req.add_header("Authorization", f"Bearer {raw}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, text, headers = resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            status, text, headers = e.code, e.read().decode(), dict(e.headers)
        except OSError:
            return 0, "", {}
        try:
            return status, json.loads(text), headers
        except ValueError:
            return status, text, headers

    def cli(
        self, *args: str, token: str = "control", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``voicepool <args>`` against this service (URL and token from the environment)."""
        env = {
            **os.environ,
            "VOICEPOOL_CONTROL_URL": self.url,
            "VOICEPOOL_CONTROL_TOKEN": {"control": self.control_token, "read": self.read_token}[
                token
            ],
        }
        return subprocess.run(
            [sys.executable, "-m", "voicepool_operator.control.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def follow(self, room: str, out: Path) -> subprocess.Popen[bytes]:
        """``voicepool calls events ROOM -o json`` in the background, its lines into ``out``."""
        env = {**os.environ, "VOICEPOOL_CONTROL_URL": self.url}
        env["VOICEPOOL_CONTROL_TOKEN"] = self.read_token
        with out.open("wb") as f:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "voicepool_operator.control.cli",
                    "calls",
                    "events",
                    room,
                    "-o",
                    "json",
                ],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def metric(self, name: str) -> float:
        _, body, _ = self.request("GET", "/metrics", token=None)
        total = 0.0
        for line in str(body).splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
    return out
