"""The synthetic caller survives a stalled microphone, against the real livekit-server.

Under heavy load livekit's native audio source can stop draining and never complete a
capture (livekit/rust-sdks#1289); every test and bench call would then hang on its next
utterance. The caller replaces such a track and says the utterance again. Here a plain
participant stands for the agent: it publishes a line of silence (so the caller sees an agent)
and counts the caller's loud frames on whichever microphone track it is subscribed to. The
stall is injected by making one capture never complete, as the native source does.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from livekit import api, rtc
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_worker import caller as caller_mod
from voicepool_worker.caller import (
    FRAME_MS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Call,
    CallerConfig,
    speech_frames,
)
from voicepool_worker.measure import SPEECH_FLOOR_RMS, rms

pytestmark = [pytest.mark.livekit]


@pytest.fixture(scope="module")
def livekit(livekit_alone: LiveKitInfo) -> LiveKitInfo:
    return livekit_alone


class Ear:
    """A participant that publishes silence and counts the caller's loud frames."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.loud = 0
        self.tracks = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self, lk: LiveKitInfo, room: str) -> None:
        @self.room.on("track_subscribed")
        def _on(track: rtc.Track, *_: object) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self.tracks += 1
                self._tasks.append(asyncio.create_task(self._count(track)))

        jwt = (
            api.AccessToken(lk.api_key, lk.api_secret)
            .with_identity("ear")
            .with_grants(api.VideoGrants(room_join=True, room=room))
            .to_jwt()
        )
        await self.room.connect(lk.url, jwt)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("line", source)
        await self.room.local_participant.publish_track(track, rtc.TrackPublishOptions())
        self._tasks.append(asyncio.create_task(self._silence(source)))

    async def _silence(self, source: rtc.AudioSource) -> None:
        frame = rtc.AudioFrame(b"\x00" * SAMPLES_PER_FRAME * 2, SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
        for _ in range(60 * 100):  # bounded: a minute of line
            await source.capture_frame(frame)
            await asyncio.sleep(FRAME_MS / 1000)

    async def _count(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for event in stream:
            pcm = np.frombuffer(bytes(event.frame.data), dtype=np.int16).astype(np.float64)
            if pcm.size and float(np.sqrt(np.mean(pcm**2))) >= SPEECH_FLOOR_RMS:
                self.loud += 1

    async def leave(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.room.disconnect()


@pytest.mark.timeout(120)
async def test_a_stalled_microphone_is_replaced_and_the_utterance_said_again(
    livekit: LiveKitInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caller_mod, "MIC_STALL_S", 1.0)
    room = f"stall-{uuid.uuid4().hex[:6]}"
    ear = Ear()
    await ear.join(livekit, room)
    c = Call(CallerConfig(livekit.url, livekit.api_key, livekit.api_secret, "nobody"), room)
    frames = speech_frames("what are your opening hours")
    voiced = len([f for f in frames if rms(f) >= SPEECH_FLOOR_RMS])
    try:
        await c.start(join_within=20)
        await asyncio.sleep(1.0)  # the ear subscribed to the first track
        stalled = c.source
        real_capture = stalled.capture_frame
        captured = 0

        async def stall_midway(frame: rtc.AudioFrame) -> None:
            nonlocal captured
            captured += 1
            if captured == len(frames) // 2:
                await asyncio.Event().wait()  # never completes, like the native drain
            await real_capture(frame)

        stalled.capture_frame = stall_midway  # type: ignore[method-assign]
        await c.speak_frames(frames)
        await asyncio.sleep(1.0)  # the last frames crossed the server
        assert c.mic_restarts == 1
        assert c.source is not stalled
        assert ear.tracks >= 2, "the ear never got the new microphone track"
        # the first half went out on the stalled track, then all of it again on the new one
        assert ear.loud >= voiced * 0.9, f"heard {ear.loud} loud frames of {voiced}"
    finally:
        await c.hangup()
        await ear.leave()
