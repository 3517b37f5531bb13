"""A freed call slot is announced to LiveKit at once (not at the framework's next 2.5 s tick)."""

from __future__ import annotations

from voicepool_worker.runtime.server import announce_capacity


class FakeServer:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def _refresh_worker_load(self) -> None:
        self.calls.append("refresh")
        if self.fail:
            raise RuntimeError("websocket closed")

    async def _update_worker_status(self) -> None:
        self.calls.append("status")


async def test_the_load_is_refreshed_then_reported() -> None:
    server = FakeServer()
    await announce_capacity(server)
    assert server.calls == ["refresh", "status"]


async def test_a_failed_update_is_logged_not_raised() -> None:
    server = FakeServer(fail=True)
    await announce_capacity(server)  # the periodic report still runs
    assert server.calls == ["refresh"]
