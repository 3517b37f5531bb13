"""What the adaptive warm pool measures: call arrivals and cold starts, from the pods alone.

A warm pool has one job: the callers who arrive while a new pod is starting must find a free
slot. That is the arrival rate times the cold start (pod created -> worker registered), times
a safety factor for Poisson noise. Both are measured here from what the operator already
sees -- each pod's session count and its registration -- so no extra signal is needed.

Pure and fed by the reconciler (or the simulation) with the pods it observed and the clock:
unit-tested in tests/unit/test_demand.py.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .podview import PodView

#: Arrival rates are measured over a short window (a burst shows within seconds) and a long
#: one (a lull does not shrink the pool at once); the higher one is used.
SHORT_WINDOW_S = 20.0
LONG_WINDOW_S = 300.0
#: Cold starts remembered: the highest of the recent ones is planned for.
COLD_STARTS_KEPT = 20


@dataclass(frozen=True)
class Measured:
    """The adaptive pool's inputs at one moment."""

    arrival_rate: float  # calls per second
    cold_start_s: float | None  # None: no pod has registered yet; the spec's guess is used

    def warm_sessions(self, safety: float, default_cold_start_s: float) -> int:
        cold = self.cold_start_s if self.cold_start_s is not None else default_cold_start_s
        return math.ceil(safety * self.arrival_rate * cold - 1e-9)


class Demand:
    """Arrivals (rises in a pod's session count) and cold starts of one pool."""

    def __init__(self) -> None:
        self._sessions: dict[str, int] = {}
        self._arrivals: deque[tuple[dt.datetime, int]] = deque()
        self._registered: set[str] = set()
        self._cold: deque[float] = deque(maxlen=COLD_STARTS_KEPT)
        self._since: dt.datetime | None = None

    def observe(self, pods: Iterable[PodView], now: dt.datetime, capacity: int) -> None:
        """Count the calls that started since the last look; note new pods' cold starts.

        Counts are clipped to the pod's `capacity`: an unreadable or hostile count must not
        pass for a burst of arrivals.
        """
        if self._since is None:
            self._since = now
        seen: dict[str, int] = {}
        arrived = 0
        for pod in pods:
            n = min(max(pod.sessions or 0, 0), capacity)
            seen[pod.name] = n
            before = self._sessions.get(pod.name)
            if before is not None and n > before:
                arrived += n - before
            elif before is None and n > 0 and self._since != now:
                arrived += n  # a pod we had not seen, already with calls
            registered = pod.reported_state not in (None, "starting") or n > 0
            if registered and pod.name not in self._registered:
                self._registered.add(pod.name)
                if self._since is not None and pod.created >= self._since:
                    # Only pods born while we watched: their whole start was seen.
                    self._cold.append(max(0.0, (now - pod.created).total_seconds()))
        self._sessions = seen
        self._registered &= set(seen)
        if arrived:
            self._arrivals.append((now, arrived))
        horizon = now - dt.timedelta(seconds=LONG_WINDOW_S)
        while self._arrivals and self._arrivals[0][0] < horizon:
            self._arrivals.popleft()

    def measured(self, now: dt.datetime) -> Measured:
        def rate(window: float) -> float:
            start = now - dt.timedelta(seconds=window)
            return sum(n for t, n in self._arrivals if t > start) / window

        cold = max(self._cold) if self._cold else None
        return Measured(max(rate(SHORT_WINDOW_S), rate(LONG_WINDOW_S)), cold)
