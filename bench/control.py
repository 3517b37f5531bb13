"""Session control on the real local stack: how fast voicepool-control lists and shows calls, and
how soon a new call is in the list, with 1, 5 and 10 live calls.

Set-up: one small stack of its own (kube-apiserver with one kwok node, livekit-server), one
VoiceAgentPool with its LiveKit Secret, one pod object and one real ``voicepool-worker`` for it
(the built-in receptionist; pocketsphinx and espeak, so ten calls fit on a small machine;
a job process per call, as in production; capacity 10 for 10 calls: the runtime reports its
fill scaled to livekit-server's ``agents.target_load``, so every free slot is offered),
``voicepool-control`` as its own process
(``tests/integration/control_harness.py``), and synthetic WebRTC callers in this process that
join the room (their join dispatches the agent), publish nothing and stay: the agent greets, and
has no caller audio to run its VAD on (``--microphone``: callers with a silent microphone,
``voicepool_worker.caller``, which costs each call a VAD in real time). No operator runs: the
pod object stands for the one it would make.

Figures, and how each is taken:

* **time to list**: calls are added one at a time. For each, the clock starts just before the
  caller connects (the room is created by that join, which dispatches the agent); a poller
  sends ``GET /v1/pools/{ns}/{pool}/calls`` every 50 ms and the clock stops at the first
  answer listing the room. Also given: the same stop time minus the call record's ``started``
  (the runtime's clock when the job began, same machine), i.e. the runtime's own part: its
  first room-metadata update (``PUBLISH_INTERVAL_S``) plus the poll's resolution.
* **list latency**: at each level (1, 5, 10 live calls), ``--list-requests`` sequential
  ``GET /v1/pools/{ns}/{pool}/calls`` with a read token, each timed by the client around the
  whole HTTP exchange on loopback (urllib, in a thread off the callers' event loop): pool from
  the apiserver, Secret (cached), one ListRooms. p50 and p99.
* **show latency**: the same with ``GET /v1/calls/{room}``, rooms taken in turn: ListRooms by
  name, then an RPC through livekit-server (PerformRpc) to the call's agent, which answers with
  its record. p50 and p99.

    flock /tmp/vp-bench.lock python bench/control.py [--levels 1,5,10] [--list-requests 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubernetes import client, config
from livekit import rtc
from operator_reaction import pct
from voicepool_contract import ANN_KWOK_REPORT, KWOK_REPORT_NONE, LABEL_POOL
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.regions import NamedStack
from voicepool_devstack.testing import create_namespace
from voicepool_worker.caller import Call, CallerConfig, token

from tests.integration.control_harness import ControlService
from tests.integration.operator_harness import Cluster, install_crds, pool_manifest
from tests.integration.worker_harness import WorkerProcess, agent_name

NS = "control-bench"
POOL = "bench-desk"
POD = f"{POOL}-0"
POLL_S = 0.05
#: How long a new call may take to appear in the list before the bench gives up on it.
LIST_WITHIN_S = 45.0
#: The whole run stops after this, whatever it got to (the stack start included).
BUDGET_S = 290.0


def ms(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1000:7.1f}"


def timed(svc: ControlService, path: str) -> tuple[float, int, Any]:
    """One read request, timed in the calling thread around the whole HTTP exchange."""
    t0 = time.perf_counter()
    status, body, _ = svc.request("GET", path, token="read")
    return time.perf_counter() - t0, status, body


async def series(svc: ControlService, paths: list[str], n: int) -> list[float]:
    """``n`` sequential timed requests over ``paths`` in turn; a non-200 answer stops the bench."""
    out = []
    for i in range(n):
        took, status, body = await asyncio.to_thread(timed, svc, paths[i % len(paths)])
        if status != 200:
            raise RuntimeError(f"GET {paths[i % len(paths)]} -> {status}: {body}")
        out.append(took)
    return out


class QuietLine:
    """A WebRTC caller that joins (dispatching the agent) and publishes and subscribes nothing:
    the agent has no audio to run its VAD on, so ten calls fit beside other work on a small
    machine. ``--microphone`` uses ``voicepool_worker.caller.Call`` (a silent microphone) instead.
    """

    def __init__(self, cfg: CallerConfig, room: str) -> None:
        self.cfg, self.room_name = cfg, room
        self.room = rtc.Room()

    async def start(self, *, join_within: float = 30.0) -> None:
        options = rtc.RoomOptions(auto_subscribe=False)
        await asyncio.wait_for(
            self.room.connect(self.cfg.url, token(self.cfg, self.room_name), options), join_within
        )

    async def hangup(self) -> None:
        await self.room.disconnect()


Line = QuietLine | Call


async def add_call(
    svc: ControlService, cfg: CallerConfig, list_path: str, microphone: bool
) -> tuple[Line, float, float]:
    """A new caller; (the call, connect -> listed, record started -> listed) in seconds."""
    # letters only: a run of 7 digits would be listed masked (as a phone number)
    room = "bench-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))
    c: Line = Call(cfg, room) if microphone else QuietLine(cfg, room)
    t0 = time.time()
    seen: dict[str, Any] = {}

    async def poll() -> None:
        while True:
            _, status, body = await asyncio.to_thread(timed, svc, list_path)
            if status == 200:
                for row in body["calls"]:
                    if row["room"] == room:
                        seen.update(row, at=time.time())
                        return
            await asyncio.sleep(POLL_S)

    poller = asyncio.create_task(poll())
    try:
        await c.start(join_within=60)
        await asyncio.wait_for(poller, LIST_WITHIN_S)
    except TimeoutError:
        raise RuntimeError(
            f"room {room} was not listed within {LIST_WITHIN_S:.0f} s of its caller joining"
        ) from None
    finally:
        poller.cancel()
    return c, seen["at"] - t0, seen["at"] - float(seen["started"])


async def bench(args: argparse.Namespace) -> int:
    levels = sorted({int(x) for x in args.levels.split(",")})
    deadline = asyncio.get_running_loop().time() + BUDGET_S
    print(f"[bench] load average at start: {os.getloadavg()}", flush=True)
    print("[bench] starting a control plane and a livekit-server ...", flush=True)
    with NamedStack("control-bench", nodes=1) as st:
        cfg = client.Configuration()
        config.load_kube_config(config_file=st.kubeconfig, client_configuration=cfg)
        kube = client.ApiClient(cfg)
        core = client.CoreV1Api(kube)
        install_crds(kube)
        create_namespace(core, NS)
        cluster = Cluster(kube, NS)
        cluster.livekit_secret(st.livekit)
        agent = agent_name()
        # the last call of the largest level is offered while the load is still below target
        capacity = max(levels)
        cluster.create_pool(
            pool_manifest(
                POOL,
                agentName=agent,
                livekit={"url": st.livekit.url, "credentialsSecretRef": {"name": "lk"}},
                sessionsPerPod=capacity,
                minReplicas=0,
                maxReplicas=1,
                warmPool={"idleSessions": 0},
            )
        )
        core.create_namespaced_pod(
            NS,
            client.V1Pod(
                metadata=client.V1ObjectMeta(
                    name=POD,
                    labels={LABEL_POOL: POOL},
                    annotations={ANN_KWOK_REPORT: KWOK_REPORT_NONE},
                ),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="worker", image="example.invalid/w:b")]
                ),
            ),
        )
        workdir = Path(tempfile.mkdtemp(prefix="voicepool-control-bench-"))
        worker = WorkerProcess(
            st.livekit,
            workdir,
            agent=agent,
            env={
                "POD_NAME": POD,
                "POD_NAMESPACE": NS,
                "VOICEPOOL_POOL": POOL,
                "KUBECONFIG": st.kubeconfig,
                "VOICEPOOL_SESSIONS_PER_POD": str(capacity),
                "VOICEPOOL_STT": "pocketsphinx",
                "VOICEPOOL_TTS": "espeak",
                "VOICEPOOL_LOG_TRANSCRIPTS": "false",
            },
        )
        svc = ControlService(st.kubeconfig, workdir, namespaces=(NS,))
        calls: list[Line] = []
        results: list[tuple[int, list[float], list[float]]] = []
        to_list: list[tuple[float, float]] = []
        finished = True
        try:
            async with asyncio.timeout_at(deadline):
                await measure(args, levels, st.livekit, worker, svc, agent, calls, results, to_list)
        except TimeoutError:
            finished = False
            print(f"[bench] stopped at the {BUDGET_S:.0f} s budget: partial figures", flush=True)
        except RuntimeError as e:
            finished = False
            print(f"[bench] stopped: {e} (worker log: {worker.log_path}): partial figures")
        finally:
            for c in calls:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.hangup(), 10)
            worker.stop()
            svc.stop()
    report(results, to_list)
    return 0 if finished else 1


async def measure(
    args: argparse.Namespace,
    levels: list[int],
    lk: LiveKitInfo,
    worker: WorkerProcess,
    svc: ControlService,
    agent: str,
    calls: list[Line],
    results: list[tuple[int, list[float], list[float]]],
    to_list: list[tuple[float, float]],
) -> None:
    """Calls added up to each level, each one's time to list, then the two latency series."""
    await asyncio.to_thread(worker.wait_ready, 180)
    print(f"[bench] worker ready; load average {os.getloadavg()}", flush=True)
    list_path = f"/v1/pools/{NS}/{POOL}/calls"
    for level in levels:
        while len(calls) < level:
            ident = f"caller-{len(calls)}"
            caller = CallerConfig(lk.url, lk.api_key, lk.api_secret, agent, ident)
            c, joined, runtime = await add_call(svc, caller, list_path, args.microphone)
            calls.append(c)
            to_list.append((joined, runtime))
            print(
                f"[bench] call {len(calls)} listed {joined:.2f} s after its caller "
                f"connected ({runtime:.2f} s after its record started)",
                flush=True,
            )
        await asyncio.sleep(2.0)  # the greetings' first words: not the joins' burst
        listed = (await asyncio.to_thread(timed, svc, list_path))[2]["count"]
        rooms = [f"/v1/calls/{c.room_name}" for c in calls]
        lists = await series(svc, [list_path], args.list_requests)
        shows = await series(svc, rooms, args.show_requests)
        results.append((level, lists, shows))
        print(
            f"[bench] {level} live calls ({listed} listed): list p50 {ms(lists, 0.5)} ms, "
            f"show p50 {ms(shows, 0.5)} ms; load average {os.getloadavg()}",
            flush=True,
        )


def report(
    results: list[tuple[int, list[float], list[float]]], to_list: list[tuple[float, float]]
) -> None:
    print()
    print(f"{'live calls':>10}  {'list p50':>8}  {'list p99':>8}  {'show p50':>8}  {'show p99':>8}")
    for level, lists, shows in results:
        print(
            f"{level:>10}  {ms(lists, 0.5):>8}  {ms(lists, 0.99):>8}  "
            f"{ms(shows, 0.5):>8}  {ms(shows, 0.99):>8}   (ms; {len(lists)} lists, "
            f"{len(shows)} shows)"
        )
    joins = [j for j, _ in to_list]
    own = [r for _, r in to_list]
    if not to_list:
        return
    print(
        f"\ntime to list over {len(to_list)} new calls (s): caller connects -> listed "
        f"p50 {pct(joins, 0.5):.2f} max {max(joins):.2f}; record started -> listed "
        f"p50 {pct(own, 0.5):.2f} max {max(own):.2f} (poll every {POLL_S * 1000:.0f} ms)"
    )
    print(f"[bench] load average at the end: {os.getloadavg()}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default="1,5,10", help="live calls at which to measure")
    p.add_argument("--list-requests", type=int, default=100)
    p.add_argument("--show-requests", type=int, default=40)
    p.add_argument("--microphone", action="store_true", help="callers publish a silent microphone")
    args = p.parse_args()
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
