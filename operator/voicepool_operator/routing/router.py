"""``voicepool-router``: place each new call in the region where warm capacity is.

A small stateless aiohttp service (the chart runs two replicas). It watches the VoiceRoutes of
its namespace -- spec and the status the operator writes from each region's pool -- so a routing
decision needs no API call. ``POST /v1/sessions`` picks a region (``choice.order``), creates the
room and the explicit agent dispatch in that region's LiveKit, waits until an agent accepted,
and answers ``{region, url, token, room}``; a region whose LiveKit fails or whose dispatch is not
accepted in time is given up for the next one, so the client only sees a later answer.
``POST /v1/calls`` does the same and then dials a phone number over the region's outbound
trunks in order (a 5xx or a timeout moves to the next trunk). Every request needs the bearer
token; every region full is ``503`` with ``Retry-After``. Nothing is stored: the only memory
is a few seconds of which regions just failed and which calls the status does not show yet.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from voicepool_contract import ROUTE_PLURAL
from voicepool_contract.phone import E164, destination_allowed, mask_number, normalize_number

from ..constants import GROUP, VERSION
from ..kube import ApiError, api_path, login
from . import metrics
from .choice import Candidate, Cooldown, Pending, candidates, order
from .kubeclient import ClusterClient, describe, list_and_watch
from .livekit_ops import RegionClient, RegionFailure, session
from .spec import RegionSpec, RouteSpec, RouteSpecError, parse_route

log = logging.getLogger("voicepool.router")

TOKEN_ENV = "VOICEPOOL_ROUTER_TOKEN"
SECRET_CACHE_S = 60.0
_ROOM = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_IDENTITY = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
MAX_METADATA = 4096


class RouteTable:
    """The namespace's VoiceRoutes as their watch last delivered them, and a LiveKit client
    per region built from the route's Secret (read once a minute, not per call)."""

    def __init__(self, kube: ClusterClient, namespace: str, http: aiohttp.ClientSession) -> None:
        self.kube = kube
        self.namespace = namespace
        self.http = http
        self.routes: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.problem: str | None = None
        self._secrets: dict[str, tuple[float, dict[str, str]]] = {}
        self._clients: dict[tuple[str, str], RegionClient] = {}

    async def watch_forever(self) -> None:
        path = api_path("apis", GROUP, VERSION, "namespaces", self.namespace, ROUTE_PLURAL)

        async def listed(items: list[dict[str, Any]]) -> None:
            self.routes = {str(i["metadata"]["name"]): i for i in items}
            self.problem = None
            self.synced.set()

        async def event(kind: str, obj: dict[str, Any]) -> None:
            name = str((obj.get("metadata") or {}).get("name"))
            if kind == "DELETED":
                self.routes.pop(name, None)
            else:
                self.routes[name] = obj

        async def alive() -> None:
            return None

        backoff = 0.5
        while True:
            try:
                await list_and_watch(
                    self.kube, path, on_list=listed, on_event=event, on_alive=alive
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep watching; /readyz tells while it fails
                self.problem = describe(e)
                log.warning("watching VoiceRoutes in %s failed: %s", self.namespace, self.problem)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _secret(self, name: str, fresh: bool = False) -> dict[str, str]:
        cached = self._secrets.get(name)
        if cached is not None and not fresh and time.monotonic() - cached[0] < SECRET_CACHE_S:
            return cached[1]
        try:
            raw = await self.kube.get(
                api_path("api", "v1", "namespaces", self.namespace, "secrets", name)
            )
        except ApiError as e:
            if e.status != 404:
                raise RegionFailure("CredentialsMissing", f"cannot read Secret {name}: {e}") from e
            raw = {}
        data = {
            k: base64.b64decode(v).decode(errors="replace")
            for k, v in (raw.get("data") or {}).items()
        }
        self._secrets[name] = (time.monotonic(), data)
        return data

    async def client(self, route: str, region: RegionSpec, fresh: bool = False) -> RegionClient:
        ref = region.credentials
        data = await self._secret(ref.name, fresh)
        key, secret = data.get(ref.keys[0]), data.get(ref.keys[1])
        if not key or not secret:
            raise RegionFailure(
                "CredentialsMissing", f"Secret {ref.name} lacks the LiveKit API key or secret"
            )
        slot = (route, region.name)
        current = self._clients.get(slot)
        if (
            current is None
            or current.url != region.livekit_url
            or not current.same_key(key, secret)
        ):
            current = RegionClient(
                region.livekit_url, region.livekit_http_url, key, secret, self.http
            )
            self._clients[slot] = current
        return current


def _error(status: int, message: str, reason: str, **extra: Any) -> web.Response:
    metrics.REJECTED.labels(reason).inc()
    headers = dict(extra.pop("headers", {}) or {})
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


class Router:
    """The HTTP side: authentication, the choice, the attempts region after region."""

    def __init__(
        self,
        table: RouteTable,
        tokens: list[str],
        *,
        default_route: str | None = None,
        retry_after: int = 2,
        cooldown: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.tokens = [t.encode() for t in tokens if t]
        self.default_route = default_route
        self.retry_after = retry_after
        self.cooldown: dict[str, Cooldown] = {}
        self.cooldown_s = cooldown
        self.pending: dict[str, Pending] = {}
        self.rng = rng or random.SystemRandom()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/v1/sessions", self.sessions)
        app.router.add_post("/v1/calls", self.calls)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    # -- plumbing -----------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not self.tokens:
            return False
        given = token.strip().encode()
        return any(hmac.compare_digest(given, t) for t in self.tokens)

    async def _request(
        self, request: web.Request
    ) -> tuple[str, RouteSpec, dict[str, Any], dict[str, Any]] | web.Response:
        if not self._authorized(request):
            return _error(
                401,
                "a valid bearer token is required",
                "unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return _error(400, "the body must be a JSON object", "bad_request")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "bad_request")
        name = str(body.get("route") or self.default_route or "")
        if not name:
            return _error(400, 'name the VoiceRoute: {"route": ...}', "bad_request")
        obj = self.table.routes.get(name)
        if obj is None:
            return _error(404, f"no VoiceRoute {name!r} in {self.table.namespace}", "not_found")
        try:
            spec = parse_route(obj.get("spec") or {}, self.table.namespace)
        except RouteSpecError as e:
            return _error(503, f"VoiceRoute {name} is invalid: {e}", "unavailable")
        return name, spec, obj, body

    def _attempts(
        self, name: str, obj: Mapping[str, Any], need: Any = None
    ) -> tuple[list[Candidate], list[Candidate]]:
        """(the regions to try in order, every candidate) for one request."""
        now = time.monotonic()
        status_regions = list((obj.get("status") or {}).get("regions") or [])
        pending = self.pending.setdefault(name, Pending())
        for entry in status_regions:
            if isinstance(entry, Mapping):
                pending.seen(
                    str(entry.get("name")), {k: v for k, v in entry.items() if k != "lastSeen"}
                )
        spec_regions = list((obj.get("spec") or {}).get("regions") or [])
        cands = candidates(spec_regions, status_regions, pending.counts(now))
        if need is not None:
            cands = [c for c in cands if need(c)]
        cool = self.cooldown.setdefault(name, Cooldown(self.cooldown_s)).active(now)
        tries = order(cands, self.rng, skip=cool)
        if not tries:  # everything usable failed a moment ago: try them anyway, last resort
            tries = order(cands, self.rng)
        return tries, cands

    def _busy(self, route: str) -> web.Response:
        return _error(
            503,
            f"every region of {route} is full or down; retry later",
            "full",
            headers={"Retry-After": str(self.retry_after)},
        )

    def _unavailable(self, route: str, tried: list[dict[str, str]]) -> web.Response:
        return _error(
            503,
            f"no region of {route} could take the call",
            "unavailable",
            tried=tried,
            headers={"Retry-After": str(self.retry_after)},
        )

    def _failed(self, route: str, region: str, e: RegionFailure) -> dict[str, str]:
        metrics.FAILOVERS.labels(route, region, e.reason).inc()
        self.cooldown.setdefault(route, Cooldown(self.cooldown_s)).failed(region, time.monotonic())
        log.warning("route %s: region %s failed: %s: %s", route, region, e.reason, e)
        return {"region": region, "reason": e.reason}

    async def _open(
        self, name: str, spec: RouteSpec, cand: Candidate, body: Mapping[str, Any], room: str
    ) -> tuple[RegionClient, float]:
        region = spec.region(cand.name)
        assert region is not None
        client = await self.table.client(name, region)
        metadata = str(body.get("metadata") or "")
        try:
            opened = await client.open(
                cand.agent_name,
                room,
                metadata=metadata,
                accept_timeout=spec.accept_timeout_s,
                empty_timeout=spec.room_empty_timeout_s,
            )
        except RegionFailure as e:
            if e.reason == "LiveKitKeyRejected":
                await self.table.client(name, region, fresh=True)  # a rotated key
            raise
        self.pending.setdefault(name, Pending()).placed(cand.name, time.monotonic())
        return client, opened.joined_after_s

    @staticmethod
    def _names(body: Mapping[str, Any], who: str = "caller") -> tuple[str, str] | str:
        """(room, participant identity) from the request or made up; or what is wrong."""
        room = str(body.get("room") or f"vr-{uuid.uuid4().hex[:16]}")
        identity = str(body.get("identity") or f"{who}-{secrets.token_hex(6)}")
        if not _ROOM.match(room):
            return "room: 1-128 letters, digits, '.', '_' or '-'"
        if not _IDENTITY.match(identity):
            return "identity: 1-128 letters, digits or . _ @ + -"
        if len(str(body.get("metadata") or "")) > MAX_METADATA:
            return f"metadata: at most {MAX_METADATA} characters"
        return room, identity

    # -- endpoints ----------------------------------------------------------------------

    async def sessions(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        parsed = await self._request(request)
        if isinstance(parsed, web.Response):
            return parsed
        name, spec, obj, body = parsed
        names = self._names(body)
        if isinstance(names, str):
            return _error(400, names, "bad_request")
        room, identity = names
        tries, _ = self._attempts(name, obj)
        if not tries:
            return self._busy(name)
        tried: list[dict[str, str]] = []
        for cand in tries:
            try:
                client, accepted = await self._open(name, spec, cand, body, room)
            except RegionFailure as e:
                tried.append(self._failed(name, cand.name, e))
                continue
            metrics.ROUTED.labels(name, cand.name, "session").inc()
            metrics.ROUTING_SECONDS.labels("session").observe(time.perf_counter() - t0)
            log.info(
                "route %s: room %s in region %s (accepted after %.0f ms, %d failover(s))",
                name,
                room,
                cand.name,
                accepted * 1000,
                len(tried),
            )
            return web.json_response(
                {
                    "region": cand.name,
                    "url": client.url,
                    "token": client.token(room, identity, str(body.get("name") or "")),
                    "room": room,
                    "identity": identity,
                    "failovers": tried,
                    # in the region that answered: room created -> agent in (the rest of the
                    # request is the router's own time, see bench/routing.py)
                    "regionMs": round(accepted * 1000, 1),
                }
            )
        return self._unavailable(name, tried)

    async def calls(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        parsed = await self._request(request)
        if isinstance(parsed, web.Response):
            return parsed
        name, spec, obj, body = parsed
        to = normalize_number(str(body.get("to") or ""))
        if not E164.match(to):
            return _error(400, "to: an E.164 number like +15550100000", "bad_request")
        if not destination_allowed(to, spec.allowed_destinations):
            return _error(
                403,
                f"{mask_number(to)} is outside spec.calls.allowedDestinations of {name}",
                "refused",
            )
        asked = body.get("trunks")
        if asked is not None and (
            not isinstance(asked, list) or not all(isinstance(t, str) for t in asked)
        ):
            return _error(400, "trunks: a list of outbound trunk names", "bad_request")
        names = self._names(body, "phone")
        if isinstance(names, str):
            return _error(400, names, "bad_request")
        room, identity = names

        def trunks_of(region: RegionSpec | None) -> list[str]:
            declared = list(region.outbound_trunks) if region is not None else []
            if asked is None:
                return declared
            return [t for t in asked if t in declared]  # only trunks the route allows

        tries, _ = self._attempts(name, obj, need=lambda c: bool(trunks_of(spec.region(c.name))))
        if not tries:
            return self._busy(name)
        tried: list[dict[str, str]] = []
        for cand in tries:
            region = spec.region(cand.name)
            try:
                client, _accepted = await self._open(name, spec, cand, body, room)
            except RegionFailure as e:
                tried.append(self._failed(name, cand.name, e))
                continue
            answer = await self._dial(
                name, client, cand.name, room, to, identity, trunks_of(region), spec
            )
            if isinstance(answer, dict):
                metrics.ROUTED.labels(name, cand.name, "call").inc()
                metrics.ROUTING_SECONDS.labels("call").observe(time.perf_counter() - t0)
                return web.json_response(
                    {
                        "region": cand.name,
                        "url": client.url,
                        "room": room,
                        **answer,
                        "failovers": tried,
                    }
                )
            await client.close_room(room)
            if answer.reason == "CallFailed":  # the callee's own answer: no other region helps
                return _error(
                    502,
                    f"the call to {mask_number(to)} was not answered: {answer}",
                    "call_failed",
                    region=cand.name,
                    sipStatus=answer.sip_status,
                )
            tried.append(self._failed(name, cand.name, answer))
        return self._unavailable(name, tried)

    async def _dial(
        self,
        route: str,
        client: RegionClient,
        region: str,
        room: str,
        to: str,
        identity: str,
        trunks: list[str],
        spec: RouteSpec,
    ) -> dict[str, Any] | RegionFailure:
        """Dial over each trunk in order; the answer, or why the region could not place it."""
        try:
            ids = await client.trunk_ids(trunks)
        except RegionFailure as e:
            return e
        skipped: list[dict[str, Any]] = []
        for trunk in trunks:
            trunk_id = ids.get(trunk)
            if trunk_id is None:
                skipped.append({"trunk": trunk, "reason": "TrunkNotFound"})
                metrics.TRUNK_FAILOVERS.labels(region, trunk).inc()
                continue
            try:
                info = await client.dial(room, trunk_id, to, identity, spec.ringing_timeout_s)
            except RegionFailure as e:
                if e.reason != "TrunkFailed":
                    return e
                log.warning("route %s: trunk %s in %s skipped: %s", route, trunk, region, e)
                metrics.TRUNK_FAILOVERS.labels(region, trunk).inc()
                skipped.append({"trunk": trunk, "reason": str(e), "sipStatus": e.sip_status})
                continue
            return {
                "trunk": trunk,
                "participantIdentity": info.participant_identity,
                "sipCallId": info.sip_call_id,
                "skippedTrunks": skipped,
            }
        return RegionFailure("TrunksFailed", f"every outbound trunk failed: {skipped}")

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        if self.table.synced.is_set() and self.table.problem is None:
            return web.Response(text="ok")
        return web.Response(status=503, text=self.table.problem or "VoiceRoutes not listed yet")


def _tokens(args: argparse.Namespace) -> list[str]:
    found = [os.environ.get(TOKEN_ENV, "").strip()]
    if args.token_file:
        found += [
            line.strip() for line in Path(args.token_file).read_text().splitlines() if line.strip()
        ]
    return [t for t in found if t]


async def serve(args: argparse.Namespace, tokens: list[str]) -> None:
    kube = ClusterClient(login(settings=kopf.OperatorSettings()), user_agent="voicepool-router")
    http = session()
    table = RouteTable(kube, args.namespace, http)
    router = Router(
        table,
        tokens,
        default_route=args.default_route,
        retry_after=args.retry_after,
        cooldown=args.cooldown,
    )
    runner = web.AppRunner(router.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.address, args.port)
    await site.start()
    watch = asyncio.create_task(table.watch_forever())
    log.info(
        "voicepool-router serving VoiceRoutes of %s on %s:%d",
        args.namespace,
        args.address,
        args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await runner.cleanup()
        await http.close()
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicepool-router", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the namespace whose VoiceRoutes (and their LiveKit Secrets) it serves "
        "(default: $POD_NAMESPACE)",
    )
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument(
        "--token-file",
        help=f"file with the accepted bearer token(s), one a line (besides ${TOKEN_ENV})",
    )
    parser.add_argument("--default-route", help="the VoiceRoute a request that names none uses")
    parser.add_argument(
        "--retry-after",
        type=int,
        default=2,
        help="Retry-After seconds of a 503 (every region full)",
    )
    parser.add_argument(
        "--cooldown",
        type=float,
        default=5.0,
        help="seconds a region that just failed is tried only after the others",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.namespace:
        parser.error("--namespace (or $POD_NAMESPACE) is required")
    tokens = _tokens(args)
    if not tokens:
        parser.error(f"no bearer token: set ${TOKEN_ENV} or --token-file")
    try:
        asyncio.run(serve(args, tokens))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
