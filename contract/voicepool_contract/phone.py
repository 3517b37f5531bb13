"""Phone rules the operator and the worker must agree on: numbers, keys, menus, masking.

The operator checks a pool's keypad menu and outbound destinations when the pool is applied,
with the very parser the worker runs, so a menu that would crash the worker is refused at the
pool (``Degraded``, reason ``InvalidSpec``) instead of crash-looping its pods. Standard library
only: both images carry this module for nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: An E.164 number: ``+``, a country code that does not start with 0, 7 to 15 digits in all.
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
#: A prefix of E.164 numbers in an outbound allow-list: ``+`` alone allows every number.
E164_PREFIX = re.compile(r"^\+[0-9]{0,15}$")
#: The keys of a phone keypad (RFC 4733 events 0-11).
DTMF_KEYS = frozenset("0123456789*#")

TRANSFER, HANGUP, COLLECT = "transfer", "hangup", "collect:"
BACK_KEY, END_KEY = "*", "#"


class PhoneSettingError(ValueError):
    """A bad phone setting (menu, number, transfer target, allow-list); the message names the
    setting and the fix."""


class MenuError(PhoneSettingError):
    """A bad keypad menu; the message names the setting, the entry and the fix."""


def parse_menu_tree(spec: str, *, setting: str = "VOICEPOOL_DTMF_MENU") -> dict[str, str]:
    """``"1=hours;4=booking menu;4>1=book a cleaning"`` -> {"1": .., "4": .., "41": ..}.

    Entries are ``PATH=ACTION`` separated by ``;``; ``PATH`` is keys joined by ``>``. Keys of
    the result are paths without separators (a key is one character). A submenu key without
    its own entry gets a generic prompt. Empty spec: no keypad.
    """
    menu: dict[str, str] = {}
    for raw in spec.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        path_raw, sep, action = entry.partition("=")
        keys = [k.strip() for k in path_raw.split(">")]
        action = " ".join(action.split())
        bad = not sep or not action or any(len(k) != 1 or k not in DTMF_KEYS for k in keys)
        if bad or any(k in (BACK_KEY, END_KEY) for k in keys[:-1]):
            raise MenuError(
                f"{setting}: {entry!r} is not KEY=ACTION or KEY>KEY=ACTION with keys 0-9, * "
                "or # (e.g. '1=what are your opening hours;4>1=book a cleaning;0=transfer')"
            )
        path = "".join(keys)
        if path in menu:
            raise MenuError(f"{setting}: key {'>'.join(keys)!r} is defined twice")
        if action.lower().startswith(COLLECT) and not action[len(COLLECT) :].strip():
            raise MenuError(f"{setting}: {entry!r} needs a label after collect:")
        menu[path] = action
    for path in list(menu):
        for i in range(1, len(path)):
            menu.setdefault(path[:i], "Please choose an option.")
    for path, action in menu.items():
        if children(menu, path) and action.lower() in (TRANSFER, HANGUP):
            raise MenuError(
                f"{setting}: key {'>'.join(path)!r} has a submenu, so it cannot be "
                f"{action!r}; its text is the submenu's prompt"
            )
    return menu


def children(menu: Mapping[str, str], path: str) -> list[str]:
    """The paths one key below ``path`` in a parsed menu."""
    return [p for p in menu if len(p) == len(path) + 1 and p.startswith(path)]


def normalize_number(raw: str) -> str:
    """``+1 (555) 010-0000`` -> ``+15550100000``: the separators people write dropped."""
    return re.sub(r"[\s\-().]", "", raw.strip())


def parse_destinations(spec: str | Iterable[str], *, setting: str) -> tuple[str, ...]:
    """Outbound allow-list prefixes (a comma-separated string or a list); ``+`` allows all."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        prefix = normalize_number(str(item))
        if not prefix:
            continue
        if not E164_PREFIX.match(prefix):
            raise PhoneSettingError(
                f"{setting}: {item!r} is not an E.164 prefix like +1555 (or + for any number)"
            )
        out.append(prefix)
    return tuple(out)


#: Where a SIP REFER may send a caller: a tel: number or a SIP URI.
TRANSFER_TARGET = re.compile(r"^(tel:\+?[0-9][0-9\-\s().]{2,30}|sips?:[^\s@]+@[^\s]+)$")


def parse_transfer_target(value: str, *, setting: str = "VOICEPOOL_TRANSFER_TO") -> str | None:
    """A SIP REFER target (``tel:+15550100`` or ``sip:desk@pbx.example``), or None when unset."""
    target = value.strip()
    if not target:
        return None
    if not TRANSFER_TARGET.match(target):
        raise PhoneSettingError(
            f"{setting}={target!r} is not a transfer target: use tel:+<number> or sip:user@host"
        )
    return target


def parse_phone_number(value: str, *, setting: str) -> str | None:
    """An E.164 number (``+15550107777``; spaces, dashes and brackets dropped), or None if unset."""
    raw = value.strip()
    if not raw:
        return None
    number = normalize_number(raw)
    if not E164.match(number):
        raise PhoneSettingError(f"{setting}={raw!r} is not an E.164 number like +15550107777")
    return number


def destination_allowed(number: str, prefixes: Iterable[str]) -> bool:
    """Whether an outbound call to ``number`` (E.164) may be placed; no prefixes: none may."""
    normal = normalize_number(number)
    return bool(E164.match(normal)) and any(normal.startswith(p) for p in prefixes)


def mask_number(value: str) -> str:
    """``+15550100001`` -> ``+1555…0001``: enough to tell calls apart, not to dial back."""
    digits = value.strip()
    if len(digits) <= 8:
        return "…" + digits[-2:] if len(digits) > 2 else "…"
    return f"{digits[:5]}…{digits[-4:]}"


#: A phone number inside free text: room names (``call-_+15550100001_x``), SIP URIs, logs.
NUMBER_IN_TEXT = re.compile(r"\+?[0-9]{7,15}")


def mask_numbers_in(text: str) -> str:
    """Mask every phone number inside ``text``."""
    return NUMBER_IN_TEXT.sub(lambda m: mask_number(m.group(0)), text)
