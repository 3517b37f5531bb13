"""Phone-leg latency: real SIP calls from the voicepool-phone, beside the WebRTC caller.

One ``voicepool-worker`` (embedded offline providers) behind livekit-server + redis +
livekit-sip; the pool's number is provisioned by the operator's own telephony code. Printed:

* INVITE -> 200 OK, as the phone measures it (the agent is dispatched, joins, publishes its
  track; livekit-sip answers only then);
* phone-leg time to first word: from the end of the caller's voicing in the G.711 RTP the
  phone sends (the last 20 ms frame above the loudness floor leaves the phone) to the first
  loud RTP packet the phone receives -- transcoding, jitter buffers and both hops included;
* the same question over WebRTC (the synthetic caller of ``bench/worker_latency.py``:
  end of its speech -> first loud agent frame), side by side, with the ratio.

    python bench/phone_latency.py [--calls 3] [--turns 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from livekit import api
from results import Goal, goal_table, rewrite
from voicepool_devstack.phone import Phone, PhoneConfig, write_speech
from voicepool_devstack.stack import LocalStack, StackConfig, StackState
from voicepool_operator.telephony import plan as tel
from voicepool_operator.telephony import sync as op_sip
from voicepool_operator.telephony.spec import parse_telephony
from voicepool_worker.caller import Call, CallerConfig
from voicepool_worker.latency import percentile

from tests.integration.worker_harness import WorkerProcess, agent_name

PHRASES = ("what are your opening hours", "where are you located")
MISS_MS = 3000.0  # an unanswered turn, as bench/worker_latency.py counts it
GOAL_P50_MS, GOAL_P90_MS = 600.0, 850.0
NUMBER = "+15550100000"


def pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {percentile(values, 50):6.0f} ms   p95 {percentile(values, 95):6.0f} ms   "
        f"n={len(values)}"
    )


async def provision(state: StackState, agent: str) -> None:
    assert state.livekit is not None
    lk = state.livekit
    spec = parse_telephony(
        {
            "inbound": {
                "numbers": [NUMBER],
                "ringingTimeoutSeconds": 90,
                "allowedAddresses": ["127.0.0.1/32"],
            }
        }
    )
    async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as lkapi:
        observed = await op_sip.observe(lkapi)
        plan = tel.plan_sip("bench", "phone", agent, spec, observed)
        await op_sip.apply(lkapi, plan, observed)


FULL = "worker is at full capacity, marking as unavailable"
FREE = "worker is below capacity, marking as available"


def available(worker: WorkerProcess) -> bool:
    """livekit-agents has told LiveKit that the worker takes jobs again.

    A session count of 0 is not enough: the worker reports its load about once a second, and
    livekit-server drops (never retries) a dispatch that finds no available worker, so a call
    placed in that second would ring until its ringing timeout (docs/telephony.md).
    """
    return len(worker.msgs(FREE)) >= len(worker.msgs(FULL))


async def idle(worker: WorkerProcess) -> None:
    """Between calls: the last call ended and the worker is available again, bounded."""
    for _ in range(600):
        if worker.metric("voicepool_worker_active_sessions") == 0.0 and available(worker):
            return
        await asyncio.sleep(0.1)
    print("  (the worker was not available again within 60 s)", flush=True)


@dataclass
class Leg:
    """One leg's turns: the caller-side TTFW and, per turn, the agent's own part of it."""

    ttfw: list[float] = field(default_factory=list)
    agent: list[float] = field(default_factory=list)  # agent's VAD end of speech -> first frame
    outside: list[float] = field(default_factory=list)  # ttfw - agent: transport both ways
    written: list[float] = field(default_factory=list)  # phone only: the old, early stamp
    missed: int = 0  # turns not answered: each counts as MISS_MS in the percentiles


async def agent_part(worker: WorkerProcess, seen: int) -> float | None:
    """The agent's own TTFW (ms) of its next turn after ``seen`` logged ones, bounded."""
    for _ in range(50):
        turns = [t for t in worker.msgs("agent turn") if t.get("latency")]
        if len(turns) > seen:
            return float(turns[seen]["latency"]["ttfw"]) * 1000
        await asyncio.sleep(0.1)
    return None


def measured_turns(worker: WorkerProcess) -> int:
    return len([t for t in worker.msgs("agent turn") if t.get("latency")])


async def phone_calls(
    state: StackState, worker: WorkerProcess, wavs: list[Path], calls: int
) -> tuple[list[float], Leg]:
    assert state.sip is not None
    answers, leg = [], Leg()
    for i in range(calls):
        async with Phone(
            PhoneConfig(server=state.sip.address, to=NUMBER, answer_timeout_s=60)
        ) as p:
            answer = await p.answered()
            answers.append(float(answer["invite_ms"]))
            after = float((await p.speech_heard(float(answer["t"]), 30))["t"])
            for wav in wavs:
                seen = measured_turns(worker)
                await p.play(wav)
                played = await p.wait_for("play_end", 30, after=after)
                voice_end = float(played["voice_end"])
                try:
                    heard = await p.speech_heard(voice_end, 20)
                except TimeoutError:
                    print(f"  call {i + 1}: no answer to {wav.stem}", flush=True)
                    leg.ttfw.append(MISS_MS)  # a miss is not left out of the percentiles
                    leg.missed += 1
                    continue
                ttfw = heard["start"] - voice_end
                leg.ttfw.append(ttfw)
                leg.written.append(heard["start"] - float(played["voice_end_written"]))
                after = float(heard["t"])
                note(
                    f"call {i + 1}: INVITE->200 {answer['invite_ms']:.0f} ms,",
                    leg,
                    ttfw,
                    await agent_part(worker, seen),
                )
        await idle(worker)  # the room is deleted; the worker takes the next call
    return answers, leg


def note(prefix: str, leg: Leg, ttfw: float, agent: float | None) -> None:
    line = f"  {prefix} ttfw {ttfw:.0f} ms"
    if agent is not None:
        leg.agent.append(agent)
        leg.outside.append(ttfw - agent)
        line += f" = agent {agent:.0f} ms + outside the agent {ttfw - agent:.0f} ms"
    print(line, flush=True)


async def webrtc_calls(state: StackState, worker: WorkerProcess, agent: str, calls: int) -> Leg:
    assert state.livekit is not None
    lk = state.livekit
    cfg = CallerConfig(lk.url, lk.api_key, lk.api_secret, agent, identity="bench-webrtc")
    leg = Leg()
    for i in range(calls):
        c = Call(cfg, f"bench-{uuid.uuid4().hex[:6]}")
        try:
            await c.start(join_within=30)
            await c.wait_greeting(20)
            for text in PHRASES:
                seen = measured_turns(worker)
                turn = await c.say(text, answer_timeout=20)
                if turn.ttfw_ms is not None:
                    leg.ttfw.append(turn.ttfw_ms)
                    note(f"call {i + 1}:", leg, turn.ttfw_ms, await agent_part(worker, seen))
                else:
                    leg.ttfw.append(MISS_MS)
                    leg.missed += 1
        finally:
            await c.hangup()
        await idle(worker)
    return leg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3, help="calls per leg (default 3)")
    parser.add_argument("--no-results", action="store_true", help="leave docs/results.md")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-phone-bench-"))
    stack = LocalStack(StackConfig(workdir=workdir / "stack", kubernetes=False))
    worker: WorkerProcess | None = None
    try:
        state = stack.start()
        agent = agent_name()
        worker = WorkerProcess(state.livekit, workdir, agent=agent)
        worker.wait_ready(timeout=120)
        asyncio.run(provision(state, agent))
        wavs = [write_speech(t, workdir / f"{t.replace(' ', '_')}.wav") for t in PHRASES]
        print("phone leg (voicepool-phone -> livekit-sip -> worker), G.711 u-law over RTP")
        answers, phone = asyncio.run(phone_calls(state, worker, wavs, args.calls))
        print("WebRTC leg (synthetic caller -> livekit-server -> worker), Opus")
        webrtc = asyncio.run(webrtc_calls(state, worker, agent, args.calls))
        load = os.getloadavg()[0]
    finally:
        if worker is not None:
            worker.stop()
        stack.stop(remove=not os.environ.get("VOICEPOOL_KEEP_LOGS"))
    print()
    print("how: the phone stamps the RTP send time of the last voiced 20 ms frame it sends and")
    print(
        "the first loud packet it receives (RMS >= 200, the WebRTC caller's speech floor), on one"
    )
    print("clock; INVITE -> 200 OK is its SIP client's. 'agent' is the worker's own TTFW of the")
    print("turn (its VAD's end of speech -> first reply frame published), 'outside' the rest:")
    print(f"uplink + downlink through livekit-sip or WebRTC. Load average {load:.1f}.")
    print(f"INVITE -> 200 OK (phone)        : {pct(answers)}")
    print(f"time to first word, phone leg   : {pct(phone.ttfw)}")
    print(f"  of it in the agent            : {pct(phone.agent)}")
    print(f"  of it outside the agent       : {pct(phone.outside)}")
    print(f"  stamped at mixer write (old)  : {pct(phone.written)}")
    print(f"time to first word, WebRTC leg  : {pct(webrtc.ttfw)}")
    print(f"  of it in the agent            : {pct(webrtc.agent)}")
    print(f"  of it outside the agent       : {pct(webrtc.outside)}")
    if phone.ttfw and webrtc.ttfw:
        ratio = percentile(phone.ttfw, 50) / percentile(webrtc.ttfw, 50)
        print(f"phone / WebRTC (p50)            : {ratio:.2f}x")
    goals = []
    for q, limit in ((50, GOAL_P50_MS), (90, GOAL_P90_MS)):
        got = percentile(phone.ttfw, q) if phone.ttfw else float("nan")
        web = percentile(webrtc.ttfw, q) if webrtc.ttfw else float("nan")
        goals.append(
            Goal(
                f"phone-leg TTFW p{q} (RTP, misses at {MISS_MS:.0f} ms)",
                f"<= {limit:.0f} ms",
                "n/a" if got != got else f"{got:.0f} ms",
                "n/a" if web != web else f"WebRTC leg {web:.0f} ms",
                None if got != got else got <= limit,
            )
        )
    table = goal_table(goals)
    print("\n".join(table))
    if not args.no_results:
        body = [
            f"{args.calls} calls per leg, {len(PHRASES)} questions each; the phone misses "
            f"{phone.missed}, WebRTC misses {webrtc.missed}; INVITE -> 200 OK {pct(answers)}; "
            f"phone TTFW in the agent {pct(phone.agent)}, outside it {pct(phone.outside)}.",
            "",
            *table,
            "",
        ]
        print(f"results: {rewrite('phone_latency', body)}")
    missed = any(g.ok is False for g in goals)
    return 0 if phone.ttfw and len(answers) == args.calls and not missed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
