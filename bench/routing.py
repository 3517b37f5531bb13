"""Routing on the real local stack: what voicepool-router adds to a dispatch, and how fast a
region that goes away is left.

Set-up: one control plane (kube-apiserver, kwok) with the operator, and two livekit-servers,
regions A (tier 0) and B (tier 1), each with a kwok pool of plenty of idle sessions and a
minimal livekit-agents worker registered under the pools' agent name
(voicepool_devstack.stand_in_agent). Both pools are in this cluster: the router reads the
route's status either way, so a remote cluster changes nothing on the request path.
voicepool-router runs as its own process, as in the chart.

Figures, and how each is taken:

* **direct dispatch**: the bench itself, through the same library code the router uses
  (``RegionClient.open``): CreateRoom + CreateAgentDispatch in region A's LiveKit, then
  ListParticipants every 20 ms until the agent is in the room, ACTIVE. Clock: just before
  CreateRoom to the agent seen.
* **routed**: ``POST /v1/sessions`` to voicepool-router over loopback HTTP, measured by the
  client from sending the request to the JSON answer (choice, the same room + dispatch + wait in
  region A, the join token). Samples alternate with the direct ones (one run, same load), and
  every room is deleted before the next sample.
* **overhead** = routed - direct, at p50 and p99 of each series, and the median of the
  per-pair differences (pair = a direct sample and the routed one right after it). The agent's
  join (a job process, its media connection) varies by hundreds of milliseconds from call to
  call, so these differences are noisy; hence also:
* **router own time**: per routed request, the client's request time minus ``regionMs`` from
  the answer (the router's own clock around room + dispatch + agent in, in the region that
  answered): HTTP on loopback, JSON, the choice, the token. p50 and p99.
* **failover, LiveKit stopped**: region A's livekit-server is killed (SIGTERM to its process
  group), then a session is requested at once: the time from the kill to the answer (region
  B), and that answer's own request time. The operator's view: kill -> the route's status no
  longer shows A ready (probeIntervalSeconds 1; the status is polled every 50 ms). Then A is
  restarted, its agent re-registers, and the time from the restart until a call is routed to
  A again is taken (the status shows A ready, the router's 5 s cooldown has passed).
* **failover, dispatch not accepted**: A's LiveKit stays up but its agent is killed; the
  status still shows A ready, so the router tries A, waits ``acceptTimeoutMilliseconds``
  (the default, 3000) for an agent, and moves to B: the answer time of that request.

    flock /tmp/vp-bench.lock python bench/routing.py [--samples 40] [--failovers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from kubernetes import client, config
from operator_reaction import pct
from voicepool_devstack.agents import AgentProcess
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.regions import NamedStack
from voicepool_devstack.testing import create_namespace, wait_for
from voicepool_operator.routing.livekit_ops import RegionClient, session

from tests.integration.operator_harness import (
    Cluster,
    install_crds,
    pool_manifest,
    running_operator,
)
from tests.integration.routing_harness import (
    Routes,
    region,
    route_manifest,
    running_router,
    secret,
)

AGENT = "route-bench"
NS = "routing-bench"
TOKEN = secrets.token_urlsafe(24)


async def direct(lk: LiveKitInfo, http: aiohttp.ClientSession) -> float:
    """One direct dispatch in ``lk`` (the router's own code path, without the router)."""
    c = RegionClient(lk.url, lk.http_url, lk.api_key, lk.api_secret, http)
    room = f"direct-{uuid.uuid4().hex[:12]}"
    t0 = time.perf_counter()
    await c.open(AGENT, room, accept_timeout=5.0, empty_timeout=30)
    took = time.perf_counter() - t0
    await c.close_room(room)
    return took


async def close_room(lk: LiveKitInfo, http: aiohttp.ClientSession, room: str) -> None:
    c = RegionClient(lk.url, lk.http_url, lk.api_key, lk.api_secret, http)
    await c.close_room(room)


def ms(values: list[float], q: float) -> float:
    return pct(values, q) * 1000


async def bench(args: argparse.Namespace) -> int:
    print(f"[bench] load average at start: {os.getloadavg()}", flush=True)
    print("[bench] starting a control plane and two livekit-servers ...", flush=True)
    with NamedStack("bench-a", nodes=1) as a, NamedStack("bench-b", kubernetes=False) as b:
        cfg = client.Configuration()
        config.load_kube_config(config_file=a.kubeconfig, client_configuration=cfg)
        api = client.ApiClient(cfg)
        core = client.CoreV1Api(api)
        install_crds(api)
        create_namespace(core, NS)
        cluster = Cluster(api, NS)
        for name, stack in (("pa", a), ("pb", b)):
            cluster.create_pool(
                pool_manifest(
                    name,
                    agentName=AGENT,
                    livekit={"url": stack.livekit.url, "credentialsSecretRef": {"name": name}},
                    warmPool={"idleSessions": 40},
                    sessionsPerPod=8,
                    maxReplicas=6,
                )
            )
            secret(
                core,
                NS,
                name,
                {"apiKey": stack.livekit.api_key, "apiSecret": stack.livekit.api_secret},
            )
        agents = {
            "a": AgentProcess(a.livekit, AGENT, capacity=64),
            "b": AgentProcess(b.livekit, AGENT, capacity=64),
        }
        http = session()
        try:
            with running_operator(a.kubeconfig), running_router(a.kubeconfig, NS, TOKEN) as router:
                for agent in agents.values():
                    agent.wait_registered()
                routes = Routes(api, NS)
                routes.create(
                    route_manifest(
                        "bench",
                        [
                            region("a", a.livekit, "pa", "pa"),
                            region("b", b.livekit, "pb", "pb", priority=1),
                        ],
                        probeIntervalSeconds=1,
                    )
                )
                for name in ("a", "b"):
                    wait_for(
                        lambda n=name: routes.region("bench", n).get("idleSessions", 0) >= 16,
                        timeout=120,
                        what=f"region {name} ready with idle sessions",
                    )

                # -- latency, side by side -------------------------------------------------
                for _ in range(3):  # warm both paths (connections, the agent's first thread)
                    await direct(a.livekit, http)
                    _, answer, _ = router.post("/v1/sessions", {"route": "bench"})
                    await close_room(a.livekit, http, answer["room"])
                d_times: list[float] = []
                r_times: list[float] = []
                own: list[float] = []  # routed request minus its time in the region
                for _ in range(args.samples):
                    d_times.append(await direct(a.livekit, http))
                    t0 = time.perf_counter()
                    status, answer, _ = await asyncio.to_thread(
                        router.post, "/v1/sessions", {"route": "bench"}
                    )
                    r_times.append(time.perf_counter() - t0)
                    assert status == 200 and answer["region"] == "a", answer
                    own.append(r_times[-1] - answer["regionMs"] / 1000)
                    await close_room(a.livekit, http, answer["room"])
                    await asyncio.sleep(0.05)
                pairs = [r - d for d, r in zip(d_times, r_times, strict=True)]

                # -- failover: LiveKit stopped ---------------------------------------------
                kills: list[tuple[float, float, float, float]] = []
                for _ in range(args.failovers):
                    routes.wait_region("bench", "a", ready=True, timeout=60)
                    registered = agents["a"].registrations()
                    t_kill = time.perf_counter()
                    a.stop_livekit()
                    t0 = time.perf_counter()
                    status, answer, _ = await asyncio.to_thread(
                        router.post, "/v1/sessions", {"route": "bench"}
                    )
                    t1 = time.perf_counter()
                    assert status == 200 and answer["region"] == "b", answer
                    await close_room(b.livekit, http, answer["room"])
                    wait_for(
                        lambda: routes.region("bench", "a").get("ready") is False,
                        timeout=30,
                        interval=0.05,
                        what="the status showing A down",
                    )
                    t_seen = time.perf_counter()
                    a.start_livekit()
                    t_back = time.perf_counter()
                    agents["a"].wait_registered(more_than=registered, timeout=60)

                    deadline = time.monotonic() + 90
                    while True:  # until the status shows A again and its cooldown is over
                        status, answer, _ = await asyncio.to_thread(
                            router.post, "/v1/sessions", {"route": "bench"}
                        )
                        assert status == 200, answer
                        lk = a.livekit if answer["region"] == "a" else b.livekit
                        await close_room(lk, http, answer["room"])
                        if answer["region"] == "a":
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError("no call routed to A within 90 s of its restart")
                        await asyncio.sleep(0.25)
                    kills.append(
                        (t1 - t_kill, t1 - t0, t_seen - t_kill, time.perf_counter() - t_back)
                    )

                # -- failover: dispatch not accepted ---------------------------------------
                routes.wait_region("bench", "a", ready=True, timeout=60)
                agents["a"].stop()
                t0 = time.perf_counter()
                status, answer, _ = await asyncio.to_thread(
                    router.post, "/v1/sessions", {"route": "bench"}
                )
                not_accepted = time.perf_counter() - t0
                assert status == 200 and answer["region"] == "b", answer
                failovers = router.metric("voicepool_router_failovers_total", route="bench")
        finally:
            for agent in agents.values():
                agent.stop()
            await http.close()

    n = len(d_times)
    rows = [
        ("direct dispatch (room + dispatch + agent in)", ms(d_times, 0.5), ms(d_times, 0.99)),
        ("routed: POST /v1/sessions -> answer", ms(r_times, 0.5), ms(r_times, 0.99)),
        (
            "overhead (routed - direct, per percentile)",
            ms(r_times, 0.5) - ms(d_times, 0.5),
            ms(r_times, 0.99) - ms(d_times, 0.99),
        ),
    ]
    print()
    print(f"Routing latency, {n} samples each, alternating (region A, stand-in agent, loopback)")
    print(f"{'':46} {'p50':>9} {'p99':>9}")
    for label, p50, p99 in rows:
        print(f"{label:46} {p50:7.1f}ms {p99:7.1f}ms")
    median = statistics.median(pairs) * 1000
    print(f"{'overhead, median of per-pair differences':46} {median:7.1f}ms")
    print(
        f"{'router own time (request - its regionMs)':46} {ms(own, 0.5):7.1f}ms "
        f"{ms(own, 0.99):7.1f}ms   (target: overhead < 50 ms)"
    )
    print()
    print(f"Failover, region A's livekit-server stopped ({len(kills)} times)")
    for i, (answered, request, seen, back) in enumerate(kills, 1):
        print(
            f"  #{i}: stop -> answered in B {answered * 1000:.0f} ms "
            f"(that request {request * 1000:.0f} ms); stop -> status shows A down {seen:.2f} s; "
            f"restart -> a call routed to A again {back:.1f} s"
        )
    print(
        "Failover, A's agent gone (dispatch not accepted, acceptTimeout 3000 ms): "
        f"answered in B after {not_accepted * 1000:.0f} ms"
    )
    print(f"voicepool_router_failovers_total{{route=bench}}: {failovers:.0f}")
    print(f"[bench] load average at end: {os.getloadavg()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--failovers", type=int, default=3)
    args = ap.parse_args()
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
