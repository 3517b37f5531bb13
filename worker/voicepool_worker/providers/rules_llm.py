"""Embedded default "LLM": the scripted receptionist of ``dialog.py``, instant and offline.

A real local model (``llama``) is far slower on 2 shared cores and weak at this size; the
dialog gives sensible, deterministic answers from the user's YAML (intents, facts, booking
slots) and uses the per-call history. Its hang-up and transfer *actions* go to ``on_action``
(set by the agent to the call-control code) after the reply's text has been streamed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import cast

from livekit.agents import llm

from . import dialog as dialog_mod
from .dialog import Dialog, Reply
from .inprocess import InProcessLLM

ActionHandler = Callable[[Reply], None]


def intent_of(text: str, dialog: Dialog | None = None) -> str | None:
    """The first intent understood in ``text`` (None: nothing matched for sure)."""
    sure = [i.name for i, score in dialog_mod.understand(dialog or _default(), text) if score >= 1]
    return sure[0] if sure else None


def reply(history: Sequence[tuple[str, str]], dialog: Dialog | None = None) -> str:
    """Answer the last user utterance given the call's history of (role, text) pairs."""
    return dialog_mod.respond(dialog or _default(), history).text


def known_answers(dialog: Dialog | None = None) -> list[str]:
    """What the dialog says word for word: the TTS may synthesise these before a call."""
    return (dialog or _default()).known_answers()


_DEFAULT: list[Dialog] = []


def _default() -> Dialog:
    if not _DEFAULT:
        _DEFAULT.append(dialog_mod.load())
    return _DEFAULT[0]


class RulesLLM(InProcessLLM):
    """``llm.LLM`` that streams the rule-based answer word by word (like a real model)."""

    def __init__(self, dialog: Dialog | None = None) -> None:
        super().__init__()
        self.dialog = dialog or _default()
        self.on_action: ActionHandler | None = None

    @property
    def model(self) -> str:
        return "voicepool-rules"

    @property
    def provider(self) -> str:
        return "voicepool"


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
    @property
    def _rules(self) -> RulesLLM:
        return cast(RulesLLM, self._llm)

    async def _run(self) -> None:
        answer = dialog_mod.respond(self._rules.dialog, history_of(self._chat_ctx))
        request_id = f"rules-{uuid.uuid4().hex[:12]}"
        words = answer.text.split(" ")
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
        if answer.action is not None and self._rules.on_action is not None:
            self._rules.on_action(answer)


RulesLLM.stream_type = RulesStream
