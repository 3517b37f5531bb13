"""Telephony settings, pure: the default keypad menu, transfer targets and numbers to dial.

Phone callers reach the agent through LiveKit SIP; a transfer is a SIP REFER that LiveKit
sends for us and an outbound call is a SIP participant it dials. This module validates where
a call may be transferred to and what a dispatch asks to dial; the keypad itself is
``callflow.Keypad`` and the menu syntax ``voicepool_contract.phone``.
"""

from __future__ import annotations

import json
import re

from voicepool_contract.phone import E164

#: The keypad menu of the default receptionist: each key says what a caller would have said.
DEFAULT_MENU = (
    "1=what are your opening hours;2=where are you located;3=how much does a cleaning cost;"
    "4=i would like to book an appointment;0=transfer"
)
_TARGET = re.compile(r"^(tel:\+?[0-9][0-9\-\s().]{2,30}|sips?:[^\s@]+@[^\s]+)$")


class TelephonyError(ValueError):
    """A bad menu or transfer target; the message names the setting and the fix."""


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
    if not E164.match(number):
        raise TelephonyError(f"{setting}={raw!r} is not an E.164 number like +15550107777")
    return number


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
    if not E164.match(number):
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
