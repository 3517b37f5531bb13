"""A minimal livekit-agents worker, run as ``python -m voicepool_devstack.stand_in_agent``.

It registers under ``$AGENT`` with the LiveKit server at ``$LIVEKIT_URL`` (the real protocol of a
real livekit-server: explicit dispatch, accept, join), accepts up to ``$CAPACITY`` jobs, joins
each room and stays until the room closes. It stands in for a region's workers where only the
dispatch has to be taken -- the routing tests, bench and demo, whose pools run on kwok with
their capacity played by annotation patches -- at a fraction of a voicepool-worker's start-up
and memory (no models, no process per job). Prints ``registered`` once LiveKit knows it (again
after each reconnect) and ``job <room>`` for every job it accepted.
"""

from __future__ import annotations

import asyncio
import os

from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest

CAPACITY = int(os.environ.get("CAPACITY", "16"))
ACTIVE: set[str] = set()


async def entrypoint(ctx: JobContext) -> None:
    ACTIVE.add(ctx.job.id)
    try:
        closed = asyncio.Event()
        ctx.room.on("disconnected", lambda *_: closed.set())
        await ctx.connect()
        await closed.wait()
    finally:
        ACTIVE.discard(ctx.job.id)


async def on_request(req: JobRequest) -> None:
    if len(ACTIVE) >= CAPACITY:
        await req.reject(terminate=False)
        return
    print(f"job {req.room.name}", flush=True)
    await req.accept()


def load() -> float:
    return len(ACTIVE) / CAPACITY


async def main() -> None:
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD,
        load_fnc=load,
        load_threshold=(CAPACITY - 0.5) / CAPACITY,
        num_idle_processes=2,  # threads here: two jobs start without waiting for one
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        host="127.0.0.1",
        port=int(os.environ["HTTP_PORT"]),
        log_level="INFO",
    )
    server.rtc_session(entrypoint, agent_name=os.environ["AGENT"], on_request=on_request)
    server.on("worker_registered", lambda *_: print("registered", flush=True))
    await server.run(devmode=False)


if __name__ == "__main__":
    asyncio.run(main())
