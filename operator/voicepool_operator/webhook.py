"""The LiveKit webhook endpoint: livekit-server posts room and participant events here.

Every request must carry LiveKit's signature (a JWT signed with the API secret whose sha256
claim matches the body), checked with livekit-api's WebhookReceiver; anything else is
refused with 401 and changes nothing. Verified events feed `WaitingRooms` and wake the
pools of the agent a room waits for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from livekit import api as lkapi
from livekit.protocol.models import ParticipantInfo

from .waiting import WaitingRooms

log = logging.getLogger(__name__)
PATH = "/livekit/webhook"


class WebhookServer:
    def __init__(
        self,
        rooms: WaitingRooms,
        api_key: str,
        api_secret: str,
        on_change: Callable[[str], None],
    ) -> None:
        self.rooms = rooms
        self.receiver = lkapi.WebhookReceiver(lkapi.TokenVerifier(api_key, api_secret))
        self.on_change = on_change
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
        changed = self.rooms.apply(
            event.event, event.room.name, event.room.metadata, agent_joined, time.monotonic()
        )
        if changed:
            self.on_change(changed)
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
