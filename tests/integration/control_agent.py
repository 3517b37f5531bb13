"""A minimal team agent written on ``voicepool_worker.sdk`` alone, for the session-control tests.

It knows nothing of the control service: no call control unless it dials out, no keypad, its
own LLM. That every verb still works on its calls is what the tests show (``VOICEPOOL_AGENT=
tests.integration.control_agent:app``). Its LLM answers with the caller's words and, once the
control service added an instruction, that instruction's text: so a test hears the instruction
reach the model.
"""

from __future__ import annotations

import uuid
from typing import Any

from livekit.agents import Agent, AgentSession, JobContext, JobProcess, llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from voicepool_worker import providers, sdk

INSTRUCTIONS = "You are the booking desk."
GREETING = "Bookings desk, how can I help?"


def _instructions(chat_ctx: llm.ChatContext) -> list[str]:
    lines: list[str] = []
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage) and str(item.role) in ("system", "developer"):
            lines += (item.text_content or "").splitlines()
    return [line for line in lines if line.strip() and line.strip() != INSTRUCTIONS]


class EchoLLM(llm.LLM[Any]):
    """Answers "You said ..." (and "Noted: <instruction>" once one was added)."""

    @property
    def model(self) -> str:
        return "echo"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> EchoStream:
        return EchoStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class EchoStream(llm.LLMStream):
    async def _run(self) -> None:
        said = ""
        for item in self._chat_ctx.items:
            if isinstance(item, llm.ChatMessage) and str(item.role) == "user":
                said = item.text_content or ""
        text = f"You said {said.strip() or 'nothing'}."
        extra = _instructions(self._chat_ctx)
        if extra:
            text += f" Noted: {extra[-1]}"
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=f"echo-{uuid.uuid4().hex[:8]}",
                delta=llm.ChoiceDelta(role="assistant", content=text),
            )
        )


def prewarm(proc: JobProcess) -> None:
    cfg = sdk.settings()
    proc.userdata["vad"] = vad = sdk.vad(cfg)
    proc.userdata["stt"] = providers.build_stt(cfg, vad=vad)
    proc.userdata["tts"] = providers.build_tts(cfg)


async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession[None] = AgentSession(
        stt=ctx.proc.userdata["stt"],
        llm=EchoLLM(),
        tts=ctx.proc.userdata["tts"],
        vad=ctx.proc.userdata["vad"],
    )
    await session.start(agent=Agent(instructions=INSTRUCTIONS), room=ctx.room)
    placed = await sdk.call_control(ctx, session).place_dispatched_call()  # outbound: dialled
    if not placed.ended:
        session.say(placed.opening or GREETING)


app = sdk.AgentApp(entrypoint=entrypoint, prewarm=prewarm)
