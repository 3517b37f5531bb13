"""The control service's data, pure: call records as rooms and Events carry them, the checks a
request must pass before anything is asked of a call, free sessions, tables and SSE frames.

A call record is what the worker runtime publishes (``voicepool_worker.runtime.calls``): a
summary under ``voicepool.dev/call`` in the room's metadata while the call lives, the whole
record in a ``CallEnded`` Event's annotation once it has ended. Nothing here trusts it beyond
its shape: a record that does not parse is no call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import voicepool_contract as contract
from voicepool_contract import control as names
from voicepool_contract import phone


class HttpError(Exception):
    """A request refused with an HTTP status and a message that says why (and what to do)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class RoomView:
    """What ListRooms says of a room that the service reads."""

    name: str
    sid: str
    metadata: str
    participants: int = 0


def record_in(metadata: str) -> dict[str, Any] | None:
    """The call record in a room's metadata, or None (no record, another version, not JSON)."""
    try:
        obj = json.loads(metadata) if metadata.strip() else None
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    rec = obj.get(names.ROOM_CALL_KEY)
    if not isinstance(rec, dict) or rec.get("v") != names.RECORD_VERSION:
        return None
    if not isinstance(rec.get("pool"), str) or not isinstance(rec.get("agent"), str):
        return None
    return rec


def record_from_attributes(attributes: Mapping[str, str], agent: str) -> dict[str, Any] | None:
    """A call record read off the agent participant's attributes (a room whose metadata is the
    application's own text): enough to address the call, no latencies."""
    pool = attributes.get(names.ATTR_POOL)
    if not pool:
        return None
    try:
        started = float(attributes.get(names.ATTR_STARTED) or 0)
    except ValueError:
        started = 0.0
    return {
        "v": names.RECORD_VERSION,
        "pool": pool,
        "pod": attributes.get(names.ATTR_POD, ""),
        "agent": agent,
        "state": attributes.get(names.ATTR_STATE, ""),
        "started": started,
        "direction": attributes.get(names.ATTR_DIRECTION, ""),
        "caller": attributes.get(names.ATTR_CALLER, ""),
        "muted": attributes.get(names.ATTR_MUTED) == "true",
        "turns": None,
        "ttfw": {"p50": None, "last": None},
    }


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def row(room: RoomView, rec: Mapping[str, Any], now: float) -> dict[str, Any]:
    """One live call, as ``GET /v1/pools/{ns}/{pool}/calls`` lists it (numbers masked)."""
    raw_ttfw = rec.get("ttfw")
    ttfw: Mapping[str, Any] = raw_ttfw if isinstance(raw_ttfw, dict) else {}
    started = _num(rec.get("started")) or 0.0
    return {
        "room": phone.mask_numbers_in(room.name),
        "sid": room.sid,
        "caller": phone.mask_numbers_in(str(rec.get("caller") or "")),
        "direction": str(rec.get("direction") or ""),
        "started": started,
        "age_s": round(max(0.0, now - started), 1) if started else None,
        "pod": str(rec.get("pod") or ""),
        "state": str(rec.get("state") or ""),
        "muted": bool(rec.get("muted")),
        "turns": rec.get("turns") if isinstance(rec.get("turns"), int) else None,
        "ttfw_p50_s": _num(ttfw.get("p50")),
        "ttfw_last_s": _num(ttfw.get("last")),
    }


def rows_for(rooms: Iterable[RoomView], pool: str, now: float) -> list[dict[str, Any]]:
    """The live calls of ``pool`` ("<namespace>/<name>") among a server's rooms, oldest first."""
    out = []
    for room in rooms:
        rec = record_in(room.metadata)
        if rec is not None and rec["pool"] == pool and rec.get("state") != names.ENDED:
            out.append(row(room, rec, now))
    return sorted(out, key=lambda r: (r["started"], r["sid"]))


def ended_record(event: Mapping[str, Any], retention_s: float, now: float) -> dict[str, Any] | None:
    """An ended call's record from its ``CallEnded`` Event, if it is younger than the
    retention window and parses."""
    meta = event.get("metadata") or {}
    if event.get("reason") != names.CALL_ENDED_REASON:
        return None
    raw = (meta.get("annotations") or {}).get(names.ANN_CALL_RECORD)
    try:
        rec = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    ended = _num(rec.get("ended"))
    if ended is None or now - ended > retention_s:
        return None
    return rec


def free_sessions(pods: Iterable[Mapping[str, Any]]) -> int:
    """Calls the pool can take now: capacity minus sessions of its pods that report ready
    (idle or busy), are not draining and are not going away. Reports are bounded like the
    planner's: an unreadable one counts as full."""
    free = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        if meta.get("deletionTimestamp") or ann.get(contract.ANN_DRAIN) == "true":
            continue
        if ann.get(contract.ANN_STATE) not in ("idle", "busy"):
            continue
        sessions, capacity = ann.get(contract.ANN_SESSIONS, ""), ann.get(contract.ANN_CAPACITY, "")
        if not (sessions.isdigit() and capacity.isdigit()) or len(capacity) > 4:
            continue
        free += max(0, int(capacity) - int(sessions))
    return free


# -- request checks (before anything is asked of a call) ---------------------------------------


def text_of(body: Mapping[str, Any]) -> str:
    value = body.get("text")
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, "'text' must be a non-empty string")
    if len(value) > names.MAX_TEXT_CHARS:
        raise HttpError(
            413, f"'text' is {len(value)} characters; the limit is {names.MAX_TEXT_CHARS}"
        )
    return value.strip()


def transfer_of(body: Mapping[str, Any], allowed: Sequence[str] | None) -> tuple[str, bool]:
    """(target, warm) of a transfer request. Cold: ``sip:user@host`` or ``tel:+<number>``;
    warm: an E.164 number (``tel:`` allowed) within ``allowed`` (the pool's destinations;
    None: the pool places no outbound calls)."""
    to, warm = body.get("to"), bool(body.get("warm"))
    if not isinstance(to, str) or not to.strip():
        raise HttpError(400, "'to' must be a SIP URI (sip:user@host) or tel:+<number>")
    if not warm:
        try:
            phone.parse_transfer_target(to, setting="'to'")
        except phone.PhoneSettingError as e:
            raise HttpError(400, str(e)) from None
        return to.strip(), False
    number = dial_number(to[4:] if to.startswith("tel:") else to, allowed, what="warm transfer")
    return number, True


def dial_number(raw: Any, allowed: Sequence[str] | None, *, what: str = "outbound call") -> str:
    """An E.164 number the pool may call; 400 naming why not."""
    if allowed is None:
        raise HttpError(400, f"an {what} needs the pool's outbound trunk (spec.telephony.outbound)")
    if not isinstance(raw, str):
        raise HttpError(400, "'number' must be an E.164 number like +15550100")
    try:
        number = phone.parse_phone_number(raw, setting="'number'")
    except phone.PhoneSettingError as e:
        raise HttpError(400, str(e)) from None
    if number is None:
        raise HttpError(400, "'number' must be an E.164 number like +15550100")
    if not phone.destination_allowed(number, allowed):
        raise HttpError(
            400,
            f"{phone.mask_number(number)} is outside the pool's allowed destinations "
            "(spec.telephony.outbound.allowedDestinations)",
        )
    return number


def opening_of(body: Mapping[str, Any]) -> str | None:
    value = body.get("opening")
    if value is None:
        return None
    return text_of({"text": value})


POOL_REF = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$")


def pool_ref(value: str) -> tuple[str, str]:
    """``namespace/pool`` as given in ``?pool=``; 400 otherwise."""
    m = POOL_REF.match(value)
    if m is None or len(value) > 317:
        raise HttpError(400, f"pool={value!r} is not <namespace>/<pool>")
    return m.group(1), m.group(3)


# -- output ------------------------------------------------------------------------------------

COLUMNS = (
    ("ROOM", "room"),
    ("SID", "sid"),
    ("CALLER", "caller"),
    ("DIRECTION", "direction"),
    ("STATE", "state"),
    ("POD", "pod"),
    ("AGE", "age_s"),
    ("TURNS", "turns"),
    ("TTFW-P50", "ttfw_p50_s"),
    ("TTFW-LAST", "ttfw_last_s"),
)


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if key == "age_s":
        seconds = int(value)
        return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m{seconds % 60}s"
    if key.startswith("ttfw") and isinstance(value, int | float):
        return f"{value * 1000:.0f}ms"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
    """kubectl-like: a header, left-aligned columns three spaces apart, ``-`` for unknown."""
    cells = [[title for title, _ in columns]]
    cells += [[_cell(key, r.get(key)) for _, key in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def sse(event: Mapping[str, Any], kind: str | None = None) -> bytes:
    """One server-sent event: ``id`` (the event's seq), ``event`` (its kind), ``data`` (JSON)."""
    lines = []
    if "seq" in event:
        lines.append(f"id: {event['seq']}")
    lines.append(f"event: {kind or event.get('kind', 'message')}")
    lines.append("data: " + json.dumps(event, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()
