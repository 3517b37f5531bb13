"""Rooms waiting for an agent, from LiveKit webhook events, and the endpoint's signature check."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st
from livekit import api as lkapi
from voicepool_contract import ROOM_AGENT_KEY, WAITING_ROOM_PREFIX
from voicepool_operator.planner import CreatePod, plan
from voicepool_operator.spec import parse_spec
from voicepool_operator.waiting import (
    RoomChange,
    change_for,
    expired,
    room_agent,
    room_key,
    waiting_keys,
    waiting_rooms,
)
from voicepool_operator.webhook import WebhookServer, record_on_pools

from .conftest import HASH, NOW, spec_dict

META = json.dumps({ROOM_AGENT_KEY: "support"})


def _apply(ann: dict[str, str], change: RoomChange | None, now: float) -> None:
    """What a merge patch of one change does to one pool's annotations."""
    assert change is not None
    value = change.annotation(now)
    if value is None:
        ann.pop(change.key, None)
    else:
        ann[change.key] = value


def test_a_room_waits_from_start_until_an_agent_joins() -> None:
    ann: dict[str, str] = {"other": "x"}
    started = change_for("room_started", "r1", META, False)
    assert started is not None and started.waiting and started.agent == "support"
    _apply(ann, started, 0)
    _apply(ann, change_for("participant_joined", "r1", META, False), 1)  # the caller
    assert waiting_rooms(ann, 2) == 1
    assert json.loads(ann[room_key("r1")])["room"] == "r1"  # kubectl shows which room
    left = change_for("participant_joined", "r1", "", True)  # the agent; no metadata needed
    assert left is not None and not left.waiting
    _apply(ann, left, 3)
    assert waiting_rooms(ann, 3) == 0 and ann == {"other": "x"}


def test_finished_unnamed_and_stale_rooms() -> None:
    ann: dict[str, str] = {}
    _apply(ann, change_for("room_started", "r1", META, False), 0)
    _apply(ann, change_for("room_finished", "r1", "", False), 5)
    assert ann == {}
    assert change_for("room_started", "plain", "", False) is None  # names no agent
    assert change_for("room_started", "bad", "{not json", False) is None
    assert change_for("room_started", "", META, False) is None
    _apply(ann, change_for("room_started", "r2", META, False), 0)
    ann[room_key("garbled")] = "not json"
    assert waiting_rooms(ann, 60, ttl=60) == 1
    assert waiting_rooms(ann, 61, ttl=60) == 0  # a lost room_finished expires
    assert waiting_rooms(ann, -5, ttl=60) == 1  # a writer whose clock runs ahead
    assert expired(ann, 61, ttl=60) == sorted([room_key("r2"), room_key("garbled")])
    assert waiting_keys(ann) == tuple(sorted(ann))


@given(st.text(max_size=300))
def test_any_room_name_makes_a_valid_annotation_key(room: str) -> None:
    prefix, _, name = room_key(room).partition("/")
    assert prefix + "/" == WAITING_ROOM_PREFIX
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", prefix) and len(prefix) <= 253
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name) and len(name) <= 63


class FakePools:
    """Plain pool objects and the merge patches written to them."""

    def __init__(self, *pools: tuple[str, str, dict[str, str]]) -> None:
        self.pools = {
            name: {
                "metadata": {"namespace": "ns", "name": name, "annotations": ann},
                "spec": {"agentName": agent},
            }
            for name, agent, ann in pools
        }
        self.patches: list[tuple[str, dict[str, str | None]]] = []
        self.listed: list[tuple[str, ...]] = []

    async def list_pools(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
        self.listed.append(tuple(namespaces))
        return list(self.pools.values())

    async def patch_pool_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> bool:
        self.patches.append((name, dict(annotations)))
        ann = self.pools[name]["metadata"]["annotations"]
        for k, v in annotations.items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        return True


async def test_rooms_are_recorded_on_every_pool_of_their_agent() -> None:
    stale = {room_key("old"): json.dumps({"room": "old", "since": 0})}
    pools = FakePools(("a", "support", dict(stale)), ("b", "support", {}), ("c", "sales", {}))
    start = change_for("room_started", "r1", META, False)
    assert start is not None
    assert await record_on_pools(pools, start, ["ns"], clock=lambda: 1000.0) == 2
    assert pools.listed == [("ns",)]
    # One key per room, merged: the stale entry goes in the same write.
    assert pools.patches[0] == (
        "a",
        {room_key("old"): None, room_key("r1"): start.annotation(1000.0)},
    )
    assert [n for n, _ in pools.patches] == ["a", "b"]
    for name in ("a", "b"):
        assert waiting_rooms(pools.pools[name]["metadata"]["annotations"], 1001) == 1
    done = change_for("room_finished", "r1", "", False)  # no metadata: found by its key
    assert done is not None
    assert await record_on_pools(pools, done, clock=lambda: 1002.0) == 2
    assert all(not p["metadata"]["annotations"] for p in pools.pools.values())


@pytest.mark.parametrize(
    ("metadata", "agent"),
    [(META, "support"), ("", None), ("[]", None), (json.dumps({ROOM_AGENT_KEY: 3}), None)],
)
def test_room_agent(metadata: str, agent: str | None) -> None:
    assert room_agent(metadata) == agent


def test_a_waiting_call_starts_a_pod_in_an_empty_pool() -> None:
    spec = parse_spec(spec_dict(agentName="support", sessionsPerPod=2, minReplicas=0))
    assert plan(spec, HASH, [], NOW).actions == []
    result = plan(spec, HASH, [], NOW, waiting_calls=1)
    assert [a.reason for a in result.actions if isinstance(a, CreatePod)] == ["WaitingCall"]
    assert result.status.desired_replicas == 1


def _signed(body: str, key: str, secret: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return lkapi.AccessToken(key, secret).with_sha256(digest).to_jwt()


async def test_the_endpoint_checks_livekits_signature() -> None:
    woken: list[str] = []

    async def publish(change: RoomChange) -> int:
        woken.append(change.agent or "")
        return 1

    server = WebhookServer("key", "secret-" * 6, publish)
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


async def test_the_endpoint_answers_503_when_the_room_cannot_be_recorded() -> None:
    async def publish(change: RoomChange) -> int:
        raise ConnectionError("apiserver unreachable")

    server = WebhookServer("key", "secret-" * 6, publish)
    body = json.dumps({"event": "room_started", "room": {"name": "r1", "metadata": META}})
    req = make_mocked_request(
        "POST", "/livekit/webhook", headers={"Authorization": _signed(body, "key", "secret-" * 6)}
    )
    req._read_bytes = body.encode()  # type: ignore[attr-defined]
    assert (await server.handle(req)).status == 503  # livekit-server retries


def test_a_recorded_room_replans_the_pool_and_other_annotations_do_not() -> None:
    from voicepool_operator.handlers import replan_key

    def pool(**annotations: str) -> dict[str, Any]:
        meta = {"uid": "u", "generation": 3, "annotations": annotations}
        return {"metadata": meta, "status": {"waitingCalls": 1}}

    base = replan_key(pool(note="a"))
    assert replan_key(pool(note="b")) == base  # e.g. kopf's own bookkeeping
    assert replan_key(pool(note="a", **{room_key("r1"): "{}"})) != base
