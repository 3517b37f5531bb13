"""What the adaptive warm pool measures, and the warm size it asks for.

A warm pool has one job: the callers who arrive while a new pod is starting must find a free
slot. Each call that takes a slot makes the planner start a pod, which is ready one cold start
later; so a caller finds no slot exactly when, over the last cold start, more calls began
than ended by more than the warm sessions. That is the base-stock rule of inventory theory
with the cold start as lead time: keep `W` warm sessions, the smallest for which

    P(arrivals - departures during the cold start >= W) <= 1 - SERVED_WARM,

with arrivals and departures Poisson (a Skellam difference). Ending calls count: on a steady
day as many calls end as begin while a pod starts, so the pool needs the noise, not the mean.

Inputs, measured from what the operator already sees -- each pod's session count and its
registration -- so no extra signal is needed: arrival and departure rates (rises and falls of
the session counts), and the cold start (pod created -> worker registered). Rates rise fast
and fall slowly: the 300-s mean, unless the last 5, 10 or 20 s hold significantly more arrivals than
that mean predicts (a burst), when that window's rate is used. Callers waiting in LiveKit
(the webhook's count) are arrivals too: a full pool answers nobody, so its counts stop rising.

The scale-down stabilization window keeps the pods of the highest demand of its last
seconds; the part of it beyond the cold start is capacity the warm sessions need not repeat
(`base_stock`'s `held`).

The history is the active replica's memory: a replica that takes over (or restarts) starts
empty, measures its rates over what it has watched (at least the shortest window, at
most the long one) and plans for the spec's cold start until it sees a pod register.

Pure and fed by the reconciler (or the simulation) with the pods it observed and the clock:
unit-tested in tests/unit/test_demand.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

from .podview import PodView

#: Rates are measured over a long window (steady, so noise does not inflate the pool and a
#: lull does not shrink it at once) and short ones (a burst shows within seconds).
LONG_WINDOW_S = 300.0
SHORT_WINDOWS_S = (5.0, 10.0, 20.0)
#: A short window replaces the long one only when its arrival count would happen with less
#: than this probability at the long window's rate (a one-sided Poisson test per window).
BURST_P = 0.001
#: Cold starts remembered: the highest of the recent ones is planned for.
COLD_STARTS_KEPT = 20
#: The share of callers the warm pool is sized to answer at once (the base-stock fill rate).
SERVED_WARM = 0.99
#: Above this many expected events per cold start the Skellam tail is taken from its normal
#: approximation (exact below: the sums would grow with the rate).
EXACT_UP_TO = 400.0


def poisson_sf(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    term = math.exp(-mean)
    below = term
    for i in range(1, k):
        term *= mean / i
        below += term
    return max(0.0, 1.0 - below)


def _poisson_pmf(mean: float) -> list[float]:
    """P(X = i) for i up to where the rest is negligible (mean + 12 sd + 20)."""
    top = int(mean + 12 * math.sqrt(mean) + 20)
    out = [math.exp(-mean)]
    for i in range(1, top + 1):
        out.append(out[-1] * mean / i)
    return out


#: Points of the held-capacity distribution averaged over (its quantiles at mid-bins).
HELD_POINTS = 32


def _held_quantiles(variance: float) -> list[float]:
    """Quantiles of the highest rise of a driftless random walk of this variance.

    By the reflection principle its running maximum is distributed as |N(0, variance)|.
    """
    if variance <= 0:
        return [0.0]
    sd = math.sqrt(variance)
    norm = NormalDist()
    return [sd * norm.inv_cdf(0.5 + 0.5 * (i + 0.5) / HELD_POINTS) for i in range(HELD_POINTS)]


@functools.lru_cache(maxsize=4096)  # pure; the rates repeat between reconciles
def base_stock(
    arrivals: float, departures: float, held: float = 0.0, served: float | None = None
) -> int:
    """The smallest W >= 0 with P(A - D - H >= W) <= 1 - served.

    A, D: calls begun and ended during one cold start, Poisson with these means (their
    difference is Skellam: exact for small means, its normal approximation with a continuity
    correction for large ones). H >= 0: capacity the pool still holds for a demand higher than
    the one a cold start ago -- the scale-down stabilization window keeps the pods of the
    highest recent demand -- the running maximum of the same calls' random walk over the held
    span, whose variance is `held`. A caller finds no slot when the calls begun minus the
    calls ended reach the warm sessions plus what is held.
    """
    served = SERVED_WARM if served is None else served
    miss = 1.0 - served
    if arrivals <= 0:
        return 0
    departures = max(0.0, departures)
    rise = _held_quantiles(held)
    mean, var = arrivals - departures, arrivals + departures
    if var > EXACT_UP_TO:
        norm, sd = NormalDist(), math.sqrt(var)

        def tail(w: int) -> float:
            return sum(1 - norm.cdf((w + h - 0.5 - mean) / sd) for h in rise) / len(rise)

    else:
        a = _poisson_pmf(arrivals)
        d = _poisson_pmf(departures) if departures > 0 else [1.0]
        pmf = [0.0] * (len(a) + len(d) - 1)  # P(A - D = k - (len(d) - 1))
        for j, pj in enumerate(d):
            for i, pi in enumerate(a):
                pmf[i - j + len(d) - 1] += pi * pj
        sf = [0.0] * (len(pmf) + 1)  # sf[k] = P(A - D >= k - (len(d) - 1))
        for k in range(len(pmf) - 1, -1, -1):
            sf[k] = sf[k + 1] + pmf[k]
        shift = len(d) - 1

        def tail(w: int) -> float:
            return sum(
                sf[min(len(pmf), max(0, math.ceil(w + h - 1e-9) + shift))] for h in rise
            ) / len(rise)

    w = max(0, math.floor(mean))
    while w > 0 and tail(w) <= miss:  # the mean overshoots when departures or held are large
        w -= 1
    while tail(w) > miss:
        w += 1
    return w


@dataclass(frozen=True)
class Measured:
    """The adaptive pool's inputs at one moment."""

    arrival_rate: float  # calls per second
    cold_start_s: float | None  # None: no pod has registered yet; the spec's guess is used
    departure_rate: float = 0.0  # calls ending per second

    def warm_sessions(
        self, safety: float, default_cold_start_s: float, window_s: float = 0.0
    ) -> int:
        """Base-stock warm sessions over `safety` x the cold start (the lead time).

        `window_s`, the scale-down stabilization window: the pods of the highest demand of
        that long stay, so the part of it beyond the lead time holds capacity too.
        """
        cold = self.cold_start_s if self.cold_start_s is not None else default_cold_start_s
        lead = safety * cold
        a, d = self.arrival_rate * lead, self.departure_rate * lead
        held = (self.arrival_rate + self.departure_rate) * max(0.0, window_s - lead)
        return base_stock(a, d, held)


class Demand:
    """Arrivals and departures (rises and falls in the session counts), cold starts, of a pool."""

    def __init__(self) -> None:
        self._sessions: dict[str, int] = {}
        self._arrivals: deque[tuple[dt.datetime, int]] = deque()
        self._departures: deque[tuple[dt.datetime, int]] = deque()
        self._registered: set[str] = set()
        self._cold: deque[float] = deque(maxlen=COLD_STARTS_KEPT)
        self._since: dt.datetime | None = None
        self._waiting = 0

    def observe(
        self, pods: Iterable[PodView], now: dt.datetime, capacity: int, waiting: int = 0
    ) -> None:
        """Count the calls that started and ended since the last look; note cold starts.

        Counts are clipped to the pod's `capacity`: an unreadable or hostile count must not
        pass for a burst of arrivals. A pod that disappears takes its calls with it: they are
        not counted as departures (a deleted pod frees no slot). `waiting`: callers waiting in
        LiveKit for the agent (the webhook's count). A full pool answers nobody, so its
        session counts stop rising just when callers pour in; a caller who starts waiting is
        an arrival, and one answered after waiting is not a second one.
        """
        if self._since is None:
            self._since = now
        seen: dict[str, int] = {}
        arrived = departed = 0
        for pod in pods:
            n = min(max(pod.sessions or 0, 0), capacity)
            seen[pod.name] = n
            before = self._sessions.get(pod.name)
            if before is not None and n > before:
                arrived += n - before
            elif before is not None and n < before:
                departed += before - n
            elif before is None and n > 0 and self._since != now:
                arrived += n  # a pod we had not seen, already with calls
            registered = pod.reported_state not in (None, "starting") or n > 0
            if registered and pod.name not in self._registered:
                self._registered.add(pod.name)
                if self._since is not None and pod.created >= self._since:
                    # Only pods born while we watched: their whole start was seen.
                    self._cold.append(max(0.0, (now - pod.created).total_seconds()))
        waiting = max(0, waiting)
        arrived = max(0, arrived + waiting - self._waiting)
        self._waiting = waiting
        self._sessions = seen
        self._registered &= set(seen)
        horizon = now - dt.timedelta(seconds=LONG_WINDOW_S)
        for events, n in ((self._arrivals, arrived), (self._departures, departed)):
            if n:
                events.append((now, n))
            while events and events[0][0] < horizon:
                events.popleft()

    def measured(self, now: dt.datetime) -> Measured:
        def count(events: deque[tuple[dt.datetime, int]], window: float) -> int:
            start = now - dt.timedelta(seconds=window)
            return sum(n for t, n in events if t > start)

        # Over what was watched: a replica that just started (or took over from another,
        # whose history was in its memory) has seen less than the long window.
        watched = 0.0 if self._since is None else (now - self._since).total_seconds()
        span = min(LONG_WINDOW_S, max(watched, SHORT_WINDOWS_S[0]))
        steady = count(self._arrivals, LONG_WINDOW_S) / span
        rate = steady
        for window in SHORT_WINDOWS_S:
            recent = count(self._arrivals, window)
            if poisson_sf(recent, steady * window) < BURST_P:
                rate = max(rate, recent / window)  # fast up: a burst the long mean missed
        departures = count(self._departures, LONG_WINDOW_S) / span
        cold = max(self._cold) if self._cold else None
        return Measured(rate, cold, departures)
