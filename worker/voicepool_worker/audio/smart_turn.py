"""Smart Turn v3.2, the audio end-of-turn model, as livekit-agents' streaming turn detector.

The model file ships inside the ``pipecat-ai`` wheel (installed without its dependencies: only
the file is used) and is found through the installed distribution's file list, never
downloaded. It runs with onnxruntime on one thread; its input features are Whisper's log-mel
ones, computed by faster-whisper's own extractor (the same numbers as pipecat's, checked to
3e-7). What it is shown and how its verdict is used is in ``end_of_turn.py``.

livekit-agents drives it (``turn_handling={"turn_detection": SmartTurnDetector(...)}``): every
caller frame is pushed to the stream, ``predict()`` is called once the VAD has heard 0.2 s of
silence, and the verdict against ``unlikely_threshold`` picks the endpointing ``min_delay``
(complete) or ``max_delay`` (not yet). A prediction later than ``prediction_timeout`` is
dropped and silence alone ends that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import threading
import time
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.turn import TurnDetectionEvent

from .end_of_turn import (
    SAMPLE_RATE,
    WINDOW_S,
    EndOfTurnPolicy,
    fit_features,
    int16_to_float,
    model_window,
)

log = logging.getLogger("voicepool.worker.turn")

DISTRIBUTION = "pipecat-ai"
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
#: audio kept per call: the model's 8 s plus the silence that may follow the last word
KEEP_S = WINDOW_S + 2.0
PREDICTION_TIMEOUT_S = 1.0


class ModelUnavailable(Exception):
    """The model file is missing or unreadable; the message is one line."""


def model_path() -> Path:
    """The ONNX file inside the installed pipecat-ai distribution."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailable(
            f"{DISTRIBUTION} is not installed (pip install --no-deps {DISTRIBUTION}: only its "
            "model file is used)"
        ) from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise ModelUnavailable(f"{DISTRIBUTION} has no {MODEL_FILE}")
    return path


class SmartTurnModel:
    """One onnxruntime session (1 thread, no spinning) and the feature extractor."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime  # type: ignore[import-untyped, unused-ignore]
        from faster_whisper.feature_extractor import FeatureExtractor

        self.path = path or model_path()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own types for a corrupt file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelUnavailable(f"cannot load {self.path}: {first}") from None
        self._features = FeatureExtractor(feature_size=80, chunk_length=int(WINDOW_S))
        self._lock = threading.Lock()  # one inference at a time per process

    def probability(self, samples: np.ndarray) -> float | None:
        """P(turn complete) for 16 kHz float audio ending in the pause (None: no voice)."""
        clip = model_window(samples)
        if clip is None:
            return None
        features = fit_features(self._features(clip, padding=0))
        with self._lock:
            out = self._session.run(None, {"input_features": features})[0]
        return float(np.asarray(out).reshape(-1)[0])


#: The model loaded before the call processes fork (``preload``); shared copy-on-write.
_SHARED: list[SmartTurnModel] = []


def preload() -> None:
    """Load the model in the forkserver (a failure leaves each call process to try)."""
    if not _SHARED:
        _SHARED.append(SmartTurnModel())


def load() -> SmartTurnModel:
    return _SHARED[0] if _SHARED else SmartTurnModel()


class SmartTurnDetector:
    """livekit-agents' ``_StreamingTurnDetector`` over Smart Turn v3.2."""

    def __init__(self, model: SmartTurnModel, policy: EndOfTurnPolicy) -> None:
        self._model = model
        self.policy = policy

    @property
    def model(self) -> str:
        return "smart-turn-v3.2"

    @property
    def provider(self) -> str:
        return "voicepool"

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SmartTurnStream:
        return SmartTurnStream(self)


class SmartTurnStream:
    """One call's caller audio (the last ``KEEP_S``) and its pending prediction."""

    def __init__(self, detector: SmartTurnDetector) -> None:
        self._detector = detector
        self._pcm = bytearray()  # 16 kHz mono int16
        self._keep = int(KEEP_S * SAMPLE_RATE) * 2
        self._resampler: rtc.AudioResampler | None = None
        self._rate: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def model(self) -> str:
        return self._detector.model

    @property
    def provider(self) -> str:
        return self._detector.provider

    @property
    def is_fallback(self) -> bool:
        return False

    @property
    def prediction_timeout(self) -> float:
        return PREDICTION_TIMEOUT_S

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return self._detector.policy.threshold

    async def backchannel_threshold(self, language: LanguageCode | None) -> float | None:
        return None

    async def supports_language(self, language: LanguageCode | None) -> bool:
        return True  # trained on 23 languages; the verdict is about the voice, not the words

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        if self._closed:
            return
        if frame.sample_rate != SAMPLE_RATE or frame.num_channels != 1:
            if self._resampler is None or self._rate != frame.sample_rate:
                self._resampler = rtc.AudioResampler(
                    frame.sample_rate, SAMPLE_RATE, num_channels=frame.num_channels
                )
                self._rate = frame.sample_rate
            for out in self._resampler.push(frame):
                self._append(out)
            return
        self._append(frame)

    def _append(self, frame: rtc.AudioFrame) -> None:
        if frame.num_channels != 1:
            mono = np.frombuffer(bytes(frame.data), dtype="<i2")[:: frame.num_channels]
            self._pcm += mono.tobytes()
        else:
            self._pcm += bytes(frame.data)
        if len(self._pcm) > self._keep:
            del self._pcm[: len(self._pcm) - self._keep]

    def predict(self) -> asyncio.Future[TurnDetectionEvent]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TurnDetectionEvent] = loop.create_future()
        self.cancel_inference()
        samples = int16_to_float(bytes(self._pcm))
        asked = time.time()
        policy = self._detector.policy

        async def run() -> None:
            started = time.perf_counter()
            try:
                p = await asyncio.to_thread(self._detector._model.probability, samples)
            except Exception as e:  # the turn then ends on silence alone
                log.warning("end-of-turn model failed", extra={"error": f"{e}"[:200]})
                if not fut.done():
                    fut.cancel()
                return
            took = time.perf_counter() - started
            # no voice in the window: nothing to judge, the silence decides
            probability = 1.0 if p is None else p
            _count(policy.complete(probability))
            log.info(
                "turn model",
                extra={
                    "probability": round(probability, 3),
                    "complete": policy.complete(probability),
                    "wait_s": policy.wait_s(probability),
                    "took_ms": round(took * 1000, 1),
                },
            )
            if not fut.done():
                fut.set_result(
                    TurnDetectionEvent(
                        type="eot_prediction",
                        end_of_turn_probability=probability,
                        last_speaking_time=asked,
                        detection_delay=time.time() - asked,
                        inference_duration=took,
                    )
                )

        self._task = asyncio.create_task(run())
        self._task.add_done_callback(lambda t: None if fut.done() else fut.cancel())
        return fut

    def cancel_inference(self, *, timed_out: bool = False) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def flush(self, reason: str | None = None) -> None:
        """The turn was committed: the next turn is judged on its own audio."""
        self.cancel_inference()
        self._pcm.clear()

    def end_input(self) -> None:
        self._closed = True

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _count(complete: bool) -> None:
    from .. import metrics  # job process: files land in PROMETHEUS_MULTIPROC_DIR

    metrics.TURN_VERDICTS.labels("complete" if complete else "unfinished").inc()


def detector(policy: EndOfTurnPolicy) -> SmartTurnDetector | None:
    """The detector, or None when the model cannot be loaded (silence alone then decides;
    the worker's main process has said why, once, at start)."""
    try:
        return SmartTurnDetector(load(), policy)
    except ModelUnavailable as e:
        log.debug("end-of-turn model unavailable", extra={"error": str(e)})
        return None


def check() -> str | None:
    """Why the model cannot be used on this host (None: it loads)."""
    try:
        SmartTurnModel()
    except ModelUnavailable as e:
        return str(e)
    except ImportError as e:
        return f"cannot import {e.name or e}"
    return None
