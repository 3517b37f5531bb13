"""A VoiceRoute's status from what the operator observed of each region, decided without I/O.

Two observations per region feed it: the pool watch in the region's cluster (``ClusterSeen``:
the cluster answered or why not, the pool's counts) and the probe of the region's LiveKit
(``LiveKitSeen``: reachable, key accepted or why not). ``fold`` turns them into
``status.regions[]``, the kubectl summary and the conditions ``Ready`` (some region can take a
call) and ``Degraded`` (naming each region that is down and why). A region not observed yet is
not ready but not down either, so a fresh route does not flap ``Degraded``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..conditions import Condition, merge_conditions
from .spec import RegionSpec, RouteSpec

#: The pool watch re-connects at least this often (the watch's timeoutSeconds); a cluster
#: silent for longer than STALE_AFTER_S is taken as unreachable.
WATCH_TIMEOUT_S = 30
STALE_AFTER_S = 3 * WATCH_TIMEOUT_S
MAX_MESSAGE = 2048


@dataclass(frozen=True)
class PoolSeen:
    """The region's VoiceAgentPool as its watch last delivered it."""

    found: bool
    deleting: bool = False
    agent_name: str = ""
    idle: int = 0
    busy: int = 0
    capacity: int = 0


@dataclass(frozen=True)
class ClusterSeen:
    """The region's cluster: answering (with the pool, once listed) or why not."""

    ok: bool
    last_seen: dt.datetime | None = None
    pool: PoolSeen | None = None  # None until the first list answered
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class LiveKitSeen:
    """The region's LiveKit at the last probe: reachable with the key, or why not."""

    ok: bool
    checked_at: dt.datetime
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class RegionState:
    name: str
    priority: int
    weight: int
    url: str
    agent_name: str
    ready: bool
    reachable: bool
    idle: int
    busy: int
    capacity: int
    last_seen: dt.datetime | None
    reason: str
    message: str

    @property
    def down(self) -> bool:
        """Something is wrong (not merely not observed yet)."""
        return not self.ready and self.reason != "Pending"

    def to_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "priority": self.priority,
            "weight": self.weight,
            "url": self.url,
            "agentName": self.agent_name,
            "ready": self.ready,
            "reachable": self.reachable,
            "idleSessions": self.idle,
            "busySessions": self.busy,
            "capacity": self.capacity,
            "lastSeen": _iso(self.last_seen) if self.last_seen else None,
            "reason": self.reason,
            "message": self.message[:MAX_MESSAGE],
        }


def pool_seen(obj: Mapping[str, Any] | None) -> PoolSeen:
    """A VoiceAgentPool object (plain JSON, or None: not found) as the router needs it.

    Counts come from the pool's status, which its own operator bounds; anything that is not a
    non-negative integer reads as 0 (no capacity rather than invented capacity).
    """
    if obj is None:
        return PoolSeen(found=False)
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    return PoolSeen(
        found=True,
        deleting=bool(meta.get("deletionTimestamp")),
        agent_name=str(spec.get("agentName") or ""),
        idle=_count(status.get("idleCapacity")),
        busy=_count(status.get("activeSessions")),
        capacity=_count(status.get("sessionCapacity")),
    )


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def region_state(
    spec: RegionSpec,
    cluster: ClusterSeen | None,
    livekit: LiveKitSeen | None,
    now: dt.datetime,
) -> RegionState:
    """One region's status entry: ready only when its cluster, pool and LiveKit all are."""
    pool = cluster.pool if cluster is not None and cluster.ok else None
    problems: list[tuple[str, str]] = []
    cluster_ok = cluster is not None and cluster.ok
    if cluster is not None and not cluster.ok:
        problems.append((cluster.reason or "ClusterUnreachable", cluster.message))
    elif cluster is not None and cluster.last_seen is not None:
        age = (now - cluster.last_seen).total_seconds()
        if age > STALE_AFTER_S:
            cluster_ok = False
            problems.append(("ClusterStale", f"the pool watch has been silent for {age:.0f}s"))
    where = f"{spec.pool.namespace}/{spec.pool.name}"
    if cluster_ok and pool is not None:
        if not pool.found:
            problems.append(("PoolNotFound", f"VoiceAgentPool {where} not found"))
        elif pool.deleting:
            problems.append(("PoolDeleting", f"VoiceAgentPool {where} is being deleted"))
        elif not pool.agent_name:
            problems.append(("PoolNoAgent", f"VoiceAgentPool {where} names no agentName"))
    if livekit is not None and not livekit.ok:
        problems.append((livekit.reason or "LiveKitUnreachable", livekit.message))
    observed = cluster is not None and pool is not None and livekit is not None
    ready = observed and cluster_ok and not problems
    if problems:
        reason = problems[0][0]
        message = "; ".join(m for _, m in problems if m)
    elif not observed:
        reason, message = "Pending", "not observed yet"
    else:
        reason, message = "Ready", "reachable; pool found"
    return RegionState(
        name=spec.name,
        priority=spec.priority,
        weight=spec.weight,
        url=spec.livekit_url,
        agent_name=pool.agent_name if pool is not None else "",
        ready=ready,
        reachable=cluster_ok and livekit is not None and livekit.ok,
        idle=pool.idle if ready and pool is not None else 0,
        busy=pool.busy if pool is not None else 0,
        capacity=pool.capacity if pool is not None else 0,
        last_seen=cluster.last_seen if cluster is not None else None,
        reason=reason,
        message=message,
    )


def conditions(states: Sequence[RegionState]) -> list[Condition]:
    """``Ready`` and ``Degraded`` of a route from its regions' states."""
    warm = [s for s in states if s.ready and s.idle > 0]
    if warm:
        ready = Condition(
            "Ready",
            "True",
            "CapacityAvailable",
            "; ".join(f"{s.name}: {s.idle} idle session(s)" for s in warm),
        )
    elif any(s.ready for s in states):
        ready = Condition(
            "Ready", "False", "NoIdleSessions", "every ready region is full (no idle session)"
        )
    elif any(not s.down for s in states):
        ready = Condition("Ready", "False", "Pending", "no region observed yet")
    else:
        ready = Condition("Ready", "False", "NoRegionReady", "no region is ready")
    down = [s for s in states if s.down]
    if down:
        degraded = Condition(
            "Degraded",
            "True",
            "RegionsDown" if len(down) > 1 else down[0].reason,
            "; ".join(f"region {s.name}: {s.reason}: {s.message}" for s in down),
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "every region is reachable")
    return [ready, degraded]


def summary(states: Sequence[RegionState]) -> str:
    """``eu=4/8 us=down`` for ``kubectl get voiceroutes``."""
    parts = []
    for s in states:
        if s.ready:
            parts.append(f"{s.name}={s.idle}/{s.capacity}")
        elif s.down:
            parts.append(f"{s.name}=down")
        else:
            parts.append(f"{s.name}=pending")
    return " ".join(parts)[:1024]


def fold(
    route: RouteSpec,
    clusters: Mapping[str, ClusterSeen],
    livekits: Mapping[str, LiveKitSeen],
    *,
    now: dt.datetime,
    generation: int,
    old_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The route's whole status (what the operator writes) from the regions' observations."""
    states = [
        region_state(r, clusters.get(r.name), livekits.get(r.name), now) for r in route.regions
    ]
    ready = [s for s in states if s.ready]
    return {
        "observedGeneration": generation,
        "readyRegions": len(ready),
        "idleSessions": sum(s.idle for s in ready),
        "sessionCapacity": sum(s.capacity for s in ready),
        "summary": summary(states),
        "regions": [s.to_status() for s in states],
        "conditions": merge_conditions(old_conditions, conditions(states), now, generation),
    }


def invalid(
    message: str, *, now: dt.datetime, generation: int, old_conditions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The status of a route whose spec does not parse: nothing is read, nothing routed."""
    conds = [
        Condition("Ready", "False", "InvalidSpec", message),
        Condition("Degraded", "True", "InvalidSpec", message),
    ]
    return {
        "observedGeneration": generation,
        "readyRegions": 0,
        "idleSessions": 0,
        "sessionCapacity": 0,
        "summary": "invalid spec",
        "regions": [],
        "conditions": merge_conditions(old_conditions, conds, now, generation),
    }


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` changes anything but ``lastSeen`` times.

    A watch that re-connects every WATCH_TIMEOUT_S refreshes ``lastSeen``; that alone is worth a
    write only every STALE_AFTER_S / 3 (``stale_seen``), not every reconnect.
    """
    return bool(_strip(old) != _strip(new))


def _strip(status: Mapping[str, Any]) -> Any:
    regions = [
        {k: v for k, v in r.items() if k != "lastSeen"}
        for r in status.get("regions") or []
        if isinstance(r, Mapping)
    ]
    conds = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions") or []
        if isinstance(c, Mapping)
    ]
    rest = {k: v for k, v in status.items() if k not in ("regions", "conditions")}
    return (rest, regions, conds)


def stale_seen(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a region's observed ``lastSeen`` is ahead of the written one by more than a
    third of the staleness limit (so a reader of the status can tell a live cluster from a
    silent one without a write at every watch reconnect)."""
    before = {
        str(r.get("name")): r.get("lastSeen")
        for r in old.get("regions") or []
        if isinstance(r, Mapping)
    }
    for r in new.get("regions") or []:
        seen = _time(r.get("lastSeen"))
        if seen is None:
            continue
        written = _time(before.get(str(r.get("name"))))
        if written is None or (seen - written).total_seconds() > STALE_AFTER_S / 3:
            return True
    return False


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
