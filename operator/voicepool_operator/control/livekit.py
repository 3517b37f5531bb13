"""The control service's side of a pool's LiveKit server: thin glue, counted.

- ``list_rooms``: one ListRooms per request, whatever the number of rooms (a room's call
  record is in its metadata, so a list never asks a room or a participant);
- ``rpc``: a control message to the call's agent, through livekit-server's own RoomService
  PerformRpc (no WebRTC here). The message body travels with a LiveKit access token for the
  identity ``voicepool-control``, signed with the pool's API secret, granting admin of that
  room only, living ``MESSAGE_TTL_S`` and carrying the body's sha256: the agent checks each of
  these (``voicepool_worker.runtime.control``);
- ``join_token``: the short-lived token of a person who listens (hidden, subscribe only) or
  takes over (may publish their microphone);
- ``dispatch``: an outbound call, as an explicit agent dispatch with ``phone_number`` metadata.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol import room as room_proto
from prometheus_client import Counter
from voicepool_contract import control as names

from .calls import RoomView

REQUESTS = Counter(
    "voicepool_control_livekit_requests",
    "Requests the control service made to LiveKit servers, by method",
    ["method"],
)
#: A control message's token lives this long (the agent refuses it afterwards).
MESSAGE_TTL_S = 60
#: What a listener's or a person taking over's join token allows time for (to join, not to stay).
JOIN_TTL_S = 120


class LiveKitError(Exception):
    """LiveKit refused or did not answer; ``code`` is its twirp code."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Server:
    """A pool's LiveKit server and the key it signs with (from the pool's own Secret)."""

    url: str  # ws(s)://
    key: str
    secret: str

    @property
    def http_url(self) -> str:
        return self.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def _admin_token(server: Server, room: str, identity: str = "") -> api.AccessToken:
    grants = api.VideoGrants(room_admin=True, room=room, room_list=not room)
    token = api.AccessToken(server.key, server.secret).with_grants(grants)
    return token.with_identity(identity) if identity else token


async def _twirp(
    session: aiohttp.ClientSession,
    server: Server,
    method: str,
    request: Any,
    response: Any,
    token: str,
    timeout_s: float,
) -> Any:
    REQUESTS.labels(method).inc()
    url = f"{server.http_url}/twirp/livekit.RoomService/{method}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/protobuf"}
    try:
        async with session.post(
            url,
            data=request.SerializeToString(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                try:
                    err = json.loads(body)
                except ValueError:
                    err = {}
                raise LiveKitError(
                    str(err.get("code") or resp.status), str(err.get("msg") or ""), resp.status
                )
    except (aiohttp.ClientError, TimeoutError) as e:
        raise LiveKitError("unavailable", f"{type(e).__name__}: {e}") from None
    out = response()
    out.ParseFromString(body)
    return out


async def list_rooms(
    session: aiohttp.ClientSession, server: Server, names_: Sequence[str] = ()
) -> list[RoomView]:
    """Every room of the server (or the named ones): one request."""
    resp = await _twirp(
        session,
        server,
        "ListRooms",
        room_proto.ListRoomsRequest(names=list(names_)),
        room_proto.ListRoomsResponse,
        _admin_token(server, "").to_jwt(),
        10.0,
    )
    return [RoomView(r.name, r.sid, r.metadata, r.num_participants) for r in resp.rooms]


async def participants(
    session: aiohttp.ClientSession, server: Server, room: str
) -> list[tuple[str, dict[str, str]]]:
    """(identity, attributes) of a room's participants: only for a room whose metadata holds
    no call record (the application's own text)."""
    resp = await _twirp(
        session,
        server,
        "ListParticipants",
        room_proto.ListParticipantsRequest(room=room),
        room_proto.ListParticipantsResponse,
        _admin_token(server, room).to_jwt(),
        10.0,
    )
    return [(p.identity, dict(p.attributes)) for p in resp.participants]


def message(server: Server, room: str, verb: str, args: dict[str, Any]) -> str:
    """The RPC payload of one control message: the body and the token that vouches for it."""
    body = json.dumps({"verb": verb, "args": args, "nonce": secrets.token_hex(12)})
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    token = (
        _admin_token(server, room, names.CONTROL_IDENTITY)
        .with_ttl(dt.timedelta(seconds=MESSAGE_TTL_S))
        .with_sha256(digest)
        .to_jwt()
    )
    return json.dumps({"token": token, "body": body})


async def rpc(
    session: aiohttp.ClientSession,
    server: Server,
    room: str,
    agent: str,
    verb: str,
    args: dict[str, Any],
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Send a control message to the call's agent; its answer (``{"status": ..., ...}``)."""
    request = room_proto.PerformRpcRequest(
        room=room,
        destination_identity=agent,
        method=names.RPC_METHOD,
        payload=message(server, room, verb, args),
        response_timeout_ms=int(timeout_s * 1000),
    )
    resp = await _twirp(
        session,
        server,
        "PerformRpc",
        request,
        room_proto.PerformRpcResponse,
        _admin_token(server, room).to_jwt(),
        timeout_s + 5.0,
    )
    try:
        answer = json.loads(resp.payload)
    except ValueError:
        raise LiveKitError("internal", "the agent's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise LiveKitError("internal", "the agent's answer is not an object")
    return answer


def join_token(
    server: Server, room: str, identity: str, *, publish: bool, name: str
) -> tuple[str, float]:
    """(token, expiry) for a person joining a call: hidden and subscribe-only to listen; able to
    publish a microphone (and visible, so the caller hears them) to take over."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_subscribe=True,
        can_publish=publish,
        can_publish_data=False,
        can_publish_sources=["microphone"] if publish else [],
        hidden=not publish,
        can_update_own_metadata=False,
    )
    token = (
        api.AccessToken(server.key, server.secret)
        .with_identity(identity)
        .with_name(name)
        .with_grants(grants)
        .with_ttl(dt.timedelta(seconds=JOIN_TTL_S))
    )
    expires = dt.datetime.now(dt.UTC).timestamp() + JOIN_TTL_S
    return token.to_jwt(), expires


async def dispatch(
    session: aiohttp.ClientSession, server: Server, agent_name: str, room: str, metadata: str
) -> None:
    """Ask the pool's agent into a new room (the agent dials the number in the metadata)."""
    REQUESTS.labels("CreateDispatch").inc()
    async with api.LiveKitAPI(server.http_url, server.key, server.secret, session=session) as lk:
        try:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
            )
        except (api.TwirpError, aiohttp.ClientError, TimeoutError) as e:
            raise LiveKitError(str(getattr(e, "code", "unavailable")), str(e)) from None
