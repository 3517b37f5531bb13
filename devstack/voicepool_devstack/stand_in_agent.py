"""A minimal livekit-agents worker, run as ``python -m voicepool_devstack.stand_in_agent``.

It registers under ``$AGENT`` with the LiveKit server at ``$LIVEKIT_URL`` (the real protocol of a
real livekit-server: explicit dispatch, accept, join), accepts up to ``$CAPACITY`` jobs, joins
each room and stays until the room closes. It stands in for a region's workers where only the
dispatch has to be taken -- the routing tests, bench and demo, whose pools run on kwok with
their capacity played by annotation patches -- at a fraction of a voicepool-worker's start-up
and memory (no models). Prints ``registered`` once LiveKit knows it (again
after each reconnect) and ``job <room>`` for every job it accepted.
"""

from __future__ import annotations

import asyncio
import os

from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest

CAPACITY = int(os.environ.get("CAPACITY", "16"))
CONNECT_S = 5.0


async def entrypoint(ctx: JobContext) -> None:
    """Join and stay until the room closes. A room deleted while the agent is still joining
    leaves the SDK retrying its connection: give up after CONNECT_S, so the slot is free again
    (a call that ends within a second of being placed happens in the bench, not on phones)."""
    closed = asyncio.Event()
    ctx.room.on("disconnected", lambda *_: closed.set())
    try:
        await asyncio.wait_for(ctx.connect(), timeout=CONNECT_S)
    except Exception:  # timed out, or the room went away while we joined
        return
    await closed.wait()


def load(server: AgentServer) -> float:
    """Full at CAPACITY running jobs (the jobs run in their own processes)."""
    return len(server.active_jobs) / CAPACITY


async def main() -> None:
    server = AgentServer(
        # A process per job: a room deleted while its agent joins can wedge the rtc SDK of
        # the process it joined from (FFI panics in thread mode); a process contains that.
        job_executor_type=JobExecutorType.PROCESS,
        load_fnc=load,
        load_threshold=(CAPACITY - 0.5) / CAPACITY,
        num_idle_processes=2,  # two jobs start without waiting for a process
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        host="127.0.0.1",
        port=int(os.environ["HTTP_PORT"]),
        log_level="INFO",
    )

    async def on_request(req: JobRequest) -> None:
        if load(server) >= 1.0:
            await req.reject(terminate=False)
            return
        print(f"job {req.room.name}", flush=True)
        await req.accept()

    server.rtc_session(entrypoint, agent_name=os.environ["AGENT"], on_request=on_request)
    server.on("worker_registered", lambda *_: print("registered", flush=True))
    await server.run(devmode=False)


if __name__ == "__main__":
    asyncio.run(main())
