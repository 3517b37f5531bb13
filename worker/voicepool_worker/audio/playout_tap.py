"""The echo canceller's far-end reference, taken at playout time.

A speakerphone plays the agent back into the caller's microphone; to remove that echo the APM
needs the agent's audio *as it is played*, in step with the caller's audio. Frames reach
LiveKit's ``rtc.AudioSource`` seconds before they are played (TTS renders ahead, the room
output buffers, the source keeps a queue), so taking them anywhere upstream puts the
reference out of step -- and cached or fast TTS makes that worse.

``PlayoutTap`` wraps the room output's audio source: each frame handed to it is stamped with
the source's playhead (now + what is still queued) and kept, 10 ms piece by 10 ms piece, in a
``ReferenceSchedule``; a cleared queue (an interruption) drops what would have played. The
caller-audio processor (``apm.py``) then looks up, for every 10 ms of caller audio, what was
playing one echo-path delay earlier.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import rtc

TICK_S = 0.01
KEEP_S = 2.5  # history kept: the longest echo path the canceller is asked to cover


def _slot(t: float) -> int:
    return int(t / TICK_S + 0.5)


class ReferenceSchedule:
    """Pure: what plays when -- 10 ms pieces of far-end PCM keyed by their play time."""

    def __init__(self, sample_rate: int, num_channels: int = 1) -> None:
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.piece_bytes = sample_rate // 100 * num_channels * 2
        self._pieces: dict[int, bytes] = {}
        self._carry = b""
        self._next = 0  # slot of the next piece pushed

    def push(self, pcm: bytes, plays_at: float) -> None:
        """Audio handed to the source while its playhead was at ``plays_at``."""
        start = _slot(plays_at)
        if abs(start - self._next) > 1:  # a new run (the source ran dry) or drift:
            self._carry = b""  # the source's own playhead is the truth
            self._next = start
        data = self._carry + pcm
        cut = len(data) - len(data) % self.piece_bytes
        self._carry = data[cut:]
        for i in range(0, cut, self.piece_bytes):
            self._pieces[self._next] = data[i : i + self.piece_bytes]
            self._next += 1
        self._prune(plays_at)

    def clear(self, now: float) -> int:
        """The source's queue was cleared at ``now``: nothing scheduled after it plays."""
        cut = _slot(now)
        dropped = [s for s in self._pieces if s >= cut]
        for s in dropped:
            del self._pieces[s]
        self._carry = b""
        self._next = cut
        return len(dropped)

    def at(self, t: float) -> bytes | None:
        """The piece playing at ``t``, or None (silence)."""
        return self._pieces.get(_slot(t))

    def _prune(self, now: float) -> None:
        old = _slot(now - KEEP_S)
        if self._pieces and min(self._pieces) < old:
            for s in [s for s in self._pieces if s < old]:
                del self._pieces[s]

    def __len__(self) -> int:
        return len(self._pieces)


class PlayoutTap:
    """Records what ``source`` plays, and when, into ``schedule``."""

    def __init__(self) -> None:
        self.schedule: ReferenceSchedule | None = None

    def attach(self, source: rtc.AudioSource) -> ReferenceSchedule:
        """Wrap ``source`` so every frame it is given is also scheduled as reference."""
        schedule = ReferenceSchedule(source.sample_rate, source.num_channels)
        self.schedule = schedule
        capture: Callable[[rtc.AudioFrame], Awaitable[None]] = source.capture_frame
        clear: Callable[[], None] = source.clear_queue

        async def capture_frame(frame: rtc.AudioFrame) -> None:
            plays_at = time.monotonic() + source.queued_duration
            schedule.push(bytes(frame.data.cast("B")), plays_at)
            await capture(frame)

        def clear_queue() -> None:
            clear()
            schedule.clear(time.monotonic())

        setattr(source, "capture_frame", capture_frame)  # noqa: B010 -- an instance's method
        setattr(source, "clear_queue", clear_queue)  # noqa: B010
        return schedule


def room_audio_source(output: Any) -> rtc.AudioSource | None:
    """The ``rtc.AudioSource`` at the end of a session's audio output chain, if any.

    livekit-agents chains audio outputs (transcription sync -> room output); the room output
    keeps the source it publishes in ``_audio_source`` (private, checked for its type).
    """
    seen = 0
    while output is not None and seen < 8:
        source = getattr(output, "_audio_source", None)
        if isinstance(source, rtc.AudioSource):
            return source
        output = getattr(output, "next_in_chain", None)
        seen += 1
    return None


def attach_echo_reference(output: Any) -> ReferenceSchedule:
    """Tap the session's room audio output; raises if it has none."""
    source = room_audio_source(output)
    if source is None:
        raise RuntimeError("the session has no room audio output to take the echo reference from")
    return PlayoutTap().attach(source)
