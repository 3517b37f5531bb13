"""Fast fallback TTS: the ``espeak-ng`` binary (first audio in a few ms, robotic voice)."""

from __future__ import annotations

import asyncio
import shutil
import struct
import uuid

from livekit.agents import tts
from livekit.agents.types import APIConnectOptions

from .inprocess import InProcessTTS

SAMPLE_RATE = 22050  # espeak-ng's native output rate


def pcm_from_wav(wav: bytes) -> bytes:
    """The samples of espeak-ng's streamed WAV (its size fields may be placeholders)."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos = 12
    while pos + 8 <= len(wav):
        chunk_id = wav[pos : pos + 4]
        (size,) = struct.unpack("<I", wav[pos + 4 : pos + 8])
        if chunk_id == b"data":
            return wav[pos + 8 :]
        pos += 8 + size
    raise ValueError("WAV stream without a data chunk")


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


class EspeakTTS(InProcessTTS):
    def __init__(self, *, voice: str = "en-us", words_per_minute: int = 175) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )
        binary = espeak_binary()
        if binary is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        self._binary = binary
        self._voice = voice or "en-us"
        self._wpm = words_per_minute

    @property
    def model(self) -> str:
        return f"espeak-ng-{self._voice}"

    @property
    def provider(self) -> str:
        return "espeak-ng"


class EspeakStream(tts.ChunkedStream):
    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._espeak = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=str(uuid.uuid4()),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        proc = await asyncio.create_subprocess_exec(
            self._espeak._binary,
            "--stdout",
            "-v",
            self._espeak._voice,
            "-s",
            str(self._espeak._wpm),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        wav, _ = await proc.communicate(self.input_text.encode())
        if proc.returncode != 0:
            raise RuntimeError(f"espeak-ng exited with {proc.returncode}")
        output_emitter.push(pcm_from_wav(wav))
        output_emitter.flush()


EspeakTTS.stream_type = EspeakStream
