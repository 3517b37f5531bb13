"""The built-in receptionist, an agent like any team's: it runs on the public API only (``sdk``).

One call, run by livekit-agents in a job process: one caller, one AgentSession. livekit-agents
does the hard parts (room I/O, VAD turn-taking, interruptions, the STT -> LLM -> TTS pipeline);
this module wires the embedded providers, the dialog and the phone's call control in. Models load
in ``prewarm`` (once per warm process), never while a caller waits; the runtime logs the turns
and records their latency.
"""

from __future__ import annotations

import logging
from typing import Any

from livekit.agents import Agent, AgentSession, JobContext, JobProcess, room_io

from ... import providers, sdk
from . import dialog_actions, resilience
from .phrases import known_phrases

log = logging.getLogger("voicepool.worker.agent")


def prewarm(proc: JobProcess) -> None:
    """Load every model of this warm process before it is handed a call."""
    cfg = sdk.settings()
    proc.userdata["vad"] = vad = sdk.vad(cfg)  # loaded before the fork
    stt = providers.build_stt(cfg, vad=vad)
    tts = providers.build_tts(cfg)
    llm = providers.build_llm(cfg)
    for stage in (stt, tts):
        for model in providers.instances_of(stage):
            warm = getattr(model, "prewarm", None)
            if callable(warm) and providers.is_embedded(model):
                warm()  # loads weights; remote endpoints are not called before a caller is
    for model in providers.instances_of(llm):
        warm_llm = getattr(model, "warm", None)
        if callable(warm_llm):
            warm_llm(cfg.system_prompt)
    from ...providers.failover import FailoverMonitor

    proc.userdata["monitors"] = [
        FailoverMonitor(name, stage) for name, stage in (("stt", stt), ("llm", llm), ("tts", tts))
    ]
    proc.userdata["apology"] = resilience.prerender(tts)
    proc.userdata["turn_detector"] = sdk.turn_detector(cfg)
    remember = getattr(tts, "remember", None)  # the embedded TTS caches what it will say
    if callable(remember):
        remember(known_phrases(cfg))
    proc.userdata.update(stt=stt, tts=tts, llm=llm)


class VoiceAgent(Agent):
    """The receptionist: instructions from config."""

    def __init__(self, *, instructions: str) -> None:
        super().__init__(instructions=instructions)


def _turn_detection(cfg: sdk.Settings, userdata: dict[str, Any]) -> Any:
    if cfg.turn_detection == "model":
        from livekit.agents import inference

        return inference.TurnDetector(version="v1-mini")
    return userdata.get("turn_detector") or "vad"


async def entrypoint(ctx: JobContext) -> None:
    """One call: join the dispatched room, greet, converse until the caller leaves."""
    cfg = sdk.settings()
    pause_fill = getattr(ctx.proc.userdata["tts"], "pause_fill", None)
    if callable(pause_fill):  # the TTS cache fill must not compete with this call for CPU
        pause_fill()

    audio = sdk.CallerAudio(cfg)
    session: AgentSession[None] = AgentSession(
        stt=ctx.proc.userdata["stt"],
        llm=ctx.proc.userdata["llm"],
        tts=ctx.proc.userdata["tts"],
        vad=ctx.proc.userdata["vad"],
        turn_handling={
            "turn_detection": _turn_detection(cfg, ctx.proc.userdata),
            "endpointing": {
                "min_delay": cfg.endpointing_min_delay_s,
                "max_delay": cfg.endpointing_max_delay_s,
            },
            "interruption": {
                "enabled": True,
                "min_duration": cfg.interruption_min_duration_s,
            },
            "preemptive_generation": {"enabled": True, "preemptive_tts": cfg.preemptive_tts},
        },
        user_away_timeout=None,
        conn_options=resilience.session_options(cfg),
    )
    resilience.attach(session, ctx.proc.userdata.get("apology"))
    phone = sdk.call_control(ctx, session, cfg)  # keypad, dialog actions and limits
    dialog_actions.connect(ctx.proc.userdata["llm"], phone, session)
    agent = VoiceAgent(instructions=cfg.system_prompt)
    if any(name != "rules" for name in cfg.llm_chain):  # a model: the actions as tools
        await agent.update_tools(dialog_actions.tools(phone))
    await session.start(
        agent=agent,
        room=ctx.room,
        room_options=room_io.RoomOptions(
            audio_input=audio.input_options(),
            # the word-timed transcript runs an STFT over every agent frame on the call's
            # event loop (blocking it 100+ ms on a busy core); callers on a phone see no text
            text_output=room_io.TextOutputOptions(sync_transcription=cfg.sync_transcription),
        ),
        record=False,
    )
    audio.attach(session)
    placed = await phone.place_dispatched_call()  # an outbound dispatch: dialled, answered
    if placed.ended:
        return
    participant = await ctx.wait_for_participant()
    phone.start(participant)
    opening = cfg.greeting
    if placed.number is not None:  # an outbound call opens with what the request asked, if any
        opening = placed.opening or cfg.outbound_greeting
    if opening and cfg.hang_up_after_greeting and placed.number is None:
        # an announcement line (e.g. a catch-all pool for numbers nobody declared): the
        # caller hears the greeting, then the call ends (a phone gets its BYE)
        await phone.hangup("announcement", say=opening)
        return
    if opening:
        session.say(opening)
