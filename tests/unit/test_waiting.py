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
    RecentIds,
    RoomChange,
    Signer,
    change_for,
    event_fresh,
    expired,
    room_agent,
    room_cap,
    room_key,
    trusted_signers,
    waiting_keys,
    waiting_rooms,
)
from voicepool_operator.webhook import WebhookServer, record_on_pools, signing_key

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


#: The LiveKit key of team "ns" (the key its pools' Secrets hold), and another team's.
TEAM = Signer("team-key", "team-secret-" * 4)
OTHER = Signer("other-key", "other-secret-" * 4)


class FakePools:
    """Plain pool objects and the merge patches written to them."""

    def __init__(self, *pools: tuple[str, str, dict[str, str]], max_replicas: int = 10) -> None:
        self.pools = {
            name: {
                "metadata": {"namespace": "ns", "name": name, "annotations": ann},
                "spec": {"agentName": agent, "maxReplicas": max_replicas, "sessionsPerPod": 1},
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


class FakeKeys:
    """Whom each pool trusts (by pool name; default: TEAM), and the known signers."""

    def __init__(self, trust: Mapping[str, tuple[Signer, ...]] | None = None) -> None:
        self.trust = dict(trust or {})

    async def trusted_by(self, pool: Mapping[str, Any]) -> tuple[Signer, ...]:
        return self.trust.get(pool["metadata"]["name"], (TEAM,))

    async def candidates(self, key: str) -> list[Signer]:
        return [s for s in (TEAM, OTHER) if s.key == key]


async def test_rooms_are_recorded_on_every_pool_of_their_agent() -> None:
    stale = {room_key("old"): json.dumps({"room": "old", "since": 0})}
    pools = FakePools(("a", "support", dict(stale)), ("b", "support", {}), ("c", "sales", {}))
    start = change_for("room_started", "r1", META, False)
    assert start is not None
    keys = FakeKeys()
    assert await record_on_pools(pools, keys, start, TEAM, ["ns"], clock=lambda: 1000.0) == 2
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
    assert await record_on_pools(pools, keys, done, TEAM, clock=lambda: 1002.0) == 2
    assert all(not p["metadata"]["annotations"] for p in pools.pools.values())


async def test_a_room_never_touches_a_pool_that_does_not_trust_its_signer() -> None:
    """Two teams, one agentName: team A's rooms (signed with A's key) scale only A's pool,
    and a room_finished signed by A cannot remove B's waiting room either."""
    b_room = change_for("room_started", "rb", META, False)
    assert b_room is not None
    pools = FakePools(("a", "support", {}), ("b", "support", {}))
    keys = FakeKeys({"a": (TEAM,), "b": (OTHER,)})
    assert await record_on_pools(pools, keys, b_room, OTHER, clock=lambda: 10.0) == 1
    assert [n for n, _ in pools.patches] == ["b"]
    a_room = change_for("room_started", "ra", META, False)
    assert a_room is not None
    assert await record_on_pools(pools, keys, a_room, TEAM, clock=lambda: 11.0) == 1
    assert [n for n, _ in pools.patches] == ["b", "a"]
    forged_end = change_for("room_finished", "rb", "", False)
    assert forged_end is not None
    assert await record_on_pools(pools, keys, forged_end, TEAM, clock=lambda: 12.0) == 0
    assert waiting_rooms(pools.pools["b"]["metadata"]["annotations"], 13.0) == 1


async def test_a_pool_holds_at_most_what_it_could_serve_in_waiting_rooms() -> None:
    pools = FakePools(("a", "support", {}), max_replicas=2)
    keys = FakeKeys()
    for i in range(3):
        change = change_for("room_started", f"r{i}", META, False)
        assert change is not None
        await record_on_pools(pools, keys, change, TEAM, clock=lambda: 100.0)
    annotations = pools.pools["a"]["metadata"]["annotations"]
    assert waiting_rooms(annotations, 100.0) == 2 == room_cap(pools.pools["a"]["spec"])
    again = change_for("room_started", "r0", META, False)  # a room already there may refresh
    assert again is not None
    assert await record_on_pools(pools, keys, again, TEAM, clock=lambda: 101.0) == 1


def test_trusted_signers_are_the_pools_own_key_and_a_declared_operator_key() -> None:
    platform = Signer("platform", "platform-secret-" * 3)
    assert trusted_signers(TEAM, (), platform) == (TEAM,)
    assert trusted_signers(TEAM, ("platform",), platform) == (TEAM, platform)
    assert trusted_signers(None, ("platform",), platform) == (platform,)
    assert trusted_signers(None, ("team-key",), None) == ()  # a key id alone proves nothing
    assert room_cap({}) == 10 and room_cap({"maxReplicas": 3, "sessionsPerPod": 4}) == 12


def test_events_are_fresh_only_within_their_window_and_ids_count_once() -> None:
    assert event_fresh(1000, 1000) and event_fresh(1000 - 300, 1000)
    assert not event_fresh(1000 - 301, 1000) and not event_fresh(1061, 1000)
    ids = RecentIds(keep_seconds=10, limit=3)
    assert ids.first_time("a", 0) and not ids.first_time("a", 5)
    assert ids.first_time("a", 11)  # forgotten once it could no longer be fresh
    for name in "bcd":
        ids.first_time(name, 12)
    assert len(ids) <= 3


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


#: The webhook tests' wall clock (unix seconds).
WALL = 1_800_000_000.0


def _event(event: str = "room_started", *, id_: str = "EV_1", created: float = WALL) -> str:
    return json.dumps(
        {
            "event": event,
            "room": {"name": "r1", "metadata": META},
            "id": id_,
            "createdAt": str(int(created)),
        }
    )


async def _post(server: WebhookServer, body: str, auth: str) -> int:
    req = make_mocked_request("POST", "/livekit/webhook", headers={"Authorization": auth})
    req._read_bytes = body.encode()  # type: ignore[attr-defined]
    return (await server.handle(req)).status


async def test_the_endpoint_checks_livekits_signature() -> None:
    woken: list[tuple[str, str]] = []

    async def publish(change: RoomChange, signer: Signer) -> int:
        woken.append((change.agent or "", signer.key))
        return 1

    server = WebhookServer(FakeKeys(), publish, clock=lambda: WALL)
    body = _event()
    assert await _post(server, body, "") == 401  # unsigned
    assert await _post(server, body, "not a jwt") == 401
    assert await _post(server, body, _signed(body, "team-key", "wrong-secret-" * 3)) == 401
    assert await _post(server, body, _signed(body, "nobody", "secret-" * 6)) == 401  # unknown
    assert await _post(server, body + " ", _signed(body, TEAM.key, TEAM.secret)) == 401  # body
    assert woken == []
    assert await _post(server, body, _signed(body, TEAM.key, TEAM.secret)) == 200
    assert woken == [("support", "team-key")]
    assert signing_key(_signed(body, TEAM.key, TEAM.secret)) == "team-key"


async def test_the_endpoint_refuses_replays_and_stale_events() -> None:
    woken: list[str] = []

    async def publish(change: RoomChange, signer: Signer) -> int:
        woken.append(change.room)
        return 1

    server = WebhookServer(FakeKeys(), publish, clock=lambda: WALL)
    body = _event()
    auth = _signed(body, TEAM.key, TEAM.secret)
    assert await _post(server, body, auth) == 200
    assert await _post(server, body, auth) == 200  # a second delivery: acknowledged, ignored
    assert woken == ["r1"]
    old = _event(id_="EV_2", created=WALL - 3600)
    assert await _post(server, old, _signed(old, TEAM.key, TEAM.secret)) == 400
    assert woken == ["r1"]


async def test_the_endpoint_answers_503_when_the_room_cannot_be_recorded() -> None:
    async def publish(change: RoomChange, signer: Signer) -> int:
        raise ConnectionError("apiserver unreachable")

    server = WebhookServer(FakeKeys(), publish, clock=lambda: WALL)
    body = _event()
    assert await _post(server, body, _signed(body, TEAM.key, TEAM.secret)) == 503  # retried


def test_a_recorded_room_replans_the_pool_and_other_annotations_do_not() -> None:
    from voicepool_operator.handlers import replan_key

    def pool(**annotations: str) -> dict[str, Any]:
        meta = {"uid": "u", "generation": 3, "annotations": annotations}
        return {"metadata": meta, "status": {"waitingCalls": 1}}

    base = replan_key(pool(note="a"))
    assert replan_key(pool(note="b")) == base  # e.g. kopf's own bookkeeping
    assert replan_key(pool(note="a", **{room_key("r1"): "{}"})) != base
