"""Embedded offline STT: pocketsphinx (its en-US model ships in the wheel), streamed.

Audio is decoded as it arrives (~1.6 ms of CPU per 20 ms of audio), so when the framework
flushes the stream at VAD end-of-speech only ``end_utt`` is left (~60 ms) before the final
transcript: much faster than buffering the turn and recognising it in one batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import uuid
from typing import Any

from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

log = logging.getLogger("voicepool.worker.stt")

SAMPLE_RATE = 16000
# Audio between two flushes is one utterance; cap it so a long silence (the agent talking,
# nobody flushing) does not grow the decoder's search forever.
MAX_UTTERANCE_S = 30.0


class SpeechGate:
    """Holds back the silence before an utterance, keeping a short pre-roll.

    The stream sees the line continuously (seconds of silence while the agent talks) but is
    only flushed at the end of speech. Long (often digitally zero) silence in front of the
    speech skews pocketsphinx's cepstral mean normalisation and yields junk words such as
    "uh" or "apt"; so audio is passed on only from the first loud frame, with
    ``PREROLL_S`` of what came before it, until the next flush.
    """

    PREROLL_S = 0.3
    OPEN_RMS = 120.0  # int16 RMS; speech is in the thousands, line noise far below

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self._keep = int(self.PREROLL_S * sample_rate) * 2
        self._preroll = b""
        self.open = False

    def reset(self) -> None:
        self._preroll = b""
        self.open = False

    def push(self, pcm: bytes) -> bytes:
        """What to decode now (may be empty while the line is silent)."""
        if self.open:
            return pcm
        if _rms(pcm) < self.OPEN_RMS:
            self._preroll = (self._preroll + pcm)[-self._keep :]
            return b""
        self.open = True
        out, self._preroll = self._preroll + pcm, b""
        return out


def _rms(pcm: bytes) -> float:
    n = len(pcm) // 2
    if n == 0:
        return 0.0
    samples = memoryview(pcm).cast("h")
    return math.sqrt(sum(s * s for s in samples) / n)


#: Decoders loaded before the call processes fork, per (grammar, second pass); grammar None:
#: the language model.
_SHARED: dict[tuple[str | None, bool], Any] = {}


def preload(grammar_path: str | None = None, *, second_pass: bool = True) -> None:
    """Load one decoder before processes fork (its ~30 MB model then shared copy-on-write)."""
    stt_ = PocketsphinxSTT(grammar_path=grammar_path, second_pass=second_pass)
    _SHARED[(grammar_path, second_pass)] = stt_._acquire()


class PocketsphinxSTT(stt.STT[Any]):
    """``stt.STT`` over pocketsphinx with manual flushing (finalised at VAD end-of-speech)."""

    def __init__(self, *, grammar_path: str | None = None, second_pass: bool = True) -> None:
        """Without ``second_pass`` the flat-lexicon rescoring at the end of an utterance is
        skipped: the final transcript comes ~85 ms sooner (offline p50 95 -> 11 ms, max 582
        -> 30 ms) at ~2 points of word error rate on wideband audio, but phone audio (G.711)
        suffers more ("let me speak to somebody please" -> "what the the the somebody
        please"), so it stays on by default."""
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=False, manual_flush=True
            )
        )
        self._grammar_path = grammar_path
        self._second_pass = second_pass
        self._free: list[Any] = []
        shared = _SHARED.pop((grammar_path, second_pass), None)
        if (decoder := shared) is not None:  # one per call process
            self._free.append(decoder)
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return "pocketsphinx-en-us"

    @property
    def provider(self) -> str:
        return "pocketsphinx"

    def prewarm(self) -> None:
        """Load one decoder now (~0.3 s) so the first call does not pay for it."""
        self._release(self._acquire())

    def _acquire(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        import pocketsphinx  # type: ignore[import-untyped, unused-ignore]

        kwargs: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if self._grammar_path:
            kwargs["jsgf"] = self._grammar_path
        if not self._second_pass:
            kwargs["fwdflat"] = False
        return pocketsphinx.Decoder(**kwargs)

    def _release(self, decoder: Any) -> None:
        with self._lock:
            self._free.append(decoder)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        if frame.sample_rate != SAMPLE_RATE or frame.num_channels != 1:
            resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE, num_channels=1)
            frames = [*resampler.push(frame), *resampler.flush()]
            frame = rtc.combine_audio_frames(frames)
        pcm = frame.data.tobytes()

        def _decode() -> str:
            decoder = self._acquire()
            try:
                decoder.start_utt()
                decoder.process_raw(pcm, False, True)
                decoder.end_utt()
                hyp = decoder.hyp()
                return str(hyp.hypstr) if hyp is not None else ""
            finally:
                self._release(decoder)

        text = await asyncio.to_thread(_decode)
        return _final(str(uuid.uuid4()), text)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> PocketsphinxStream:
        return PocketsphinxStream(stt=self, conn_options=conn_options)


def _final(request_id: str, text: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=request_id,
        alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text, confidence=1.0)],
    )


class PocketsphinxStream(stt.RecognizeStream):
    """One caller's audio; a flush closes the utterance and emits its final transcript."""

    def __init__(self, *, stt: PocketsphinxSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._ps = stt

    async def _run(self) -> None:
        decoder = self._ps._acquire()
        max_samples = int(MAX_UTTERANCE_S * SAMPLE_RATE)
        gate = SpeechGate()
        samples = 0
        try:
            decoder.start_utt()
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    self._emit(await asyncio.to_thread(_finish, decoder))
                    decoder.start_utt()
                    gate.reset()
                    samples = 0
                    continue
                pcm = gate.push(item.data.tobytes())
                if not pcm:
                    continue
                # ~1.6 ms of CPU per 20 ms, but never on the agent's event loop: a busy core
                # would stretch it and delay audio playout and turn handling
                await asyncio.to_thread(decoder.process_raw, pcm, False, False)
                samples += len(pcm) // 2
                if samples > max_samples:  # nobody flushed for a long time: start afresh
                    decoder.end_utt()
                    decoder.start_utt()
                    gate.reset()
                    samples = 0
            self._emit(await asyncio.to_thread(_finish, decoder))
        finally:
            self._ps._release(decoder)

    def _emit(self, text: str) -> None:
        if text:
            self._event_ch.send_nowait(_final(str(uuid.uuid4()), text))


def _finish(decoder: Any) -> str:
    """Close the utterance; its best hypothesis (runs in a worker thread)."""
    decoder.end_utt()
    hyp = decoder.hyp()
    return str(hyp.hypstr).strip() if hyp is not None else ""
