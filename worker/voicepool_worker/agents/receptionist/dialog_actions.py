"""Where the dialog's actions (hang up, transfer) leave the pure dialog and reach the phone.

Both brains produce the same two actions: the scripted receptionist returns them on its reply
(``dialog.Reply.action``), an LLM provider calls the function tools ``end_call`` and
``transfer_call``. Either way they go to one ``CallActions`` object -- the call's
``callcontrol.CallControl`` -- so keypad, dialog and tools share one implementation.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, Protocol

from ...providers.dialog import Reply

log = logging.getLogger("voicepool.worker.dialog")

END_CALL_DESCRIPTION = (
    "End the phone call. Use it after saying goodbye, when the caller says they are done or "
    "asks to hang up."
)
TRANSFER_DESCRIPTION = (
    "Transfer the caller to a human colleague. Use it when the caller asks for a person, "
    "has an emergency, or you cannot help."
)


class CallActions(Protocol):
    """What the dialog may ask of the call (implemented by the call-control code)."""

    async def hang_up(self, reason: str) -> None: ...

    async def transfer_caller(self, reason: str) -> None: ...


class PendingActions:
    """Dialog actions waiting for the reply that carries them to be said (pure).

    The scripted dialog decides its action while it writes the reply: with preemptive
    generation before the caller's turn is even committed, for a reply that may then be thrown
    away (the caller went on). Acting at once hung up before the goodbye was spoken (the room
    was deleted 40 ms after the caller's "thank you goodbye"). So an action waits, keyed by
    its reply's words, until the session adds that reply to the chat: once it was played out.
    A reply cut short by the caller is not the same words, and its action is dropped."""

    def __init__(self) -> None:
        self._by_words: dict[str, Reply] = {}

    @staticmethod
    def _key(text: str) -> str:
        return " ".join(text.split()).lower()

    def expect(self, reply: Reply) -> None:
        self._by_words[self._key(reply.text)] = reply

    def said(self, text: str) -> Reply | None:
        """The reply whose action is now due, if ``text`` (an agent turn) is one."""
        return self._by_words.pop(self._key(text), None)


def connect(llm_stage: Any, actions: CallActions, session: Any) -> None:
    """Route the scripted dialog's reply actions (every ``rules`` LLM in the chain) to the call,
    each once the ``session`` has said its reply."""
    from ... import providers
    from ...providers.rules_llm import RulesLLM

    tasks: set[asyncio.Task[None]] = set()
    pending = PendingActions()

    def on_action(reply: Reply) -> None:
        log.info("dialog action", extra={"action": reply.action, "intents": list(reply.intents)})
        if reply.action in ("hangup", "transfer"):
            pending.expect(reply)

    def on_item(ev: Any) -> None:
        item = ev.item
        if getattr(item, "role", None) != "assistant":
            return
        reply = pending.said(item.text_content or "")
        if reply is None:
            return
        reason = ",".join(reply.intents) or "dialog"
        if reply.action == "hangup":
            task = asyncio.create_task(actions.hang_up(reason))
        else:
            task = asyncio.create_task(actions.transfer_caller(reason))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for instance in providers.instances_of(llm_stage):
        if isinstance(instance, RulesLLM):
            instance.on_action = on_action
    session.on("conversation_item_added", on_item)


def tools(actions: CallActions) -> list[Any]:
    """``end_call`` and ``transfer_call`` as function tools for an LLM provider."""
    from livekit.agents import function_tool

    tasks: set[asyncio.Task[None]] = set()

    def detach(coro: Any) -> None:
        # The tool returns at once and the action waits for the speech that called it to be
        # heard; a fresh context, so livekit does not see a tool waiting on its own speech.
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def end_call(reason: str = "") -> str:
        """End the call (after the goodbye was said)."""
        log.info("dialog action", extra={"action": "hangup", "tool": "end_call"})
        detach(actions.hang_up(reason or "end_call"))
        return "The call is ending now; do not say anything else."

    async def transfer_call(reason: str = "") -> str:
        """Transfer the caller to a person."""
        log.info("dialog action", extra={"action": "transfer", "tool": "transfer_call"})
        detach(actions.transfer_caller(reason or "transfer_call"))
        return "The caller is being transferred; tell them to hold."

    return [
        function_tool(end_call, name="end_call", description=END_CALL_DESCRIPTION),
        function_tool(transfer_call, name="transfer_call", description=TRANSFER_DESCRIPTION),
    ]
