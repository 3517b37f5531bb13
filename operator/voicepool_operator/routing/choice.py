"""Which region a new call goes to, decided without I/O.

The lowest priority tier that has a ready region with idle sessions wins; within that tier a
region is drawn at random with probability proportional to weight x idle sessions. The router
gets the whole order at once (the draw without replacement, then the next tiers), so when a
region fails it moves to the next one without a second decision. Calls the router placed
itself count against a region's idle sessions until the region's status catches up (the
pool's status is written once it has been quiet for a second), so a burst does not pour into
one region beyond its warm capacity.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A call placed by this router counts against its region's idle sessions at most this long,
#: unless the region's status changes first (the pool's own status is coalesced: ~1 s when
#: quiet, at most 10 s under churn).
PENDING_TTL_S = 10.0


@dataclass(frozen=True)
class Candidate:
    """One region as the router sees it: from the route's spec and the operator's status."""

    name: str
    priority: int
    weight: int
    ready: bool
    idle: int
    agent_name: str = ""
    url: str = ""


def order(
    regions: Iterable[Candidate], rng: random.Random, skip: Iterable[str] = ()
) -> list[Candidate]:
    """The regions to try, best first: ready ones with idle sessions, not in ``skip``.

    Tiers ascend; within a tier the order is a weighted draw without replacement with weight
    x idle (Efraimidis-Spirakis: sort by u^(1/w) descending, u uniform in (0, 1)).
    """
    skipped = set(skip)
    usable = [r for r in regions if r.ready and r.idle > 0 and r.name not in skipped]
    keyed = []
    for r in usable:
        u = rng.random() or 1e-12
        keyed.append((r.priority, -(u ** (1.0 / (r.weight * r.idle))), r.name, r))
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]


def candidates(
    spec_regions: Sequence[Mapping[str, Any]],
    status_regions: Sequence[Mapping[str, Any]],
    pending: Mapping[str, int] | None = None,
) -> list[Candidate]:
    """Candidates from a VoiceRoute's ``spec.regions`` and ``status.regions`` (plain JSON).

    A region the status does not list yet, or lists as not ready, is not a candidate.
    ``pending``: calls this router placed per region since the region's status last changed.
    """
    seen = {str(s.get("name")): s for s in status_regions if isinstance(s, Mapping)}
    out: list[Candidate] = []
    for spec in spec_regions:
        name = str(spec.get("name") or "")
        st = seen.get(name)
        if not name or st is None:
            continue
        idle = _count(st.get("idleSessions")) - (pending or {}).get(name, 0)
        out.append(
            Candidate(
                name=name,
                priority=_count(spec.get("priority")),
                weight=max(1, _count(spec.get("weight"), 100)),
                ready=st.get("ready") is True,
                idle=max(0, idle),
                agent_name=str(st.get("agentName") or ""),
                url=str((spec.get("livekit") or {}).get("url") or st.get("url") or ""),
            )
        )
    return out


def _count(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return max(0, value)


@dataclass
class Pending:
    """Calls placed per region that the region's status may not show yet (router memory).

    ``placed`` records one; ``seen`` drops a region's records once its status entry changed
    (the pool's counts now include them, or the calls ended); ``counts`` expires the rest
    after ``ttl`` seconds.
    """

    ttl: float = PENDING_TTL_S
    _calls: dict[str, list[float]] = field(default_factory=dict)
    _status: dict[str, Any] = field(default_factory=dict)

    def placed(self, region: str, now: float) -> None:
        self._calls.setdefault(region, []).append(now)

    def seen(self, region: str, status_entry: Any) -> None:
        """The region's current status entry: a change forgets the calls placed before it."""
        if self._status.get(region) != status_entry:
            self._status[region] = status_entry
            self._calls.pop(region, None)

    def counts(self, now: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for region, times in list(self._calls.items()):
            alive = [t for t in times if now - t < self.ttl]
            if alive:
                self._calls[region] = alive
                out[region] = len(alive)
            else:
                del self._calls[region]
        return out


@dataclass
class Cooldown:
    """Regions this router saw fail (LiveKit unreachable, dispatch not accepted), skipped for
    a while so each new call does not wait for the same failure again. The operator's probe
    marks a region not ready in its status; this only bridges the seconds until it does."""

    seconds: float = 5.0
    _until: dict[str, float] = field(default_factory=dict)

    def failed(self, region: str, now: float) -> None:
        self._until[region] = now + self.seconds

    def active(self, now: float) -> frozenset[str]:
        for region, until in list(self._until.items()):
            if until <= now:
                del self._until[region]
        return frozenset(self._until)


def trunk_fault(sip_status: int | None, code: str | None, message: str = "") -> bool:
    """Whether a failed dial is the trunk's fault, so the next trunk is tried: a 5xx, or a
    timeout -- a 408, an INVITE nothing answered (livekit-sip 1.8: no SIP status, "sip request
    timed out"), or our own deadline. Busy (486), declined (603), no such number (404) and a
    callee who does not pick up (480, 487) are the callee's answer, which another trunk would
    not change."""
    if sip_status is not None:
        return 500 <= sip_status < 600 or sip_status == 408
    if "timed out" in message:
        return True
    return code in ("deadline_exceeded", "unavailable", "internal", "unknown")
