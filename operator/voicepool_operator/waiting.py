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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voicepool_contract import ROOM_AGENT_KEY, WAITING_ROOM_PREFIX

#: A room nobody closes (a lost room_finished) stops counting after this long.
TTL_SECONDS = 600.0


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
