"""The voice worker against the real livekit-server (and the real apiserver for pod reporting).

Every test runs ``voicepool-worker`` as a subprocess with the pod environment the operator
sets, and talks to it as a synthetic caller: a LiveKit participant that dispatches the agent by
name in its join token and speaks piper-synthesised phrases. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from livekit.api import CreateAgentDispatchRequest, LiveKitAPI
from voicepool_contract import (
    ANN_CAPACITY,
    ANN_DELETION_COST,
    ANN_DRAIN,
    ANN_DRAIN_REASON,
    ANN_REPORTED_AT,
    ANN_SAFE_TO_EVICT,
    ANN_SESSIONS,
    ANN_STATE,
)
from voicepool_contract.phone import mask_number
from voicepool_devstack.testing import Environment, wait_for
from voicepool_worker.caller import Call, CallerConfig

from .worker_harness import WorkerProcess, agent_name

pytestmark = [pytest.mark.livekit]

QUESTION = "what are your opening hours"
DRAINED = "drained: all calls finished, exiting"


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Started workers, all killed at the end whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def start_worker(
    env: Environment,
    tmp_path: Path,
    workers: list[WorkerProcess],
    *,
    agent: str,
    extra: dict[str, str] | None = None,
    ready: bool = True,
) -> WorkerProcess:
    w = WorkerProcess(env.livekit, tmp_path, agent=agent, env=extra)
    workers.append(w)
    if ready:
        w.wait_ready(timeout=90)
    return w


def caller_cfg(env: Environment, agent: str, identity: str = "caller") -> CallerConfig:
    lk = env.livekit
    return CallerConfig(lk.url, lk.api_key, lk.api_secret, agent, identity=identity)


@asynccontextmanager
async def call(env: Environment, agent: str, room: str) -> AsyncIterator[Call]:
    """A caller that joined, was answered by an agent, and heard the greeting out."""
    c = Call(caller_cfg(env, agent), room)
    try:
        await c.start(join_within=30)
        await greeting_heard(c)
        yield c
    finally:
        await c.hangup()


async def greeting_heard(c: Call, within: float = 20.0) -> None:
    assert await c.wait_greeting(within), "the agent never greeted the caller"


async def no_agent_joins(env: Environment, agent: str, room: str, within: float) -> Call:
    """Dispatch the agent to ``room``; assert no agent answers within ``within`` seconds."""
    c = Call(caller_cfg(env, agent, identity="second-caller"), room)
    with pytest.raises(TimeoutError):
        await c.start(join_within=within)
    return c


def user_turns(w: WorkerProcess, room: str) -> list[str]:
    return [
        str(line.get("transcript", "")) for line in w.msgs("user turn") if line.get("room") == room
    ]


# -- the call --------------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_caller_is_answered_with_audio_and_logged_transcript(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    agent = agent_name()
    w = start_worker(stack_env, tmp_path, workers, agent=agent)
    room = f"call-{uuid.uuid4().hex[:6]}"
    async with call(stack_env, agent, room) as c:
        turn = await c.say(QUESTION, answer_timeout=20)
        assert turn.ttfw_ms is not None, f"no spoken answer\n{w.tail()}"
        assert turn.answer_seconds > 1.0, "the answer is a real utterance, not a click"
        print(f"\ntime to first word (caller side): {turn.ttfw_ms:.0f} ms")

    said = user_turns(w, room)
    assert any(all(word in t for word in QUESTION.split()) for t in said), said
    reply = w.wait_log(
        lambda line: line.get("msg") == "agent turn" and "latency" in line,
        timeout=10,
        what="an answered turn with latency",
    )
    assert "Monday" in reply["reply"]
    for key in ("room", "session", "participant"):
        assert reply[key], f"log line without {key}: {reply}"
    assert reply["participant"] == "caller" and reply["room"] == room
    lat = reply["latency"]
    assert {"transcript", "llm_ttft", "tts_ttfb", "ttfw"} <= set(lat), lat
    print(f"agent-side stages (s): {lat}")

    # the session ended when the caller left; the per-turn histograms reached /metrics
    w.wait_log(lambda line: line.get("msg") == "session ended", 20, "session ended")
    assert w.metric("voicepool_worker_time_to_first_word_seconds_count") == 1.0
    assert w.metric("voicepool_worker_sessions_started_total") == 1.0
    assert w.metric("voicepool_worker_sessions_ended_total") == 1.0
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    # every JSON line has the three ids (null outside a call)
    assert all({"room", "session", "participant"} <= set(line) for line in w.lines())


# -- pod reporting ---------------------------------------------------------------------------


def make_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={"app": "voicepool-worker-test"}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="worker", image="example.invalid/w:1")]
            ),
        ),
    )


def annotations(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    pod = core.read_namespaced_pod(name, namespace)
    return dict(pod.metadata.annotations or {})


def wait_annotations(
    core: client.CoreV1Api, namespace: str, name: str, want: dict[str, str], timeout: float = 20
) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        ann = annotations(core, namespace, name)
        return ann if all(ann.get(k) == v for k, v in want.items()) else None

    return wait_for(probe, timeout=timeout, what=f"pod annotations {want}")


def pod_worker_env(
    stack_env: Environment, namespace: str, pod: str, capacity: int
) -> dict[str, str]:
    return {
        "POD_NAME": pod,
        "POD_NAMESPACE": namespace,
        "KUBECONFIG": stack_env.kubeconfig,
        "VOICEPOOL_SESSIONS_PER_POD": str(capacity),
        "VOICEPOOL_POOL": "test-pool",
    }


@pytest.mark.cluster
@pytest.mark.timeout(150)
async def test_pod_annotations_follow_sessions(
    stack_env: Environment,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    pod = "worker-0"
    make_pod(core, namespace, pod)
    agent = agent_name()
    w = start_worker(
        stack_env,
        tmp_path,
        workers,
        agent=agent,
        extra=pod_worker_env(stack_env, namespace, pod, 2),
    )
    idle = {
        ANN_SESSIONS: "0",
        ANN_CAPACITY: "2",
        ANN_STATE: "idle",
    }
    ann = wait_annotations(core, namespace, pod, idle)
    # the eviction hints are the operator's alone (no operator runs here)
    assert ANN_SAFE_TO_EVICT not in ann and ANN_DELETION_COST not in ann
    assert ann[ANN_REPORTED_AT].endswith("Z")

    async with call(stack_env, agent, f"rep-{uuid.uuid4().hex[:6]}"):
        wait_annotations(
            core,
            namespace,
            pod,
            {ANN_SESSIONS: "1", ANN_STATE: "busy"},
        )
        assert ANN_SAFE_TO_EVICT not in annotations(core, namespace, pod)
    wait_annotations(core, namespace, pod, idle)
    # the apiserver shows a patch before the worker has its answer and logs it
    await asyncio.to_thread(
        w.wait_log,
        lambda line: (
            line.get("msg") == "pod annotations reported"
            and str(line.get("reason", "")).endswith("ended")
        ),
        30,
        "the session's end reported",
    )

    # exactly one merge-patch per report: starting, registered, session start, session end
    reports = w.msgs("pod annotations reported")
    assert [r["reason"].split()[0] for r in reports] == [
        "worker",
        "registered",
        "session",
        "session",
    ]
    assert w.metric("voicepool_worker_pod_patches_total") == 4.0


# -- drain -----------------------------------------------------------------------------------


async def drain_scenario(
    stack_env: Environment,
    w: WorkerProcess,
    agent: str,
    trigger: Any,
    *,
    deleted_when_drained: bool = False,
) -> None:
    """A call in progress, then ``trigger()``: no new job, the call goes on, exit 0 at hangup.

    ``deleted_when_drained``: SIGTERM the worker over and over from the moment it says it has
    drained, as the kubelet does when the operator deletes the pod at 0 calls -- the exit that
    is already under way must still be a clean 0, not death by signal.
    """
    room1 = f"d1-{uuid.uuid4().hex[:6]}"
    room2 = f"d2-{uuid.uuid4().hex[:6]}"
    async with call(stack_env, agent, room1) as c:
        first = await c.say(QUESTION)
        assert first.ttfw_ms is not None
        trigger()
        w.wait_log(lambda line: line.get("msg", "").startswith("draining"), 20, "draining")
        for _ in range(100):
            if w.get("/readyz")[0] == 503:
                break
            await asyncio.sleep(0.1)
        assert w.get("/readyz")[0] == 503, "a draining worker is not ready"

        # capacity is 2, so only the drain keeps the second call away
        second = await no_agent_joins(stack_env, agent, room2, within=8)
        await second.hangup()
        assert not w.find(
            lambda line: line.get("msg") == "session started" and line.get("room") == room2
        )

        # the call in progress is still served
        again = await c.say("where are you located")
        assert again.ttfw_ms is not None, f"the call was cut by the drain\n{w.tail()}"
        assert w.proc.poll() is None, "the worker must wait for its caller"
    if deleted_when_drained:
        w.wait_log(lambda line: line.get("msg") == DRAINED, 40, "drained")
        for _ in range(2000):  # bounded: 40 s at most
            if w.proc.poll() is not None:
                break
            w.signal(signal.SIGTERM)
            await asyncio.sleep(0.02)
    code = w.wait_exit(timeout=40)
    assert code == 0, w.tail()
    w.wait_log(lambda line: line.get("msg") == DRAINED, 1, "drained")


@pytest.mark.cluster
@pytest.mark.timeout(180)
async def test_drain_annotation_finishes_call_then_exits(
    stack_env: Environment,
    core: client.CoreV1Api,
    namespace: str,
    tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    pod = "worker-drain"
    make_pod(core, namespace, pod)
    agent = agent_name()
    w = start_worker(
        stack_env,
        tmp_path,
        workers,
        agent=agent,
        extra=pod_worker_env(stack_env, namespace, pod, 2),
    )
    wait_annotations(core, namespace, pod, {ANN_STATE: "idle"})

    def annotate() -> None:
        core.patch_namespaced_pod(
            pod,
            namespace,
            {"metadata": {"annotations": {ANN_DRAIN: "true", ANN_DRAIN_REASON: "scale-down"}}},
        )

    await drain_scenario(stack_env, w, agent, annotate, deleted_when_drained=True)
    ann = annotations(core, namespace, pod)
    assert ann[ANN_STATE] == "draining" and ann[ANN_SESSIONS] == "0", ann
    assert any(
        "scale-down" in line.get("reason", "")
        for line in w.msgs("draining: no new calls; waiting for calls in progress")
    )


@pytest.mark.timeout(150)
async def test_sigterm_finishes_call_then_exits(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    agent = agent_name()
    w = start_worker(
        stack_env, tmp_path, workers, agent=agent, extra={"VOICEPOOL_SESSIONS_PER_POD": "2"}
    )
    await drain_scenario(stack_env, w, agent, lambda: w.signal(signal.SIGTERM))


@pytest.mark.timeout(120)
async def test_second_signal_and_deadline_end_calls_with_a_clear_line(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    agent = agent_name()
    # the deadline: calls still running after VOICEPOOL_DRAIN_TIMEOUT_SECONDS are ended
    slow = start_worker(
        stack_env, tmp_path, workers, agent=agent, extra={"VOICEPOOL_DRAIN_TIMEOUT_SECONDS": "3"}
    )
    async with call(stack_env, agent, f"dl-{uuid.uuid4().hex[:6]}"):
        slow.signal(signal.SIGTERM)
        assert slow.wait_exit(timeout=40) == 1
    assert slow.msgs("drain deadline of 3s reached: ending 1 call(s) in progress now")

    agent2 = agent_name()
    hasty = start_worker(stack_env, tmp_path, workers, agent=agent2)
    async with call(stack_env, agent2, f"ss-{uuid.uuid4().hex[:6]}"):
        hasty.signal(signal.SIGTERM)
        hasty.wait_log(lambda line: line.get("msg", "").startswith("draining"), 10, "draining")
        hasty.signal(signal.SIGTERM)
        assert hasty.wait_exit(timeout=40) == 1
    assert hasty.msgs("second signal (SIGTERM): ending 1 call(s) in progress now")


# -- bad configuration -----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "expect"),
    [
        (
            {"VOICEPOOL_STT": "vosk"},
            "VOICEPOOL_STT='vosk' is not one of",
        ),  # no English weights in a registry package
        ({"VOICEPOOL_LLM": "openai"}, "VOICEPOOL_LLM=openai needs an API key"),
        ({"VOICEPOOL_SESSIONS_PER_POD": "zero"}, "VOICEPOOL_SESSIONS_PER_POD='zero'"),
        (
            {"LIVEKIT_API_SECRET": ""},
            "missing required environment variable(s): LIVEKIT_API_SECRET",
        ),
    ],
)
def test_bad_config_refuses_to_start_with_one_line(
    stack_env: Environment,
    tmp_path: Path,
    workers: list[WorkerProcess],
    env: dict[str, str],
    expect: str,
) -> None:
    w = start_worker(stack_env, tmp_path, workers, agent=agent_name(), extra=env, ready=False)
    assert w.wait_exit(timeout=30) == 2
    err = w.stderr().strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert expect in err and err.startswith("voicepool-worker: configuration error:"), err


@pytest.mark.timeout(60)
def test_pod_reporting_without_api_access_refuses_to_start(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    extra = {"POD_NAME": "p", "POD_NAMESPACE": "default", "KUBECONFIG": str(tmp_path / "none")}
    w = start_worker(stack_env, tmp_path, workers, agent=agent_name(), extra=extra, ready=False)
    assert w.wait_exit(timeout=30) == 2
    errors = [line["msg"] for line in w.lines() if line.get("level") == "error"]
    assert len(errors) == 1 and "no Kubernetes API access" in errors[0], w.tail()
    assert "Traceback" not in w.stderr() + w.log_path.read_text()


# -- telephony -------------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_keypad_press_is_answered_like_the_question_it_stands_for(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Key 1 of the default menu: the caller hears the opening hours, as if they had asked."""
    agent = agent_name()
    w = start_worker(stack_env, tmp_path, workers, agent=agent)
    room = f"dtmf-{uuid.uuid4().hex[:6]}"
    async with call(stack_env, agent, room) as c:
        turn = await c.press("1")
        assert turn.ttfw_ms is not None, f"no spoken answer to key 1\n{w.tail()}"
        ignored = await c.press("9", answer_timeout=3)  # not in the menu: nothing happens
        assert ignored.ttfw_ms is None

    pressed = w.wait_log(lambda line: line.get("msg") == "dtmf received", 10, "dtmf")
    assert (pressed["digit"], pressed["action"], pressed["room"]) == ("1", "say", room)
    assert pressed["from"] == "caller"
    assert any(line.get("digit") == "9" and line["action"] == "unused" for line in w.lines())
    reply = w.wait_log(
        lambda line: line.get("msg") == "agent turn" and "Monday" in line.get("reply", ""),
        10,
        "the opening hours as the answer to key 1",
    )
    assert reply["room"] == room
    w.wait_log(lambda line: line.get("msg") == "session ended", 20, "session ended")
    assert w.metric('voicepool_worker_dtmf_total{action="say"}') == 1.0
    assert w.metric('voicepool_worker_dtmf_total{action="unused"}') == 1.0


@pytest.mark.timeout(150)
async def test_transfer_key_asks_livekit_and_reports_its_refusal(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Key 0 asks the real livekit-server to REFER the caller. This caller joined over WebRTC,
    not SIP, so the server refuses: the worker logs why, counts it, and tells the caller
    instead of leaving them in silence (a real REFER: test_phone_calls.py)."""
    agent = agent_name()
    w = start_worker(
        stack_env, tmp_path, workers, agent=agent, extra={"VOICEPOOL_TRANSFER_TO": "tel:+15550100"}
    )
    room = f"xfer-{uuid.uuid4().hex[:6]}"
    async with call(stack_env, agent, room) as c:
        turn = await c.press("0")
        assert turn.ttfw_ms is not None, f"the caller heard nothing after key 0\n{w.tail()}"
        failed = w.wait_log(lambda line: line.get("msg") == "transfer failed", 40, "transfer")
        # stay on the line until the agent has said so (a caller leaving ends the call)
        await asyncio.to_thread(
            w.wait_log,
            lambda line: "could not transfer" in str(line.get("reply", "")),
            40,
            "the agent telling the caller the transfer failed",
        )

    # The transfer target is a phone number: masked in the log like every number.
    assert failed["to"] == "tel:+1555…0100" and failed["room"] == room and failed["error"]
    said = [line.get("reply", "") for line in w.msgs("agent turn") if line.get("room") == room]
    assert any("Please hold" in r for r in said), said
    assert any("could not transfer" in r for r in said), said
    assert not w.msgs("call transferred")
    w.wait_log(lambda line: line.get("msg") == "session ended", 20, "session ended")
    assert w.metric('voicepool_worker_transfers_total{result="failed"}') == 1.0
    assert w.metric('voicepool_worker_dtmf_total{action="transfer"}') == 1.0
    print(f"\nlivekit-server refused the transfer: {failed['error']} ({failed.get('code')})")


@pytest.mark.timeout(120)
async def test_outbound_dispatch_dials_through_livekit_and_ends_the_job_when_refused(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """A dispatch carrying a phone number makes the agent place the call through LiveKit's SIP
    service. Trunk ``ST_t`` does not exist, so LiveKit refuses: the job ends at once with
    LiveKit's reason instead of waiting for a callee (real calls: test_phone_calls.py)."""
    agent = agent_name()
    w = start_worker(
        stack_env,
        tmp_path,
        workers,
        agent=agent,
        extra={
            "VOICEPOOL_SIP_OUTBOUND_TRUNK": "ST_t",
            "VOICEPOOL_SIP_ALLOWED_DESTINATIONS": "+1555",
        },
    )
    room = f"out-{uuid.uuid4().hex[:6]}"
    lk = stack_env.livekit
    async with LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        await lkapi.agent_dispatch.create_dispatch(
            CreateAgentDispatchRequest(
                agent_name=agent, room=room, metadata=json.dumps({"phone_number": "+15550100"})
            )
        )
    dialled = w.wait_log(lambda line: line.get("msg") == "dialling", 30, "dialling")
    shown = mask_number("+15550100")  # phone numbers are masked in logs by default
    assert (dialled["to"], dialled["trunk"], dialled["room"]) == (shown, "ST_t", room)
    failed = w.wait_log(
        lambda line: str(line.get("msg", "")).startswith("outbound call failed"), 30, "refusal"
    )
    assert failed["to"] == shown and failed["error"], failed
    w.wait_log(lambda line: line.get("msg") == "session ended", 30, "the job to end")
    assert not w.msgs("caller joined")
    assert w.metric("voicepool_worker_outbound_calls_total") == 1.0
    assert not w.metric('voicepool_worker_outbound_calls_total{result="answered"}')
    print(f"\nlivekit-server refused the outbound call: {failed['msg']}: {failed['error']}")


@pytest.mark.timeout(120)
async def test_an_outbound_call_outside_the_allowed_destinations_is_never_dialled(
    stack_env: Environment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The pool may call +1555 numbers only: a dispatch to +44 is refused by the worker itself
    (no SIP request leaves), with one masked log line and a metric, and the job ends."""
    agent = agent_name()
    w = start_worker(
        stack_env,
        tmp_path,
        workers,
        agent=agent,
        extra={
            "VOICEPOOL_SIP_OUTBOUND_TRUNK": "ST_t",
            "VOICEPOOL_SIP_ALLOWED_DESTINATIONS": "+1555",
        },
    )
    room = f"out-{uuid.uuid4().hex[:6]}"
    lk = stack_env.livekit
    async with LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        await lkapi.agent_dispatch.create_dispatch(
            CreateAgentDispatchRequest(
                agent_name=agent, room=room, metadata=json.dumps({"phone_number": "+442071838750"})
            )
        )
    refused = w.wait_log(lambda line: line.get("msg") == "outbound call refused", 30, "refusal")
    assert "allowedDestinations" in refused["error"] and "+1555" in refused["error"]
    w.wait_log(lambda line: line.get("msg") == "session ended", 30, "the job to end")
    assert not w.msgs("dialling")
    assert "+442071838750" not in w.log_text()  # masked everywhere, the error text included
    assert w.metric('voicepool_worker_outbound_calls_total{result="refused"}') == 1.0
