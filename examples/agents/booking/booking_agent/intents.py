"""Which of the agent's tools a caller's words ask for, decided before the model runs.

A small local model (and llama.cpp's server) calls a tool reliably only when the request names
it (``tool_choice``); the model then fills in the arguments. Larger models decide on their own
too: for them this is only a shortcut. Pure, so unit-tested on plain sentences.
"""

from __future__ import annotations

import re

from .slots import day_in

_WORD = re.compile(r"[a-z']+")
#: Words that ask about free times ("anything available on Friday?", "a free slot Tuesday").
AVAILABILITY = frozenset(
    {"free", "available", "availability", "slot", "slots", "appointment", "appointments", "book"}
)
GOODBYE = frozenset({"goodbye", "bye"})


def tool_for(text: str) -> str | None:
    """``find_free_slots`` for an availability question, ``end_call`` for a goodbye, else None."""
    words = set(_WORD.findall(text.lower()))
    if words & GOODBYE:
        return "end_call"
    if words & AVAILABILITY or (day_in(text) is not None and words & {"open", "come", "when"}):
        return "find_free_slots"
    return None
