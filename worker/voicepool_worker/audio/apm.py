"""Echo cancellation / noise suppression on the caller's audio (WebRTC APM from livekit rtc).

``rtc.AudioProcessingModule`` only accepts frames of exactly 10 ms, while the room input
hands over 50 ms frames; ``TenMsFramer`` re-cuts any frame size into 10 ms pieces and back.
For echo cancellation the APM's reverse stream gets the far end (what the agent says) in step
with the caller's audio: ``playout_tap`` records what the room output plays and when; for each
10 ms of caller audio the processor feeds the reference piece that played one echo-path delay
earlier (``echo_delay`` estimates that delay from the signals), leaving the canceller a small
residual delay (``RESIDUAL_DELAY_MS``, also its stream-delay hint) that it tracks by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from livekit import rtc

from ..measure import rms
from .echo_delay import EchoDelayEstimator, EchoPresence, ResidualEchoGate
from .playout_tap import ReferenceSchedule

log = logging.getLogger("voicepool.worker.apm")
#: The delay left to AEC3 after the reference is shifted: well inside what it aligns itself.
RESIDUAL_DELAY_MS = 200
GATE_SPREAD_S = 0.15  # how far the echo path may wander around its estimate (± s)
ESTIMATE_EVERY = 50  # 10 ms pieces between two delay estimates


class TenMsFramer:
    """Pure re-framing of 16-bit PCM into exact 10 ms chunks (remainder kept for next time)."""

    def __init__(self, sample_rate: int, num_channels: int) -> None:
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.chunk_bytes = (sample_rate // 100) * num_channels * 2
        self._pending = b""

    def push(self, pcm: bytes) -> list[bytes]:
        data = self._pending + pcm
        n = len(data) // self.chunk_bytes
        cut = n * self.chunk_bytes
        self._pending = data[cut:]
        return [data[i : i + self.chunk_bytes] for i in range(0, cut, self.chunk_bytes)]

    @property
    def pending(self) -> int:
        return len(self._pending)


class CallerAudioProcessor(rtc.FrameProcessor[rtc.AudioFrame]):
    """Runs the APM over each caller frame, 10 ms at a time, and returns the same-size frame.

    Processing is in place on 10 ms slices; a frame whose size is not a multiple of 10 ms
    keeps its tail untouched (the room input uses 50 ms frames, so that never happens).
    """

    def __init__(
        self,
        *,
        echo_cancellation: bool,
        noise_suppression: bool,
        stream_delay_ms: int = 0,
        auto_gain_control: bool = False,
        echo_gate_db: float | None = -8.0,
        echo_gate_hold_s: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # AGC is off by default: nothing upstream levels the caller (the room input does not
        # run AGC), but WebRTC's AGC lifts residual echo and line noise between words, which
        # the VAD then takes for speech (VOICEPOOL_AUTO_GAIN_CONTROL turns it on).
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=echo_cancellation,
            noise_suppression=noise_suppression,
            high_pass_filter=True,
            auto_gain_control=auto_gain_control,
        )
        self._aec = echo_cancellation
        if echo_cancellation:  # a hint only: AEC3 tracks the residual delay itself
            self._apm.set_stream_delay_ms(RESIDUAL_DELAY_MS)
        self.reference: ReferenceSchedule | None = None  # set once the room output exists
        self.estimator = EchoDelayEstimator(initial_s=stream_delay_ms / 1000)
        self._pieces = 0
        self.echo = EchoPresence()  # until measured, the caller's audio may hold the echo
        self._clock = 0.0
        self.gate = (
            ResidualEchoGate(echo_gate_db, hold_s=echo_gate_hold_s)
            if echo_gate_db is not None
            else None
        )
        self._now = clock
        self._enabled = True
        #: called with the RMS of every processed 10 ms piece (the early barge-in's onset)
        self.on_piece: Callable[[float], None] | None = None

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value

    def _process(self, frame: rtc.AudioFrame) -> rtc.AudioFrame:
        if not self._enabled:
            return frame
        step = frame.sample_rate // 100
        data = bytearray(frame.data.cast("B"))
        chunk = step * frame.num_channels * 2
        out = bytearray()
        n = len(data) // chunk
        for start in range(0, n * chunk, chunk):
            raw = bytes(data[start : start + chunk])
            piece = rtc.AudioFrame(
                data=raw,
                sample_rate=frame.sample_rate,
                num_channels=frame.num_channels,
                samples_per_channel=step,
            )
            t = self._capture_clock()
            if self._aec and self.reference is not None:
                self._feed_reference(t, raw, frame)
            self._apm.process_stream(piece)
            level: float | None = None  # the processed piece's RMS, once computed
            if (
                self._aec
                and self.reference is not None
                and self.gate is not None
                and self.echo.heard
            ):
                far = self.estimator.far_around_echo(GATE_SPREAD_S)
                level = rms(bytes(piece.data.cast("B")))
                if self.gate.mute(t, level, far, hold=self.estimator.converged):
                    piece = rtc.AudioFrame(
                        b"\0" * chunk, frame.sample_rate, frame.num_channels, step
                    )
                    level = 0.0
            processed = piece.data.cast("B")
            if self.on_piece is not None:
                self.on_piece(rms(bytes(processed)) if level is None else level)
            out += processed
        out += data[len(out) :]
        return rtc.AudioFrame(
            data=bytes(out),
            sample_rate=frame.sample_rate,
            num_channels=frame.num_channels,
            samples_per_channel=frame.samples_per_channel,
        )

    def _capture_clock(self) -> float:
        """When the next 10 ms of caller audio was captured, on the media's own clock.

        The incoming stream is continuous (the jitter buffer fills gaps), so pieces are 10 ms
        apart even when a busy event loop hands several frames over at once; the clock only
        resyncs to the wall clock when it would run ahead of it or falls a second behind.
        """
        now = self._now()
        t = self._clock + 0.01
        if t > now or now - t > 1.0:
            t = now
        self._clock = t
        return t

    def _feed_reference(self, t: float, near: bytes, frame: rtc.AudioFrame) -> None:
        """Before 10 ms of caller audio captured at ``t``: what played one echo path earlier."""
        ref = self.reference
        assert ref is not None
        playing = ref.at(t)
        self.estimator.push(rms(playing) if playing else 0.0, rms(near))
        self._pieces += 1
        if self._pieces % ESTIMATE_EVERY == 0:
            before = self.estimator.delay_s
            gain = self.estimator.measure_echo_gain()
            if self.echo.update(gain):
                log.info(
                    "echo "
                    + ("heard: canceller and gate on" if self.echo.heard else "not heard: off"),
                    extra={"echo_gain": gain if gain is None else round(gain, 3)},
                )
            if (after := self.estimator.estimate()) is not None and abs(after - before) > 0.05:
                log.info(
                    "echo path delay",
                    extra={
                        "echo_delay_ms": round(after * 1000),
                        "echo_peak": round(self.estimator.peak, 2),
                        "echo_gain": gain if gain is None else round(gain, 3),
                    },
                )
        shift = max(0.0, self.estimator.delay_s - RESIDUAL_DELAY_MS / 1000)
        # nothing echoes (a headset): AEC3 gets a silent far end, so it cannot suppress a
        # caller talking over the agent (early in a call it did, while still learning)
        far = ref.at(t - shift) if self.echo.heard else None
        step = frame.sample_rate // 100
        pcm = b"\0" * (step * frame.num_channels * 2) if far is None else far
        if far is not None and ref.sample_rate != frame.sample_rate:
            pcm = _resample_piece(far, step * frame.num_channels)
        self._apm.process_reverse_stream(
            rtc.AudioFrame(pcm, frame.sample_rate, frame.num_channels, step)
        )

    def _close(self) -> None:
        self._enabled = False
        if self._aec:
            log.info(
                "echo canceller closed",
                extra={
                    "echo_delay_ms": round(self.estimator.delay_s * 1000),
                    "echo_peak": round(self.estimator.peak, 2),
                },
            )


def _resample_piece(pcm: bytes, samples: int) -> bytes:
    """Linear resampling of one 10 ms piece to ``samples`` (a rate mismatch; rare)."""
    src = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    x = np.linspace(0, len(src) - 1, samples)
    return np.interp(x, np.arange(len(src)), src).astype("<i2").tobytes()
