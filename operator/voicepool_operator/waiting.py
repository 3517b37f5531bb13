"""Rooms that wait for a pool's agent: what LiveKit's webhooks tell the operator.

A pool with no pods (minReplicas 0, no warm pool) has no worker to take a call, so the
operator must learn of the caller from LiveKit itself. livekit-server posts room and
participant events to the operator (`webhook.py`); a room whose metadata names an agent
(`{"voicepool.dev/agent": "<agentName>"}`) waits from `room_started` until an agent
participant joins or the room finishes. Each waiting room is one call of demand for the
pools of that agent, so a pod is created at once.

Pure bookkeeping with an explicit clock; unit-tested in tests/unit/test_waiting.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from voicepool_contract import ROOM_AGENT_KEY

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


@dataclass
class _Room:
    agent: str
    since: float


class WaitingRooms:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._rooms: dict[str, _Room] = {}

    def apply(
        self, event: str, room: str, metadata: str, agent_joined: bool, now: float
    ) -> str | None:
        """Feed one webhook event; returns the agent whose waiting count changed, if any."""
        if event == "room_finished" or (event == "participant_joined" and agent_joined):
            gone = self._rooms.pop(room, None)
            return gone.agent if gone else None
        agent = room_agent(metadata)
        starts = event in ("room_started", "participant_joined")
        if starts and agent and room and room not in self._rooms:
            self._rooms[room] = _Room(agent, now)
            return agent
        return None

    def count(self, agent: str, now: float) -> int:
        for name, r in list(self._rooms.items()):
            if now - r.since > self.ttl:
                del self._rooms[name]
        return sum(1 for r in self._rooms.values() if r.agent == agent)
