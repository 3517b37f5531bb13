"""One call's record and its control messages, as data (pure: no LiveKit, no clock of its own).

The runtime keeps one ``CallRecord`` per call in the job process and publishes it for the
control service (``runtime/control.py``): a summary in the room's metadata (one ListRooms lists
every live call), attributes on the agent participant, the full record on request, a bounded
ring of numbered events the service follows, and the final record when the call ends (the one
JSON log line per call, and the Event that keeps it readable for the retention window).

``parse_request`` and ``transfer_target`` turn a control message into a verb or into the
status the service answers with (400, 409, 413), so every refusal is decided here, testably.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voicepool_contract import control as names
from voicepool_contract import phone

from ..latency import percentile

#: Per-turn latencies kept for ``show`` (the oldest drop out; the log line has them all).
MAX_TURNS = 50
#: Events kept for followers; one who falls further behind is told it missed some.
MAX_EVENTS = 200
#: Time-to-first-word samples kept for the call's p50.
MAX_SAMPLES = 1000
#: Control actions kept on the record.
MAX_ACTIONS = 20
#: How long one ``events`` request may wait for news, in seconds: livekit-server gives a server
#: RPC 3 s before it delivers it again (psrpc's default timeout and retries), so answers come
#: well within that.
MAX_WAIT_S = 2.5
#: An RPC payload is limited (livekit-server: 15 KiB); one answer of events stays below this.
MAX_EVENT_BYTES = 12000


class ControlError(Exception):
    """A control message the runtime answers with an HTTP-like status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class CallRecord:
    """What the control service sees of one call; every change is a numbered event."""

    room: str
    pool: str  # "<namespace>/<pool>", or "" outside a pool
    pod: str
    agent: str  # the agent participant's identity (where control messages go)
    direction: str  # inbound | outbound
    started: float  # unix seconds
    caller: str = ""  # the other party's number, masked; "" on WebRTC
    transcripts: bool = False  # the pool logs transcripts: events may carry words
    state: str = names.CONNECTING
    muted: bool = False
    takeover: str | None = None  # the person speaking instead of the agent
    ended: float | None = None
    end_reason: str = ""
    turn_count: int = 0
    keys: int = 0
    seq: int = 0
    turns: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_TURNS))
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    actions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ACTIONS))
    _ttfw: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    # -- changes -------------------------------------------------------------------------

    def note(self, kind: str, t: float, **data: Any) -> dict[str, Any]:
        """Record an event (a turn, a key, a transfer, a state change, an action)."""
        self.seq += 1
        event = {"seq": self.seq, "t": round(t, 3), "kind": kind, **data}
        self.events.append(event)
        return event

    def set_state(self, state: str, t: float, **why: Any) -> bool:
        """Move to ``state``; False (and no event) when the call is there already or ended."""
        if state == self.state or self.state == names.ENDED:
            return False
        old, self.state = self.state, state
        self.note("state", t, state=state, previous=old, **why)
        return True

    def caller_turn(self, t: float, transcript: str | None) -> None:
        """The caller finished a turn (words only when the pool logs transcripts)."""
        data: dict[str, Any] = {"role": "caller"}
        if self.transcripts and transcript is not None:
            data["transcript"] = transcript
        self.note("turn", t, **data)

    def agent_turn(
        self,
        t: float,
        latency: Mapping[str, float] | None,
        reply: str | None = None,
        interrupted: bool = False,
    ) -> None:
        """The agent answered; ``latency`` is the turn's stages (``TurnLatency.as_dict()``)."""
        data: dict[str, Any] = {"role": "agent", "interrupted": interrupted}
        if self.transcripts and reply is not None:
            data["reply"] = reply
        if latency:
            stages = {k: round(float(v), 4) for k, v in latency.items()}
            self.turn_count += 1
            self.turns.append({"turn": self.turn_count, "t": round(t, 3), **stages})
            if "ttfw" in stages:
                self._ttfw.append(stages["ttfw"])
            data["latency"] = stages
            data["turn"] = self.turn_count
        self.note("turn", t, **data)

    def key(self, t: float, action: str, menu: str, digit: str | None) -> None:
        self.keys += 1
        data: dict[str, Any] = {"action": action, "menu": menu}
        if self.transcripts and digit is not None:  # keys can be an account number
            data["digit"] = digit
        self.note("keypad", t, **data)

    def action(self, t: float, verb: str, **data: Any) -> None:
        """A control action the runtime carried out."""
        self.actions.append({"t": round(t, 3), "verb": verb, **data})
        self.note("action", t, verb=verb, **data)

    def end(self, t: float, reason: str) -> None:
        if self.ended is None:
            self.ended = t
            self.end_reason = reason
            self.set_state(names.ENDED, t, reason=reason)

    # -- views ---------------------------------------------------------------------------

    def ttfw(self) -> dict[str, float | None]:
        samples = list(self._ttfw)
        return {
            "p50": _round(percentile(samples, 50)) if samples else None,
            "p95": _round(percentile(samples, 95)) if samples else None,
            "last": _round(samples[-1]) if samples else None,
        }

    def summary(self) -> dict[str, Any]:
        """What the room's metadata carries: enough for one line of ``calls list``."""
        ttfw = self.ttfw()
        return {
            "v": names.RECORD_VERSION,
            "pool": self.pool,
            "pod": self.pod,
            "agent": self.agent,
            "state": self.state,
            "started": round(self.started, 3),
            "direction": self.direction,
            "caller": self.caller,
            "muted": self.muted,
            "turns": self.turn_count,
            "ttfw": {"p50": ttfw["p50"], "last": ttfw["last"]},
        }

    def attributes(self) -> dict[str, str]:
        """The agent participant's attributes (strings only, as LiveKit wants them)."""
        return {
            names.ATTR_POOL: self.pool,
            names.ATTR_POD: self.pod,
            names.ATTR_STATE: self.state,
            names.ATTR_STARTED: f"{self.started:.3f}",
            names.ATTR_DIRECTION: self.direction,
            names.ATTR_CALLER: self.caller,
            names.ATTR_MUTED: "true" if self.muted else "false",
        }

    def detail(self) -> dict[str, Any]:
        """``show``: the summary, every kept turn's stages, the actions, the end."""
        out = self.summary()
        out.update(
            room=self.room,
            ttfw=self.ttfw(),
            takeover=self.takeover,
            keys=self.keys,
            turn_latencies=list(self.turns),
            actions=list(self.actions),
            events=self.seq,
        )
        if self.ended is not None:
            out.update(
                ended=round(self.ended, 3),
                duration_s=round(self.ended - self.started, 3),
                end_reason=self.end_reason,
            )
        return out

    def final(self) -> dict[str, Any]:
        """The ended call's record (log line and Event), kept under ``MAX_RECORD_BYTES``."""
        out = self.detail()
        while len(json.dumps(out)) > names.MAX_RECORD_BYTES and out["turn_latencies"]:
            out["turn_latencies"] = out["turn_latencies"][len(out["turn_latencies"]) // 2 + 1 :]
        return out

    def events_since(self, since: int) -> tuple[list[dict[str, Any]], int, bool]:
        """(events after ``since`` that fit one answer, the last seq sent, whether some older
        ones are no longer kept)."""
        kept = [e for e in self.events if e["seq"] > since]
        missed = bool(kept) and kept[0]["seq"] > since + 1
        out: list[dict[str, Any]] = []
        size = 0
        for event in kept:
            size += len(json.dumps(event)) + 2
            if out and size > MAX_EVENT_BYTES:
                break
            out.append(event)
        last = out[-1]["seq"] if out else max(since, 0)
        return out, last, missed


def merged_metadata(current: str, summary: Mapping[str, Any]) -> str | None:
    """The room's metadata with the call summary under ``ROOM_CALL_KEY``; None when the
    metadata is the application's own text (not a JSON object), which is then left alone."""
    text = current.strip()
    obj: Any = {}
    if text:
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
    obj[names.ROOM_CALL_KEY] = dict(summary)
    return json.dumps(obj, separators=(",", ":"))


# -- control messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlRequest:
    verb: str
    args: Mapping[str, Any]
    nonce: str


def _text(args: Mapping[str, Any], key: str = "text") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ControlError(400, f"{key!r} must be a non-empty string")
    if len(value) > names.MAX_TEXT_CHARS:
        raise ControlError(
            413, f"{key!r} is {len(value)} characters; the limit is {names.MAX_TEXT_CHARS}"
        )
    return value.strip()


def parse_request(body: str) -> ControlRequest:
    """A control message body (JSON ``{"verb", "args", "nonce"}``), checked; ControlError."""
    try:
        raw = json.loads(body)
    except ValueError:
        raise ControlError(400, "the control message is not JSON") from None
    if not isinstance(raw, dict):
        raise ControlError(400, "the control message is not a JSON object")
    verb = raw.get("verb")
    if verb not in names.VERBS:
        raise ControlError(400, f"unknown verb {verb!r}; one of {', '.join(names.VERBS)}")
    args = raw.get("args") or {}
    nonce = raw.get("nonce")
    if not isinstance(args, dict):
        raise ControlError(400, "'args' must be an object")
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= 64:
        raise ControlError(400, "'nonce' must be a string of 8 to 64 characters")
    if verb in ("say", "instruct"):
        args = {**args, "text": _text(args)}
    if verb == "events":
        since, wait = args.get("since", 0), args.get("wait", 0)
        if not isinstance(since, int) or since < 0:
            raise ControlError(400, "'since' must be an integer >= 0")
        if not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT_S:
            raise ControlError(400, f"'wait' must be 0..{MAX_WAIT_S} seconds")
    if verb == "transfer" and not isinstance(args.get("to"), str):
        raise ControlError(400, "'to' must be a SIP URI (sip:user@host) or tel:+<number>")
    return ControlRequest(verb, args, nonce)


@dataclass(frozen=True)
class Target:
    """Where a transfer goes: ``warm`` dials ``number`` in; cold REFERs to ``uri``."""

    warm: bool
    uri: str = ""
    number: str = ""


def transfer_target(to: str, *, warm: bool, allowed: Iterable[str], outbound_trunk: bool) -> Target:
    """A transfer request's target, or ControlError 400 naming what is wrong.

    Cold: ``tel:+<number>`` or ``sip:user@host`` (REFER). Warm (the colleague is dialled in):
    an E.164 number (``tel:`` allowed) the pool may call (``allowedDestinations``), over its
    outbound trunk.
    """
    if not warm:
        try:
            uri = phone.parse_transfer_target(to, setting="transfer target")
        except phone.PhoneSettingError as e:
            raise ControlError(400, str(e)) from None
        if uri is None:
            raise ControlError(400, "transfer target: empty")
        return Target(False, uri=uri)
    if not outbound_trunk:
        raise ControlError(400, "a warm transfer needs the pool's outbound trunk; it has none")
    raw = to[4:] if to.startswith("tel:") else to
    try:
        number = phone.parse_phone_number(raw, setting="warm transfer target")
    except phone.PhoneSettingError as e:
        raise ControlError(400, str(e)) from None
    if number is None:
        raise ControlError(400, "warm transfer target: empty")
    if not phone.destination_allowed(number, allowed):
        raise ControlError(
            400, f"{phone.mask_number(number)} is outside the pool's allowed destinations"
        )
    return Target(True, number=number)
