"""What a dispatch asks a phone call to do, pure: the number to dial and the opening line.

A dispatch with ``{"phone_number": ...}`` metadata makes the agent place the call itself over
the pool's outbound trunk (``control.CallControl.dial``); transfer targets and the menu syntax
are ``voicepool_contract.phone``'s, the keypad is ``keypad.Keypad``.
"""

from __future__ import annotations

import json
import re

from voicepool_contract.phone import E164, PhoneSettingError

#: A dispatch asks for something the worker refuses (a number that is not E.164).
TelephonyError = PhoneSettingError


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
