"""The call itself, run by livekit-agents in a job process: one caller, one AgentSession.

livekit-agents does the hard parts (room I/O, VAD turn-taking, interruptions, the
STT -> LLM -> TTS pipeline); this module only wires our providers and configuration in,
tags logs with room/session/participant and turns per-turn metrics into Prometheus samples.
Models load in ``prewarm`` (once per warm process), never while a caller waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp
from livekit import api, rtc
from livekit.agents import Agent, AgentSession, JobContext, JobProcess, ModelSettings, room_io

from . import config, dialog_actions, providers, resilience, telephony
from .apm import CallerAudioProcessor
from .latency import TurnTracker

log = logging.getLogger("voicepool.worker.agent")

HOLD_TEXT = "Please hold, I am transferring your call."
TRANSFER_FAILED_TEXT = "Sorry, I could not transfer your call right now. How else can I help?"


def prewarm(proc: JobProcess) -> None:
    """Load every model of this warm process before it is handed a call."""
    from livekit.plugins import silero

    cfg = config.load(os.environ)
    proc.userdata["cfg"] = cfg
    proc.userdata["vad"] = vad = silero.VAD.load(min_silence_duration=cfg.vad_min_silence_s)
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
    remember = getattr(tts, "remember", None)  # the embedded TTS caches what it will say
    if callable(remember):
        remember(known_phrases(cfg))
    proc.userdata.update(stt=stt, tts=tts, llm=llm)


def known_phrases(cfg: config.WorkerConfig) -> list[str]:
    """What the agent will say word for word: the embedded TTS caches it in the background."""
    phrases = [cfg.greeting, HOLD_TEXT, TRANSFER_FAILED_TEXT, resilience.SORRY_TEXT]
    if cfg.llm == "rules":
        from . import dialog

        phrases += dialog.from_config(cfg.dialog_path, cfg.dialog_yaml).known_answers()
    return [p for p in phrases if p.strip()]


class VoiceAgent(Agent):
    """The receptionist: instructions from config; its speech feeds the echo canceller."""

    def __init__(self, *, instructions: str, echo: CallerAudioProcessor | None) -> None:
        super().__init__(instructions=instructions)
        self._echo = echo

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        async for frame in Agent.default.tts_node(self, text, model_settings):
            if self._echo is not None:
                self._echo.far_end(frame)
            yield frame


TRANSFER_TIMEOUT_S = 30.0
DIAL_TIMEOUT_S = 90.0  # ringing included: the request returns when the callee answers
_SIP_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError)


class CallControl:
    """The phone side of one call -- keypad, transfer, dial-out: thin glue over LiveKit SIP.

    What a key means and what a dispatch asks for is decided in ``telephony`` (pure); this class
    speaks, asks the dialog, or asks LiveKit's SIP service to REFER or to place a call.
    """

    def __init__(
        self, ctx: JobContext, session: AgentSession[None], cfg: config.WorkerConfig
    ) -> None:
        self._ctx, self._session, self._cfg = ctx, session, cfg
        self._tasks: set[asyncio.Task[None]] = set()
        self._transferring = False

    def _api(self, timeout_s: float) -> api.LiveKitAPI:
        cfg = self._cfg
        return api.LiveKitAPI(
            cfg.livekit_url,
            cfg.livekit_api_key,
            cfg.livekit_api_secret,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    @staticmethod
    def _refused(what: str, to: str, e: BaseException) -> str:
        """Log LiveKit's refusal (or the network's) once, and return the reason."""
        why = getattr(e, "message", None) or str(e) or type(e).__name__
        log.warning(what, extra={"to": to, "error": why, "code": getattr(e, "code", None)})
        return why

    def on_dtmf(self, ev: rtc.SipDTMF) -> None:
        from . import metrics

        action = telephony.action_for(ev.digit, dict(self._cfg.dtmf_menu), self._cfg.transfer_to)
        kind = "unused" if action is None else "transfer" if action.transfer else "say"
        metrics.DTMF.labels(kind).inc()
        who = ev.participant.identity if ev.participant is not None else None
        log.info("dtmf received", extra={"digit": ev.digit, "action": kind, "from": who})
        if action is None:
            return
        if action.transfer and who is not None:
            task = asyncio.create_task(self._transfer_then_report(who))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif not action.transfer:
            self._session.interrupt()
            self._session.generate_reply(user_input=action.text)

    async def _transfer_then_report(self, identity: str) -> None:
        if await self.transfer(identity) is not None:
            self._session.say(TRANSFER_FAILED_TEXT)

    async def transfer(self, identity: str) -> str | None:
        """Hand the caller to the transfer target; None when LiveKit took it, else why not."""
        from . import metrics

        if self._transferring:
            return "a transfer is already under way"
        target = self._cfg.transfer_to
        if target is None:
            return "no transfer target is configured"
        self._transferring = True
        try:
            await self._session.say(HOLD_TEXT, allow_interruptions=False)
            async with self._api(TRANSFER_TIMEOUT_S) as lk:
                await lk.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        room_name=self._ctx.room.name,
                        participant_identity=identity,
                        transfer_to=target,
                        play_dialtone=False,
                    )
                )
        except _SIP_ERRORS as e:
            metrics.TRANSFERS.labels("failed").inc()
            return self._refused("transfer failed", target, e)
        finally:
            self._transferring = False
        metrics.TRANSFERS.labels("ok").inc()
        log.info("call transferred", extra={"to": target})
        return None

    async def dial(self, number: str) -> str | None:
        """Place the outbound call this job was dispatched for; None once the callee answered."""
        from . import metrics

        trunk = self._cfg.sip_outbound_trunk
        if trunk is None:
            metrics.OUTBOUND.labels("failed").inc()
            missing = ValueError("an outbound call needs VOICEPOOL_SIP_OUTBOUND_TRUNK")
            return self._refused("outbound call failed", number, missing)
        log.info("dialling", extra={"to": number, "trunk": trunk})
        try:
            async with self._api(DIAL_TIMEOUT_S) as lk:
                await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        room_name=self._ctx.room.name,
                        sip_trunk_id=trunk,
                        sip_call_to=number,
                        participant_identity=f"phone-{number}",
                        wait_until_answered=True,
                    )
                )
        except _SIP_ERRORS as e:
            metrics.OUTBOUND.labels("failed").inc()
            return self._refused("outbound call failed", number, e)
        metrics.OUTBOUND.labels("answered").inc()
        log.info("outbound call answered", extra={"to": number})
        return None


def _turn_detection(cfg: config.WorkerConfig) -> Any:
    if cfg.turn_detection == "model":
        from livekit.agents import inference

        return inference.TurnDetector(version="v1-mini")
    return "vad"


async def entrypoint(ctx: JobContext) -> None:
    """One call: join the dispatched room, greet, converse until the caller leaves."""
    cfg: config.WorkerConfig = ctx.proc.userdata["cfg"]
    fields: dict[str, Any] = {
        "room": ctx.job.room.name,
        "session": ctx.job.id,
        "participant": None,
    }
    ctx.log_context_fields = fields

    processor: CallerAudioProcessor | None = None
    if cfg.noise_suppression or cfg.echo_cancellation:
        processor = CallerAudioProcessor(
            echo_cancellation=cfg.echo_cancellation, noise_suppression=cfg.noise_suppression
        )

    session: AgentSession[None] = AgentSession(
        stt=ctx.proc.userdata["stt"],
        llm=ctx.proc.userdata["llm"],
        tts=ctx.proc.userdata["tts"],
        vad=ctx.proc.userdata["vad"],
        turn_handling={
            "turn_detection": _turn_detection(cfg),
            "endpointing": {
                "min_delay": cfg.endpointing_min_delay_s,
                "max_delay": cfg.endpointing_max_delay_s,
            },
            "interruption": {"enabled": True},
        },
        user_away_timeout=None,
        conn_options=resilience.session_options(cfg),
    )
    resilience.attach(session, ctx.proc.userdata.get("apology"))
    turns = TurnTracker()

    @session.on("conversation_item_added")
    def _on_item(ev: Any) -> None:
        msg = ev.item
        role = getattr(msg, "role", None)
        if role == "user":
            text = msg.text_content or ""
            turns.user_turn(dict(msg.metrics or {}))
            log.info("user turn", extra={"transcript": text})
        elif role == "assistant":
            latency = turns.agent_reply(dict(msg.metrics or {}))
            extra: dict[str, Any] = {
                "reply": msg.text_content or "",
                "interrupted": msg.interrupted,
            }
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
        log.info("session closed", extra={"reason": str(ev.reason), "error": str(ev.error or "")})
        ctx.shutdown(reason=f"session closed: {ev.reason}")

    phone = CallControl(ctx, session, cfg)
    actions = dialog_actions.SessionActions(ctx, session, phone, TRANSFER_FAILED_TEXT)
    dialog_actions.connect(ctx.proc.userdata["llm"], actions)
    agent = VoiceAgent(instructions=cfg.system_prompt, echo=processor)
    if any(name != "rules" for name in cfg.llm_chain):  # a model: the actions as tools
        await agent.update_tools(dialog_actions.tools(actions))
    await session.start(
        agent=agent,
        room=ctx.room,
        room_options=room_io.RoomOptions(
            audio_input=room_io.AudioInputOptions(noise_cancellation=processor),
        ),
        record=False,
    )
    if cfg.dtmf_menu:
        ctx.room.on("sip_dtmf_received", phone.on_dtmf)
    try:
        number = telephony.dial_request(ctx.job.metadata or "")
    except telephony.TelephonyError as e:
        log.error("outbound call refused", extra={"error": str(e)})
        ctx.shutdown(reason=str(e))
        return
    if number is not None and (why := await phone.dial(number)) is not None:
        ctx.shutdown(reason=f"outbound call to {number} failed: {why}")
        return
    participant = await ctx.wait_for_participant()
    fields["participant"] = participant.identity
    actions.caller = participant.identity
    log.info("caller joined", extra={"kind": int(participant.kind)})
    if cfg.greeting:
        session.say(cfg.greeting)
