"""Pure measurement helpers for the synthetic caller and the voice-loop benchmark.

Everything here works on plain numbers and strings (no LiveKit), so it is unit-tested as is:
frame loudness against the speech floor, the agent's barge-in stop time from the times of its
loud frames, word error rate, and the TTFW summary with its pass/fail thresholds.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .latency import percentile

#: int16 RMS (about -44 dBFS) above which a 10 ms frame counts as voiced. Piper speech sits in
#: the thousands; its fade-out and the digital silence after it fall below within ~20 ms.
SPEECH_FLOOR_RMS = 200.0

TTFW_P50_LIMIT_MS = 800.0
TTFW_P90_LIMIT_MS = 1200.0
UNANSWERED_AFTER_MS = 3000.0


def rms(pcm: bytes) -> float:
    """Root mean square of 16-bit little-endian PCM (0.0 for an empty buffer)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return 0.0
    return math.sqrt(float(np.dot(samples, samples)) / samples.size)


def voiced(pcm: bytes, floor: float = SPEECH_FLOOR_RMS) -> bool:
    return rms(pcm) >= floor


def mix(base: bytes, other: bytes, gain: float = 1.0) -> bytes:
    """``base + gain * other`` as int16, clipped (``other`` is cut or zero-padded to fit)."""
    a = np.frombuffer(base, dtype="<i2").astype(np.float64)
    b = np.frombuffer(other, dtype="<i2").astype(np.float64)[: a.size]
    if b.size < a.size:
        b = np.pad(b, (0, a.size - b.size))
    out = np.clip(a + gain * b, -32768, 32767).astype("<i2")
    return out.tobytes()


def stopped_at(loud: Sequence[float], start: float, quiet_s: float) -> float | None:
    """When the agent fell silent after ``start``: the end of its last loud frame before a gap.

    ``loud`` are the (sorted) receive times of the agent's loud frames. The agent counts as
    silent from the first loud frame at or after ``start`` that is followed by ``quiet_s`` with
    no loud frame (a pause between two words is shorter). If it was already silent at
    ``start``, ``start`` is returned; None when no such gap is in the record yet.
    """
    after = [t for t in loud if t >= start]
    before = [t for t in loud if t < start]
    if not after:
        if before and start - before[-1] >= quiet_s:
            return start
        return None  # no loud frame after start: a gap of unknown length so far
    if before and after[0] - before[-1] >= quiet_s:
        return start
    for here, nxt in itertools.pairwise(after):
        if nxt - here >= quiet_s:
            return here
    return None


def first_word_at(
    loud: Sequence[float], end: float, *, over_s: float = 0.15, gap_s: float = 0.6
) -> float | None:
    """When the agent's answer to speech that ended at ``end`` began (None: not yet).

    The first loud frame after ``end`` -- unless the agent was already talking at ``end``
    (a loud frame within ``over_s`` before it: it answered a fragment of the sentence and
    talks over the caller). Then its answer to the whole sentence is the first loud frame
    after a silence of ``gap_s``, not the talk-over that happens to continue.
    """
    prev: float | None = None
    for t in loud:
        if t <= end:
            prev = t
            continue
        talking_over = prev is not None and end - prev < over_s
        if not talking_over or (prev is not None and t - prev >= gap_s):
            return t
        prev = t
    return None


def recent(loud: Sequence[float], since: float) -> Sequence[float]:
    """The tail of the sorted ``loud`` from the last frame at or before ``since`` on.

    ``first_word_at`` only looks at the last loud frame before the end of the caller's speech
    and those after it; the caller polls it every few ms for the whole call, so it is handed
    this tail (a bisection) instead of the call's whole record. Scanning thousands of frames
    on the caller's event loop delayed the very receive stamps the TTFW is taken from.
    """
    i = bisect.bisect_right(loud, since)
    return loud[max(0, i - 1) :]


_WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Corpus word error rate of (reference, hypothesis) pairs: errors / reference words."""
    errors = total = 0
    for ref, hyp in pairs:
        r = words(ref)
        errors += edit_distance(r, words(hyp))
        total += len(r)
    return errors / total if total else 0.0


@dataclass(frozen=True)
class TtfwSummary:
    """Caller-side time to first word over a run; ``None`` entries are unanswered turns."""

    n: int
    answered: int
    p50_ms: float
    p90_ms: float
    max_ms: float
    late_share: float  # turns not answered within UNANSWERED_AFTER_MS

    @classmethod
    def of(cls, ttfw_ms: Sequence[float | None], *, miss_ms: float | None = None) -> TtfwSummary:
        """Over the answered turns; with ``miss_ms`` an unanswered turn counts as a reply at
        that deadline in every percentile (an honest figure: a miss is not left out)."""
        got = [t for t in ttfw_ms if t is not None]
        late = sum(1 for t in ttfw_ms if t is None or t > UNANSWERED_AFTER_MS)
        answered = len(got)
        if miss_ms is not None:
            got = [miss_ms if t is None else t for t in ttfw_ms]
        if not got:
            return cls(len(ttfw_ms), 0, math.nan, math.nan, math.nan, 1.0 if ttfw_ms else 0.0)
        return cls(
            n=len(ttfw_ms),
            answered=answered,
            p50_ms=percentile(got, 50),
            p90_ms=percentile(got, 90),
            max_ms=max(got),
            late_share=late / len(ttfw_ms),
        )

    def failures(self) -> list[str]:
        """Why the run misses the budget (empty when it holds)."""
        out: list[str] = []
        if self.answered == 0:
            return ["no turn was answered"]
        if not self.p50_ms <= TTFW_P50_LIMIT_MS:
            out.append(f"TTFW p50 {self.p50_ms:.0f} ms > {TTFW_P50_LIMIT_MS:.0f} ms")
        if not self.p90_ms <= TTFW_P90_LIMIT_MS:
            out.append(f"TTFW p90 {self.p90_ms:.0f} ms > {TTFW_P90_LIMIT_MS:.0f} ms")
        return out

    def line(self) -> str:
        return (
            f"p50 {self.p50_ms:5.0f} ms  p90 {self.p90_ms:5.0f} ms  max {self.max_ms:5.0f} ms  "
            f"not answered within {UNANSWERED_AFTER_MS / 1000:.0f} s: "
            f"{self.late_share:5.1%}  (n={self.n})"
        )


#: What a reply must contain to answer each kind of question (the clinic's facts, not the
#: dialog's wording: a reply that only lists what it can do does not fit).
FIT_MARKERS: dict[str, re.Pattern[str]] = {
    "hours": re.compile(r"\b(\d+ ?(am|pm|a\.m\.|p\.m\.)|monday|saturday|sunday|weekdays?)\b"),
    "address": re.compile(r"\b(harbour street|harbor street|station)\b"),
    "prices": re.compile(r"\b(\d+ ?(euros?|dollars?)|€ ?\d+)"),
    # the booking's own follow-ups count, as in bench/data/dialog_heldout.yaml's ``fits``
    "booking": re.compile(
        r"\b(which day|what day|day and time|booked|book you|slot|what time|your name)\b"
    ),
    "human": re.compile(r"\b(staff|colleague|transfer|connect|put you through)\b"),
    "goodbye": re.compile(r"\b(goodbye|bye)\b"),
    "hello": re.compile(r"\b(hello|hi|help you)\b"),
}


def fits(reply: str, intents: Iterable[str]) -> bool:
    """Whether ``reply`` answers every one of the caller's ``intents``."""
    text = reply.lower()
    wanted = list(intents)
    return bool(wanted) and all(FIT_MARKERS[i].search(text) is not None for i in wanted)


@dataclass(frozen=True)
class TtfwSplit:
    """Where one turn's caller-side TTFW went, on the one machine's wall clock (ms)."""

    uplink_ms: float  # caller's end of voicing -> the agent's VAD places the end of speech
    agent_ms: float  # that end of speech -> first agent frame handed to the audio source
    downlink_ms: float  # that frame -> the caller hears its first loud frame


def ttfw_split(
    ended_wall: float, ttfw_ms: float | None, stopped_at: float | None, started_at: float | None
) -> TtfwSplit | None:
    """Split a caller TTFW by the worker's marks; None when a mark is missing."""
    if ttfw_ms is None or stopped_at is None or started_at is None:
        return None
    heard = ended_wall + ttfw_ms / 1000
    return TtfwSplit(
        uplink_ms=(stopped_at - ended_wall) * 1000,
        agent_ms=(started_at - stopped_at) * 1000,
        downlink_ms=(heard - started_at) * 1000,
    )


@dataclass(frozen=True)
class BargeInSplit:
    """Where one barge-in's stop time went, on the one machine's wall clock (ms)."""

    detect_ms: float  # caller's first voiced frame sent -> the agent's VAD says it speaks
    interrupt_ms: float  # that start of speech -> the agent's audio output stops (paused)
    drain_ms: float  # that stop -> the caller hears the agent's last loud frame


#: How early the worker's start of speech may be stamped before the caller's first voiced
#: frame (the VAD's window holds a little audio from before the floor was crossed).
SPEECH_START_SLACK_S = 0.05


def barge_in_split(
    voiced_wall: float | None,
    silent_wall: float | None,
    speech_starts: Iterable[float],
    output_stops: Iterable[float],
    *,
    within_s: float = 3.0,
) -> BargeInSplit | None:
    """Split a barge-in by the worker's marks; None when a mark is missing.

    ``speech_starts``: the worker's VAD starts of caller speech; ``output_stops``: the times
    its agent stopped speaking; the first of each after the caller's first voiced frame.
    """
    if voiced_wall is None or silent_wall is None:
        return None
    start = min(
        (
            t
            for t in speech_starts
            if voiced_wall - SPEECH_START_SLACK_S <= t < voiced_wall + within_s
        ),
        default=None,
    )
    if start is None:
        return None
    stop = min((t for t in output_stops if start <= t <= silent_wall + within_s), default=None)
    if stop is None:
        return None
    return BargeInSplit(
        detect_ms=(start - voiced_wall) * 1000,
        interrupt_ms=(stop - start) * 1000,
        drain_ms=(silent_wall - stop) * 1000,
    )
