"""The call itself, run by livekit-agents in a job process: one caller, one AgentSession.

livekit-agents does the hard parts (room I/O, VAD turn-taking, interruptions, the
STT -> LLM -> TTS pipeline); this module only wires our providers and configuration in,
tags logs with room/session/participant and turns per-turn metrics into Prometheus samples.
Models load in ``prewarm`` (once per warm process), never while a caller waits.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from livekit.agents import Agent, AgentSession, JobContext, JobProcess, room_io

from . import config, dialog_actions, providers, resilience, telephony
from .apm import CallerAudioProcessor
from .callcontrol import CallControl
from .latency import TurnTracker
from .onset import EarlyBargeIn
from .phrases import known_phrases
from .playout_tap import attach_echo_reference, room_audio_source

log = logging.getLogger("voicepool.worker.agent")


def prewarm(proc: JobProcess) -> None:
    """Load every model of this warm process before it is handed a call."""
    from .preload_models import vad as shared_vad

    cfg = config.load(os.environ)
    proc.userdata["cfg"] = cfg
    # loaded before the fork
    proc.userdata["vad"] = vad = shared_vad(
        cfg.vad_min_silence_s, cfg.vad_activation, cfg.vad_min_speech_s
    )
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
    from .providers.failover import FailoverMonitor

    proc.userdata["monitors"] = [
        FailoverMonitor(name, stage) for name, stage in (("stt", stt), ("llm", llm), ("tts", tts))
    ]
    proc.userdata["apology"] = resilience.prerender(tts)
    proc.userdata["turn_detector"] = _turn_detector(cfg)
    remember = getattr(tts, "remember", None)  # the embedded TTS caches what it will say
    if callable(remember):
        remember(known_phrases(cfg))
    proc.userdata.update(stt=stt, tts=tts, llm=llm)


def wall_marks(metrics: dict[str, Any]) -> dict[str, float]:
    """The turn's wall-clock marks (VAD's end of the caller's speech, the agent's first frame
    handed to the room's audio source), so a bench can split the caller's time to first word
    into uplink, agent and downlink on one machine's clock."""
    out: dict[str, float] = {}
    for key, name in (("stopped_speaking_at", "stopped_at"), ("started_speaking_at", "started_at")):
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = round(float(value), 4)
    return out


class VoiceAgent(Agent):
    """The receptionist: instructions from config."""

    def __init__(self, *, instructions: str) -> None:
        super().__init__(instructions=instructions)


def _turn_detector(cfg: config.WorkerConfig) -> Any:
    """The end-of-turn model of this warm process (None: silence alone ends a turn)."""
    if cfg.turn_detection != "smart-turn":
        return None
    from . import smart_turn
    from .end_of_turn import EndOfTurnPolicy

    policy = EndOfTurnPolicy(
        threshold=cfg.eot_threshold,
        complete_delay_s=cfg.endpointing_min_delay_s,
        ceiling_s=cfg.endpointing_max_delay_s,
    )
    return smart_turn.detector(policy)


def _turn_detection(cfg: config.WorkerConfig, userdata: dict[str, Any]) -> Any:
    if cfg.turn_detection == "model":
        from livekit.agents import inference

        return inference.TurnDetector(version="v1-mini")
    return userdata.get("turn_detector") or "vad"


async def entrypoint(ctx: JobContext) -> None:
    """One call: join the dispatched room, greet, converse until the caller leaves."""
    cfg: config.WorkerConfig = ctx.proc.userdata["cfg"]
    fields: dict[str, Any] = {
        "room": ctx.job.room.name,
        "session": ctx.job.id,
        "participant": None,
    }
    ctx.log_context_fields = fields

    pause_fill = getattr(ctx.proc.userdata["tts"], "pause_fill", None)
    if callable(pause_fill):  # the TTS cache fill must not compete with this call for CPU
        pause_fill()

    processor: CallerAudioProcessor | None = None
    if cfg.noise_suppression or cfg.echo_cancellation:
        processor = CallerAudioProcessor(
            echo_cancellation=cfg.echo_cancellation,
            noise_suppression=cfg.noise_suppression,
            stream_delay_ms=cfg.echo_delay_ms,
            auto_gain_control=cfg.auto_gain_control,
            echo_gate_db=-cfg.echo_gate_db if cfg.echo_gate_db > 0 else None,
            echo_gate_hold_s=cfg.echo_gate_hold_s,
        )

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
    turns = TurnTracker()
    phone = CallControl(ctx, session, cfg)  # keypad, dialog actions and limits

    early: EarlyBargeIn | None = None  # set once the room output exists

    @session.on("user_state_changed")
    def _on_user_state(ev: Any) -> None:
        # wall-clock marks that split a barge-in's stop time (bench/worker_latency.py)
        if ev.new_state == "speaking":
            log.info("caller speaking", extra={"at": time.time()})

    @session.on("agent_state_changed")
    def _on_agent_state(ev: Any) -> None:
        if ev.old_state == "speaking":
            log.info("agent silent", extra={"at": time.time(), "now": str(ev.new_state)})

    @session.on("conversation_item_added")
    def _on_item(ev: Any) -> None:
        msg = ev.item
        role = getattr(msg, "role", None)
        if role == "user":
            text = msg.text_content or ""
            user_metrics = dict(msg.metrics or {})
            turns.user_turn(user_metrics)
            said: dict[str, Any] = {"t": time.time(), **wall_marks(user_metrics)}
            if cfg.log_transcripts:
                said["transcript"] = text
            log.info("user turn", extra=said)
            phone.caller_spoke()
        elif role == "assistant":
            reply_metrics = dict(msg.metrics or {})
            latency = turns.agent_reply(reply_metrics)
            extra: dict[str, Any] = {
                "interrupted": msg.interrupted,
                "t": time.time(),
                **wall_marks(reply_metrics),
            }
            if cfg.log_transcripts:
                extra["reply"] = msg.text_content or ""
            if latency is not None:
                from . import metrics  # job process: files land in PROMETHEUS_MULTIPROC_DIR

                stages = latency.as_dict()
                for name, seconds in stages.items():
                    metrics.STAGE_HISTOGRAMS[name].observe(seconds)
                metrics.TURNS.inc()
                extra["latency"] = {k: round(v, 4) for k, v in stages.items()}
            log.info("agent turn", extra=extra)

    @session.on("close")
    def _on_close(ev: Any) -> None:
        if early is not None:
            early.close()
            log.info(
                "early barge-in",
                extra={
                    "onset_pauses": early.paused,
                    "onset_resumed": early.resumed,
                },
            )
        log.info("session closed", extra={"reason": str(ev.reason), "error": str(ev.error or "")})
        ctx.shutdown(reason=f"session closed: {ev.reason}")

    dialog_actions.connect(ctx.proc.userdata["llm"], phone)
    agent = VoiceAgent(instructions=cfg.system_prompt)
    if any(name != "rules" for name in cfg.llm_chain):  # a model: the actions as tools
        await agent.update_tools(dialog_actions.tools(phone))
    await session.start(
        agent=agent,
        room=ctx.room,
        room_options=room_io.RoomOptions(
            audio_input=room_io.AudioInputOptions(
                noise_cancellation=processor, frame_size_ms=cfg.input_frame_ms
            ),
            # the word-timed transcript runs an STFT over every agent frame on the call's
            # event loop (blocking it 100+ ms on a busy core); callers on a phone see no text
            text_output=room_io.TextOutputOptions(sync_transcription=cfg.sync_transcription),
        ),
        record=False,
    )
    if processor is not None and cfg.echo_cancellation:
        # the reference is what the room output plays, when it plays (see playout_tap)
        processor.reference = attach_echo_reference(session.output.audio)
    if processor is not None and cfg.early_barge_in:
        # the caller's voice pauses the agent on its first 30 ms, before silero hears it
        source = room_audio_source(session.output.audio)
        early = EarlyBargeIn(
            session,
            hold_s=cfg.early_barge_in_hold_s,
            flush=source.clear_queue if source is not None else None,
        )
        processor.on_piece = early.piece
    try:
        number = telephony.dial_request(ctx.job.metadata or "")
    except telephony.TelephonyError as e:
        log.error("outbound call refused", extra={"error": str(e)})
        ctx.shutdown(reason=str(e))
        return
    if number is not None and (why := await phone.dial(number)) is not None:
        await phone.end_room(f"outbound call failed: {why}")
        return
    participant = await ctx.wait_for_participant()
    fields["participant"] = participant.identity
    log.info("caller joined", extra={"kind": int(participant.kind)})
    phone.start(participant)
    opening = cfg.greeting
    if number is not None:  # an outbound call opens with what the request asked, if anything
        opening = telephony.dial_opening(ctx.job.metadata or "") or cfg.outbound_greeting
    if opening and cfg.hang_up_after_greeting and number is None:
        # an announcement line (e.g. a catch-all pool for numbers nobody declared): the
        # caller hears the greeting, then the call ends (a phone gets its BYE)
        await phone.hangup("announcement", say=opening)
        return
    if opening:
        session.say(opening)
