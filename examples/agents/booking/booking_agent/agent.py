"""The booking line's agent, hosted by voicepool: ``VOICEPOOL_AGENT=booking_agent.agent:app``.

A plain livekit-agents ``Agent`` with two function tools: ``find_free_slots(day)`` reads the
calendar this package ships, ``end_call`` hangs up through the pool's call control. Everything
from voicepool comes through its public API, ``voicepool_worker.sdk`` (settings, the caller-audio
chain, the pool's VAD, call control) and ``voicepool_worker.providers`` (the embedded STT and TTS,
the OpenAI-compatible LLM the pool's settings name). The runtime does the rest: capacity, pod
reports, drain, ``/metrics``, the per-turn latency record and the turn logs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import uuid
from collections.abc import AsyncIterable
from typing import Any

from livekit.agents import Agent, AgentSession, ModelSettings, function_tool, llm, room_io
from livekit.agents.llm import StopResponse
from voicepool_worker import providers, sdk

from .intents import tool_for
from .slots import Calendar

log = logging.getLogger("booking_agent")

INSTRUCTIONS = (
    "You answer the booking line of Harbour Dental. Speak in one or two short sentences, "
    "without lists or markdown. To tell a caller which appointment times are free, use "
    "find_free_slots. When the caller says goodbye, use end_call."
)
GREETING = "Hello, this is the booking line of Harbour Dental. Which day would you like to come in?"
GOODBYE = "Thank you for calling Harbour Dental. Goodbye."
#: An outbound call (``voicepool calls dial``) that asked for no opening line of its own.
CALLBACK = "Hello, this is Harbour Dental calling back about your appointment."
#: A calendar file of your own instead of the shipped one (same shape as ``slots.json``).
ENV_SLOTS = "BOOKING_SLOTS_FILE"
#: Set by the operator from the pool's ``conversation`` (only when the pool sets them).
ENV_GREETING = "VOICEPOOL_GREETING"
ENV_SYSTEM_PROMPT = "VOICEPOOL_SYSTEM_PROMPT"


def check(cfg: sdk.Settings) -> None:
    """At the worker's start: one clear line instead of a failing first call."""
    if cfg.llm_openai is None:
        raise sdk.ConfigError(
            "booking_agent needs an OpenAI-compatible LLM: set VOICEPOOL_LLM=openai, "
            "VOICEPOOL_LLM_BASE_URL, VOICEPOOL_LLM_MODEL and VOICEPOOL_LLM_API_KEY"
        )
    try:
        Calendar.load(os.environ.get(ENV_SLOTS))
    except (OSError, ValueError) as e:
        raise sdk.ConfigError(f"{ENV_SLOTS}: {e}") from None
    providers.check(cfg)


def prewarm(proc: sdk.JobProcess) -> None:
    """Every warm process, before it is offered a call: load the models, read the calendar."""
    cfg = sdk.settings()
    proc.userdata["vad"] = vad = sdk.vad(cfg)
    proc.userdata["stt"] = stt = providers.build_stt(cfg, vad=vad)
    proc.userdata["tts"] = tts = providers.build_tts(cfg)
    proc.userdata["llm"] = providers.build_llm(cfg)
    for stage in (stt, tts):
        for model in providers.instances_of(stage):
            warm = getattr(model, "prewarm", None)
            if callable(warm) and providers.is_embedded(model):
                warm()  # loads the weights now, not while a caller waits
    proc.userdata["calendar"] = Calendar.load(os.environ.get(ENV_SLOTS))


class NamedToolCall:
    """Asks the pool's OpenAI-compatible endpoint for a call of one named tool, unstreamed.

    Why not through the streamed LLM: llama.cpp's Python server repeats the tool's name in every
    streamed chunk, which makes livekit-agents' stream parser drop the arguments; a tool call is
    only usable once complete anyway, so it is asked for in one piece.
    """

    def __init__(self, cfg: sdk.Settings) -> None:
        import openai

        endpoint = cfg.llm_openai
        assert endpoint is not None  # check() refused to start without one
        self.model = endpoint.model
        self.client = openai.AsyncClient(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            timeout=max(10.0, cfg.llm_first_token_timeout_s),
            max_retries=0,
        )

    async def ask(
        self, chat_ctx: llm.ChatContext, tool: llm.Tool, name: str
    ) -> llm.FunctionToolCall | None:
        # earlier tool calls left out: llama.cpp's function-calling template renders no tool
        # results, and the spoken answers in the history say what they found
        history = chat_ctx.copy(exclude_function_call=True)
        messages, _ = history.to_provider_format("openai")
        schema = llm.ToolContext([tool]).parse_function_tools("openai", strict=False)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "tools": schema,
            "tool_choice": {"type": "function", "function": {"name": name}},
        }
        reply = await self.client.chat.completions.create(**request)
        for call in reply.choices[0].message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is not None and function.name == name:
                return llm.FunctionToolCall(
                    name=name, arguments=function.arguments or "{}", call_id=call.id
                )
        return None


class BookingAgent(Agent):
    def __init__(self, calendar: Calendar, phone: sdk.CallControl, named: NamedToolCall) -> None:
        # the pool's conversation.systemPrompt, when it sets one, replaces the agent's own
        super().__init__(instructions=os.environ.get(ENV_SYSTEM_PROMPT) or INSTRUCTIONS)
        self.calendar, self.phone, self.named = calendar, phone, named
        self._tasks: set[asyncio.Task[None]] = set()

    @function_tool
    async def find_free_slots(self, day: str) -> str:
        """Look up the free appointment times on a day of the week.

        Args:
            day: the day of the week the caller asks about, e.g. "Tuesday" or "Friday morning"
        """
        answer = self.calendar.free_on(day)
        log.info(
            "tool called",
            extra={"tool": "find_free_slots", "day": answer.day, "slots": list(answer.times)},
        )
        return answer.sentence

    @function_tool
    async def end_call(self) -> None:
        """End the call after the caller said goodbye."""
        log.info("tool called", extra={"tool": "end_call"})
        # its own context: the hang-up waits for the goodbye, which must not wait for this tool
        task = asyncio.get_running_loop().create_task(
            self.phone.hangup("caller said goodbye", say=GOODBYE), context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        raise StopResponse()  # the goodbye is all the caller hears

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterable[llm.ChatChunk | str]:
        """The turn's reply: the calendar's own sentence once ``find_free_slots`` answered; a
        named tool call when the caller's words ask for a tool; else the model's reply."""
        last = chat_ctx.items[-1] if chat_ctx.items else None
        if isinstance(last, llm.FunctionCallOutput) and last.name == "find_free_slots":
            yield last.output  # spoken as the tool wrote it: times stay exact
            return
        wanted = tool_for(_last_words(chat_ctx))
        by_name = llm.ToolContext(tools).function_tools
        if wanted is not None and wanted in by_name:
            try:
                call = await self.named.ask(chat_ctx, by_name[wanted], wanted)
            except Exception as e:  # the endpoint failed: let the streamed reply try
                log.warning("tool call request failed", extra={"tool": wanted, "error": str(e)})
                call = None
            if call is not None:
                delta = llm.ChoiceDelta(role="assistant", tool_calls=[call])
                yield llm.ChatChunk(id=uuid.uuid4().hex, delta=delta)
                return
        history = chat_ctx.copy(exclude_function_call=True)  # as in NamedToolCall.ask
        async for chunk in Agent.default.llm_node(self, history, tools, model_settings):
            if isinstance(chunk, llm.ChatChunk | str):
                yield chunk


def _last_words(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            return item.text_content or ""
    return ""


async def entrypoint(ctx: sdk.JobContext) -> None:
    """One call: join the room (and, for an outbound call, dial), greet, answer until the
    caller (or ``end_call``) hangs up."""
    cfg = sdk.settings()
    userdata: dict[str, Any] = ctx.proc.userdata
    audio = sdk.CallerAudio(cfg)  # echo cancellation, noise suppression, early barge-in
    session: AgentSession[None] = AgentSession(
        stt=userdata["stt"],
        llm=userdata["llm"],
        tts=userdata["tts"],
        vad=userdata["vad"],
        turn_handling={
            "turn_detection": sdk.turn_detector(cfg) or "vad",
            "endpointing": {
                "min_delay": cfg.endpointing_min_delay_s,
                "max_delay": cfg.endpointing_max_delay_s,
            },
        },
        user_away_timeout=None,
    )
    phone = sdk.call_control(ctx, session, cfg)  # hang-up, transfers, keypad, call limits
    agent = BookingAgent(userdata["calendar"], phone, NamedToolCall(cfg))
    await session.start(
        agent=agent,
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_input=audio.input_options()),
        record=False,
    )
    audio.attach(session)
    placed = await phone.place_dispatched_call()  # `voicepool calls dial`: call the number
    if placed.ended:  # refused or unanswered: the call is over
        return
    participant = await ctx.wait_for_participant()
    phone.start(participant)
    greeting = os.environ.get(ENV_GREETING, GREETING)  # the pool's conversation.greeting
    if placed.number is not None:
        greeting = placed.opening or CALLBACK
    if greeting:  # "": the agent waits for the caller to speak first
        session.say(greeting)


app = sdk.AgentApp(
    entrypoint=entrypoint,
    prewarm=prewarm,
    # imported once before the call processes fork (shared copy-on-write)
    preload=[
        "livekit.plugins.openai",
        "voicepool_worker.providers.whisper_stt",
        "voicepool_worker.providers.piper_tts",
    ],
    check=check,
)
