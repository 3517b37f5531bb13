"""Agents with the faults a team's agent can have, for the runtime's bad-input tests.

Run by a real worker (``VOICEPOOL_AGENT=flawed_agents:app``, this directory on ``PYTHONPATH``).
What the agent does depends on the room's name, so one worker meets every fault in turn and
must stay ready for the next caller after each:

- ``raise-*``: the entrypoint raises before joining;
- ``nojoin-*``: the entrypoint never joins the room (it waits forever);
- ``crash-*``: joins, speaks (a tone), then raises mid-call;
- ``exit-*``: joins, speaks, then its process dies mid-call (``os._exit``);
- anything else: joins, speaks, and stays until the caller leaves.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
from livekit import rtc
from voicepool_worker import sdk

RATE = 48000
FRAME = RATE // 100  # 10 ms


async def _tone(ctx: sdk.JobContext, seconds: float) -> None:
    """A loud 440 Hz tone, then silence: what the test's caller hears as the agent speaking."""
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await ctx.room.local_participant.publish_track(track, opts)
    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).tobytes()
    pcm += bytes(RATE)  # then half a second of silence
    for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME):
        await source.capture_frame(rtc.AudioFrame(pcm[i : i + 2 * FRAME], RATE, 1, FRAME))


async def entrypoint(ctx: sdk.JobContext) -> None:
    room = ctx.job.room.name
    if room.startswith("raise-"):
        raise RuntimeError("the booking system is offline")
    if room.startswith("nojoin-"):
        await asyncio.Event().wait()
    await ctx.connect()
    await ctx.wait_for_participant()
    await _tone(ctx, 0.8)
    if room.startswith("crash-"):
        raise ValueError("slot table is corrupt")
    if room.startswith("exit-"):
        os._exit(3)
    left = asyncio.Event()
    ctx.room.on("participant_disconnected", lambda _p: left.set())
    await left.wait()


app = sdk.AgentApp(entrypoint=entrypoint)
