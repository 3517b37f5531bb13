"""Caller scenarios shared by the voice-loop tests and ``bench/worker_latency.py``.

Each one drives a real synthetic caller (``voicepool_worker.caller``) through the real
livekit-server against a real worker process, and judges the outcome from the worker's own
log (user turns with their commit time, replies with ``interrupted``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from voicepool_worker.caller import BargeIn, Call, CallerConfig, TurnResult

from .worker_harness import WorkerProcess

LONG_QUESTION = "what are your opening hours"  # answered with a ~7 s reply
ECHO_QUESTIONS = (
    LONG_QUESTION,
    "where are you located",
    "how much does a cleaning cost",
    "can i book an appointment",
)
SPEAKERPHONE_GAIN_DB = -10.0
ECHO_DELAY_MS = 100.0


def caller(w: WorkerProcess, url: str, key: str, secret: str, tag: str, **kw: object) -> Call:
    cfg = CallerConfig(url, key, secret, w.agent, identity=f"caller-{tag}")
    return Call(cfg, f"{tag}-{uuid.uuid4().hex[:6]}", **kw)  # type: ignore[arg-type]


@dataclass
class EchoOutcome:
    room: str
    asked: list[TurnResult] = field(default_factory=list)
    agent_talk_s: float = 0.0
    spurious: int = 0  # user turns committed while the caller was silent
    interrupted: int = 0  # agent replies cut short
    at_hangup: int = 0  # user turns committed as the caller hung up (never answered)
    user_turns: list[str] = field(default_factory=list)


def spurious_turns(
    w: WorkerProcess,
    room: str,
    asked: list[TurnResult],
    grace_s: float = 2.0,
    *,
    until: float = float("inf"),
) -> int:
    """User turns the worker committed outside every span in which the caller spoke, before
    ``until`` (the caller's hang-up: the session then commits whatever its STT still holds,
    a turn nothing answers)."""
    spans = [(t.started_wall, t.ended_wall + grace_s) for t in asked]
    users = [
        x for x in w.msgs("user turn") if x.get("room") == room and float(x.get("t", 0)) < until
    ]
    return sum(1 for u in users if not any(a <= float(u.get("t", 0)) <= b for a, b in spans))


async def echo_call(
    c: Call,
    w: WorkerProcess,
    *,
    seconds: float = 30.0,
    max_s: float = 90.0,
    until_spurious: bool = False,
) -> EchoOutcome:
    """The caller's speakerphone plays the agent back into its microphone; it only asks
    questions (and waits for each answer) until the agent has talked for ``seconds``.

    ``until_spurious``: hang up at the first spurious turn instead (a test that wants one to
    happen; the count taken then can only grow by the end of the call, so it stands)."""
    out = EchoOutcome(c.room_name)
    await c.start(join_within=60)
    await c.wait_greeting(within=30)
    deadline = time.monotonic() + max_s  # an agent that answers itself never falls quiet
    i = 0
    found = False
    while c.agent_talk_s() < seconds and time.monotonic() < deadline:
        q = ECHO_QUESTIONS[i % len(ECHO_QUESTIONS)]
        out.asked.append(await c.say(q, answer_timeout=15, quiet=1.5))
        i += 1
        if until_spurious and spurious_turns(w, out.room, out.asked, until=time.time()) > 0:
            found = True
            break
    if not found:
        await c.wait_agent_quiet(quiet=3.0, within=max(1.0, deadline - time.monotonic()))
    out.agent_talk_s = c.agent_talk_s()
    left = time.time()
    await c.hangup()
    await asyncio.sleep(2.0)  # the worker logs the last turn
    out.spurious = spurious_turns(w, out.room, out.asked, until=left)
    out.at_hangup = sum(
        1 for x in w.msgs("user turn") if x.get("room") == out.room and float(x["t"]) >= left
    )
    out.interrupted = sum(
        1 for x in w.msgs("agent turn") if x.get("room") == out.room and x.get("interrupted")
    )
    out.user_turns = [
        str(x["transcript"]) for x in w.msgs("user turn") if x.get("room") == out.room
    ]
    return out


async def barge_ins(c: Call, interjections: list[str], *, after_s: float = 1.0) -> list[BargeIn]:
    """Ask for a long answer, then talk over it, once per interjection."""
    out: list[BargeIn] = []
    for text in interjections:
        await c.speak(LONG_QUESTION, quiet=1.0)
        out.append(await c.talk_over(text, after_s=after_s))
        await c.wait_agent_quiet(quiet=1.5, within=20)
    return out
