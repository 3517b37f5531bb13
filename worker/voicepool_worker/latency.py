"""Pure per-turn latency bookkeeping: pair a user turn with the reply it caused.

livekit-agents attaches a metrics report to every chat message (``ChatMessage.metrics``): the
user's message carries ``stopped_speaking_at``/``transcription_delay``/``end_of_turn_delay``,
the agent's reply ``llm_node_ttft``/``tts_node_ttfb``/``e2e_latency``/``started_speaking_at``.
This module turns those loose dicts into one ``TurnLatency`` per answered turn, dropping
anything missing or nonsensical rather than recording garbage in the histograms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

STAGES = ("transcript", "end_of_turn", "llm_ttft", "tts_ttfb", "ttfw")
# A turn slower than this is a measurement artefact (e.g. a stale timestamp), not a latency.
MAX_PLAUSIBLE_S = 120.0


def _seconds(value: object) -> float | None:
    """A finite, non-negative, plausible duration in seconds, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    if not math.isfinite(v) or v < 0 or v > MAX_PLAUSIBLE_S:
        return None
    return v


@dataclass(frozen=True)
class TurnLatency:
    """Stage latencies of one answered turn, in seconds (None when unknown)."""

    transcript: float | None  # end of user speech -> final transcript
    end_of_turn: float | None  # end of user speech -> turn committed
    llm_ttft: float | None  # LLM request -> first token
    tts_ttfb: float | None  # first text to TTS -> first audio byte
    ttfw: float | None  # end of user speech -> first agent audio frame published

    def as_dict(self) -> dict[str, float]:
        """Only the known stages, for logs and histograms."""
        out: dict[str, float] = {}
        for name in STAGES:
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out


class TurnTracker:
    """Remembers the last user turn until the agent's reply to it arrives."""

    def __init__(self) -> None:
        self._user: Mapping[str, object] | None = None

    def user_turn(self, metrics: Mapping[str, object]) -> None:
        """A committed user message; a later one replaces an unanswered earlier one."""
        self._user = dict(metrics)

    def agent_reply(self, metrics: Mapping[str, object]) -> TurnLatency | None:
        """The agent's reply; returns the turn's latency once, or None (e.g. the greeting)."""
        user, self._user = self._user, None
        if user is None:
            return None
        ttfw = _seconds(metrics.get("e2e_latency"))
        if ttfw is None:
            started = metrics.get("started_speaking_at")
            stopped = user.get("stopped_speaking_at")
            if isinstance(started, int | float) and isinstance(stopped, int | float):
                ttfw = _seconds(float(started) - float(stopped))
        return TurnLatency(
            transcript=_seconds(user.get("transcription_delay")),
            end_of_turn=_seconds(user.get("end_of_turn_delay")),
            llm_ttft=_seconds(metrics.get("llm_node_ttft")),
            tts_ttfb=_seconds(metrics.get("tts_node_ttfb")),
            ttfw=ttfw,
        )


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(turns: Iterable[TurnLatency]) -> dict[str, dict[str, float]]:
    """p50/p95/n per stage over many turns (for the benchmark and logs)."""
    per_stage: dict[str, list[float]] = {name: [] for name in STAGES}
    for t in turns:
        for name, v in t.as_dict().items():
            per_stage[name].append(v)
    return {
        name: {"p50": percentile(vals, 50), "p95": percentile(vals, 95), "n": float(len(vals))}
        for name, vals in per_stage.items()
        if vals
    }
