"""Telephony bookkeeping, pure: the keypad menu and transfer targets (no I/O here).

Phone callers reach the agent through LiveKit SIP; their key presses arrive as DTMF room
events and a transfer is a SIP REFER that LiveKit sends for us. This module decides *what* a
key means and validates where a call may be transferred to; ``agent.py`` does the talking.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

#: The keypad menu of the default receptionist: each key says what a caller would have said.
DEFAULT_MENU = (
    "1=what are your opening hours;2=where are you located;3=how much does a cleaning cost;"
    "4=i would like to book an appointment;0=transfer"
)
DTMF_KEYS = frozenset("0123456789*#")
TRANSFER = "transfer"
#: What key 0 ("transfer") says when no transfer target is configured.
NO_TRANSFER_TEXT = "i would like to talk to a person"
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TARGET = re.compile(r"^(tel:\+?[0-9][0-9\-\s().]{2,30}|sips?:[^\s@]+@[^\s]+)$")


class TelephonyError(ValueError):
    """A bad menu or transfer target; the message names the setting and the fix."""


@dataclass(frozen=True)
class KeyAction:
    """What one key press does: speak as if the caller had said ``text``, or transfer."""

    digit: str
    transfer: bool = False
    text: str = ""


def parse_menu(spec: str, *, setting: str = "VOICEPOOL_DTMF_MENU") -> dict[str, str]:
    """``"1=opening hours;0=transfer"`` -> {"1": "opening hours", "0": "transfer"}.

    An empty spec disables the keypad. Entries are separated by ``;`` (text may hold commas).
    """
    menu: dict[str, str] = {}
    for raw in spec.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, text = entry.partition("=")
        key, text = key.strip(), " ".join(text.split())
        if not sep or key not in DTMF_KEYS or not text:
            raise TelephonyError(
                f"{setting}: {entry!r} is not KEY=TEXT with KEY one of 0-9, * or # "
                f"(e.g. '1=what are your opening hours;0=transfer')"
            )
        if key in menu:
            raise TelephonyError(f"{setting}: key {key!r} is defined twice")
        menu[key] = text
    return menu


def parse_transfer_target(value: str, *, setting: str = "VOICEPOOL_TRANSFER_TO") -> str | None:
    """A SIP REFER target (``tel:+15550100`` or ``sip:desk@pbx.example``), or None when unset."""
    target = value.strip()
    if not target:
        return None
    if not _TARGET.match(target):
        raise TelephonyError(
            f"{setting}={target!r} is not a transfer target: use tel:+<number> or sip:user@host"
        )
    return target


def parse_phone_number(value: str, *, setting: str) -> str | None:
    """An E.164 number (``+15550107777``; spaces, dashes and brackets dropped), or None if unset."""
    raw = value.strip()
    if not raw:
        return None
    number = re.sub(r"[\s\-().]", "", raw)
    if not _E164.match(number):
        raise TelephonyError(f"{setting}={raw!r} is not an E.164 number like +15550107777")
    return number


def action_for(digit: str, menu: dict[str, str], transfer_to: str | None) -> KeyAction | None:
    """The action of a key press; None for a key the menu does not use."""
    text = menu.get(digit)
    if text is None:
        return None
    if text.lower() == TRANSFER:
        if transfer_to is None:  # nowhere to send the call: ask the dialog for a person
            return KeyAction(digit, text=NO_TRANSFER_TEXT)
        return KeyAction(digit, transfer=True)
    return KeyAction(digit, text=text)


def dial_request(metadata: str) -> str | None:
    """The number an outbound job must call, from its dispatch metadata, or None.

    A dispatch with ``{"phone_number": "+15550100"}`` asks the agent to place the call itself;
    any other metadata (or none) is an ordinary inbound or WebRTC call.
    """
    try:
        data = json.loads(metadata) if metadata.strip() else None
    except ValueError:
        return None
    if not isinstance(data, dict) or "phone_number" not in data:
        return None
    raw = str(data["phone_number"])
    number = re.sub(r"[\s\-().]", "", raw)
    if not _E164.match(number):
        raise TelephonyError(
            f"dispatch metadata phone_number={raw!r} is not an E.164 number like +15550100"
        )
    return number


def dial_opening(metadata: str) -> str | None:
    """The first sentence of an outbound call, if its dispatch sets one (``"opening"``)."""
    try:
        data = json.loads(metadata) if metadata.strip() else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    opening = " ".join(str(data.get("opening") or "").split())
    return opening[:2000] or None
