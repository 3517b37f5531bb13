"""The LiveKit webhook endpoint: livekit-server posts room and participant events here.

Every request must carry LiveKit's signature (a JWT signed with the API secret whose sha256
claim matches the body), checked with livekit-api's WebhookReceiver; anything else is
refused with 401 and changes nothing. A verified event that starts or ends a room's wait
is recorded on the pools of that agent as an annotation (`waiting.py`), so every operator
replica -- not only the one that received the POST -- sees it, and the active replica's
pool watch wakes the pool. If the record cannot be written the response is 503, so
livekit-server's retry brings the event again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from livekit import api as lkapi
from livekit.protocol.models import ParticipantInfo

from .waiting import RoomChange, change_for, expired

log = logging.getLogger(__name__)
PATH = "/livekit/webhook"

#: Records one change where every replica reads it (see `record_on_pools`).
Publish = Callable[[RoomChange], Awaitable[int]]


class PoolWriter(Protocol):
    async def list_pools(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]: ...

    async def patch_pool_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> bool: ...


async def record_on_pools(
    kube: PoolWriter,
    change: RoomChange,
    namespaces: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> int:
    """Write one change on the pools it concerns; returns how many were written.

    A waiting room goes on every pool whose agentName it names; a room that stops waiting
    is removed from every pool that records it (its event may not carry the metadata). Each
    write also drops that pool's expired entries. The clock is wall time: the entries are
    read by another process, maybe on another node.
    """
    now = clock()
    written = 0
    for pool in await kube.list_pools(namespaces):
        meta = pool.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        agent = str((pool.get("spec") or {}).get("agentName") or "")
        patch: dict[str, str | None] = dict.fromkeys(expired(annotations, now))
        if change.waiting and agent == change.agent:
            patch[change.key] = change.annotation(now)
        elif not change.waiting and change.key in annotations:
            patch[change.key] = None
        else:
            continue
        if await kube.patch_pool_annotations(meta["namespace"], meta["name"], patch):
            written += 1
    return written


class WebhookServer:
    def __init__(self, api_key: str, api_secret: str, publish: Publish) -> None:
        self.receiver = lkapi.WebhookReceiver(lkapi.TokenVerifier(api_key, api_secret))
        self.publish = publish
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        try:
            event = self.receiver.receive(body, auth)
        except Exception as e:  # a bad or missing signature: nothing is trusted
            log.warning("refused a LiveKit webhook without a valid signature: %s", e)
            return web.Response(status=401, text="invalid webhook signature\n")
        agent_joined = event.participant.kind == ParticipantInfo.Kind.AGENT
        change = change_for(event.event, event.room.name, event.room.metadata, agent_joined)
        if change is not None:
            try:
                n = await self.publish(change)
            except Exception as e:  # the API is unreachable: let livekit-server retry
                log.warning("could not record room %r on its pools: %s", change.room, e)
                return web.Response(status=503, text="could not record the room; retry\n")
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
