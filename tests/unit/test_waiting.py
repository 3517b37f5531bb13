"""Rooms waiting for an agent, from LiveKit webhook events, and the endpoint's signature check."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from aiohttp.test_utils import make_mocked_request
from livekit import api as lkapi
from voicepool_contract import ROOM_AGENT_KEY
from voicepool_operator.planner import CreatePod, plan
from voicepool_operator.spec import parse_spec
from voicepool_operator.waiting import WaitingRooms, room_agent
from voicepool_operator.webhook import WebhookServer

META = json.dumps({ROOM_AGENT_KEY: "support"})


def test_a_room_waits_from_start_until_an_agent_joins() -> None:
    rooms = WaitingRooms()
    assert rooms.apply("room_started", "r1", META, False, 0) == "support"
    assert rooms.apply("participant_joined", "r1", META, False, 1) is None  # the caller
    assert rooms.count("support", 2) == 1
    assert rooms.apply("participant_joined", "r1", "", True, 3) == "support"  # the agent
    assert rooms.count("support", 3) == 0


def test_finished_unnamed_and_stale_rooms() -> None:
    rooms = WaitingRooms(ttl=60)
    rooms.apply("room_started", "r1", META, False, 0)
    assert rooms.apply("room_finished", "r1", META, False, 5) == "support"
    assert rooms.apply("room_started", "plain", "", False, 0) is None  # names no agent
    assert rooms.apply("room_started", "bad", "{not json", False, 0) is None
    rooms.apply("room_started", "r2", META, False, 0)
    assert rooms.count("support", 61) == 0


@pytest.mark.parametrize(
    ("metadata", "agent"),
    [(META, "support"), ("", None), ("[]", None), (json.dumps({ROOM_AGENT_KEY: 3}), None)],
)
def test_room_agent(metadata: str, agent: str | None) -> None:
    assert room_agent(metadata) == agent


def test_a_waiting_call_starts_a_pod_in_an_empty_pool() -> None:
    spec = parse_spec(
        {
            "agentName": "support",
            "livekit": {"url": "ws://lk", "credentialsSecretRef": {"name": "s"}},
            "template": {"image": "w"},
            "sessionsPerPod": 2,
            "minReplicas": 0,
        }
    )
    import datetime as dt

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert plan(spec, "h", [], now).actions == []
    result = plan(spec, "h", [], now, waiting_calls=1)
    assert [a.reason for a in result.actions if isinstance(a, CreatePod)] == ["WaitingCall"]
    assert result.status.desired_replicas == 1


def _signed(body: str, key: str, secret: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return lkapi.AccessToken(key, secret).with_sha256(digest).to_jwt()


async def test_the_endpoint_checks_livekits_signature() -> None:
    woken: list[str] = []
    server = WebhookServer(WaitingRooms(), "key", "secret-" * 6, woken.append)
    body = json.dumps({"event": "room_started", "room": {"name": "r1", "metadata": META}})

    async def post(auth: str) -> int:
        req = make_mocked_request("POST", "/livekit/webhook", headers={"Authorization": auth})
        req._read_bytes = body.encode()  # type: ignore[attr-defined]
        return (await server.handle(req)).status

    assert await post("") == 401
    assert await post(_signed(body, "key", "wrong-secret-" * 3)) == 401
    assert await post(_signed(body + " ", "key", "secret-" * 6)) == 401  # body changed
    assert woken == []
    assert await post(_signed(body, "key", "secret-" * 6)) == 200
    assert woken == ["support"]
