"""Failover bookkeeping across a stage's providers: which one answers next, logs and metrics.

livekit-agents' ``FallbackAdapter`` does the switching (skip a failed or late provider for the
turn, mark it unavailable, probe it in the background). This module turns its availability
events into one log line naming the stage and both providers, and into
``voicepool_worker_provider_failovers_total{stage,from,to}``; each provider's own metrics
events feed ``voicepool_worker_provider_latency_seconds{stage,provider}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from . import instances_of, name_of

log = logging.getLogger("voicepool.worker.providers")

NONE = "none"  # the failover target when every provider of the stage is down


def next_available(names: Sequence[str], available: Sequence[bool], failed: int) -> str:
    """Who serves after provider ``failed`` went down: the first available in chain order."""
    for i, name in enumerate(names):
        if i != failed and available[i]:
            return name
    return NONE


def latency_of(stage: str, event_metrics: Any) -> float | None:
    """The figure a caller waits on, per stage: LLM first token, TTS first byte, STT request."""
    if stage == "llm":
        value = getattr(event_metrics, "ttft", None)
    elif stage == "tts":
        value = getattr(event_metrics, "ttfb", None)
    else:
        value = getattr(event_metrics, "duration", None)
    if value is None or value <= 0:  # -1: no token; 0.0: a streaming STT has no request time
        return None
    return float(value)


def llm_figures(m: Any) -> dict[str, Any]:
    """One LLM request as logged: tokens streamed, first token, total, generation speed."""
    tokens = int(getattr(m, "completion_tokens", 0) or 0)
    ttft = float(getattr(m, "ttft", -1.0))
    duration = float(getattr(m, "duration", 0.0))
    gen = duration - ttft if ttft >= 0 else 0.0
    return {
        "tokens": tokens,
        "ttft": round(ttft, 4),
        "duration": round(duration, 4),
        "tokens_per_s": round((tokens - 1) / gen, 1) if tokens > 1 and gen > 0 else None,
        "cancelled": bool(getattr(m, "cancelled", False)),
    }


class FailoverMonitor:
    """Watches one stage (an adapter or a single provider) for the life of a warm process."""

    def __init__(
        self,
        stage: str,
        provider: Any,
        on_failover: Callable[[str, str, str], None] | None = None,
        on_latency: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.stage = stage
        self._provider = provider
        self._instances = instances_of(provider)
        self.names = name_of(provider).split(",")
        if len(self.names) != len(self._instances):
            self.names = [name_of(i) for i in self._instances]
        self._available = [True] * len(self._instances)
        self._on_failover = on_failover or _count_failover
        self._on_latency = on_latency or _observe_latency
        if len(self._instances) > 1:
            provider.on(f"{stage}_availability_changed", self._on_availability)
        for name, instance in zip(self.names, self._instances, strict=True):
            instance.on("metrics_collected", self._latency_listener(name))

    def _latency_listener(self, name: str) -> Callable[[Any], None]:
        def listener(ev: Any) -> None:
            seconds = latency_of(self.stage, ev)
            if seconds is not None:
                self._on_latency(self.stage, name, seconds)
            if self.stage == "llm":
                log.info("llm request", extra={"provider": name, **llm_figures(ev)})

        return listener

    def _on_availability(self, ev: Any) -> None:
        instance = getattr(ev, self.stage, None)
        try:
            index = self._instances.index(instance)
        except ValueError:
            return
        self._available[index] = bool(ev.available)
        name = self.names[index]
        if ev.available:
            log.info("provider recovered", extra={"stage": self.stage, "provider": name})
            return
        target = next_available(self.names, self._available, index)
        log.warning(
            f"{self.stage} provider {name!r} failed or missed its deadline: "
            f"this turn goes to {target!r}; probing {name!r} until it recovers",
            extra={"stage": self.stage, "provider": name, "to": target},
        )
        self._on_failover(self.stage, name, target)


def _count_failover(stage: str, source: str, target: str) -> None:
    from .. import metrics

    metrics.PROVIDER_FAILOVERS.labels(stage, source, target).inc()


def _observe_latency(stage: str, provider: str, seconds: float) -> None:
    from .. import metrics

    metrics.PROVIDER_LATENCY.labels(stage, provider).observe(seconds)
