"""Rooms that wait for a pool's agent: what LiveKit's webhooks tell the operator.

A pool with no pods (minReplicas 0, no warm pool) has no worker to take a call, so the
operator must learn of the caller from LiveKit itself. livekit-server posts room and
participant events to the operator (`webhook.py`); a room whose metadata names an agent
(`{"voicepool.dev/agent": "<agentName>"}`) waits from `room_started` until an agent
participant joins or the room finishes. Each waiting room is one call of demand for the
pools of that agent, so a pod is created at once.

The chart runs two operator replicas and only one acts (kopf peering), but livekit-server
posts to whichever the Service picks. So the receiver keeps nothing in memory: it records
each waiting room as an annotation on the pools of that agent (one key per room, so
concurrent merge patches never collide), and the active replica reads the count from the
pool object it already watches. Entries carry their start time and expire after a TTL (a
lost `room_finished`); the receiver removes expired ones on its next write.

Pure: event -> annotation change, annotations + clock -> count; unit-tested in
tests/unit/test_waiting.py.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voicepool_contract import ROOM_AGENT_KEY, WAITING_ROOM_PREFIX

#: A room nobody closes (a lost room_finished) stops counting after this long.
TTL_SECONDS = 600.0
#: Webhook events created longer ago than this are refused (a captured event replayed later).
MAX_EVENT_AGE_SECONDS = 300.0
#: ...and so are events from further in the future than this (clock skew between hosts).
MAX_CLOCK_SKEW_SECONDS = 60.0


def room_agent(metadata: str) -> str | None:
    """The agent a room's metadata names, if it is a JSON object with our key."""
    try:
        data = json.loads(metadata) if metadata else None
    except ValueError:
        return None
    agent = data.get(ROOM_AGENT_KEY) if isinstance(data, dict) else None
    return agent if isinstance(agent, str) and agent else None


def room_key(room: str) -> str:
    """The annotation key for one room: room names are free text, annotation names are not
    (at most 63 of [-._a-zA-Z0-9]), so the name part is a hash; the value names the room."""
    return WAITING_ROOM_PREFIX + hashlib.sha256(room.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class RoomChange:
    """What one webhook event changes: `room` starts waiting for `agent`, or stops waiting."""

    room: str
    key: str
    waiting: bool
    agent: str | None  # set when the room starts waiting: the pools to record it on

    def annotation(self, now: float) -> str | None:
        """The annotation value to merge (None deletes it)."""
        return json.dumps({"room": self.room, "since": round(now, 3)}) if self.waiting else None


def change_for(event: str, room: str, metadata: str, agent_joined: bool) -> RoomChange | None:
    """One webhook event -> the change to the waiting rooms, if any."""
    if not room:
        return None
    if event == "room_finished" or (event == "participant_joined" and agent_joined):
        return RoomChange(room, room_key(room), False, None)
    agent = room_agent(metadata)
    if event in ("room_started", "participant_joined") and agent:
        return RoomChange(room, room_key(room), True, agent)
    return None


def _since(value: Any) -> float | None:
    try:
        data = json.loads(str(value))
        since = data.get("since") if isinstance(data, dict) else None
        return float(since) if isinstance(since, int | float) else None
    except ValueError:
        return None


def waiting_rooms(
    annotations: Mapping[str, Any] | None, now: float, ttl: float = TTL_SECONDS
) -> int:
    """Rooms recorded on a pool that still wait at `now` (unix seconds): the pool's
    waitingCalls. Entries from a replica whose clock runs ahead count; unreadable ones (the
    receiver writes none) do not, and go on its next write."""
    n = 0
    for key, value in (annotations or {}).items():
        if key.startswith(WAITING_ROOM_PREFIX):
            since = _since(value)
            n += since is not None and now - since <= ttl
    return n


def expired(
    annotations: Mapping[str, Any] | None, now: float, ttl: float = TTL_SECONDS
) -> list[str]:
    """Keys of entries past the TTL (or unreadable): the receiver deletes them."""
    out = []
    for key, value in (annotations or {}).items():
        if key.startswith(WAITING_ROOM_PREFIX):
            since = _since(value)
            if since is None or now - since > ttl:
                out.append(key)
    return sorted(out)


def waiting_keys(annotations: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The recorded rooms, for `replan_key`: a room added or removed re-plans the pool."""
    return tuple(sorted(k for k in (annotations or {}) if k.startswith(WAITING_ROOM_PREFIX)))


# -- which pools an event may touch (tenancy) --------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """A LiveKit API key and its secret: what signed a webhook event, or what a pool trusts."""

    key: str
    secret: str = field(repr=False)


def trusted_signers(
    own: Signer | None, declared: Iterable[str], platform: Signer | None
) -> tuple[Signer, ...]:
    """The signers whose events may touch a pool: its own LiveKit key (from its own Secret),
    and the operator's own key (chart ``webhook.credentialsSecretRef``) when the pool lists
    that key in ``spec.livekit.webhookSigningKeys``. Never another namespace's key: a key read
    from a Secret only ever counts for pools of that Secret's namespace."""
    out = [own] if own is not None else []
    if platform is not None and platform.key in set(declared) and platform not in out:
        out.append(platform)
    return tuple(out)


def room_cap(spec: Mapping[str, Any]) -> int:
    """At most this many rooms wait for one pool: all it could ever serve (maxReplicas x
    sessionsPerPod, CRD defaults 10 and 1). More would only grow the annotation."""

    def num(key: str, default: int) -> int:
        value = spec.get(key, default)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    return max(1, num("maxReplicas", 10)) * max(1, num("sessionsPerPod", 1))


def event_fresh(
    created_at: float,
    now: float,
    max_age: float = MAX_EVENT_AGE_SECONDS,
    skew: float = MAX_CLOCK_SKEW_SECONDS,
) -> bool:
    """Whether an event created at ``created_at`` (unix s) may still be acted on at ``now``."""
    return now - max_age <= created_at <= now + skew


class RecentIds:
    """Webhook event ids seen lately: a second delivery of one (a replay, or livekit-server's
    retry after a lost answer) is ignored. Bounded in count and kept only as long as an event
    can still be fresh, after which `event_fresh` refuses a replay anyway."""

    def __init__(
        self,
        keep_seconds: float = MAX_EVENT_AGE_SECONDS + MAX_CLOCK_SKEW_SECONDS,
        limit: int = 100_000,
    ) -> None:
        self.keep_seconds = keep_seconds
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, event_id: str, now: float) -> bool:
        """Record ``event_id``; False when it was seen already."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.keep_seconds and len(self._seen) < self.limit:
                break
            del self._seen[oldest]
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True
