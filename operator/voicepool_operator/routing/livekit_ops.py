"""What routing asks of a region's LiveKit: is it there with this key (the operator's probe),
open a session (room + explicit agent dispatch, accepted in time), mint the client's token,
dial a phone over an ordered list of trunks.

Every failure becomes a ``RegionFailure`` with a CamelCase reason, so the operator can name the
cause in ``Degraded`` and the router can decide to try the next region (or trunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from google.protobuf.duration_pb2 import Duration
from livekit import api

from .choice import trunk_fault

#: How often the router asks LiveKit whether the dispatched agent is in the room yet.
ACCEPT_POLL_S = 0.02
#: Connect and per-request limits: a region that does not answer within these is down for
#: this call (the router moves on), not something to wait for.
CONNECT_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 3.0
TRUNK_CACHE_S = 30.0


class RegionFailure(Exception):
    """A region (or trunk) could not do what was asked; ``reason`` is CamelCase."""

    def __init__(self, reason: str, message: str, *, sip_status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sip_status = sip_status


def session(total: float = REQUEST_TIMEOUT_S) -> aiohttp.ClientSession:
    """An HTTP session for LiveKit API calls with short limits (one per process or observer)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=total, connect=CONNECT_TIMEOUT_S)
    )


def _failure(exc: BaseException, url: str) -> RegionFailure:
    if isinstance(exc, api.TwirpError):
        if exc.status == 401 or exc.code in ("unauthenticated", "permission_denied"):
            return RegionFailure(
                "LiveKitKeyRejected",
                f"LiveKit at {url} rejected the API key (HTTP {exc.status}"
                + (f": {exc.message})" if exc.message else ")"),
            )
        return RegionFailure("LiveKitError", f"LiveKit at {url}: {exc.code}: {exc.message}")
    if isinstance(exc, TimeoutError):
        return RegionFailure("LiveKitUnreachable", f"LiveKit at {url} did not answer in time")
    why = str(exc) or type(exc).__name__
    return RegionFailure("LiveKitUnreachable", f"LiveKit at {url} unreachable: {why}"[:300])


_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError, OSError)


@dataclass
class Opened:
    room: str
    dispatch_id: str
    joined_after_s: float  # dispatch created -> the agent's participant in the room


class RegionClient:
    """One region's LiveKit with one key, over a shared HTTP session."""

    def __init__(
        self, url: str, http_url: str, key: str, secret: str, http: aiohttp.ClientSession
    ) -> None:
        self.url = url  # what clients connect to (ws/wss)
        self.http_url = http_url
        self._key, self._secret = key, secret
        self.lk = api.LiveKitAPI(http_url, key, secret, session=http, failover=False)
        self._trunks: dict[str, str] = {}
        self._trunks_at = 0.0

    def same_key(self, key: str, secret: str) -> bool:
        return (self._key, self._secret) == (key, secret)

    async def probe(self) -> None:
        """Reachable and the key accepted, or ``RegionFailure`` saying which not."""
        try:
            await self.lk.room.list_rooms(api.ListRoomsRequest(names=["voicepool-probe"]))
        except _ERRORS as e:
            raise _failure(e, self.url) from None

    async def open(
        self,
        agent: str,
        room: str,
        *,
        metadata: str = "",
        accept_timeout: float,
        empty_timeout: int,
    ) -> Opened:
        """Create ``room`` and an explicit dispatch of ``agent``; return once the agent is in.

        "Accepted" is taken as the agent's participant being in the room, ACTIVE (media
        connected): livekit-server 1.13.5 does not record the accepted job in the dispatch's
        state (``ListDispatch`` shows no jobs after the worker took it), and an agent that can
        hear is what the caller needs anyway. Not there within ``accept_timeout`` (no free
        worker, or one that never joins): the room is deleted and
        ``RegionFailure("NotAccepted")`` raised.
        """
        t0 = time.monotonic()
        try:
            await self.lk.room.create_room(
                api.CreateRoomRequest(name=room, empty_timeout=empty_timeout, metadata=metadata)
            )
            made = await self.lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=agent, room=room, metadata=metadata)
            )
            deadline = t0 + accept_timeout
            while True:
                listed = await self.lk.room.list_participants(
                    api.ListParticipantsRequest(room=room)
                )
                if any(agent_of(p) == agent for p in listed.participants):
                    return Opened(room, made.id, time.monotonic() - t0)
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(ACCEPT_POLL_S)
        except _ERRORS as e:
            raise _failure(e, self.url) from None
        await self.close_room(room)
        raise RegionFailure(
            "NotAccepted",
            f"no {agent!r} agent took the dispatch within {accept_timeout:.1f}s at {self.url}",
        )

    async def close_room(self, room: str) -> None:
        """Best effort: a room left behind closes by itself after its empty timeout."""
        with contextlib.suppress(*_ERRORS):
            await self.lk.room.delete_room(api.DeleteRoomRequest(room=room))

    def token(self, room: str, identity: str, name: str = "", ttl_s: int = 600) -> str:
        """A join token for ``room`` only (the client cannot dispatch or admin anything)."""
        grants = api.VideoGrants(room_join=True, room=room)
        tok = (
            api.AccessToken(self._key, self._secret)
            .with_identity(identity)
            .with_grants(grants)
            .with_ttl(dt.timedelta(seconds=ttl_s))
        )
        if name:
            tok = tok.with_name(name)
        return tok.to_jwt()

    async def trunk_ids(self, names: Sequence[str]) -> dict[str, str]:
        """LiveKit ids of the outbound trunks called ``names`` (cached briefly)."""
        now = time.monotonic()
        if now - self._trunks_at > TRUNK_CACHE_S or any(n not in self._trunks for n in names):
            try:
                listed = await self.lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
            except _ERRORS as e:
                raise _failure(e, self.url) from None
            self._trunks = {t.name: t.sip_trunk_id for t in listed.items}
            self._trunks_at = now
        return {n: self._trunks[n] for n in names if n in self._trunks}

    async def dial(
        self, room: str, trunk_id: str, to: str, identity: str, ringing_timeout: int
    ) -> api.SIPParticipantInfo:
        """Dial ``to`` into ``room`` over one trunk and wait until answered.

        ``RegionFailure`` with reason ``TrunkFailed`` (5xx, 408 or no answer from the trunk in
        time: the next trunk may do better) or ``CallFailed`` (the callee's own answer: busy,
        declined, no such number; another trunk would not change it).
        """
        req = api.CreateSIPParticipantRequest(
            sip_trunk_id=trunk_id,
            sip_call_to=to,
            room_name=room,
            participant_identity=identity,
            wait_until_answered=True,
            ringing_timeout=_seconds(ringing_timeout),
        )
        try:
            return await asyncio.wait_for(
                self.lk.sip.create_sip_participant(req, timeout=ringing_timeout + 5.0),
                timeout=ringing_timeout + 10.0,
            )
        except api.TwirpError as e:
            code = _sip_code(e)
            text = f"SIP {code}" if code else f"{e.code}: {e.message}"
            if trunk_fault(code, e.code, e.message):
                raise RegionFailure("TrunkFailed", text, sip_status=code) from None
            raise RegionFailure("CallFailed", text, sip_status=code) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise RegionFailure("TrunkFailed", f"no answer from the trunk: {e!r}"[:200]) from None


def agent_of(p: api.ParticipantInfo) -> str | None:
    """The agent name of an agent participant that is fully in the room (ACTIVE: its media
    connection is up, so it hears the caller); None for anyone else (livekit-server sets
    ``lk.agent_name``)."""
    if p.kind != api.ParticipantInfo.Kind.AGENT or p.state != api.ParticipantInfo.State.ACTIVE:
        return None
    return str(p.attributes.get("lk.agent_name", ""))


def _sip_code(e: api.TwirpError) -> int | None:
    raw = (e.metadata or {}).get("sip_status_code")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _seconds(value: float) -> Duration:
    return Duration(seconds=int(value))
