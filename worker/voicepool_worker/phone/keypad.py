"""What a phone call's keys and words make the agent do, decided without I/O.

* ``Keypad``: a menu tree (``VOICEPOOL_DTMF_MENU``) walked one key at a time -- submenus that
  nest, multi-digit entry ended by ``#`` or an inter-digit timeout, read-back of what was keyed,
  ``*`` to go back. Each key press returns the effects to carry out; the clock comes in as an
  argument, so every path is unit-tested with plain data.
* ``CallLimits`` / ``idle_step``: when a quiet or long call is prompted and ended.

What a caller *says* that is call control (asking for a person, saying goodbye) is decided by
the dialog (``dialog.py``, its ``hangup`` and ``transfer`` intents) or by an LLM's tools.

The effects are executed by ``callcontrol.CallControl``, the one module that hangs up,
transfers and dials for the keypad, the dialog and (later) the control API alike.

Menu syntax, entries separated by ``;``: ``PATH=ACTION``. ``PATH`` is keys joined by ``>``
(``4>1`` is key 1 in the submenu of key 4). ``ACTION`` is what the caller "says" (the dialog
answers it), ``transfer``, ``hangup``, ``collect:<label>`` (multi-digit entry: the digits are
read back and handed to the dialog as ``<label> <digits>``), or -- for a key that has a
submenu -- the prompt spoken when the caller enters it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from voicepool_contract.phone import (
    BACK_KEY,
    COLLECT,
    DTMF_KEYS,
    END_KEY,
    HANGUP,
    TRANSFER,
    MenuError,
    children,
    parse_menu_tree,
)

__all__ = [
    "DTMF_KEYS",
    "Ask",
    "CallLimits",
    "Effect",
    "Hangup",
    "Keypad",
    "MenuError",
    "Say",
    "Transfer",
    "briefing",
    "idle_step",
    "parse_menu_tree",
    "spoken_digits",
]

MAX_DIGITS = 32
NO_SUCH_KEY_TEXT = "Sorry, that key is not in this menu."
NO_DIGITS_TEXT = "I did not get any digits. Please try again."
#: What the transfer key "says" when no transfer target is configured: the dialog answers it.
NO_TRANSFER_TEXT = "i would like to talk to a person"


@dataclass(frozen=True)
class Say:
    """The agent speaks ``text`` word for word."""

    text: str


@dataclass(frozen=True)
class Ask:
    """The dialog answers ``text`` as if the caller had said it."""

    text: str


@dataclass(frozen=True)
class Transfer:
    pass


@dataclass(frozen=True)
class Hangup:
    reason: str


Effect = Say | Ask | Transfer | Hangup


def spoken_digits(digits: str) -> str:
    """``"1234#"`` -> ``"1 2 3 4"``: read back one key at a time, as people do on the phone."""
    names = {"*": "star", "#": "hash"}
    return " ".join(names.get(d, d) for d in digits)


@dataclass
class Keypad:
    """One call's keypad: where in the menu the caller is, and any digits being collected."""

    menu: Mapping[str, str]
    inter_digit_timeout_s: float = 5.0
    transfer_available: bool = True
    path: str = ""
    collecting: str | None = None  # the label of a multi-digit entry in progress
    digits: str = ""
    last_key_at: float = 0.0
    history: list[str] = field(default_factory=list)

    def deadline(self) -> float | None:
        """When ``tick`` must be called to end a multi-digit entry (None: nothing pending)."""
        if self.collecting is None:
            return None
        return self.last_key_at + self.inter_digit_timeout_s

    def press(self, key: str, now: float) -> list[Effect]:
        """A key from the phone (RFC 4733); anything that is not a key is ignored."""
        if len(key) != 1 or key not in DTMF_KEYS:
            return []
        self.history.append(key)
        self.last_key_at = now
        if self.collecting is not None:
            return self._collect(key)
        if key == BACK_KEY and self.path and self.path + key not in self.menu:
            self.path = self.path[:-1]
            return [Say(self._prompt(self.path))]
        action = self.menu.get(self.path + key)
        if action is None:  # ignored in the main menu (a stray key); explained in a submenu
            return [Say(NO_SUCH_KEY_TEXT)] if self.path else []
        here = self.path + key
        if children(self.menu, here):
            self.path = here
            return [Say(action)]
        self.path = ""  # a leaf: the next key starts from the top again
        low = action.lower()
        if low == TRANSFER:
            return [Transfer()] if self.transfer_available else [Ask(NO_TRANSFER_TEXT)]
        if low == HANGUP:
            return [Hangup("caller chose hang up on the keypad")]
        if low.startswith(COLLECT):
            self.collecting = action[len(COLLECT) :].strip()
            self.digits = ""
            return []
        return [Ask(action)]

    def _collect(self, key: str) -> list[Effect]:
        if key == END_KEY:
            return self._finish()
        if key == BACK_KEY:  # start the entry again
            self.digits = ""
            return [Say("Okay, start again.")]
        if len(self.digits) < MAX_DIGITS:
            self.digits += key
        return []

    def tick(self, now: float) -> list[Effect]:
        """Called at ``deadline()``: a pause after the last digit ends the entry."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        return self._finish()

    def _finish(self) -> list[Effect]:
        label, digits = self.collecting or "", self.digits
        self.collecting, self.digits = None, ""
        if not digits:
            return [Say(NO_DIGITS_TEXT)]
        return [Say(f"You entered {spoken_digits(digits)}."), Ask(f"{label} {digits}")]

    def _prompt(self, path: str) -> str:
        return self.menu.get(path, "Main menu.") if path else "Main menu."


@dataclass(frozen=True)
class CallLimits:
    """Idle and length limits of one call (0 disables either)."""

    idle_timeout_s: float = 0.0
    max_call_s: float = 0.0


def idle_step(limits: CallLimits, quiet_for_s: float, prompted: bool) -> str | None:
    """``"prompt"`` after idle_timeout of caller silence, ``"hangup"`` after another one."""
    if limits.idle_timeout_s <= 0:
        return None
    if quiet_for_s >= 2 * limits.idle_timeout_s and prompted:
        return "hangup"
    if quiet_for_s >= limits.idle_timeout_s and not prompted:
        return "prompt"
    return None


#: How many of the caller's last sentences a warm-transfer briefing repeats.
BRIEFING_SENTENCES = 3


def briefing(caller_number: str, said: Sequence[str], reason: str = "") -> str:
    """What the agent tells the colleague, privately, before a warm transfer hands over.

    Who is calling (only the number's last four digits: the colleague sees the rest on the
    caller's record, the words may be overheard) and the caller's last few sentences.
    """
    tail = re.sub(r"[^0-9]", "", caller_number)[-4:]
    who = f"a caller whose number ends in {spoken_digits(tail)}" if tail else "a caller"
    lines = [" ".join(s.split()) for s in said if s.strip()][-BRIEFING_SENTENCES:]
    text = f"Hello, this is the voice assistant. I have {who} on the line."
    if lines:
        text += " They said: " + "; ".join(lines) + "."
    elif reason:
        text += f" They asked for {reason}."
    return text + " I am connecting you now."
