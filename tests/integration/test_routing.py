"""Routing across two regions on real servers (docs/routing.md).

Region A is the session's cluster with a livekit-server of this module's own (the tests stop
and restart it); region B is a second stack (``second_stack``): its own kube-apiserver, kwok
node, livekit-server and voicepool operator. Each region has a pool on kwok whose workers'
reports are annotation patches, as in the operator tests. The operator in A watches A's pool
with its own login and B's pool through a kubeconfig Secret (a ServiceAccount that may only read
pools); ``voicepool-router`` routes from the VoiceRoute's status. Dispatches are taken by a
minimal livekit-agents worker in A (``voicepool_devstack.stand_in_agent``) and by a real
voicepool-worker in B, which takes the failover calls; the client joins with the router's token
and meets the agent.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from livekit import api, rtc
from voicepool_contract import ANN_KWOK_REPORT, KWOK_REPORT_STARTING_ONLY
from voicepool_devstack.agents import AgentProcess
from voicepool_devstack.errors import DevstackError
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.ports import free_port
from voicepool_devstack.regions import NamedStack, reader_kubeconfig
from voicepool_devstack.testing import Environment, create_namespace, second_stack, wait_for
from voicepool_devstack.versions import KUBERNETES

from .operator_harness import (
    Cluster,
    OperatorProcess,
    install_crds,
    pool_manifest,
    running_operator,
)
from .routing_harness import (
    RouterProcess,
    Routes,
    jwt_claims,
    region,
    route_manifest,
    running_router,
    secret,
)
from .worker_harness import WorkerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.livekit]

TOKEN = secrets.token_urlsafe(24)
AGENT = f"route-agent-{uuid.uuid4().hex[:6]}"
POOL = "support"
TEMPLATE = pool_manifest("x")["spec"]["template"]


# -- the two regions -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def livekit_a() -> Iterator[NamedStack]:
    """Region A's livekit-server: this module's own, so stopping it disturbs no other test."""
    try:
        with second_stack("ra", kubernetes=False) as stack:
            yield stack
    except DevstackError as e:
        pytest.fail(f"could not start region A's LiveKit: {e}")


@pytest.fixture(scope="module")
def region_b() -> Iterator[NamedStack]:
    """Region B: a second stack with its own kube-apiserver and livekit-server."""
    try:
        with second_stack("rb") as stack:
            yield stack
    except DevstackError as e:
        pytest.fail(f"could not start region B: {e}")


@pytest.fixture(scope="module")
def api_b(region_b: NamedStack) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    config.load_kube_config(config_file=region_b.kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as api_client:
        yield api_client


@pytest.fixture(scope="module")
def ns(core: client.CoreV1Api) -> Iterator[str]:
    name = create_namespace(core, f"route-{uuid.uuid4().hex[:6]}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="module")
def operator_b(region_b: NamedStack, api_b: client.ApiClient) -> Iterator[OperatorProcess]:
    """Region B's own voicepool operator: it keeps B's pool (and its status) going."""
    install_crds(api_b)
    with running_operator(region_b.kubeconfig) as op:
        yield op


@pytest.fixture(scope="module")
def regions(
    operator: OperatorProcess,
    operator_b: OperatorProcess,
    api_client: client.ApiClient,
    api_b: client.ApiClient,
    core: client.CoreV1Api,
    ns: str,
    livekit_a: NamedStack,
    region_b: NamedStack,
) -> dict[str, Any]:
    """A pool in each region (kwok: 2 pods x 2 sessions in A, 3 pods x 2 in B, all idle) and the
    route's Secrets in A: each region's LiveKit key and B's reader kubeconfig."""
    core_b = client.CoreV1Api(api_b)
    create_namespace(core_b, ns)
    a, b = Cluster(api_client, ns), Cluster(api_b, ns)
    a.livekit_secret(livekit_a.livekit, "lk")
    b.livekit_secret(region_b.livekit, "lk")
    a.create_pool(
        pool_manifest(
            POOL,
            agentName=AGENT,
            livekit={"url": livekit_a.livekit.url, "credentialsSecretRef": {"name": "lk"}},
            warmPool={"idleSessions": 4},
            minReplicas=2,
            maxReplicas=6,
            # kwok says only "starting": the test plays A's workers, so a pod is capacity
            # exactly when the test reports it idle.
            template={**TEMPLATE, "annotations": {ANN_KWOK_REPORT: KWOK_REPORT_STARTING_ONLY}},
        )
    )
    b.create_pool(
        pool_manifest(
            POOL,
            agentName=AGENT,
            livekit={"url": region_b.livekit.url, "credentialsSecretRef": {"name": "lk"}},
            warmPool={"idleSessions": 6},
            minReplicas=1,
            maxReplicas=6,
        )
    )
    wait_for(lambda: len(a.ready_pods(POOL)) == 2, timeout=90, what="region A's two pods")
    for pod in a.ready_pods(POOL):
        a.report(pod.metadata.name, 0, capacity=2)
    secret(core, ns, "lk-a", _keys(livekit_a.livekit))
    secret(core, ns, "lk-b", _keys(region_b.livekit))
    secret(core, ns, "kube-b", {"kubeconfig": reader_kubeconfig(api_b, region_b.kubeconfig, ns)})
    for cluster, idle in ((a, 4), (b, 6)):
        wait_for(
            lambda c=cluster, i=idle: c.pool(POOL).get("status", {}).get("idleCapacity") == i,
            timeout=90,
            what=f"{idle} idle sessions in a pool",
        )
    return {"a": a, "b": b}


def _keys(lk: LiveKitInfo) -> dict[str, str]:
    return {"apiKey": lk.api_key, "apiSecret": lk.api_secret}


@pytest.fixture(scope="module")
def agent_a(livekit_a: NamedStack) -> Iterator[AgentProcess]:
    agent = AgentProcess(livekit_a.livekit, AGENT)
    try:
        agent.wait_registered()
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def worker_b(
    region_b: NamedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real voicepool-worker in region B: it takes the calls that fail over to B."""
    w = WorkerProcess(
        region_b.livekit,
        tmp_path_factory.mktemp("worker-b"),
        agent=AGENT,
        env={"VOICEPOOL_SESSIONS_PER_POD": "3"},
    )
    try:
        w.wait_ready(timeout=120)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def router(stack_env: Environment, ns: str, operator: OperatorProcess) -> Iterator[RouterProcess]:
    with running_router(stack_env.kubeconfig, ns, TOKEN) as r:
        yield r


@pytest.fixture(scope="module")
def routes(api_client: client.ApiClient, ns: str) -> Routes:
    return Routes(api_client, ns)


@pytest.fixture()
def two_regions(
    regions: dict[str, Any], livekit_a: NamedStack, region_b: NamedStack
) -> list[dict[str, Any]]:
    """A preferred (tier 0) in this cluster; B (tier 1) in the other, through its Secret."""
    return [
        region("a", livekit_a.livekit, "lk-a", POOL),
        region("b", region_b.livekit, "lk-b", POOL, priority=1, kubeconfig_secret="kube-b"),
    ]


def make_route(routes: Routes, name: str, regs: list[dict[str, Any]], **spec: Any) -> str:
    """A route probed every second. An agent may take 10 s to join: the real worker starts a
    job process per call, which on a loaded 2-core CI machine takes seconds (default 3 s)."""
    spec.setdefault("dispatch", {"acceptTimeoutMilliseconds": 10000})
    routes.create(route_manifest(name, regs, probeIntervalSeconds=1, **spec))
    return name


async def close_rooms(*servers: LiveKitInfo) -> None:
    """End every call: the agents leave and their capacity is free again."""
    for lk in servers:
        try:
            async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as lkapi:
                for room in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms:
                    await lkapi.room.delete_room(api.DeleteRoomRequest(room=room.name))
        except Exception:  # a stopped server has no rooms to close
            continue


@asynccontextmanager
async def joined(answer: dict[str, Any]) -> AsyncIterator[rtc.Room]:
    """The client's side: join the room with the router's token and meet the agent there."""
    room = rtc.Room()
    await room.connect(answer["url"], answer["token"])
    try:
        for _ in range(100):  # the agent joined before the router answered; 10 s at most
            if any(
                p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                for p in room.remote_participants.values()
            ):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no agent in room {answer['room']}")
        yield room
    finally:
        await room.disconnect()


async def routed_to(
    router: RouterProcess, route: str, region: str, *servers: LiveKitInfo, within: float = 20
) -> dict[str, Any]:
    """Place calls until one goes to ``region`` (each answered: none may be lost on the way)."""
    deadline = time.monotonic() + within
    while True:
        status, answer, _ = await asyncio.to_thread(router.post, "/v1/sessions", {"route": route})
        assert status == 200, answer
        await close_rooms(*servers)
        if answer["region"] == region:
            return answer
        assert time.monotonic() < deadline, f"no call routed to {region} within {within:.0f}s"
        await asyncio.sleep(0.5)


def kubectl(kubeconfig: str, *args: str) -> str:
    out = subprocess.run(
        [str(KUBERNETES.path("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


# -- the tests -----------------------------------------------------------------------------


async def test_calls_go_to_the_preferred_region_while_it_is_warm(
    router: RouterProcess,
    routes: Routes,
    two_regions: list[dict[str, Any]],
    agent_a: AgentProcess,
    livekit_a: NamedStack,
    stack_env: Environment,
    ns: str,
) -> None:
    name = make_route(routes, "warm", two_regions)
    routes.wait_region(name, "a", ready=True, idleSessions=4)
    routes.wait_region(name, "b", ready=True, idleSessions=6, agentName=AGENT)
    table = kubectl(stack_env.kubeconfig, "get", "voiceroutes", "-n", ns, name)
    print("\n" + table)
    assert "a=4/4 b=6/6" in table and "CapacityAvailable" in table
    try:
        for _ in range(3):
            status, answer, _ = router.post("/v1/sessions", {"route": name})
            assert status == 200, answer
            assert answer["region"] == "a" and answer["url"] == livekit_a.livekit.url
            assert answer["failovers"] == []
            claims = jwt_claims(answer["token"])
            grants = claims["video"]
            assert grants["roomJoin"] is True and grants["room"] == answer["room"]
            assert not {"roomAdmin", "roomCreate", "roomList", "agent"} & set(grants), grants
            assert answer["room"] in agent_a.jobs()  # the dispatch was taken in region A
        assert router.metric("voicepool_router_routed_total", route=name, region="a") == 3
    finally:
        await close_rooms(livekit_a.livekit)


async def test_a_full_region_sends_calls_on_and_scales_up(
    router: RouterProcess,
    routes: Routes,
    regions: dict[str, Any],
    two_regions: list[dict[str, Any]],
    agent_a: AgentProcess,
    worker_b: WorkerProcess,
    livekit_a: NamedStack,
    region_b: NamedStack,
) -> None:
    a: Cluster = regions["a"]
    name = make_route(routes, "spill", two_regions)
    routes.wait_region(name, "a", ready=True, idleSessions=4)
    routes.wait_region(name, "b", ready=True)
    before = {p.metadata.name for p in a.pods(POOL)}
    try:
        for pod in before:  # region A's calls fill every slot
            a.report(pod, 2, capacity=2)
        routes.wait_region(name, "a", ready=True, idleSessions=0, busySessions=4)
        status, answer, _ = router.post("/v1/sessions", {"route": name})
        assert status == 200 and answer["region"] == "b", answer
        async with joined(answer):
            pass

        # A keeps its warm sessions: new pods, whose workers report idle once they run.
        def scaled_up() -> set[str] | None:
            new = {p.metadata.name for p in a.ready_pods(POOL)} - before
            return new if len(new) == 2 else None

        new = wait_for(scaled_up, timeout=60, what="region A scaled up by two pods")
        for pod in new:
            a.report(pod, 0, capacity=2)
        routes.wait_region(name, "a", ready=True, idleSessions=2 * len(new))
        # the router sees the status through its own watch, a moment later than we do
        await routed_to(router, name, "a", livekit_a.livekit, region_b.livekit)
    finally:
        for pod in before:
            a.report(pod, 0, capacity=2)
        await close_rooms(livekit_a.livekit, region_b.livekit)


async def test_a_region_whose_livekit_stops_loses_no_call_and_gets_traffic_back(
    router: RouterProcess,
    routes: Routes,
    two_regions: list[dict[str, Any]],
    agent_a: AgentProcess,
    worker_b: WorkerProcess,
    livekit_a: NamedStack,
    region_b: NamedStack,
) -> None:
    name = make_route(routes, "outage", two_regions)
    routes.wait_region(name, "a", ready=True)
    routes.wait_region(name, "b", ready=True)
    status, answer, _ = router.post("/v1/sessions", {"route": name})
    assert status == 200 and answer["region"] == "a", answer
    await close_rooms(livekit_a.livekit)

    await asyncio.to_thread(worker_b.wait_available)
    registered = agent_a.registrations()
    livekit_a.stop_livekit()
    t_stop = time.monotonic()
    answered: list[tuple[float, float, str]] = []  # (since the stop, request time, region)
    try:
        for _ in range(3):
            t0 = time.monotonic()
            status, answer, _ = router.post("/v1/sessions", {"route": name})
            took = time.monotonic() - t0
            assert status == 200, answer  # no call is lost
            assert answer["region"] == "b", answer
            async with joined(answer):  # the caller meets the real worker's agent in B
                answered.append((time.monotonic() - t_stop, took, answer["region"]))
            await close_rooms(region_b.livekit)
            # B's pool (kwok) says 6 idle sessions; its one real worker has 3: let it be free
            await asyncio.to_thread(worker_b.wait_available)
        for since, took, where in answered:
            print(
                f"\n{since * 1000:.0f} ms after the stop: routed to {where} in {took * 1000:.0f} ms"
            )
        assert router.metric("voicepool_router_failovers_total", route=name, region="a") >= 1
        degraded = wait_for(
            lambda: (c := routes.condition(name, "Degraded")).get("status") == "True" and c,
            timeout=30,
            what="Degraded naming region a",
        )
        assert "region a: LiveKitUnreachable" in degraded["message"], degraded
        assert routes.condition(name, "Ready")["status"] == "True"  # B still takes calls
    finally:
        livekit_a.start_livekit()
        t_back = time.monotonic()

    agent_a.wait_registered(more_than=registered, timeout=60)
    routes.wait_region(name, "a", ready=True, timeout=30)

    await routed_to(router, name, "a", livekit_a.livekit, region_b.livekit, within=60)
    print(f"traffic back in A {time.monotonic() - t_back:.1f} s after its LiveKit restarted")
    assert routes.condition(name, "Degraded")["status"] == "False"
    await close_rooms(livekit_a.livekit, region_b.livekit)


def test_bad_regions_are_degraded_by_name_and_the_others_keep_routing(
    router: RouterProcess,
    routes: Routes,
    regions: dict[str, Any],
    agent_a: AgentProcess,
    livekit_a: NamedStack,
    region_b: NamedStack,
    core: client.CoreV1Api,
    ns: str,
) -> None:
    secret(core, ns, "kube-garbage", {"kubeconfig": "clusters: [not: {a kubeconfig"})
    wrong = "not-" + secrets.token_hex(8)
    secret(core, ns, "lk-wrong", {"apiKey": region_b.livekit.api_key, "apiSecret": wrong})
    name = make_route(
        routes,
        "bad",
        [
            region("nopool", livekit_a.livekit, "lk-a", "absent"),
            region("badkube", region_b.livekit, "lk-b", POOL, kubeconfig_secret="kube-garbage"),
            region("badkey", region_b.livekit, "lk-wrong", POOL, kubeconfig_secret="kube-b"),
            region("a", livekit_a.livekit, "lk-a", POOL, priority=1),
        ],
    )

    def degraded() -> dict[str, Any] | None:
        c = routes.condition(name, "Degraded")
        text = c.get("message", "")
        return c if all(f"region {r}:" in text for r in ("nopool", "badkube", "badkey")) else None

    cond = wait_for(degraded, timeout=60, what="Degraded naming the three bad regions")
    print("\n" + cond["message"])
    msg = cond["message"]
    assert "region nopool: PoolNotFound" in msg and f"{ns}/absent not found" in msg
    assert "region badkube: KubeconfigUnreadable" in msg and "kube-garbage" in msg
    assert "region badkey: LiveKitKeyRejected" in msg
    assert wrong not in msg, "no secret in a status message"
    assert routes.condition(name, "Ready")["status"] == "True"
    routes.wait_region(name, "a", ready=True)
    status, answer, _ = router.post("/v1/sessions", {"route": name})
    assert status == 200 and answer["region"] == "a" and answer["failovers"] == [], answer
    events = Cluster(routes.custom.api_client, ns).events("RegionDown")
    named = {e["note"].split(":")[0] for e in events}
    assert {"region nopool", "region badkube", "region badkey"} <= named, named
    asyncio.run(close_rooms(livekit_a.livekit))


def test_no_token_is_401_and_every_region_full_is_503_with_retry_after(
    router: RouterProcess,
    routes: Routes,
    regions: dict[str, Any],
    livekit_a: NamedStack,
) -> None:
    for token in (None, "not-the-token"):
        status, body, headers = router.post("/v1/sessions", {"route": "warm"}, token=token)
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer", body
    assert router.metric("voicepool_router_rejected_total", reason="unauthorized") >= 2

    a: Cluster = regions["a"]
    a.create_pool(
        pool_manifest(
            "tiny",
            agentName=AGENT,
            sessionsPerPod=1,
            minReplicas=1,
            maxReplicas=1,
            warmPool={"idleSessions": 0},
        )
    )
    name = make_route(routes, "full", [region("a", livekit_a.livekit, "lk-a", "tiny")])
    routes.wait_region(name, "a", ready=True, idleSessions=1)
    (pod,) = a.ready_pods("tiny")
    a.report(pod.metadata.name, 1, capacity=1)
    routes.wait_region(name, "a", ready=True, idleSessions=0)
    full_before = router.metric("voicepool_router_rejected_total", reason="full")
    status, body, headers = router.post("/v1/sessions", {"route": name})
    assert status == 503 and headers.get("Retry-After") == "2", (status, body)
    assert "full" in body["error"]
    assert router.metric("voicepool_router_rejected_total", reason="full") == full_before + 1
    assert routes.condition(name, "Ready")["reason"] == "NoIdleSessions"


def test_secret_names_are_names_in_the_routes_namespace(
    routes: Routes, regions: dict[str, Any], livekit_a: NamedStack, operator: OperatorProcess
) -> None:
    bad = region("a", livekit_a.livekit, "../kube-system/lk", POOL)
    with pytest.raises(client.ApiException) as refused:
        routes.create(route_manifest("traversal", [bad]))
    assert refused.value.status == 422
    assert "credentialsSecretRef.name must be the name of a Secret in the route's own" in str(
        refused.value.body
    )
    # A pool of another namespace of this cluster: the operator refuses to read it.
    other = region("a", livekit_a.livekit, "lk-a", POOL, pool_namespace="kube-system")
    routes.create(route_manifest("elsewhere", [other]))
    cond = wait_for(
        lambda: (
            (c := routes.condition("elsewhere", "Degraded")).get("reason") == "InvalidSpec" and c
        ),
        timeout=30,
        what="InvalidSpec",
    )
    assert "pool.namespace" in cond["message"] and "own namespace" in cond["message"]


# -- telephony: provider routing -----------------------------------------------------------

SIPP = Path(__file__).with_name("sipp")
CALLEE = "+15550101234"


async def sipp(scenario: str, port: int, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "sipp", "-sf", str(SIPP / scenario), "-i", "127.0.0.1", "-p", str(port),
        "-mi", "127.0.0.1", "-mp", str(free_port()), "-rtp_echo", "-m", "1", "-nostdin",
        "-timeout", "60s", "-trace_msg", "-message_file", str(cwd / f"sipp-{port}.msg"),
        cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.timeout(240)
async def test_an_outbound_call_skips_trunks_that_fail_for_the_next(
    router: RouterProcess,
    routes: Routes,
    regions: dict[str, Any],
    stack_env: Environment,
    core: client.CoreV1Api,
    ns: str,
    tmp_path: Path,
) -> None:
    """Three trunks in order: nothing listening (a timeout), a 503, one that answers."""
    if stack_env.sip is None:
        pytest.skip("needs the local stack's livekit-sip")
    lk = stack_env.livekit
    agent = AgentProcess(lk, AGENT)
    dead, busy_port, ok_port = free_port(), free_port(), free_port()
    names = {p: f"route-{p}-{uuid.uuid4().hex[:4]}" for p in (dead, busy_port, ok_port)}
    ids: list[str] = []
    unavailable = await sipp("trunk_unavailable.xml", busy_port, tmp_path)
    answering = await sipp("callee_answer.xml", ok_port, tmp_path)
    try:
        async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as lkapi:
            for port, trunk in names.items():
                made = await lkapi.sip.create_outbound_trunk(
                    api.CreateSIPOutboundTrunkRequest(
                        trunk=api.SIPOutboundTrunkInfo(
                            name=trunk,
                            address=f"127.0.0.1:{port}",
                            numbers=["+15550109999"],
                            transport=api.SIPTransport.SIP_TRANSPORT_UDP,
                        )
                    )
                )
                ids.append(made.sip_trunk_id)
        agent.wait_registered()
        secret(core, ns, "lk-main", _keys(lk))
        name = make_route(
            routes,
            "phone",
            [region("main", lk, "lk-main", POOL, trunks=list(names.values()))],
            calls={"allowedDestinations": ["+1555"], "ringingTimeoutSeconds": 5},
        )
        routes.wait_region(name, "main", ready=True)
        status, body, _ = router.post("/v1/calls", {"route": name, "to": "+4930123456"})
        assert status == 403 and "allowedDestinations" in body["error"]
        t0 = time.monotonic()
        status, body, _ = router.post("/v1/calls", {"route": name, "to": CALLEE}, timeout=120)
        print(f"\nanswered after {time.monotonic() - t0:.1f} s: {body}")
        assert status == 200, body
        assert body["region"] == "main" and body["trunk"] == names[ok_port]
        skipped = {s["trunk"]: s for s in body["skippedTrunks"]}
        assert list(skipped) == [names[dead], names[busy_port]]
        assert skipped[names[busy_port]]["sipStatus"] == 503
        assert router.metric("voicepool_router_trunk_failovers_total", region="main") == 2
        assert router.metric("voicepool_router_routed_total", route=name, kind="call") == 1
        await close_rooms(lk)  # hang up: sipp gets its BYE
        assert await asyncio.wait_for(answering.wait(), 30) == 0, "sipp saw INVITE..BYE"
    finally:
        for proc in (unavailable, answering):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as lkapi:
            for trunk_id in ids:
                await lkapi.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
        agent.stop()
        await close_rooms(lk)
