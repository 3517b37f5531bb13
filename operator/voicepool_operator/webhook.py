"""The LiveKit webhook endpoint: livekit-server posts room and participant events here.

Every request must carry LiveKit's signature: a JWT whose issuer is a LiveKit API key, signed
with that key's secret, whose sha256 claim matches the body (livekit-api's WebhookReceiver).
A verified event that starts or ends a room's wait is recorded on pools as an annotation
(`waiting.py`), so every operator replica -- not only the one that received the POST -- sees it
and the active replica's pool watch wakes the pool. If the record cannot be written the
response is 503, so livekit-server's retry brings the event again.

Tenancy: an event only touches pools that trust the key that signed it (`waiting.
trusted_signers`): a pool's own LiveKit key, read from the Secret in the pool's own namespace,
or the operator's key when the pool lists it. So one team's rooms never scale another team's
pool, even with the same agentName. Events older than a bound, and a second delivery of an
event id, are refused; at most maxReplicas x sessionsPerPod rooms wait per pool. Every
refusal is counted in ``voicepool_webhook_events_total{outcome}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import jwt
from aiohttp import web
from livekit import api as lkapi
from livekit.protocol.models import ParticipantInfo
from livekit.protocol.webhook import WebhookEvent

from .metrics import WEBHOOK_EVENTS
from .spec import SpecError, parse_spec
from .waiting import (
    MAX_EVENT_AGE_SECONDS,
    RecentIds,
    RoomChange,
    Signer,
    change_for,
    event_fresh,
    expired,
    room_cap,
    trusted_signers,
    waiting_rooms,
)

log = logging.getLogger(__name__)
PATH = "/livekit/webhook"
#: A pool's LiveKit credentials are read again after this long (a rotated key takes effect).
SECRET_CACHE_SECONDS = 30.0

#: Records one change, signed by one key, where every replica reads it (`record_on_pools`).
Publish = Callable[[RoomChange, Signer], Awaitable[int]]


class PoolWriter(Protocol):
    async def list_pools(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]: ...

    async def patch_pool_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> bool: ...


class SecretReader(PoolWriter, Protocol):
    async def read_secret(self, namespace: str, name: str) -> dict[str, str]: ...


class Keys(Protocol):
    """Where signing keys come from: what may verify an event, and whom a pool trusts."""

    async def candidates(self, key: str) -> list[Signer]: ...

    async def trusted_by(self, pool: Mapping[str, Any]) -> tuple[Signer, ...]: ...


class KeyRing:
    """The operator's own key (optional) and each pool's own LiveKit key, from its Secret."""

    def __init__(
        self,
        kube: SecretReader,
        platform: Signer | None,
        namespaces: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.platform = platform
        self.namespaces = list(namespaces)
        self.clock = clock
        self._cache: dict[tuple[str, str, str, str], tuple[float, Signer | None]] = {}

    async def own(self, pool: Mapping[str, Any]) -> Signer | None:
        """The pool's own key and secret, from the Secret in the pool's namespace (cached)."""
        meta = pool.get("metadata") or {}
        try:
            spec = parse_spec(pool.get("spec") or {})
        except SpecError:
            return None  # a pool that does not parse is trusted with nothing
        namespace = str(meta.get("namespace") or "")
        lk = spec.livekit
        ref = (namespace, lk.credentials_secret, lk.api_key_key, lk.api_secret_key)
        hit = self._cache.get(ref)
        now = self.clock()
        if hit is not None and now - hit[0] < SECRET_CACHE_SECONDS:
            return hit[1]
        data = await self.kube.read_secret(namespace, lk.credentials_secret)
        key, secret = data.get(lk.api_key_key), data.get(lk.api_secret_key)
        signer = Signer(key, secret) if key and secret else None
        self._cache[ref] = (now, signer)
        return signer

    async def trusted_by(self, pool: Mapping[str, Any]) -> tuple[Signer, ...]:
        try:
            declared = parse_spec(pool.get("spec") or {}).livekit.webhook_signing_keys
        except SpecError:
            return ()  # a pool that does not parse is trusted with nothing
        return trusted_signers(await self.own(pool), declared, self.platform)

    async def candidates(self, key: str) -> list[Signer]:
        out = [self.platform] if self.platform is not None and self.platform.key == key else []
        for pool in await self.kube.list_pools(self.namespaces):
            signer = await self.own(pool)
            if signer is not None and signer.key == key and signer not in out:
                out.append(signer)
        return out


async def record_on_pools(
    kube: PoolWriter,
    keys: Keys,
    change: RoomChange,
    signer: Signer,
    namespaces: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> int:
    """Write one change on the pools it concerns; returns how many were written.

    A waiting room goes on every pool whose agentName it names and that trusts the signer,
    while the pool has fewer than its cap waiting; a room that stops waiting is removed from
    every trusting pool that records it (its event may not carry the metadata). Each write
    also drops that pool's expired entries. The clock is wall time: the entries are read by
    another process, maybe on another node.
    """
    now = clock()
    written = 0
    for pool in await kube.list_pools(namespaces):
        meta = pool.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        spec = pool.get("spec") or {}
        concerned = (change.waiting and str(spec.get("agentName") or "") == change.agent) or (
            not change.waiting and change.key in annotations
        )
        if not concerned:
            continue
        if signer not in await keys.trusted_by(pool):
            WEBHOOK_EVENTS.labels("untrusted").inc()
            continue
        patch: dict[str, str | None] = dict.fromkeys(expired(annotations, now))
        if change.waiting:
            if change.key not in annotations and waiting_rooms(annotations, now) >= room_cap(spec):
                WEBHOOK_EVENTS.labels("cap").inc()
                log.warning(
                    "room %r not recorded: pool %s/%s already has %d waiting room(s)",
                    change.room,
                    meta.get("namespace"),
                    meta.get("name"),
                    room_cap(spec),
                )
                continue
            patch[change.key] = change.annotation(now)
        else:
            patch[change.key] = None
        if await kube.patch_pool_annotations(meta["namespace"], meta["name"], patch):
            written += 1
    return written


def signing_key(token: str) -> str | None:
    """The issuer (API key) a webhook token names, read before its signature is checked."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) and issuer else None


class WebhookServer:
    def __init__(
        self,
        keys: Keys,
        publish: Publish,
        *,
        max_age: float = MAX_EVENT_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.publish = publish
        self.max_age = max_age
        self.clock = clock
        self.recent = RecentIds(keep_seconds=max_age + 60.0)
        self._runner: web.AppRunner | None = None

    def _refuse(self, outcome: str, status: int, text: str) -> web.Response:
        WEBHOOK_EVENTS.labels(outcome).inc()
        log.warning("refused a LiveKit webhook (%s): %s", outcome, text)
        return web.Response(status=status, text=text + "\n")

    async def _verify(self, body: str, auth: str) -> tuple[WebhookEvent, Signer] | str:
        """The event and the key that signed it, or the outcome of its refusal."""
        key = signing_key(auth) if auth else None
        if key is None:
            return "unsigned"
        candidates = await self.keys.candidates(key)
        if not candidates:
            return "unknown_key"
        for signer in candidates:
            receiver = lkapi.WebhookReceiver(lkapi.TokenVerifier(signer.key, signer.secret))
            try:
                return receiver.receive(body, auth), signer
            except Exception:  # wrong secret, expired token, body changed: try the next one
                continue
        return "bad_signature"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        try:
            verified = await self._verify(body, auth)
        except Exception as e:  # the apiserver is unreachable: let livekit-server retry
            log.warning("could not look up the webhook's signing key: %s", e)
            return web.Response(status=503, text="could not verify the event; retry\n")
        if isinstance(verified, str):
            return self._refuse(verified, 401, "invalid webhook signature")
        event, signer = verified
        now = self.clock()
        if not event_fresh(float(event.created_at), now, self.max_age):
            return self._refuse(
                "stale", 400, f"event {event.id!r} created at {event.created_at} is too old"
            )
        if event.id and not self.recent.first_time(event.id, now):
            WEBHOOK_EVENTS.labels("duplicate").inc()
            return web.Response(text="duplicate event ignored\n")
        agent_joined = event.participant.kind == ParticipantInfo.Kind.AGENT
        change = change_for(event.event, event.room.name, event.room.metadata, agent_joined)
        if change is None:
            WEBHOOK_EVENTS.labels("ignored").inc()
            return web.Response(text="ok\n")
        try:
            n = await self.publish(change, signer)
        except Exception as e:  # the API is unreachable: let livekit-server retry
            log.warning("could not record room %r on its pools: %s", change.room, e)
            WEBHOOK_EVENTS.labels("error").inc()
            return web.Response(status=503, text="could not record the room; retry\n")
        WEBHOOK_EVENTS.labels("recorded" if n else "no_pool").inc()
        log.info(
            "room %r %s (%d pool(s))",
            change.room,
            f"waits for agent {change.agent!r}" if change.waiting else "no longer waits",
            n,
        )
        return web.Response(text="ok\n")

    async def start(self, address: str, port: int) -> bool:
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, address, port).start()
        except OSError as e:  # e.g. a second replica on the same host: run without it
            log.warning("LiveKit webhook endpoint not started on %s:%d: %s", address, port, e)
            await self._runner.cleanup()
            self._runner = None
            return False
        log.info("LiveKit webhook endpoint on http://%s:%d%s", address, port, PATH)
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
