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

from . import config, providers, telephony
from .apm import CallerAudioProcessor
from .latency import TurnTracker

log = logging.getLogger("voicepool.worker.agent")


def prewarm(proc: JobProcess) -> None:
    """Load every model of this warm process before it is handed a call."""
    from livekit.plugins import silero

    cfg = config.load(os.environ)
    proc.userdata["cfg"] = cfg
    proc.userdata["vad"] = silero.VAD.load(min_silence_duration=cfg.vad_min_silence_s)
    stt = providers.build_stt(cfg)
    tts = providers.build_tts(cfg)
    llm = providers.build_llm(cfg)
    for model in (stt, tts):
        warm = getattr(model, "prewarm", None)
        if callable(warm):
            warm()
    proc.userdata.update(stt=stt, tts=tts, llm=llm)


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


HOLD_TEXT = "Please hold, I am transferring your call."
TRANSFER_FAILED_TEXT = "Sorry, I could not transfer your call right now. How else can I help?"
TRANSFER_TIMEOUT_S = 30.0


class CallControl:
    """The caller's keypad and transfers for one call: thin glue over LiveKit's SIP API.

    What a key means is decided in ``telephony`` (pure); this class speaks, asks the dialog,
    or asks LiveKit to REFER the caller's SIP leg to ``VOICEPOOL_TRANSFER_TO``.
    """

    def __init__(
        self, ctx: JobContext, session: AgentSession[None], cfg: config.WorkerConfig
    ) -> None:
        self._ctx, self._session, self._cfg = ctx, session, cfg
        self._tasks: set[asyncio.Task[None]] = set()
        self._transferring = False

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
            async with api.LiveKitAPI(
                self._cfg.livekit_url,
                self._cfg.livekit_api_key,
                self._cfg.livekit_api_secret,
                timeout=aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT_S),
            ) as lk:
                await lk.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        room_name=self._ctx.room.name,
                        participant_identity=identity,
                        transfer_to=target,
                        play_dialtone=False,
                    )
                )
        except (api.TwirpError, aiohttp.ClientError, TimeoutError) as e:
            why = getattr(e, "message", None) or str(e) or type(e).__name__
            metrics.TRANSFERS.labels("failed").inc()
            log.warning(
                "transfer failed",
                extra={"to": target, "error": why, "code": getattr(e, "code", None)},
            )
            return why
        finally:
            self._transferring = False
        metrics.TRANSFERS.labels("ok").inc()
        log.info("call transferred", extra={"to": target})
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
    )
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

    await session.start(
        agent=VoiceAgent(instructions=cfg.system_prompt, echo=processor),
        room=ctx.room,
        room_options=room_io.RoomOptions(
            audio_input=room_io.AudioInputOptions(noise_cancellation=processor),
        ),
        record=False,
    )
    if cfg.dtmf_menu:
        ctx.room.on("sip_dtmf_received", CallControl(ctx, session, cfg).on_dtmf)
    participant = await ctx.wait_for_participant()
    fields["participant"] = participant.identity
    log.info("caller joined", extra={"kind": int(participant.kind)})
    if cfg.greeting:
        session.say(cfg.greeting)
