"""Echo cancellation / noise suppression on the caller's audio (WebRTC APM from livekit rtc).

``rtc.AudioProcessingModule`` only accepts frames of exactly 10 ms, while the room input
hands over 50 ms frames; ``TenMsFramer`` re-cuts any frame size into 10 ms pieces and back.
The far end (what the agent says) is fed to the APM's reverse stream by ``AgentEchoTap`` so
the canceller knows what to remove when a speakerphone plays the agent back into the mic.
"""

from __future__ import annotations

from livekit import rtc

FAR_END_RATE = 24000


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

    def __init__(self, *, echo_cancellation: bool, noise_suppression: bool) -> None:
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=echo_cancellation,
            noise_suppression=noise_suppression,
            high_pass_filter=True,
            auto_gain_control=False,  # the room input already runs AGC
        )
        self._enabled = True
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self._far: TenMsFramer | None = None

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
        for start in range(0, len(data) - chunk + 1, chunk):
            piece = rtc.AudioFrame(
                data=bytes(data[start : start + chunk]),
                sample_rate=frame.sample_rate,
                num_channels=frame.num_channels,
                samples_per_channel=step,
            )
            self._apm.process_stream(piece)
            out += piece.data.cast("B")
        out += data[len(out) :]
        return rtc.AudioFrame(
            data=bytes(out),
            sample_rate=frame.sample_rate,
            num_channels=frame.num_channels,
            samples_per_channel=frame.samples_per_channel,
        )

    def far_end(self, frame: rtc.AudioFrame) -> None:
        """Agent audio about to be played: the reference signal for echo cancellation.

        TTS rates such as 22050 Hz have no whole 10 ms frame, so the reference is resampled
        to 24 kHz (the room input's rate) before being cut into 10 ms pieces.
        """
        if self._resampler is None or self._resampler_rate != frame.sample_rate:
            self._resampler = rtc.AudioResampler(
                frame.sample_rate, FAR_END_RATE, num_channels=frame.num_channels
            )
            self._resampler_rate = frame.sample_rate
            self._far = TenMsFramer(FAR_END_RATE, frame.num_channels)
        assert self._far is not None
        for resampled in self._resampler.push(frame):
            for pcm in self._far.push(resampled.data.tobytes()):
                self._apm.process_reverse_stream(
                    rtc.AudioFrame(
                        data=pcm,
                        sample_rate=FAR_END_RATE,
                        num_channels=frame.num_channels,
                        samples_per_channel=FAR_END_RATE // 100,
                    )
                )

    def _close(self) -> None:
        self._enabled = False
