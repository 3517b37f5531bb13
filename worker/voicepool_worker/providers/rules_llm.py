"""Embedded default "LLM": a small rule-based receptionist dialog, instant and offline.

A real local model (``llama`` provider, optional) is far slower on 2 shared cores and weak at
this size; the rules give sensible, deterministic answers to the common receptionist
questions and use the per-call history (e.g. "can you repeat that").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)


@dataclass(frozen=True)
class Facts:
    hours: str = (
        "We are open Monday to Friday from 9 AM to 6 PM, and Saturday from 10 AM to 2 PM. "
        "We are closed on Sundays."
    )
    address: str = "You can find us at 12 Harbour Street, right next to the central station."
    booking: str = (
        "I can note a request for an appointment. Which day and time would suit you best?"
    )
    prices: str = "A standard check-up costs 60 euros, and a cleaning costs 80 euros."


# (intent, keywords any of which triggers it); order = priority
_INTENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("repeat", ("repeat", "say that again", "pardon", "come again")),
    ("goodbye", ("bye", "goodbye", "that's all", "that is all", "thank you", "thanks")),
    ("hours", ("hour", "hours", "open", "opening", "opened", "close", "closing", "closed")),
    ("address", ("address", "where are you", "located", "location", "find you", "directions")),
    ("booking", ("appointment", "book", "booking", "schedule", "reserve", "visit")),
    ("prices", ("price", "prices", "cost", "costs", "how much", "expensive", "fee", "fees")),
    ("human", ("human", "person", "operator", "someone", "receptionist")),
    ("hello", ("hello", "hi", "hey", "good morning", "good afternoon")),
)

#: Intents answered with the matching field of ``Facts``.
_FACT_INTENTS = ("hours", "address", "booking", "prices")
_ANSWERS = {
    "goodbye": "You're welcome. Thank you for calling, goodbye!",
    "human": "All our staff are busy right now, but I can help with hours, address or bookings.",
    "hello": "Hello! How can I help you today?",
}
_FALLBACK = (
    "Sorry, I didn't quite get that. I can tell you our opening hours, our address, "
    "our prices, or help you book an appointment."
)


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z' ]+", " ", text.lower()) + " "


def intent_of(text: str) -> str | None:
    """The first matching intent; keywords match whole words (or whole word sequences)."""
    padded = " ".join(_words(text).split())
    padded = f" {padded} "
    for intent, keywords in _INTENTS:
        if any(f" {k} " in padded for k in keywords):
            return intent
    return None


def reply(history: Sequence[tuple[str, str]], facts: Facts = Facts()) -> str:
    """Answer the last user utterance given the call's history of (role, text) pairs."""
    user_text = next((t for r, t in reversed(history) if r == "user" and t.strip()), "")
    intent = intent_of(user_text)
    if intent == "repeat":
        last = next((t for r, t in reversed(history) if r == "assistant" and t.strip()), None)
        return last or "I haven't said anything yet. How can I help you?"
    if intent in _FACT_INTENTS:
        return str(getattr(facts, intent))
    if intent is not None:
        return _ANSWERS[intent]
    return _FALLBACK


def known_answers(facts: Facts = Facts()) -> list[str]:
    """Everything the dialog can say: the TTS synthesises these before a call arrives."""
    return [
        *(str(getattr(facts, k)) for k in _FACT_INTENTS),
        *_ANSWERS.values(),
        _FALLBACK,
    ]


class RulesLLM(llm.LLM[Any]):
    """``llm.LLM`` that streams the rule-based answer word by word (like a real model)."""

    def __init__(self, facts: Facts = Facts()) -> None:
        super().__init__()
        self._facts = facts

    @property
    def model(self) -> str:
        return "voicepool-rules"

    @property
    def provider(self) -> str:
        return "voicepool"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[Any] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> RulesStream:
        return RulesStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


def history_of(chat_ctx: llm.ChatContext) -> list[tuple[str, str]]:
    """(role, text) of the chat's user/assistant messages, oldest first."""
    out: list[tuple[str, str]] = []
    for item in chat_ctx.items:
        if not isinstance(item, llm.ChatMessage):
            continue
        role = str(item.role)
        if role in ("user", "assistant"):
            out.append((role, item.text_content or ""))
    return out


class RulesStream(llm.LLMStream):
    def __init__(
        self,
        rules: RulesLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(rules, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._rules = rules

    async def _run(self) -> None:
        answer = reply(history_of(self._chat_ctx), self._rules._facts)
        request_id = f"rules-{uuid.uuid4().hex[:12]}"
        words = answer.split(" ")
        for i, word in enumerate(words):
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    delta=llm.ChoiceDelta(role="assistant", content=word if i == 0 else " " + word),
                )
            )
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                usage=llm.CompletionUsage(
                    completion_tokens=len(words), prompt_tokens=0, total_tokens=len(words)
                ),
            )
        )
