"""``voicepool-control``: the calls of every pool, listed, inspected, followed, heard and steered.

A stateless aiohttp service (the chart runs two replicas behind one Service): everything it
answers comes from the Kubernetes API (pools, their LiveKit Secrets, their pods, ended calls'
Events) and from the pools' LiveKit servers, where the worker runtime publishes each call
(``voicepool_worker.runtime.control``). docs/control.md describes the API.

- ``GET  /v1/pools/{ns}/{pool}/calls``     live calls: one ListRooms, whatever their number
- ``POST /v1/pools/{ns}/{pool}/calls``     an outbound call: ``{"number", "opening"}``
- ``GET  /v1/calls/{room}``                one call (room name or SID), with per-turn latencies;
  an ended one for the retention window
- ``GET  /v1/calls/{room}/events``         server-sent events of the call
- ``POST /v1/calls/{room}/listen|takeover`` a short-lived LiveKit token for a person
- ``POST /v1/calls/{room}/hangup|transfer|say|instruct|mute|unmute``

``?pool=<ns>/<pool>`` scopes a call's lookup to one pool (a call of another pool is then 404).
Every action is a Kubernetes Event on the pool (who, which call, what, the answer) and a count
of ``voicepool_control_actions_total{verb,status}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from voicepool_contract import LABEL_POOL
from voicepool_contract import control as names
from voicepool_contract.phone import mask_numbers_in

from ..kube import ApiError, Kube, login
from ..spec import PoolSpec, parse_spec
from ..validate import SpecError
from . import calls
from . import livekit as lk
from .calls import HttpError
from .tokens import Principal, Tokens

log = logging.getLogger("voicepool.control")

ACTIONS = Counter(
    "voicepool_control_actions",
    "Actions on calls through the control service, by verb and HTTP status",
    ["verb", "status"],
)
REQUESTS = Counter(
    "voicepool_control_requests", "Requests to the control service", ["route", "status"]
)

DEFAULT_PORT = 8095
#: Ended calls stay readable this long (their Events live as long as the apiserver keeps them).
RETENTION_S = 900.0
#: A 503 for an outbound call when the pool has no free session says to retry after this.
RETRY_AFTER_S = 5
#: One long poll of a call's events waits at most this for news: livekit-server delivers a
#: server RPC again when its answer takes over 3 s (psrpc's default timeout).
EVENTS_WAIT_S = 2
#: A follower gets a keep-alive comment after this long without events.
KEEPALIVE_S = 15.0
#: Consecutive failed polls (the agent busy or briefly unreachable) a follower rides out.
EVENTS_RETRIES = 3
#: After a followed call ends, its ended record is looked for this long (the Event follows
#: the call's end by a moment).
ENDED_WAIT_S = 10.0
MAX_BODY_BYTES = 16384
POOL_CACHE_S = 5.0
SECRET_CACHE_S = 30.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Pool:
    namespace: str
    name: str
    obj: dict[str, Any]
    spec: PoolSpec | None
    problem: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def destinations(self) -> tuple[str, ...] | None:
        """Where the pool may call (None: it has no outbound trunk)."""
        tel = self.spec.telephony if self.spec is not None else None
        return tel.allowed_destinations if tel is not None and tel.outbound else None


@dataclass(frozen=True)
class Call:
    room: str  # the real room name (never shown: it may hold the caller's number)
    sid: str
    record: dict[str, Any]
    pool: Pool
    server: lk.Server | None  # None once ended

    @property
    def live(self) -> bool:
        return self.server is not None

    @property
    def shown(self) -> str:
        return mask_numbers_in(self.room) if self.room else self.sid


def outbound_room() -> str:
    """A new outbound call's room name: ``out-`` and 12 random letters (56 bits). Letters only,
    because a run of 7 digits (as a hex name often has) is masked as a phone number wherever
    the name is shown: the name ``dial`` answers with must be the one the list shows."""
    return "out-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(12))


def _pool(obj: dict[str, Any]) -> Pool:
    meta = obj.get("metadata") or {}
    try:
        spec, problem = parse_spec(obj.get("spec") or {}), None
    except SpecError as e:
        spec, problem = None, str(e)
    return Pool(str(meta.get("namespace")), str(meta.get("name")), obj, spec, problem)


class Control:
    """The service's handlers; all state is a few seconds of cache of what the API said."""

    def __init__(
        self,
        kube: Kube,
        tokens: Tokens,
        session: aiohttp.ClientSession,
        *,
        namespaces: tuple[str, ...] = (),
        retention_s: float = RETENTION_S,
        retry_after_s: int = RETRY_AFTER_S,
    ) -> None:
        self.kube, self.tokens, self.session = kube, tokens, session
        self.namespaces = namespaces
        self.retention_s, self.retry_after_s = retention_s, retry_after_s
        self._pools: tuple[float, list[Pool]] | None = None
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    # -- who -------------------------------------------------------------------------------

    def principal(self, request: web.Request, *, act: bool = False) -> Principal:
        who = self.tokens.who(request.headers.get("Authorization"))
        if who is None:
            raise HttpError(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": 'Bearer realm="voicepool-control"'},
            )
        if act and not who.may_act:
            raise HttpError(403, f"the token of {who.who!r} may read, not act: use a control token")
        return who

    # -- pools and their LiveKit -----------------------------------------------------------------

    def _served(self, namespace: str) -> None:
        if self.namespaces and namespace not in self.namespaces:
            raise HttpError(404, f"namespace {namespace!r} is not served here")

    async def pool(self, namespace: str, name: str) -> Pool:
        self._served(namespace)
        try:
            obj = await self.kube.get_pool(namespace, name)
        except ValueError:  # a segment the API path refuses ("..")
            obj = None
        if obj is None:
            raise HttpError(404, f"no VoiceAgentPool {namespace}/{name}")
        return _pool(obj)

    async def pools(self) -> list[Pool]:
        now = time.monotonic()
        if self._pools is None or now - self._pools[0] > POOL_CACHE_S:
            self._pools = (now, [_pool(o) for o in await self.kube.list_pools(self.namespaces)])
        return self._pools[1]

    async def server(self, pool: Pool) -> lk.Server:
        if pool.spec is None:
            raise HttpError(503, f"pool {pool.key} cannot be served: {pool.problem}")
        ref = pool.spec.livekit
        key = (pool.namespace, ref.credentials_secret)
        cached = self._secrets.get(key)
        if cached is None or time.monotonic() - cached[0] > SECRET_CACHE_S:
            cached = (time.monotonic(), await self.kube.read_secret(*key))
            self._secrets[key] = cached
        data = cached[1]
        api_key, api_secret = data.get(ref.api_key_key), data.get(ref.api_secret_key)
        if not api_key or not api_secret:
            raise HttpError(
                503,
                f"pool {pool.key}: Secret {ref.credentials_secret} lacks "
                f"{ref.api_key_key}/{ref.api_secret_key}",
            )
        return lk.Server(ref.url, api_key, api_secret)

    # -- finding a call --------------------------------------------------------------------------

    async def scope(self, request: web.Request) -> Pool | None:
        raw = request.query.get("pool")
        return None if raw is None else await self.pool(*calls.pool_ref(raw))

    async def find(self, ref: str, scope: Pool | None) -> Call:
        """The call named by room name or SID: live (on its pool's LiveKit) or ended within the
        retention window (its Event); 404 otherwise, and for a call of another pool."""
        pools = [scope] if scope is not None else [p for p in await self.pools() if p.spec]
        by_server: dict[lk.Server, dict[str, Pool]] = {}
        for pool in pools:
            with contextlib.suppress(HttpError, ApiError):
                by_server.setdefault(await self.server(pool), {})[pool.key] = pool
        by_sid = ref.startswith("RM_")
        for server, group in by_server.items():
            try:
                rooms = await lk.list_rooms(self.session, server, [] if by_sid else [ref])
            except lk.LiveKitError as e:
                log.warning("LiveKit %s did not list rooms: %s", server.url, e)
                continue
            for room in rooms:
                if (room.sid if by_sid else room.name) != ref:
                    continue
                rec = calls.record_in(room.metadata) or await self._from_participants(server, room)
                if rec is not None and rec["pool"] in group:
                    return Call(room.name, room.sid, rec, group[rec["pool"]], server)
        ended = await self.ended(ref, pools)
        if ended is not None:
            return ended
        where = f" in pool {scope.key}" if scope is not None else ""
        raise HttpError(
            404,
            f"no call {mask_numbers_in(ref)}{where}: it never was, it belongs to another pool, or "
            f"it ended more than {self.retention_s:.0f}s ago",
        )

    async def _from_participants(
        self, server: lk.Server, room: calls.RoomView
    ) -> dict[str, Any] | None:
        """A room whose metadata is the application's own: the agent's attributes say."""
        if room.metadata.strip().startswith("{") or room.participants == 0:
            return None
        try:
            people = await lk.participants(self.session, server, room.name)
        except lk.LiveKitError:
            return None
        for identity, attributes in people:
            rec = calls.record_from_attributes(attributes, identity)
            if rec is not None:
                return rec
        return None

    async def ended(self, ref: str, pools: list[Pool]) -> Call | None:
        by_key = {p.key: p for p in pools}
        label = (
            f"{names.LABEL_ROOM_SID}={ref}"
            if ref.startswith("RM_")
            else f"{names.LABEL_ROOM}={names.room_label(ref)}"
        )
        now = time.time()
        for namespace in sorted({p.namespace for p in pools}):
            try:
                events = await self.kube.list_objects(namespace, "events", labels=label)
            except (ApiError, ValueError) as e:
                log.warning("ended calls of %s not read: %s", namespace, e)
                continue
            for event in events:
                rec = calls.ended_record(event, self.retention_s, now)
                if rec is not None and rec.get("pool") in by_key:
                    room = ref if not ref.startswith("RM_") else ""
                    return Call(room, str(rec.get("sid", "")), rec, by_key[rec["pool"]], None)
        return None

    async def ask(
        self, call: Call, verb: str, args: dict[str, Any], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """A control message to the call's agent; its answer, or HttpError with its status."""
        assert call.server is not None
        try:
            answer = await lk.rpc(
                self.session, call.server, call.room, call.record["agent"], verb, args, timeout_s
            )
        except lk.LiveKitError as e:
            gone = False
            with contextlib.suppress(lk.LiveKitError):
                gone = not await lk.list_rooms(self.session, call.server, [call.room])
            if gone:
                raise HttpError(404, f"call {call.shown} has ended") from None
            raise HttpError(502, f"the call's agent did not answer: {e}") from None
        status = int(answer.get("status") or 500)
        if status >= 400:
            raise HttpError(status, str(answer.get("error") or "refused by the agent"))
        return answer

    async def audit(
        self, who: Principal, call: Call | None, pool: Pool, verb: str, status: int, what: str
    ) -> None:
        """The action's Event on the pool (who, which call, what) and its count."""
        ACTIONS.labels(verb, str(status)).inc()
        subject = f"call {call.shown} ({call.sid})" if call is not None else f"pool {pool.key}"
        note = mask_numbers_in(f"{who.who}: {verb} {subject}: {what} -> {status}")
        log.info(note)
        await self.kube.event(
            pool.obj,
            reason=f"Call{verb.capitalize()}",
            note=note,
            action=verb.capitalize(),
            type_="Normal" if status < 400 else "Warning",
        )

    # -- handlers ------------------------------------------------------------------------------

    async def list_calls(self, request: web.Request) -> web.Response:
        self.principal(request)
        pool = await self.pool(request.match_info["ns"], request.match_info["pool"])
        server = await self.server(pool)
        try:
            rooms = await lk.list_rooms(self.session, server)
        except lk.LiveKitError as e:
            raise HttpError(502, f"LiveKit {server.url} did not list rooms: {e}") from None
        rows = calls.rows_for(rooms, pool.key, time.time())
        return web.json_response({"pool": pool.key, "count": len(rows), "calls": rows})

    async def show(self, request: web.Request) -> web.Response:
        self.principal(request)
        call = await self.find(request.match_info["room"], await self.scope(request))
        if not call.live:
            return web.json_response(
                {"call": {**call.record, "live": False, "pool": call.pool.key}}
            )
        try:
            detail = (await self.ask(call, "show", {}))["call"]
        except HttpError as e:
            if e.status == 404:
                raise
            detail = {**call.record, "detail": f"unavailable: {e.message}"}
        detail.update(room=call.shown, sid=call.sid, live=True)
        return web.json_response({"call": detail})

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.principal(request)
        call = await self.find(request.match_info["room"], await self.scope(request))
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        since_raw = request.headers.get("Last-Event-ID") or request.query.get("since") or "0"
        since = int(since_raw) if since_raw.isdigit() else 0
        failures, quiet_since = 0, time.monotonic()
        try:
            while call.live:
                try:
                    answer = await self.ask(
                        call, "events", {"since": since, "wait": EVENTS_WAIT_S}, EVENTS_WAIT_S + 3
                    )
                    failures = 0
                except HttpError as e:
                    if e.status == 404:
                        call = await self._ended_soon(call)
                        break
                    failures += 1
                    if failures > EVENTS_RETRIES:
                        await resp.write(calls.sse({"error": e.message}, "error"))
                        return resp
                    await asyncio.sleep(1.0)
                    continue
                for event in answer.get("events") or []:
                    await resp.write(calls.sse(event))
                    quiet_since = time.monotonic()
                if answer.get("missed"):
                    await resp.write(calls.sse({"missed": True}, "missed"))
                if time.monotonic() - quiet_since > KEEPALIVE_S:
                    await resp.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                since = int(answer.get("next") or since)
            await resp.write(calls.sse({"call": call.record}, "ended"))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def _ended_soon(self, call: Call) -> Call:
        deadline = time.monotonic() + ENDED_WAIT_S
        while time.monotonic() < deadline:
            ended = await self.ended(call.room, [call.pool])
            if ended is not None:
                return ended
            await asyncio.sleep(1.0)
        return Call(call.room, call.sid, {**call.record, "state": names.ENDED}, call.pool, None)

    async def body(self, request: web.Request) -> dict[str, Any]:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise HttpError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise HttpError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise HttpError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return data

    async def act(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        who = self.principal(request, act=True)
        body = await self.body(request)
        args: dict[str, Any] = {}
        if verb in ("say", "instruct"):  # checked before anything is asked of the call
            args = {"text": calls.text_of(body)}
            if verb == "instruct":
                args["respond"] = bool(body.get("respond"))
        elif verb == "hangup":
            args = {"after_reply": bool(body.get("after_reply"))}
        elif verb == "transfer" and not body.get("warm"):
            calls.transfer_of(body, None)
        call = await self.find(request.match_info["room"], await self.scope(request))
        if not call.live:
            raise HttpError(404, f"call {call.shown} has ended")
        what = verb
        if verb == "transfer":
            to, warm = calls.transfer_of(body, call.pool.destinations)
            args = {"to": to, "warm": warm}
            what = f"{'warm' if warm else 'cold'} transfer to {mask_numbers_in(to)}"
        elif verb in ("say", "instruct"):
            what = f"{verb} ({len(args['text'])} characters)"
        elif verb == "hangup" and args["after_reply"]:
            what = "hang up after the current reply"
        try:
            answer = await self.ask(call, verb, args)
        except HttpError as e:
            await self.audit(who, call, call.pool, verb, e.status, f"{what}: {e.message}")
            raise
        status = int(answer.get("status", 200))
        await self.audit(who, call, call.pool, verb, status, what)
        return web.json_response({**answer, "room": call.shown, "sid": call.sid}, status=status)

    async def listen(self, request: web.Request) -> web.Response:
        """A hidden, subscribe-only participant's token (``takeover``: one who may speak, and
        the agent muted until it is released or the person leaves)."""
        take = request.match_info["verb"] == "takeover"
        who = self.principal(request, act=True)
        body = await self.body(request)
        call = await self.find(request.match_info["room"], await self.scope(request))
        if not call.live or call.server is None:
            raise HttpError(404, f"call {call.shown} has ended")
        verb = "takeover" if take else "listen"
        if take and body.get("release"):
            try:
                answer = await self.ask(call, "release", {})
            except HttpError as e:
                await self.audit(who, call, call.pool, "release", e.status, e.message)
                raise
            await self.audit(who, call, call.pool, "release", 200, "the agent speaks again")
            return web.json_response({**answer, "room": call.shown, "sid": call.sid})
        person = f"{verb}-{who.who}-{secrets.token_hex(3)}"[:64]
        token, expires = lk.join_token(
            call.server, call.room, person, publish=take, name=f"{verb}: {who.who}"
        )
        if take:
            try:
                await self.ask(call, "takeover", {"identity": person})
            except HttpError as e:
                await self.audit(who, call, call.pool, verb, e.status, e.message)
                raise
        what = "may speak; the agent is muted" if take else "listens, hidden"
        await self.audit(who, call, call.pool, verb, 200, f"{person} {what}")
        return web.json_response(
            {
                "url": call.server.url,
                "token": token,
                "identity": person,
                "expires": round(expires, 3),
                "room": call.shown,
                "sid": call.sid,
                "hidden": not take,
            }
        )

    async def dial(self, request: web.Request) -> web.Response:
        who = self.principal(request, act=True)
        pool = await self.pool(request.match_info["ns"], request.match_info["pool"])
        body = await self.body(request)
        number = calls.dial_number(body.get("number"), pool.destinations)
        opening = calls.opening_of(body)
        server = await self.server(pool)
        assert pool.spec is not None
        pods = await self.kube.list_objects(
            pool.namespace, "pods", labels=f"{LABEL_POOL}={pool.name}"
        )
        if calls.free_sessions(pods) == 0:
            why = "no free session: every pod of the pool is busy, starting or draining"
            await self.audit(who, None, pool, "dial", 503, why)
            raise HttpError(503, why, {"Retry-After": str(self.retry_after_s)})
        room = outbound_room()
        meta = {"phone_number": number, **({"opening": opening} if opening else {})}
        try:
            await lk.dispatch(self.session, server, pool.spec.agent_name, room, json.dumps(meta))
        except lk.LiveKitError as e:
            await self.audit(who, None, pool, "dial", 502, f"dispatch failed: {e}")
            raise HttpError(502, f"LiveKit did not dispatch the agent: {e}") from None
        shown = mask_numbers_in(number)
        await self.audit(who, None, pool, "dial", 201, f"room {room} dials {shown}")
        return web.json_response({"room": room, "pool": pool.key, "to": shown}, status=201)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HttpError -> its status and a JSON body saying why; anything else -> 500, logged."""
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    try:
        resp = await handler(request)
    except HttpError as e:
        REQUESTS.labels(route, str(e.status)).inc()
        return web.json_response(
            {"status": e.status, "error": e.message}, status=e.status, headers=e.headers
        )
    except web.HTTPException as e:
        REQUESTS.labels(route, str(e.status)).inc()
        raise
    except Exception:
        log.exception("request failed: %s %s", request.method, request.path)
        REQUESTS.labels(route, "500").inc()
        return web.json_response({"status": 500, "error": "internal error"}, status=500)
    REQUESTS.labels(route, str(resp.status)).inc()
    return resp


def app(control: Control) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    application = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES * 4)
    verbs = "{verb:hangup|transfer|say|instruct|mute|unmute}"
    application.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", healthz),
            web.get("/metrics", metrics),
            web.get("/v1/pools/{ns}/{pool}/calls", control.list_calls),
            web.post("/v1/pools/{ns}/{pool}/calls", control.dial),
            web.get("/v1/calls/{room}", control.show),
            web.get("/v1/calls/{room}/events", control.events),
            web.post("/v1/calls/{room}/{verb:listen|takeover}", control.listen),
            web.post("/v1/calls/{room}/" + verbs, control.act),
        ]
    )
    return application


async def serve(args: argparse.Namespace) -> int:
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    kube = Kube(login(settings=kopf.OperatorSettings()), identity)
    session = aiohttp.ClientSession()
    control = Control(
        kube,
        Tokens(Path(args.tokens)),
        session,
        namespaces=tuple(args.namespace),
        retention_s=args.retention_seconds,
        retry_after_s=args.retry_after,
    )
    runner = web.AppRunner(app(control), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.address, args.port).start()
    log.info("voicepool-control listening on %s:%d", args.address, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()
    await kube.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicepool-control", description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--tokens",
        default=os.environ.get("VOICEPOOL_CONTROL_TOKENS", "/etc/voicepool-control/tokens"),
        help="directory of the tokens Secret (keys read[.who] and control[.who])",
    )
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="serve only these namespaces"
    )
    parser.add_argument("--retention-seconds", type=float, default=RETENTION_S)
    parser.add_argument("--retry-after", type=int, default=RETRY_AFTER_S)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
