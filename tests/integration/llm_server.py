"""Real OpenAI-compatible endpoints on loopback for the provider tests and the benchmark.

``LlamaServer`` is llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``,
from ``llama-cpp-python[server]``) serving a GGUF that ships in a registry package.
``HangingServer`` accepts connections and never answers: an endpoint that hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from voicepool_devstack.ports import free_port

ALIAS = "receptionist-gguf"


class LlamaServer:
    """``llama_cpp.server`` as a subprocess; ``kill()`` is the primary dying mid-call."""

    def __init__(
        self,
        model_path: str,
        log_dir: Path,
        *,
        threads: int = 1,
        api_key: str | None = None,
        chat_format: str | None = None,
    ) -> None:
        self.port = free_port()
        self.api_key = api_key or "sk-local"
        self.log_path = log_dir / f"llama-server-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            model_path,
            "--model_alias",
            ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            "2048",
        ]
        if api_key is not None:
            cmd += ["--api_key", api_key]
        if chat_format is not None:
            cmd += ["--chat_format", chat_format]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            req = urllib.request.Request(
                f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"llama_cpp.server not ready within {timeout}s\n{self.tail()}")

    def chat(self, payload: dict[str, object], timeout: float = 120.0) -> dict[str, object]:
        """One non-streaming chat completion (for tests that inspect the raw response)."""
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(payload).encode(),
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body: dict[str, object] = json.loads(r.read())
            return body

    def warm(self) -> None:
        """One short completion: the first one pages the weights in (seconds on a busy CPU)."""
        self.chat(
            {
                "model": ALIAS,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 1,
            }
        )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


class HangingServer:
    """A loopback TCP endpoint that accepts requests and never answers them."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)  # read nothing, answer nothing

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self._conns:
            c.close()
        self._sock.close()


def closed_port_url() -> str:
    """A loopback base URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"
