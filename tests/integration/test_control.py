"""Session control on the local stack: ``voicepool-control`` and the runtime's call endpoint.

Real parts only: the stack's apiserver (pools, their LiveKit Secret, the workers' pods, the
Events), livekit-server and livekit-sip, three ``voicepool-worker`` processes (the built-in
receptionist; the example team agent, ``examples/agents/booking``, with llama.cpp's
OpenAI-compatible server as its LLM; a minimal team agent written on ``voicepool_worker.sdk``
alone, ``control_agent.py``, whose LLM echoes its instructions), the service as a process, the
``voicepool`` CLI, WebRTC callers, the SIP test phone and sipp as the callee. No operator
runs: each worker's pod object is made here and the worker reports on it, as under the
operator.

Per agent: a WebRTC call is listed, shown, followed, heard (listen), taken over and steered
(say, instruct, mute, unmute, hang up after the reply); a control message from anyone else is
refused; a SIP call gets a REFER (the phone answers 403: the call goes on, a verb during the
transfer is 409) and then a BYE; an outbound call is placed to sipp, which answers, and the
pool then has no free session (503). Bad input gets its status and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes import config as kconfig
from livekit import api, rtc
from voicepool_contract import ANN_KWOK_REPORT, KWOK_REPORT_NONE, LABEL_POOL
from voicepool_contract import control as names
from voicepool_devstack.kubeconfig import service_account_kubeconfig
from voicepool_devstack.phone import Phone, PhoneConfig
from voicepool_devstack.ports import free_port
from voicepool_devstack.testing import (
    WORKER_SERVICE_ACCOUNT,
    Environment,
    create_namespace,
    wait_for,
)
from voicepool_devstack.versions import HELM
from voicepool_operator.control import livekit as control_lk
from voicepool_operator.telephony import plan as tel
from voicepool_operator.telephony import sync as op_sip
from voicepool_operator.telephony.spec import object_name, parse_telephony
from voicepool_worker.caller import Call, CallerConfig
from voicepool_worker.runtime import records

from .booking_llm import booking_env
from .control_harness import CONTROLLER, READER, ControlService, read_events
from .llm_server import LlamaServer
from .operator_harness import REPO, Cluster, install_crds, pool_manifest
from .test_phone_calls import LIVEKIT_SIP_REFER_FLAKE, sipp_callee
from .worker_harness import WorkerProcess, agent_name

pytestmark = [pytest.mark.livekit, pytest.mark.sip]

KINDS = ("receptionist", "booking", "team")
TOKENS_SECRET = "control-tokens"
TEAM_AGENT = "tests.integration.control_agent:app"
CALLER_NUMBER = "+15550100001"  # the test phone's
CALLEE = "+15550101234"
TRANSFER_TO = "sip:+15550107777@127.0.0.1:25062"
SUPERVISOR_SAYS = "This is your supervisor speaking on the line."
INSTRUCTION = "Offer the blue elephant discount."


@dataclass
class Desk:
    """One pool, its one worker (capacity 1) and its pod object."""

    kind: str
    pool: str
    agent: str
    number: str  # the pool's inbound number
    pod: str
    sipp_port: int
    worker: WorkerProcess
    kubeconfig: str  # the worker's: its ServiceAccount, a token bound to its pod


@pytest.fixture(scope="module")
def ns(core: client.CoreV1Api) -> Iterator[str]:
    """The test namespace; the chart makes its worker ServiceAccount."""
    name = create_namespace(core, f"ctl-{uuid.uuid4().hex[:6]}", worker_service_account=False)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def helm(kubeconfig: str, *args: str) -> None:
    cmd = [str(HELM.path("helm")), *args, "--kubeconfig", kubeconfig]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"


@pytest.fixture(scope="module")
def chart(stack_env: Environment, api_client: client.ApiClient, ns: str) -> Iterator[str]:
    """The chart installed for this namespace, control service on: its RBAC, its admission
    policies and its worker ServiceAccount are what the service and the workers run as."""
    if stack_env.sip is None:
        pytest.skip("needs the local stack's livekit-sip")
    install_crds(api_client)
    release = f"{ns}-voicepool"
    helm(stack_env.kubeconfig, "install", release, str(REPO / "charts" / "voicepool"), "-n", ns,
         "--wait=false", "--set", "operator.replicas=0", "--set", f"peering.name={release}",
         "--set", "dashboard.enabled=false", "--set", "control.enabled=true",
         "--set", "control.replicas=0", "--set", f"control.namespaces={{{ns}}}",
         "--set", f"control.tokensSecretRef.name={TOKENS_SECRET}")  # fmt: skip
    try:
        yield release
    finally:
        helm(stack_env.kubeconfig, "uninstall", release, "-n", ns)


@pytest.fixture(scope="module")
def control(
    stack_env: Environment,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    ns: str,
    chart: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControlService]:
    """voicepool-control as the chart's ServiceAccount (a TokenRequest token), its tokens the
    Secret's (the directory stands for the Secret's volume)."""
    workdir = tmp_path_factory.mktemp("control")
    account = f"{chart}-control"
    wait_for(lambda: core.read_namespaced_service_account(account, ns), timeout=30, what=account)
    kubeconfig = service_account_kubeconfig(api_client, ns, account, workdir / "sa.kubeconfig")
    svc = ControlService(kubeconfig, workdir, namespaces=(ns,))
    core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=TOKENS_SECRET),
            string_data={
                f"read.{READER}": svc.read_token,
                f"control.{CONTROLLER}": svc.control_token,
            },
        ),
    )
    yield svc
    svc.stop()


def lkapi(env: Environment) -> api.LiveKitAPI:
    lk = env.livekit
    return api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret)


def telephony(number: str, sipp_port: int) -> dict[str, Any]:
    return {
        "inbound": {"numbers": [number], "allowedAddresses": ["127.0.0.1/32"]},
        "outbound": {
            "address": f"127.0.0.1:{sipp_port}",
            "numbers": ["+15550109999"],
            "transport": "udp",
            "allowedDestinations": ["+1555"],
        },
    }


async def sip_objects(env: Environment, ns: str, pool: str, agent: str, spec: Any) -> None:
    """The pool's trunks and dispatch rule, made by the operator's own telephony code."""
    async with lkapi(env) as lk:
        plan = tel.plan_sip(ns, pool, agent, spec, await op_sip.observe(lk))
        await op_sip.apply(lk, plan, await op_sip.observe(lk))


def make_pod(core: client.CoreV1Api, ns: str, name: str, pool: str) -> client.V1Pod:
    return core.create_namespaced_pod(
        ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={LABEL_POOL: pool},
                annotations={ANN_KWOK_REPORT: KWOK_REPORT_NONE},
            ),
            spec=client.V1PodSpec(
                service_account_name=WORKER_SERVICE_ACCOUNT,
                containers=[client.V1Container(name="worker", image="example.invalid/w:test")],
            ),
        ),
    )


@pytest.fixture(scope="module")
def desks(
    stack_env: Environment,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    ns: str,
    chart: str,
    tmp_path_factory: pytest.TempPathFactory,
    booking_llm: LlamaServer,
) -> Iterator[dict[str, Desk]]:
    """A pool per agent kind (plus ``empty``: no pod), each with its trunks, its pod and its
    worker, which runs as the chart's worker ServiceAccount with a token bound to that pod."""
    wait_for(
        lambda: core.read_namespaced_service_account(WORKER_SERVICE_ACCOUNT, ns),
        timeout=30,
        what="the chart's worker ServiceAccount",
    )
    cluster = Cluster(api_client, ns)
    cluster.livekit_secret(stack_env.livekit)
    logs = tmp_path_factory.mktemp("workers")
    out: dict[str, Desk] = {}
    for kind in (*KINDS, "empty"):
        pool, agent, port = f"{kind}-desk", agent_name(), free_port()
        number = f"+1555{uuid.uuid4().int % 10**7:07d}"
        tel_spec = telephony(number, port)
        manifest = pool_manifest(
            pool,
            agentName=agent,
            livekit={"url": stack_env.livekit.url, "credentialsSecretRef": {"name": "lk"}},
            sessionsPerPod=1,
            minReplicas=0,
            maxReplicas=2,
            warmPool={"idleSessions": 0},
            telephony=tel_spec,
        )
        cluster.create_pool(manifest)
        if kind == "empty":
            continue
        asyncio.run(sip_objects(stack_env, ns, pool, agent, parse_telephony(tel_spec)))
        pod = f"{pool}-0"
        made = make_pod(core, ns, pod, pool)
        token = service_account_kubeconfig(
            api_client, ns, WORKER_SERVICE_ACCOUNT, logs / f"{pod}.kubeconfig",
            pod=(pod, made.metadata.uid),
        )  # fmt: skip
        env = {
            "POD_NAME": pod,
            "POD_NAMESPACE": ns,
            "VOICEPOOL_POOL": pool,
            "KUBECONFIG": token,
            "VOICEPOOL_SIP_OUTBOUND_TRUNK": object_name(ns, pool, "outbound"),
            "VOICEPOOL_SIP_ALLOWED_DESTINATIONS": "+1555",
            "VOICEPOOL_SIP_RINGING_TIMEOUT": "10",
        }
        if kind == "team":
            env.update(VOICEPOOL_AGENT=TEAM_AGENT, VOICEPOOL_TTS="espeak")
        elif kind == "booking":
            env.update(booking_env(booking_llm))
        w = WorkerProcess(stack_env.livekit, logs, agent=agent, env=env, name=kind)
        out[kind] = Desk(kind, pool, agent, number, pod, port, w, token)
    try:
        for desk in out.values():
            desk.worker.wait_ready(timeout=180)
        yield out
    finally:
        for desk in out.values():
            desk.worker.stop()
        for desk in out.values():
            asyncio.run(sip_objects(stack_env, ns, desk.pool, desk.agent, None))


# -- helpers ------------------------------------------------------------------------------------


async def req(control: ControlService, *args: Any, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    """An HTTP request to the service off the event loop (the callers' audio runs on it)."""
    return await asyncio.to_thread(control.request, *args, **kw)


async def until(probe: Callable[[], Any], within: float, what: str, every: float = 0.3) -> Any:
    """Poll an async-or-sync probe until it is truthy (bounded)."""
    started = time.monotonic()
    deadline = started + within
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            mark(f"{what} after {time.monotonic() - started:.1f}s")
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what} (last: {last!r})")


def mark(step: str) -> None:
    """A timestamped line in the test's captured output: a timed-out test shows its last step."""
    print(f"{time.strftime('%H:%M:%S')} {step}", flush=True)


async def listed(
    control: ControlService, desk: Desk, ns: str, within: float = 20
) -> dict[str, Any]:
    async def one() -> dict[str, Any] | None:
        status, body, _ = await req(
            control, "GET", f"/v1/pools/{ns}/{desk.pool}/calls", token="read"
        )
        assert status == 200, body
        calls = body["calls"]
        return calls[0] if calls and calls[0]["state"] == names.ACTIVE else None

    return dict(await until(one, within, f"a live call in pool {desk.pool}"))


def heard_since(c: Call, t0: float) -> int:
    return sum(1 for t in c.listener.loud_at if t > t0)


async def hears(c: Call, within: float, what: str) -> None:
    t0 = time.monotonic()
    await until(lambda: heard_since(c, t0) > 20, within, what)


def tone_frames(seconds: float, hz: float = 600.0) -> list[rtc.AudioFrame]:
    n = 480  # 10 ms at 48 kHz
    out = []
    for i in range(int(seconds * 100)):
        samples = [int(6000 * math.sin(2 * math.pi * hz * (i * n + k) / 48000)) for k in range(n)]
        data = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
        out.append(rtc.AudioFrame(data, 48000, 1, n))
    return out


@asynccontextmanager
async def joined(url: str, token: str) -> AsyncIterator[rtc.Room]:
    room = rtc.Room()
    await asyncio.wait_for(room.connect(url, token), 30)
    try:
        yield room
    finally:
        await asyncio.wait_for(room.disconnect(), 15)


def pool_events(core: client.CoreV1Api, ns: str, pool: str) -> list[dict[str, Any]]:
    resp = client.EventsV1Api(core.api_client).list_namespaced_event(ns, _preload_content=False)
    items = json.loads(resp.data)["items"]
    return [e for e in items if (e.get("regarding") or {}).get("name") == pool]


# -- bad input, tokens ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_tokens_and_bad_input_get_their_status_and_change_nothing(
    control: ControlService,
    desks: dict[str, Desk],
    ns: str,
    core: client.CoreV1Api,
    stack_env: Environment,
) -> None:
    desk = desks["receptionist"]
    calls_path = f"/v1/pools/{ns}/{desk.pool}/calls"
    status, body, headers = await req(control, "GET", calls_path, token=None)
    assert status == 401 and "bearer token" in body["error"], body
    assert "Bearer" in headers.get("WWW-Authenticate", "")
    assert (await req(control, "GET", calls_path, token="not-a-token-of-ours-at-all"))[0] == 401
    status, body, _ = await req(control, "GET", calls_path, token="read")
    assert status == 200 and body["calls"] == [], body
    status, body, _ = await req(control, "POST", "/v1/calls/any-room/hangup", {}, token="read")
    assert status == 403 and "read" in body["error"], body
    assert (await req(control, "GET", f"/v1/pools/{ns}/no-such-pool/calls"))[0] == 404
    status, body, _ = await req(control, "GET", "/v1/calls/no-such-room")
    assert status == 404 and "no call" in body["error"], body
    # checked before any call is looked up: a bad target, a text over the limit
    status, body, _ = await req(control, "POST", "/v1/calls/x/transfer", {"to": "the front desk"})
    assert status == 400 and "sip:user@host" in body["error"], body
    status, body, _ = await req(control, "POST", "/v1/calls/x/say", {"text": "a" * 1001})
    assert status == 413 and "1000" in body["error"], body
    status, body, _ = await req(control, "POST", "/v1/calls/x/instruct", {"text": ""})
    assert status == 400, body
    # outbound: a number outside the pool's allowed destinations; a pool with no free session
    status, body, _ = await req(control, "POST", calls_path, {"number": "+4930123456"})
    assert status == 400 and "allowed destinations" in body["error"], body
    assert "+4930123456" not in json.dumps(body), "numbers are masked"
    empty = f"/v1/pools/{ns}/empty-desk/calls"
    status, body, headers = await req(control, "POST", empty, {"number": CALLEE})
    assert status == 503 and "no free session" in body["error"], body
    assert headers.get("Retry-After") == "5", headers
    warnings = [e for e in pool_events(core, ns, "empty-desk") if e.get("reason") == "CallDial"]
    assert warnings and warnings[0]["type"] == "Warning" and "alice" in warnings[0]["note"]
    async with lkapi(stack_env) as lk:
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
    assert not [r for r in rooms.rooms if "empty-desk" in r.metadata], "nothing was dispatched"


def _may(authz: client.AuthorizationV1Api, user: str, verb: str, resource: str, ns: str) -> bool:
    group, _, plural = resource.rpartition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, group=group, resource=plural, namespace=ns or None
            ),
        )
    )
    return bool(authz.create_subject_access_review(review).status.allowed)


@pytest.mark.timeout(120)
def test_the_chart_gives_the_service_and_the_workers_no_more_than_they_need(
    control: ControlService,
    desks: dict[str, Desk],
    ns: str,
    chart: str,
    api_client: client.ApiClient,
) -> None:
    """The service reads pools, their Secrets, pods and Events and writes Events, in its
    namespaces only; a worker may create one kind of Event: CallEnded, about its own pod."""
    authz = client.AuthorizationV1Api(api_client)
    user = f"system:serviceaccount:{ns}:{chart}-control"
    allowed = [
        ("list", "voicepool.dev/voiceagentpools", ns),
        ("get", "/secrets", ns),
        ("list", "/pods", ns),
        ("list", "events.k8s.io/events", ns),
        ("create", "events.k8s.io/events", ns),
    ]
    denied = [
        ("get", "/secrets", "default"),
        ("list", "/pods", ""),
        ("create", "/pods", ns),
        ("patch", "/pods", ns),
        ("delete", "/pods", ns),
        ("patch", "voicepool.dev/voiceagentpools", ns),
        ("list", "/secrets", ns),
    ]
    for verb, resource, where in allowed:
        assert _may(authz, user, verb, resource, where), (verb, resource, where)
    for verb, resource, where in denied:
        assert not _may(authz, user, verb, resource, where), (verb, resource, where)

    desk = desks["receptionist"]
    cfg = client.Configuration()
    kconfig.load_kube_config(config_file=desk.kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as worker_api:
        events = client.EventsV1Api(worker_api)
        record = {"v": 1, "pool": f"{ns}/{desk.pool}", "state": "ended"}

        def event(**change: Any) -> dict[str, Any]:
            body = records.event_body("room-x", record, pod=desk.pod, namespace=ns, pool=desk.pool)
            for key, value in change.items():
                if key == "annotations":
                    body["metadata"]["annotations"].update(value)
                else:
                    body[key] = value
            return body

        def refused(body: dict[str, Any]) -> str:
            try:
                events.create_namespaced_event(ns, body)
            except client.ApiException as e:
                assert e.status in (403, 422), e
                return str(e.body)
            return ""

        other = {"apiVersion": "v1", "kind": "Pod", "name": "someone-else", "namespace": ns}
        wait_for(lambda: refused(event(regarding=other)), timeout=30, what="the events policy")
        assert "worker-events-own-pod" in refused(event(regarding=other))
        assert "worker-events-call-ended" in refused(event(reason="Killing"))
        assert "worker-events-record-only" in refused(event(annotations={"evil": "x"}))
        too_big = {names.ANN_CALL_RECORD: "x" * 20000}
        assert "worker-events-record-only" in refused(event(annotations=too_big))
        assert refused(event()) == "", "a CallEnded Event about its own pod is allowed"


# -- a WebRTC call: every voice verb, listen, take over, follow, refuse ---------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_webrtc_call_is_listed_followed_heard_steered_and_kept_after_it_ends(
    control: ControlService,
    desks: dict[str, Desk],
    ns: str,
    core: client.CoreV1Api,
    stack_env: Environment,
    tmp_path: Path,
    kind: str,
) -> None:
    desk = desks[kind]
    w = desk.worker
    await asyncio.to_thread(w.wait_available, 60)
    lk = stack_env.livekit
    room = f"ctl-{uuid.uuid4().hex[:6]}"
    c = Call(CallerConfig(lk.url, lk.api_key, lk.api_secret, desk.agent, identity="caller"), room)
    follower = None
    try:
        await c.start(join_within=60)
        assert await c.wait_greeting(40), "the agent never greeted"
        row = await listed(control, desk, ns)
        assert (row["room"], row["pod"], row["direction"]) == (room, desk.pod, "inbound"), row
        sid = row["sid"]
        assert sid.startswith("RM_"), row
        # the CLI: a kubectl-like table, and JSON
        out = await asyncio.to_thread(
            control.cli, "calls", "list", "-n", ns, desk.pool, token="read"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0].split()[:3] == ["ROOM", "SID", "CALLER"], out.stdout
        assert sid in out.stdout and desk.pod in out.stdout, out.stdout
        follower = control.follow(room, tmp_path / "events.jsonl")

        # a turn: its latency stages are on the record
        mark("a turn")
        turn = await c.say("what are your opening hours", answer_timeout=30)
        assert turn.ttfw_ms is not None, "the agent did not answer"

        async def show() -> dict[str, Any]:
            status, body, _ = await req(control, "GET", f"/v1/calls/{sid}", token="read")
            assert status == 200, body
            return dict(body["call"])

        call = await until(lambda: _turned(show), 20, "the turn's latency on the record")
        first = call["turn_latencies"][0]
        assert {"ttfw", "transcript", "tts_ttfb"} <= set(first), first
        row = await listed(control, desk, ns)
        assert row["ttfw_last_s"] is not None and row["turns"] >= 1, row

        # say
        mark("say")
        t_say = time.monotonic()
        status, body, _ = await req(
            control, "POST", f"/v1/calls/{room}/say", {"text": SUPERVISOR_SAYS}
        )
        assert status == 200, body
        await until(lambda: heard_since(c, t_say) > 30, 30, "the caller hearing what was said")
        await asyncio.to_thread(w.wait_log, lambda x: x.get("reply") == SUPERVISOR_SAYS, 20, "say")
        await c.wait_agent_quiet(quiet=1.0, within=20)

        # instruct: the agent answers with it in its context (the echoing LLM says it back)
        mark("instruct")
        replies = len(w.msgs("agent turn"))
        status, body, _ = await req(
            control, "POST", f"/v1/calls/{room}/instruct", {"text": INSTRUCTION, "respond": True}
        )
        assert status == 200, body
        if kind == "team":
            await asyncio.to_thread(
                w.wait_log, lambda x: INSTRUCTION in str(x.get("reply", "")), 30, "the instruction"
            )
        else:
            await until(lambda: len(w.msgs("agent turn")) > replies, 60, "the instructed reply")
        await c.wait_agent_quiet(quiet=1.0, within=20)

        # listen: a hidden, subscribe-only participant hears the agent
        mark("listen")
        status, grant, _ = await req(control, "POST", f"/v1/calls/{room}/listen", {})
        assert status == 200 and grant["hidden"] is True, grant
        heard = await _listen_while(control, grant, room, c)
        assert heard > 20, f"the listener heard {heard} loud frames"

        # mute: the agent neither speaks nor answers; say is refused while muted
        mark("mute")
        status, body, _ = await req(control, "POST", f"/v1/calls/{room}/mute", {})
        assert status == 200 and body["call"]["muted"] is True, body
        status, body, _ = await req(control, "POST", f"/v1/calls/{room}/say", {"text": "hello"})
        assert status == 409 and "muted" in body["error"], body
        await c.wait_agent_quiet(quiet=1.0, within=10)
        t_mute = time.monotonic()
        muted_turn = await c.say("can you hear me", answer_timeout=6)
        assert muted_turn.ttfw_ms is None and heard_since(c, t_mute) == 0, "a muted agent answered"
        status, body, _ = await req(control, "POST", f"/v1/calls/{room}/unmute", {})
        assert status == 200 and body["call"]["muted"] is False, body
        status, _, _ = await req(
            control, "POST", f"/v1/calls/{room}/say", {"text": SUPERVISOR_SAYS}
        )
        assert status == 200
        await hears(c, 30, "the unmuted agent")
        await c.wait_agent_quiet(quiet=1.0, within=20)

        # take over: a person speaks (the caller hears them), the agent is muted until they leave
        mark("take over")
        status, grant, _ = await req(control, "POST", f"/v1/calls/{room}/takeover", {})
        assert status == 200 and grant["hidden"] is False, grant
        assert (await show())["muted"] is True
        async with joined(grant["url"], grant["token"]) as person:
            source = rtc.AudioSource(48000, 1)
            track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
            opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await person.local_participant.publish_track(track, opts)
            t_person = time.monotonic()
            for frame in tone_frames(2.0):
                await source.capture_frame(frame)
            await until(lambda: heard_since(c, t_person) > 20, 10, "the caller hearing the person")
        await until(lambda: _unmuted(show), 15, "the agent back once the person left")

        # control messages from anyone but the control service are refused (and logged)
        mark("control messages from anyone but the control service are refused (and logged)")
        await _refused_from_the_caller(c, w, desk, room)

        # hang up after the current reply
        mark("hang up after the current reply")
        status, _, _ = await req(
            control, "POST", f"/v1/calls/{room}/say", {"text": SUPERVISOR_SAYS}
        )
        assert status == 200
        status, body, _ = await req(
            control, "POST", f"/v1/calls/{sid}/hangup", {"after_reply": True}
        )
        assert status == 202, body
        await until(lambda: not c.room.isconnected(), 40, "the call to end")
        hung = await asyncio.to_thread(
            w.wait_log, lambda x: x.get("msg") == "hanging up", 10, "hang-up"
        )
        said = [x for x in w.msgs("agent turn") if x.get("reply") == SUPERVISOR_SAYS]
        assert said and said[-1]["ts"] <= hung["ts"], "the reply was finished before the hang-up"
    finally:
        await c.hangup()

    # the ended call stays readable; acting on it is 404
    async def ended() -> dict[str, Any] | None:
        status, body, _ = await req(control, "GET", f"/v1/calls/{room}", token="read")
        return body["call"] if status == 200 and body["call"].get("live") is False else None

    record = await until(ended, 30, "the ended call's record")
    assert record["state"] == names.ENDED and "control service" in record["end_reason"], record
    assert record["turn_latencies"], record
    status, body, _ = await req(control, "POST", f"/v1/calls/{room}/say", {"text": "hi"})
    assert status == 404 and "ended" in body["error"], body
    out = await asyncio.to_thread(control.cli, "calls", "show", sid, token="read")
    assert out.returncode == 0 and "ended" in out.stdout and "TTFW" in out.stdout, out.stdout

    # the follower saw the turns, the actions and the end, then stopped
    assert follower is not None
    await asyncio.to_thread(follower.wait, 30)
    events = read_events(tmp_path / "events.jsonl")
    kinds = {e.get("kind") for e in events}
    assert {"turn", "action", "state"} <= kinds, events
    assert any("latency" in e for e in events if e.get("kind") == "turn"), events
    verbs = [e["verb"] for e in events if e.get("kind") == "action"]
    for verb in ("say", "instruct", "mute", "unmute", "takeover", "release", "hangup"):
        assert verb in verbs, verbs
    assert events[-1]["event"] == "ended", events[-1]

    # every action is an Event on the pool (who, which call, what) and a count
    reasons = {e["reason"] for e in pool_events(core, ns, desk.pool) if "alice" in e["note"]}
    for reason in (
        "CallSay",
        "CallInstruct",
        "CallMute",
        "CallUnmute",
        "CallListen",
        "CallTakeover",
        "CallHangup",
    ):
        assert reason in reasons, reasons
    assert control.metric('voicepool_control_actions_total{status="200",verb="say"}') >= 2
    assert (
        w.metric('voicepool_worker_control_messages_total{result="refused",verb="-"}') or 0
    ) >= 4


@pytest.mark.timeout(180)
async def test_a_room_that_outlives_its_call_leaves_the_list(
    control: ControlService, desks: dict[str, Desk], ns: str, stack_env: Environment
) -> None:
    """The caller hangs up while someone else stays in the room (as a SIP leg or a listener
    can): the call has ended, so the list drops it although LiveKit still has the room."""
    desk = desks["team"]
    w = desk.worker
    await asyncio.to_thread(w.wait_available, 60)
    lk = stack_env.livekit
    room = f"ctl-{uuid.uuid4().hex[:6]}"
    c = Call(CallerConfig(lk.url, lk.api_key, lk.api_secret, desk.agent, identity="caller"), room)
    grant = api.VideoGrants(room_join=True, room=room, can_publish=False)
    stays = api.AccessToken(lk.api_key, lk.api_secret).with_identity("bystander")
    try:
        await c.start(join_within=60)
        assert await c.wait_greeting(40), "the agent never greeted"
        row = await listed(control, desk, ns)
        assert row["room"] == room, row
        async with joined(lk.url, stays.with_grants(grant).to_jwt()):
            await c.hangup()
            await asyncio.to_thread(
                w.wait_log,
                lambda x: x.get("msg") == "call ended" and x.get("room") == room,
                30,
                "the call's end",
            )

            async def gone() -> bool:
                status, body, _ = await req(
                    control, "GET", f"/v1/pools/{ns}/{desk.pool}/calls", token="read"
                )
                assert status == 200, body
                return not [r for r in body["calls"] if r["room"] == room]

            await until(gone, 10, "the ended call to leave the list")
            async with lkapi(stack_env) as lk_api:
                rooms = await lk_api.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert rooms.rooms, "the room is still there (the bystander is in it)"
    finally:
        await c.hangup()


async def _turned(show: Callable[[], Any]) -> dict[str, Any] | None:
    call = await show()
    return call if call.get("turn_latencies") else None


async def _unmuted(show: Callable[[], Any]) -> bool:
    call = await show()
    return call["muted"] is False and call.get("takeover") is None


async def _listen_while(control: ControlService, grant: dict[str, Any], room: str, c: Call) -> int:
    """Join hidden with the grant; count the agent's loud frames while it says something."""
    loud = 0
    async with joined(grant["url"], grant["token"]) as listener:
        assert grant["identity"] not in c.room.remote_participants, "a listener is hidden"
        with pytest.raises(Exception):  # noqa: B017  (subscribe-only: refused)
            source = rtc.AudioSource(48000, 1)
            track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
            await listener.local_participant.publish_track(track, rtc.TrackPublishOptions())
        stream_done = asyncio.Event()

        async def count(track: rtc.Track) -> None:
            nonlocal loud
            async for ev in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
                data = memoryview(ev.frame.data)
                if data and max(abs(int(s)) for s in data[::16]) > 2000:
                    loud += 1
                if stream_done.is_set():
                    return

        tasks: list[asyncio.Task[None]] = []

        def on_track(track: rtc.Track, *_: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                tasks.append(asyncio.create_task(count(track)))

        listener.on("track_subscribed", on_track)
        for p in listener.remote_participants.values():
            for pub in p.track_publications.values():
                if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO:
                    on_track(pub.track)
        await asyncio.sleep(1.0)
        status, body, _ = await req(
            control, "POST", f"/v1/calls/{room}/say", {"text": SUPERVISOR_SAYS}
        )
        assert status == 200, body
        await until(lambda: loud > 20, 30, "the listener hearing the agent")
        stream_done.set()
        for t in tasks:
            t.cancel()
    await c.wait_agent_quiet(quiet=1.0, within=20)
    return loud


async def _refused_from_the_caller(c: Call, w: WorkerProcess, desk: Desk, room: str) -> None:
    """The caller sends control messages itself: with no token, with a token of another identity,
    and one genuine message twice (a replay). Each is refused and logged; none acts."""
    agent = next(
        p.identity
        for p in c.room.remote_participants.values()
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )
    server = control_lk.Server(c.cfg.url, c.cfg.api_key, c.cfg.api_secret)
    body = json.dumps({"verb": "hangup", "args": {}, "nonce": uuid.uuid4().hex})

    def token(identity: str, for_room: str) -> str:
        grants = api.VideoGrants(room_admin=True, room=for_room)
        t = api.AccessToken(c.cfg.api_key, c.cfg.api_secret).with_identity(identity)
        return t.with_grants(grants).to_jwt()

    text = "Only once, please."
    genuine = control_lk.message(server, room, "say", {"text": text})
    tampered = json.dumps({**json.loads(genuine), "body": body})
    before = len(w.msgs("control message refused"))
    payloads = [
        json.dumps({"body": body}),
        json.dumps({"token": token("mallory", room), "body": body}),
        json.dumps({"token": token(names.CONTROL_IDENTITY, "another-room"), "body": body}),
        tampered,
        genuine,
        genuine,
    ]
    answers = []
    for payload in payloads:
        try:
            answers.append(
                await c.room.local_participant.perform_rpc(
                    destination_identity=agent, method=names.RPC_METHOD, payload=payload
                )
            )
        except rtc.RpcError as e:
            answers.append(f"refused: {e.message}")
    assert all(a.startswith("refused") for a in answers[:4]), answers
    assert json.loads(answers[4])["status"] == 200, answers
    assert answers[5] == answers[4], "a message delivered twice is answered alike"
    await until(
        lambda: len(w.msgs("control message refused")) - before >= 4, 10, "four refusals logged"
    )
    whys = [x["why"] for x in w.msgs("control message refused")[before:]]
    for why in ("not a control message", "mallory", "not for this room", "not for this message"):
        assert any(why in y for y in whys), (why, whys)
    await asyncio.to_thread(w.wait_log, lambda x: x.get("reply") == text, 20, "the genuine say")
    await asyncio.sleep(2.0)
    assert len([x for x in w.msgs("agent turn") if x.get("reply") == text]) == 1, "said once"
    assert c.room.isconnected(), "no refused message acted"
    await c.wait_agent_quiet(quiet=1.0, within=20)


# -- SIP: REFER (and 409 meanwhile), then BYE; an outbound call sipp answers --------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_phone_call_gets_a_refer_then_a_bye_from_the_control_service(
    control: ControlService, desks: dict[str, Desk], ns: str, stack_env: Environment, kind: str
) -> None:
    desk = desks[kind]
    w = desk.worker
    await asyncio.to_thread(w.wait_available, 60)
    assert stack_env.sip is not None
    cfg = PhoneConfig(server=stack_env.sip.address, to=desk.number, notify="SIP/2.0 403 Forbidden")
    async with Phone(cfg) as p:
        answer = await p.answered()
        await p.speech_heard(float(answer["t"]), 30, gap_ms=3000)
        row = await listed(control, desk, ns)
        assert row["caller"] == "+1555…0001" and CALLER_NUMBER not in json.dumps(row), row
        sid = row["sid"]
        status, body, _ = await req(
            control, "POST", f"/v1/calls/{sid}/transfer", {"to": "front desk"}
        )
        assert status == 400, body
        status, body, _ = await req(
            control, "POST", f"/v1/calls/{sid}/transfer", {"to": TRANSFER_TO}
        )
        assert status == 202 and body["accepted"] == "transfer", body
        status, body, _ = await req(control, "POST", f"/v1/calls/{sid}/say", {"text": "hello"})
        assert status == 409 and "transfer" in body["error"], body
        refer = await p.wait_for("refer", 40, after=float(answer["t"]))
        assert refer["refer_to"] == f"<{TRANSFER_TO}>", refer
        result = await asyncio.to_thread(
            w.wait_log,
            lambda x: x.get("msg") in ("call transferred", "transfer failed"),
            50,
            "the transfer's result",
        )
        if LIVEKIT_SIP_REFER_FLAKE in str(result.get("error", "")):
            pytest.xfail(f"livekit-sip's REFER transaction failed by itself: {result['error']}")
        assert result["msg"] == "transfer failed", result  # the phone said 403: the call goes on

        async def active() -> bool:
            status, body, _ = await req(control, "GET", f"/v1/calls/{sid}", token="read")
            return status == 200 and body["call"]["state"] == names.ACTIVE

        await until(active, 20, "the call active again after the refused transfer")
        assert not p.seen("bye")
        status, body, _ = await req(control, "POST", f"/v1/calls/{sid}/hangup", {})
        assert status == 202, body
        await p.wait_for("bye", 30)
    await asyncio.to_thread(w.wait_log, lambda x: x.get("msg") == "session ended", 30, "the end")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", KINDS)
async def test_dial_places_a_call_the_callee_answers_and_a_busy_pool_gets_503(
    control: ControlService,
    desks: dict[str, Desk],
    ns: str,
    core: client.CoreV1Api,
    tmp_path: Path,
    kind: str,
) -> None:
    desk = desks[kind]
    w = desk.worker
    await asyncio.to_thread(w.wait_available, 60)
    path = f"/v1/pools/{ns}/{desk.pool}/calls"
    sipp = await sipp_callee("callee_answer.xml", desk.sipp_port, tmp_path)
    try:
        out = await asyncio.to_thread(
            control.cli,
            "calls",
            "dial",
            "-n",
            ns,
            desk.pool,
            CALLEE,
            "--opening",
            "Hello, this is the dentist calling.",
            "-o",
            "json",
        )
        assert out.returncode == 0, out.stderr
        placed = json.loads(out.stdout)
        room = placed["room"]
        assert placed["to"] == "+1555…1234", placed
        await asyncio.to_thread(
            w.wait_log,
            lambda x: x.get("msg") == "outbound call answered",
            60,
            "the callee answering",
        )
        row = await listed(control, desk, ns)
        assert (row["room"], row["direction"], row["caller"]) == (room, "outbound", "+1555…1234")
        # the pool's one session is taken: a second call has to wait
        status, body, headers = await req(control, "POST", path, {"number": CALLEE})
        assert status == 503 and headers.get("Retry-After"), (status, body)
        status, body, _ = await req(control, "POST", f"/v1/calls/{room}/hangup", {})
        assert status == 202, body
        assert await asyncio.wait_for(sipp.wait(), 30) == 0, "sipp saw INVITE..BYE"
    finally:
        if sipp.returncode is None:
            sipp.kill()
            await sipp.wait()
    dials = [e for e in pool_events(core, ns, desk.pool) if e.get("reason") == "CallDial"]
    assert any(e["type"] == "Normal" and "+1555…1234" in e["note"] for e in dials), dials
    assert CALLEE not in json.dumps(dials), "numbers are masked in Events"
