"""Drive the SIP test phone (``voicepool-phone``) from Python: tests, the bench and the demo.

The phone is a subprocess: commands go to its stdin one a line, and every event it reports
(``answered`` with the INVITE -> 200 OK time, ``voice_start``/``voice_end`` of what it hears,
``play_end`` with the caller's true end of voicing, ``dtmf``, ``refer``, ``bye``...) comes back
as one JSON line stamped in milliseconds of the phone's own clock. Figures computed here are
therefore taken from the RTP the phone actually sends and receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sip import phone_binary

Event = dict[str, Any]
SAMPLE_RATE = 8000  # G.711
#: What a caller says to end the call. Over G.711 the offline STT hears "okay goodbye" as
#: "okay the bike" or "okay did buy it"; these words come through intact ("nothing else"
#: and "bye" are both hang-up keywords), so a test or the demo does not hang on a mishearing.
HANGUP_PHRASE = "nothing else, bye bye"


@dataclass(frozen=True)
class PhoneConfig:
    server: str  # livekit-sip host:port
    to: str  # the number dialled (an inbound trunk number)
    caller: str = "+15550100001"
    username: str = ""
    password: str = ""
    notify: str = "SIP/2.0 200 OK"  # final NOTIFY after a REFER; "none" sends none
    record: Path | None = None
    answer_timeout_s: float = 20.0
    max_duration_s: float = 120.0
    #: RMS of a 20 ms frame that counts as voice, sent or heard: the WebRTC caller's speech
    #: floor (``voicepool_worker.measure.SPEECH_FLOOR_RMS``), so both legs' TTFW use one rule.
    loud_rms: float = 200.0


class Phone:
    """One call from the test phone; ``async with Phone(cfg) as p`` always ends it."""

    def __init__(self, cfg: PhoneConfig) -> None:
        self.cfg = cfg
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.stderr = b""
        self.started_at = 0.0  # wall clock when the phone started: its events' t=0, roughly

    def at(self, wall: float) -> float:
        """A wall-clock time (``time.time()``, e.g. from a worker log) on the phone's clock (ms).

        The phone's ``invite`` event carries the wall clock it was sent at; before it, the
        time the process was started is the (slightly early) estimate."""
        for e in self.seen("invite"):
            if "unix_ms" in e:
                return wall * 1000.0 - float(e["unix_ms"]) + float(e["t"])
        return (wall - self.started_at) * 1000.0

    @property
    def pid(self) -> int | None:
        """The phone process (None before ``start``)."""
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> Phone:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        c = self.cfg
        args = [
            str(phone_binary()),
            f"-server={c.server}",
            f"-to={c.to}",
            f"-from={c.caller}",
            f"-notify={c.notify}",
            f"-answer-timeout={c.answer_timeout_s}s",
            f"-duration={c.max_duration_s}s",
            f"-loud={c.loud_rms}",
        ]
        if c.username or c.password:
            args += [f"-user={c.username}", f"-pass={c.password}"]
        if c.record is not None:
            args.append(f"-record={c.record}")
        self.started_at = time.time()
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(raw)
                if isinstance(event, dict):
                    async with self._changed:
                        self.events.append(event)
                        self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    # -- commands ----------------------------------------------------------------------------

    async def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()

    async def play(self, wav: Path) -> None:
        """Start speaking ``wav`` (8 kHz mono); ``play_end`` reports its end of voicing."""
        await self._send(f"play {wav}")

    async def press(self, digits: str) -> None:
        """Send RFC 4733 key events (about 0.5 s a key)."""
        await self._send(f"dtmf {digits}")

    async def set_notify(self, sipfrag: str) -> None:
        await self._send(f"notify {sipfrag}")

    async def hangup(self) -> None:
        await self._send("hangup")

    # -- events ------------------------------------------------------------------------------

    def seen(self, kind: str, after: float = -1.0) -> list[Event]:
        return [e for e in self.events if e.get("ev") == kind and float(e["t"]) > after]

    async def wait_for(
        self,
        kind: str,
        within: float,
        *,
        after: float = -1.0,
        where: Callable[[Event], bool] = lambda _: True,
    ) -> Event:
        """The first ``kind`` event later than ``after`` (phone ms); TimeoutError names it."""

        def found() -> Event | None:
            for e in self.seen(kind, after):
                if where(e):
                    return e
            return None

        async def wait() -> Event:
            async with self._changed:
                while (hit := found()) is None:
                    if self._reader is not None and self._reader.done():
                        raise EOFError(f"the phone exited before {kind!r}: {self.summary()}")
                    await self._changed.wait()
                return hit

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise TimeoutError(
                f"no {kind!r} from the phone within {within:.0f}s: {self.summary()}"
            ) from None

    async def answered(self) -> Event:
        """Wait for the 200 OK (or raise with the phone's reason)."""
        limit = self.cfg.answer_timeout_s + 5
        async with asyncio.timeout(limit):
            while True:
                if hits := self.seen("answered"):
                    return hits[0]
                if fails := self.seen("dial_failed"):
                    raise ConnectionError(f"call not answered: {fails[0].get('error')}")
                async with self._changed:
                    await self._changed.wait()

    async def speech_heard(self, after: float, within: float, gap_ms: float = 1500.0) -> Event:
        """The next utterance after ``after``: voice segments less than ``gap_ms`` apart are one
        (a TTS that falls behind real time on a busy machine leaves short gaps)."""
        start = await self.wait_for("voice_start", within, after=after)
        end = await self.wait_for("voice_end", within, after=float(start["t"]))
        while True:
            try:
                more = await self.wait_for(
                    "voice_start",
                    gap_ms / 1000,
                    after=float(end["t"]),
                )
            except TimeoutError:
                break
            end = await self.wait_for("voice_end", within, after=float(more["t"]))
        return {"start": float(start["t"]), "end": float(end["last_loud"]), "t": end["t"]}

    def summary(self) -> str:
        kinds = [str(e.get("ev")) for e in self.events]
        tail = self.stderr.decode(errors="replace")[-600:]
        return f"events {kinds}" + (f"; stderr: {tail}" if tail else "")

    async def close(self, within: float = 10.0) -> int | None:
        """Hang up (BYE) unless already ended, and wait for the phone to exit."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            await self.hangup()
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.stderr is not None:
            self.stderr = await proc.stderr.read()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return proc.returncode


def write_speech(text: str, path: Path) -> Path:
    """``text`` spoken by piper as an 8 kHz mono WAV for the phone to play (G.711 rate).

    Half a second of silence follows the words, so the phone's end of voicing is inside the file.
    """
    from livekit import rtc
    from voicepool_worker.caller import SAMPLE_RATE as CALLER_RATE
    from voicepool_worker.caller import speech_frames

    pcm = b"".join(speech_frames(text))
    resampler = rtc.AudioResampler(CALLER_RATE, SAMPLE_RATE, num_channels=1)
    out = bytearray()
    for frame in [*resampler.push(bytearray(pcm)), *resampler.flush()]:
        out += bytes(frame.data)
    out += b"\x00\x00" * (SAMPLE_RATE // 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(bytes(out))
    return path


def write_tone(path: Path, seconds: float = 1.5, hz: float = 800.0, amplitude: int = 8000) -> Path:
    """A sine tone as an 8 kHz mono WAV for the phone to play (easy to tell from speech)."""
    n = int(seconds * SAMPLE_RATE)
    pcm = b"".join(
        int(amplitude * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)).to_bytes(
            2, "little", signed=True
        )
        for i in range(n)
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm + b"\x00\x00" * (SAMPLE_RATE // 2))
    return path
