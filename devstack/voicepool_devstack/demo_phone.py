"""The demo's phone call: a number declared on the pool, dialled by the SIP test phone.

``make demo`` patches ``spec.telephony`` onto the running pool; the operator creates the LiveKit
SIP trunk and dispatch rule; the voicepool-phone calls the number over real SIP/RTP (G.711),
hears the greeting, asks a question (time to first word measured on the phone's RTP), uses the
keypad menu (RFC 4733), and hangs up with a word -- the agent's call control ends the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .phone import HANGUP_PHRASE, Phone, PhoneConfig, write_speech
from .sip import SipInfo
from .story import Story

NUMBER = "+15550100000"


async def agent_quiet(p: Phone, gap_s: float = 2.0, within: float = 40.0) -> None:
    """Wait until the agent has stopped talking (no new voice for ``gap_s``).

    A TTS that falls behind real time on a busy machine leaves gaps inside one answer, so the
    first ``voice_end`` is not the end of it; a caller who speaks or presses a key then talks
    over the agent, and what it says is heard garbled (no "goodbye", no hang-up).
    """
    with contextlib.suppress(TimeoutError):  # still talking after ``within``: go on anyway
        async with asyncio.timeout(within):
            await _until_quiet(p, gap_s, within)


async def _until_quiet(p: Phone, gap_s: float, within: float) -> None:
    while True:
        voice = [e for e in p.events if e.get("ev") in ("voice_start", "voice_end")]
        last = float(voice[-1]["t"]) if voice else -1.0
        if voice and voice[-1]["ev"] == "voice_start":
            await p.wait_for("voice_end", within, after=last)
            continue
        try:
            await p.wait_for("voice_start", gap_s, after=last)
        except TimeoutError:
            return


async def phone_call(
    demo: Any, sip: SipInfo, story: Story, wait_async: Any
) -> list[tuple[str, float | None]]:
    """One narrated SIP call into the demo pool; returns its (label, ms) figures (a step that
    does not happen is told to ``story``: the demo then exits non-zero)."""
    say = story.say
    say(f"the pool declares a phone number: spec.telephony.inbound.numbers = [{NUMBER}]")
    demo.custom.patch_namespaced_custom_object(
        "voicepool.dev",
        "v1alpha1",
        demo.ns,
        "voiceagentpools",
        demo.name,
        # Closed by default: only the local SIP server (livekit-sip's peer) may call in.
        {
            "spec": {
                "telephony": {
                    "inbound": {"numbers": [NUMBER], "allowedAddresses": ["127.0.0.1/32"]}
                }
            }
        },
    )
    status = await wait_async(
        lambda: (
            (t := (demo.pool().get("status") or {}).get("telephony") or {}).get("dispatchRuleId")
            and t
        ),
        60,
        "the operator to create the SIP trunk and dispatch rule",
    )
    say(
        f"operator reconciled it: inbound trunk {status['inboundTrunkId']}, dispatch rule "
        f"{status['dispatchRuleId']} (one room per call, agent 'receptionist')"
    )
    demo.show_wide()
    out: list[tuple[str, float | None]] = []
    work = Path(tempfile.mkdtemp(prefix="voicepool-demo-phone-"))
    try:
        question = write_speech("what are your opening hours", work / "q.wav")
        bye = write_speech(HANGUP_PHRASE, work / "bye.wav")
        say(f"the SIP phone dials {NUMBER} at sip:{sip.address} (TCP, G.711 u-law, RFC 4733 keys)")
        async with Phone(PhoneConfig(server=sip.address, to=NUMBER, answer_timeout_s=60)) as p:
            answer = await p.answered()
            out.append(("phone INVITE -> 200 OK", float(answer["invite_ms"])))
            say(f"phone: answered (200 OK) {answer['invite_ms']:.0f} ms after the INVITE")
            greeting = await p.speech_heard(float(answer["t"]), 30)
            say(f"phone: heard the greeting ({(greeting['end'] - greeting['start']) / 1000:.1f} s)")
            say("phone: caller says 'what are your opening hours'")
            await p.play(question)
            end = float((await p.wait_for("play_end", 30))["voice_end"])
            try:
                heard = await p.speech_heard(end, 30)
                ttfw = heard["start"] - end
                say(f"phone: agent answered, time to first word on the phone leg {ttfw:.0f} ms")
            except TimeoutError:
                ttfw = None
                story.missed("phone: the agent did not answer the question")
            out.append(("phone call (SIP)", ttfw))
            await agent_quiet(p)
            say("phone: presses 2 on the keypad (menu: 2 = where are you located)")
            await p.press("2")
            sent = await p.wait_for("dtmf_sent", 30)
            try:
                await p.speech_heard(float(sent["t"]) - 1000, 30)
                say("phone: the keypad choice was answered")
            except TimeoutError:
                story.missed("phone: no answer to the key press")
            await agent_quiet(p)
            say(f"phone: caller says '{HANGUP_PHRASE}' -> the agent hangs up (its call control)")
            await p.play(bye)
            try:
                await p.wait_for("bye", 40)
                say("phone: received BYE; the call's room is deleted")
            except TimeoutError:
                story.missed("phone: the goodbye did not end the call (no BYE within 40 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the synthesised WAVs
    await asyncio.sleep(0)
    return out
