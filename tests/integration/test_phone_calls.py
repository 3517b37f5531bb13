"""Real phone calls: the voicepool-phone (siptest, G.711, RFC 4733) -> livekit-sip -> the worker.

The stack here is livekit-server + redis + livekit-sip on loopback (no Kubernetes needed); the
pool's trunk and dispatch rule are made by the operator's own telephony code (``plan_sip`` +
``sip.apply``) against the real LiveKit SIP API. Every assertion is on what the phone sent and
received (RTP, SIP) or on what the worker logged -- nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from voicepool_contract.phone import mask_number
from voicepool_devstack.errors import DevstackError
from voicepool_devstack.phone import HANGUP_PHRASE, Phone, PhoneConfig, write_speech, write_tone
from voicepool_devstack.ports import free_port
from voicepool_devstack.stack import LocalStack, StackConfig, StackState
from voicepool_operator.telephony import plan as tel
from voicepool_operator.telephony import sync as op_sip
from voicepool_operator.telephony.spec import object_name, parse_telephony

from . import loopback
from .worker_harness import WorkerProcess, agent_name

pytestmark = [pytest.mark.livekit]

MENU = (
    "1=what are your opening hours;"
    "4=Bookings. Press 1 for a cleaning.;4>1=i would like to book a cleaning;"
    "5=collect:my account number is;9=hangup;0=transfer"
)
TRANSFER_TO = "sip:+15550107777@127.0.0.1:25062"
QUESTION = "what are your opening hours"


@pytest.fixture(scope="module")
def sip_stack() -> Iterator[StackState]:
    """livekit-server + redis + livekit-sip, for this module only."""
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-sip-"))
    stack = LocalStack(StackConfig(workdir=workdir, kubernetes=False))
    try:
        state = stack.start()
    except DevstackError as e:
        pytest.fail(f"could not start LiveKit SIP: {e}")
    try:
        yield state
    finally:
        stack.stop(remove=not os.environ.get("VOICEPOOL_KEEP_LOGS"))


def lkapi(state: StackState) -> api.LiveKitAPI:
    assert state.livekit is not None
    lk = state.livekit
    return api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret)


@asynccontextmanager
async def pool_numbers(
    state: StackState, agent: str, numbers: list[str], **inbound: object
) -> AsyncIterator[tel.SipPlan]:
    """The operator's reconcile of ``spec.telephony`` for one pool, undone afterwards."""
    pool = f"p-{uuid.uuid4().hex[:6]}"
    spec = parse_telephony(
        {"inbound": {"numbers": numbers, "allowedAddresses": ["127.0.0.1/32"], **inbound}}
    )
    async with lkapi(state) as lk:
        plan = tel.plan_sip("t", pool, agent, spec, await op_sip.observe(lk))
        await op_sip.apply(lk, plan, await op_sip.observe(lk))
    try:
        yield plan
    finally:
        async with lkapi(state) as lk:
            gone = tel.plan_sip("t", pool, agent, None, await op_sip.observe(lk))
            await op_sip.apply(lk, gone, await op_sip.observe(lk))


@pytest.fixture()
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def worker(
    state: StackState, tmp: Path, started: list[WorkerProcess], agent: str, **env: str
) -> WorkerProcess:
    w = WorkerProcess(state.livekit, tmp, agent=agent, env={"VOICEPOOL_DTMF_MENU": MENU, **env})
    started.append(w)
    w.wait_ready(timeout=120)
    return w


def number() -> str:
    return f"+1555{uuid.uuid4().int % 10**7:07d}"


async def rooms(state: StackState) -> list[str]:
    async with lkapi(state) as lk:
        return [r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms]


async def rooms_left(state: StackState, settle_s: float = 10.0) -> list[str]:
    """The rooms still there once those being deleted are gone: livekit-server lists a room
    for a moment after its deletion was asked (a CI run under load saw one)."""
    for _ in range(max(1, int(settle_s / 0.5))):
        left = await rooms(state)
        if not left:
            break
        await asyncio.sleep(0.5)
    return left


def phone(state: StackState, to: str, **kw: object) -> Phone:
    assert state.sip is not None
    return Phone(PhoneConfig(server=state.sip.address, to=to, **kw))  # type: ignore[arg-type]


async def answered_and_greeted(p: Phone) -> float:
    answer = await p.answered()
    print(f"\nINVITE -> 200 OK: {answer['invite_ms']:.0f} ms")
    # a TTS that falls behind real time (a busy 2-core box) leaves gaps: merge up to 3 s
    greeting = await p.speech_heard(float(answer["t"]), 30, gap_ms=3000)
    assert greeting["end"] - greeting["start"] > 500, f"greeting too short: {greeting}"
    return float(greeting["t"])


#: What a caller says to be put through to a person, and how they say it again when the agent
#: did not understand (over G.711 the offline STT now and then mishears the first: CI heard
#: "that ought to real part and weird").
ASK_FOR_A_PERSON = ("can i talk to a real person please", "let me speak to somebody please")
#: The same for hanging up (``HANGUP_PHRASE`` first).
SAY_GOODBYE = (HANGUP_PHRASE, "that is all, bye bye")


async def say_until(
    p: Phone, phrases: tuple[str, ...], tmp_path: Path, done: Callable[[], bool], each_s: float
) -> None:
    """Say each phrase in turn until ``done()``, as a caller repeats themselves when the agent
    did not understand; the caller's own wait then fails with its message if none worked."""
    loop = asyncio.get_running_loop()
    for i, text in enumerate(phrases):
        await p.play(write_speech(text, tmp_path / f"say-{i}.wav"))
        deadline = loop.time() + each_s
        while loop.time() < deadline:
            if done():
                return
            await asyncio.sleep(0.2)


@pytest.mark.timeout(240)
async def test_inbound_call_is_greeted_answered_logged_and_ends_with_a_bye(
    sip_stack: StackState, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent)
    question = write_speech(QUESTION, tmp_path / "question.wav")
    async with pool_numbers(sip_stack, agent, [to]) as plan:
        assert plan.numbers == (to,)
        async with phone(sip_stack, to, record=tmp_path / "heard.wav") as p:
            after = await answered_and_greeted(p)
            await p.play(question)
            played = await p.wait_for("play_end", 20, after=after)
            voice_end = float(played["voice_end"])
            answer = await p.speech_heard(voice_end, 30)
            ttfw = answer["start"] - voice_end
            print(f"phone-leg time to first word: {ttfw:.0f} ms")
            assert answer["end"] - answer["start"] > 1000, "the answer is speech, not a click"
            # "goodbye" in words: the dialog's hang-up goes through call control -> BYE
            await say_until(p, SAY_GOODBYE, tmp_path, lambda: bool(p.seen("bye")), 20)
            try:
                await p.wait_for("bye", 20)
            except TimeoutError:
                pytest.fail(
                    f"no BYE; the worker heard {[x.get('transcript') for x in w.msgs('user turn')]}"
                )
        assert (tmp_path / "heard.wav").stat().st_size > 8000 * 2 * 3  # > 3 s recorded
    turns = [str(x.get("transcript", "")) for x in w.msgs("user turn")]
    assert any("opening" in t or "hours" in t for t in turns), turns
    replies = [str(x.get("reply", "")) for x in w.msgs("agent turn")]
    assert any("Monday" in r for r in replies), replies
    # the goodbye is said, then the call ends (an action decided while the reply was being
    # written, preemptively, once deleted the room before a word of it was spoken)
    said = [x for x in w.msgs("agent turn") if "goodbye" in str(x.get("reply", "")).lower()]
    hung = w.msgs("hanging up")
    assert said and hung and said[0]["ts"] <= hung[0]["ts"], (said, hung)
    assert not said[0]["interrupted"], said[0]
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    assert await rooms_left(sip_stack) == []
    # The caller's number reached the worker (the room is call-_<caller>_..., the SIP
    # participant's attributes carry it) but no log line: masked everywhere by default,
    # livekit-agents' own records included (privacy.maskPhoneNumbers).
    caller = PhoneConfig(server=sip_stack.sip.address, to=to).caller
    text = w.log_text()
    assert caller not in text and caller[1:] not in text, "the caller's number is in the logs"
    assert mask_number(caller) in text, "the call's room should be logged, masked"


@pytest.mark.timeout(240)
async def test_a_phone_call_keeps_every_socket_on_loopback(
    sip_stack: StackState, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Mid-call, the phone, livekit-sip, redis, livekit-server and the worker reach nothing off
    loopback, save what their libraries allow no other way (``loopback.EXCUSED``)."""
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent)
    async with pool_numbers(sip_stack, agent, [to]), phone(sip_stack, to) as p:
        await answered_and_greeted(p)
        assert p.pid is not None
        groups = [*sip_stack.pids.values(), w.proc.pid]
        verdict = await asyncio.to_thread(loopback.check, groups, [os.getpid(), p.pid])
        await p.hangup()
    print("\n" + verdict.report())
    for server in ("livekit-sip", "livekit-server", "redis-server", "voicepool-phone"):
        assert verdict.sockets_of(server), f"no socket of {server} seen:\n{verdict.report()}"
    rtp = [o for o in verdict.sockets_of("voicepool-phone") if o.socket.proto.startswith("udp")]
    assert rtp, f"the phone holds no RTP socket mid-call:\n{verdict.report()}"
    assert not verdict.failures, "sockets off loopback:\n" + verdict.report()


@pytest.mark.timeout(240)
async def test_keypad_multi_digit_entry_nested_menu_and_hangup_key(
    sip_stack: StackState, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent, VOICEPOOL_DTMF_INTER_DIGIT_TIMEOUT="3")
    async with pool_numbers(sip_stack, agent, [to]), phone(sip_stack, to) as p:
        after = await answered_and_greeted(p)
        await p.press("51234#")  # account number, ended with '#'
        sent = await p.wait_for("dtmf_sent", 30, after=after)
        w.wait_log(lambda x: "You entered 1 2 3 4" in str(x.get("reply", "")), 30, "read-back")
        await p.press("5987")  # no '#': the inter-digit timeout ends the entry
        await p.wait_for("dtmf_sent", 30, after=float(sent["t"]))
        w.wait_log(lambda x: "You entered 9 8 7" in str(x.get("reply", "")), 30, "timeout")
        await p.press("41")  # submenu, then its key
        w.wait_log(
            lambda x: x.get("transcript") == "i would like to book a cleaning",
            30,
            "the nested menu's entry reaching the dialog",
        )
        await p.press("9")  # hang up from the keypad: the phone gets a BYE
        await p.wait_for("bye", 30)
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    assert await rooms_left(sip_stack) == []


# livekit-sip v1.8.0 now and then fails its own REFER transaction although the phone answered
# 202 (seen in about one run in four of this file): twirp "canceled", "transaction failed to
# complete (0 intermediate responses)". Only that exact upstream error is excused, as an xfail.
LIVEKIT_SIP_REFER_FLAKE = "transaction failed to complete (0 intermediate responses)"


def refer_result(w: WorkerProcess, timeout: float) -> dict[str, Any]:
    """The worker's transfer result ("call transferred" or "transfer failed")."""
    r = w.wait_log(
        lambda x: x.get("msg") in ("call transferred", "transfer failed"), timeout, "a result"
    )
    if LIVEKIT_SIP_REFER_FLAKE in str(r.get("error", "")):
        pytest.xfail(f"livekit-sip's REFER transaction failed by itself: {r['error']}")
    return r


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("notify", "succeeds", "why"),
    [
        ("SIP/2.0 200 OK", True, ""),
        ("SIP/2.0 403 Forbidden", False, "403|permission"),
        ("none", False, "timed out|deadline"),  # no NOTIFY: LiveKit gives up after 30 s
    ],
)
async def test_transfer_by_refer_reports_the_notify(
    sip_stack: StackState,
    tmp_path: Path,
    workers: list[WorkerProcess],
    notify: str,
    succeeds: bool,
    why: str,
) -> None:
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent, VOICEPOOL_TRANSFER_TO=TRANSFER_TO)
    async with pool_numbers(sip_stack, agent, [to]), phone(sip_stack, to, notify=notify) as p:
        after = await answered_and_greeted(p)
        await p.press("0")
        refer = await p.wait_for("refer", 40, after=after)
        assert refer["refer_to"] == f"<{TRANSFER_TO}>"
        if succeeds:
            done = refer_result(w, 30)
            assert done["msg"] == "call transferred", done
            await p.wait_for("bye", 30)  # livekit-sip ends our leg after NOTIFY 200
        else:
            failed = refer_result(w, 50)
            assert failed["msg"] == "transfer failed", failed
            assert re.search(why, str(failed).lower()), failed
            w.wait_log(
                lambda x: "could not transfer" in str(x.get("reply", "")),
                30,
                "the agent saying the transfer failed",
            )
            assert not p.seen("bye"), "the call goes on after a refused transfer"
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    await asyncio.sleep(0.5)
    assert await rooms_left(sip_stack) == []


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("notify", "succeeds"), [("SIP/2.0 200 OK", True), ("SIP/2.0 403 Forbidden", False)]
)
async def test_caller_asking_for_a_person_in_words_is_referred(
    sip_stack: StackState,
    tmp_path: Path,
    workers: list[WorkerProcess],
    notify: str,
    succeeds: bool,
) -> None:
    """The dialog trigger: spoken words (not a key) -> call control -> REFER -> NOTIFY result."""
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent, VOICEPOOL_TRANSFER_TO=TRANSFER_TO)
    async with pool_numbers(sip_stack, agent, [to]), phone(sip_stack, to, notify=notify) as p:
        after = await answered_and_greeted(p)
        await say_until(p, ASK_FOR_A_PERSON, tmp_path, lambda: bool(p.seen("refer", after)), 25)
        try:
            refer = await p.wait_for("refer", 30, after=after)
        except TimeoutError:
            heard = [x.get("transcript") for x in w.msgs("user turn")]
            pytest.fail(f"no REFER; the worker heard {heard}, actions {w.msgs('dialog action')}")
        assert refer["refer_to"] == f"<{TRANSFER_TO}>"
        action = w.wait_log(lambda x: x.get("msg") == "dialog asked for a transfer", 5, "dialog")
        assert "human" in str(action.get("reason")), action
        assert not p.seen("dtmf_sent"), "no key was pressed: the words did it"
        if succeeds:
            done = refer_result(w, 30)
            assert done["msg"] == "call transferred", done
            await p.wait_for("bye", 30)  # livekit-sip ends our leg after NOTIFY 200
        else:
            failed = refer_result(w, 50)
            assert failed["msg"] == "transfer failed", failed
            assert re.search("403|permission", str(failed).lower()), failed
            w.wait_log(
                lambda x: "could not transfer" in str(x.get("reply", "")),
                30,
                "the agent saying the transfer failed",
            )
            assert not p.seen("bye"), "the call goes on after a refused transfer"
    assert w.metric('voicepool_worker_dialog_actions_total{action="transfer"}') == 1.0
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    await asyncio.sleep(0.5)
    assert await rooms_left(sip_stack) == []


@pytest.mark.timeout(240)
async def test_a_call_when_every_pod_is_full_rings_then_gets_busy_and_leaks_nothing(
    sip_stack: StackState, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Capacity 1, one call up: the second caller hears ringing, then 486 at the trunk's
    ringing timeout; the first call is untouched and nothing is left afterwards."""
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent)
    async with (
        pool_numbers(sip_stack, agent, [to], ringingTimeoutSeconds=6),
        phone(sip_stack, to) as first,
    ):
        await answered_and_greeted(first)
        async with phone(sip_stack, to, caller="+15550100002", answer_timeout_s=30) as second:
            with pytest.raises(ConnectionError, match="486"):
                await second.answered()
            failed = second.seen("dial_failed")[0]
            print(f"\nevery pod full: 486 after {float(failed['after_ms']):.0f} ms")
        assert not first.seen("bye"), "the call in progress is untouched"
        assert w.metric("voicepool_worker_active_sessions") == 1.0
        # livekit-server closes the busy caller's (empty) room after its departure timeout
        for _ in range(90):
            if len(await rooms(sip_stack)) == 1:
                break
            await asyncio.sleep(0.5)
        assert len(await rooms(sip_stack)) == 1, "the busy caller's room is gone"
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    await asyncio.sleep(0.5)
    assert await rooms_left(sip_stack) == []


@pytest.mark.timeout(120)
async def test_bad_inputs_get_defined_sip_answers(sip_stack: StackState, tmp_path: Path) -> None:
    """Unknown number: livekit-sip never answers (the phone gives up); wrong password: 401."""
    async with phone(sip_stack, number(), answer_timeout_s=4.0) as p:
        with pytest.raises(ConnectionError, match="no final answer"):
            await p.answered()
    pool = f"p-{uuid.uuid4().hex[:6]}"
    to = number()
    spec = parse_telephony({"inbound": {"numbers": [to], "authSecretRef": {"name": "x"}}})
    async with lkapi(sip_stack) as lk:
        plan = tel.plan_sip(
            "t",
            pool,
            "nobody",
            spec,
            await op_sip.observe(lk),
            inbound_auth=tel.Credentials("alice", "right"),
        )
        await op_sip.apply(lk, plan, await op_sip.observe(lk))
        try:
            async with phone(sip_stack, to, username="alice", password="wrong") as p:
                with pytest.raises(ConnectionError, match="401"):
                    await p.answered()
        finally:
            gone = tel.plan_sip("t", pool, "nobody", None, await op_sip.observe(lk))
            await op_sip.apply(lk, gone, await op_sip.observe(lk))


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"VOICEPOOL_IDLE_TIMEOUT_SECONDS": "5"}, "Are you still there?"),
        ({"VOICEPOOL_MAX_CALL_SECONDS": "12"}, "time limit for this call"),
    ],
)
async def test_idle_and_length_limits_end_the_call_with_a_bye(
    sip_stack: StackState,
    tmp_path: Path,
    workers: list[WorkerProcess],
    env: dict[str, str],
    said: str,
) -> None:
    """A silent caller is prompted, then hung up on; a call at its length limit is ended."""
    agent, to = agent_name(), number()
    w = worker(sip_stack, tmp_path, workers, agent, **env)
    async with pool_numbers(sip_stack, agent, [to]), phone(sip_stack, to) as p:
        await answered_and_greeted(p)
        await p.wait_for("bye", 60)  # the phone stays silent until the agent hangs up
    w.wait_log(lambda x: said in str(x.get("reply", "")), 10, f"the agent saying {said!r}")
    w.wait_log(lambda x: x.get("msg") == "hanging up", 10, "hang-up")
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    assert await rooms_left(sip_stack) == []


SIPP_DIR = Path(__file__).with_name("sipp")
CALLEE = "+15550101234"
#: The only numbers the pools of these tests may call (spec.telephony.outbound.allowedDestinations).
DESTINATIONS = "+1555"


@asynccontextmanager
async def outbound_trunk(state: StackState, agent: str, address: str) -> AsyncIterator[str]:
    """The pool's outbound trunk made by the operator's code; yields its LiveKit name."""
    pool = f"p-{uuid.uuid4().hex[:6]}"
    spec = parse_telephony(
        {
            "outbound": {
                "address": address,
                "numbers": ["+15550109999"],
                "transport": "udp",
                "allowedDestinations": [DESTINATIONS],
            }
        }
    )
    async with lkapi(state) as lk:
        plan = tel.plan_sip("t", pool, agent, spec, await op_sip.observe(lk))
        await op_sip.apply(lk, plan, await op_sip.observe(lk))
    try:
        yield object_name("t", pool, "outbound")
    finally:
        async with lkapi(state) as lk:
            gone = tel.plan_sip("t", pool, agent, None, await op_sip.observe(lk))
            await op_sip.apply(lk, gone, await op_sip.observe(lk))


async def sipp_callee(scenario: str, port: int, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "sipp",
        "-sf",
        str(SIPP_DIR / scenario),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(free_port()),
        "-rtp_echo",
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        "60s",
        "-trace_msg",
        "-message_file",
        str(cwd / "sipp.msg"),
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def dispatch_outbound(state: StackState, agent: str, opening: str) -> str:
    room = f"out-{uuid.uuid4().hex[:6]}"
    meta = json.dumps({"phone_number": CALLEE, "opening": opening})
    async with lkapi(state) as lk:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent, room=room, metadata=meta)
        )
    return room


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("scenario", "result"),
    [
        ("callee_answer.xml", "answered"),
        ("callee_busy.xml", "busy"),
        ("callee_noanswer.xml", "no-answer"),
        (None, "dead"),
    ],
)
async def test_outbound_calls_report_a_clear_result_and_free_the_pod(
    sip_stack: StackState,
    tmp_path: Path,
    workers: list[WorkerProcess],
    scenario: str | None,
    result: str,
) -> None:
    agent, port = agent_name(), free_port()
    opening = "Hello, this is the dentist calling about your appointment."
    async with outbound_trunk(sip_stack, agent, f"127.0.0.1:{port}") as trunk:
        w = worker(
            sip_stack,
            tmp_path,
            workers,
            agent,
            VOICEPOOL_SIP_OUTBOUND_TRUNK=trunk,
            VOICEPOOL_SIP_ALLOWED_DESTINATIONS=DESTINATIONS,
            VOICEPOOL_SIP_RINGING_TIMEOUT="5",
        )
        sipp = await sipp_callee(scenario, port, tmp_path) if scenario else None
        try:
            await dispatch_outbound(sip_stack, agent, opening)
            if result == "answered":
                w.wait_log(lambda x: x.get("msg") == "outbound call answered", 60, "answered")
                w.wait_log(lambda x: x.get("reply") == opening, 30, "the requested opening")
                assert sipp is not None
                # the agent hangs up on "goodbye"? here: the test ends the call by its room
                async with lkapi(sip_stack) as lk:
                    for name in await rooms(sip_stack):
                        await lk.room.delete_room(api.DeleteRoomRequest(room=name))
                assert await asyncio.wait_for(sipp.wait(), 30) == 0, "sipp saw INVITE..BYE"
            else:
                failed = w.wait_log(
                    lambda x: str(x.get("msg", "")).startswith("outbound call failed"),
                    60,
                    "a failed outbound call",
                )
                print(f"\n{result}: {failed['msg']} ({failed.get('error')})")
                if result != "dead":
                    assert failed["msg"] == f"outbound call failed: {result}", failed
                assert CALLEE not in str(failed), "numbers are masked in logs"
        finally:
            if sipp is not None and sipp.returncode is None:
                sipp.kill()
                await sipp.wait()
        w.wait_log(lambda x: x.get("msg") in ("session ended", "session failed"), 60, "end")
        assert w.metric("voicepool_worker_active_sessions") == 0.0, "no capacity leaked"
        label = "answered" if result == "answered" else None
        total = w.metric("voicepool_worker_outbound_calls_total")
        assert total == 1.0, (label, total)
        await asyncio.sleep(0.5)
        assert await rooms_left(sip_stack) == []


COLLEAGUE = "+15550107777"


async def quiet(p: Phone) -> None:
    """Until the phone hears nothing (its current voice segment, if any, has ended)."""
    starts, ends = p.seen("voice_start"), p.seen("voice_end")
    if starts and (not ends or float(starts[-1]["t"]) > float(ends[-1]["t"])):
        await p.wait_for("voice_end", 15, after=float(starts[-1]["t"]))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("trigger", ["keypad", "dialog"])
async def test_warm_transfer_briefs_a_colleague_privately_then_bridges_the_two(
    sip_stack: StackState, tmp_path: Path, workers: list[WorkerProcess], trigger: str
) -> None:
    """Agent dials a colleague (sipp, echoing its RTP) into the call, briefs it on a track the
    caller cannot hear, then hands over: the caller's tone comes back through the colleague's
    leg (caller -> colleague -> caller), the agent is out, and the caller's BYE ends both legs."""
    agent, to, port = agent_name(), number(), free_port()
    tone = write_tone(tmp_path / "tone.wav")
    async with (
        outbound_trunk(sip_stack, agent, f"127.0.0.1:{port}") as trunk,
        pool_numbers(sip_stack, agent, [to]),
    ):
        w = worker(
            sip_stack,
            tmp_path,
            workers,
            agent,
            VOICEPOOL_SIP_OUTBOUND_TRUNK=trunk,
            VOICEPOOL_SIP_ALLOWED_DESTINATIONS=DESTINATIONS,
            VOICEPOOL_WARM_TRANSFER_TO=COLLEAGUE,
        )
        sipp = await sipp_callee("callee_answer.xml", port, tmp_path)
        try:
            async with phone(sip_stack, to, record=tmp_path / "heard.wav") as p:
                after = await answered_and_greeted(p)
                if trigger == "keypad":
                    await p.press("0")
                else:
                    await say_until(
                        p,
                        ASK_FOR_A_PERSON,
                        tmp_path,
                        lambda: bool(w.msgs("warm transfer: dialling a colleague")),
                        25,
                    )
                briefed = await asyncio.to_thread(  # the phone's events keep coming meanwhile
                    w.wait_log,
                    lambda x: x.get("msg") == "warm transfer: colleague briefed",
                    90,
                    "briefing",
                )
                handed = await asyncio.to_thread(
                    w.wait_log,
                    lambda x: x.get("msg") == "warm transfer: handed over",
                    10,
                    "hand-over",
                )
                assert float(briefed["seconds"]) > 2.0, briefed  # a spoken summary, not a click
                began, ended = p.at(float(briefed["began"])), p.at(float(briefed["ended"]))
                assert p.seen("voice_start", after=after), "the caller heard the hold message"
                leaked = [
                    e for e in p.seen("voice_start", after=began + 300) if float(e["t"]) < ended
                ]
                assert not leaked, f"the caller heard the briefing: {leaked}"
                await quiet(p)  # e.g. the tail of the colleague's echo of its briefing
                before = float(p.events[-1]["t"])
                await p.play(tone)
                start = await p.wait_for("play_start", 10, after=before)
                echo = await p.wait_for("voice_start", 10, after=float(start["t"]))
                end = await p.wait_for("play_end", 10, after=float(start["t"]))
                assert float(echo["t"]) < float(end["t"]), "the tone came back during the tone"
                loop_ms = float(echo["t"]) - float(start["t"])
                print(f"\ncaller -> colleague -> caller: {loop_ms:.0f} ms")
                await p.press("1")  # keys now belong to the caller and colleague
                await p.wait_for("dtmf_sent", 10, after=float(end["t"]))
                keys = [x for x in w.msgs("dtmf received") if x["ts"] > handed["ts"]]
                assert not keys, f"the agent acted on a key after the hand-over: {keys}"
                assert not p.seen("bye"), "the call goes on with the colleague"
            # the caller hung up (its BYE): the agent ends the room, the colleague gets a BYE
            assert await asyncio.wait_for(sipp.wait(), 30) == 0, "sipp saw INVITE..BYE"
        finally:
            if sipp.returncode is None:
                sipp.kill()
                await sipp.wait()
    assert w.metric('voicepool_worker_transfers_total{result="warm"}') == 1.0
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    await asyncio.sleep(0.5)
    assert await rooms_left(sip_stack) == []


@pytest.mark.timeout(240)
async def test_warm_transfer_to_a_busy_colleague_brings_the_caller_back(
    sip_stack: StackState, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Colleague answers 486: its leg is gone, the agent says so, and the caller (unmuted) is
    heard and answered again."""
    agent, to, port = agent_name(), number(), free_port()
    question = write_speech(QUESTION, tmp_path / "question.wav")
    async with (
        outbound_trunk(sip_stack, agent, f"127.0.0.1:{port}") as trunk,
        pool_numbers(sip_stack, agent, [to]),
    ):
        w = worker(
            sip_stack,
            tmp_path,
            workers,
            agent,
            VOICEPOOL_SIP_OUTBOUND_TRUNK=trunk,
            VOICEPOOL_SIP_ALLOWED_DESTINATIONS=DESTINATIONS,
            VOICEPOOL_WARM_TRANSFER_TO=COLLEAGUE,
        )
        sipp = await sipp_callee("callee_busy.xml", port, tmp_path)
        try:
            async with phone(sip_stack, to) as p:
                await answered_and_greeted(p)
                await p.press("0")
                failed = await asyncio.to_thread(
                    w.wait_log, lambda x: x.get("msg") == "warm transfer failed", 60, "busy"
                )
                assert "486" in str(failed) or "busy" in str(failed).lower(), failed
                said = await asyncio.to_thread(
                    w.wait_log,
                    lambda x: "no colleague is free" in str(x.get("reply", "")),
                    60,
                    "sorry",
                )
                await p.play(question)  # the caller is heard again: the dialog answers
                heard = await asyncio.to_thread(
                    w.wait_log,
                    lambda x: x.get("msg") == "user turn" and x["ts"] > said["ts"],
                    60,
                    "the caller heard again after the failed transfer",
                )
                await asyncio.to_thread(  # (whatever the narrowband STT made of the words)
                    w.wait_log,
                    lambda x: x.get("msg") == "agent turn" and x["ts"] > heard["ts"],
                    60,
                    "an answer after the failed transfer",
                )
                assert not p.seen("bye"), "the call goes on with the agent"
        finally:
            if sipp.returncode is None:
                sipp.kill()
                await sipp.wait()
    assert w.metric('voicepool_worker_transfers_total{result="warm-failed"}') == 1.0
    w.wait_log(lambda x: x.get("msg") == "session ended", 30, "session ended")
    assert w.metric("voicepool_worker_active_sessions") == 0.0
    await asyncio.sleep(0.5)
    assert await rooms_left(sip_stack) == []
