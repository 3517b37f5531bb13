"""A pool's phone numbers as LiveKit SIP objects, decided without I/O.

``spec.telephony`` declares inbound numbers (who may call them, with which credentials) and an
outbound trunk. The operator owns three LiveKit objects per pool, found again by name (LiveKit
has no labels): ``voicepool/<namespace>/<pool>/inbound``, ``.../outbound`` and ``.../rule``.
``plan_sip`` compares what the pool wants with what LiveKit holds and returns the calls to make:
create what is missing (a trunk deleted by hand comes back), replace what drifted, delete what
the pool no longer declares. A number another trunk already answers is left out and named, so
the rest of the pool keeps working while ``Degraded`` says which number is taken by whom.

Secrets stay references here: the glue (``sync.py``) reads them just before it calls LiveKit,
and nothing derived from them reaches the status or an Event.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .spec import TelephonySpec, object_name, owner_of


@dataclass(frozen=True)
class Credentials:
    """Digest credentials read from a Secret (kept out of reprs, status and Events)."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    def digest(self, salt: str) -> str:
        """What the trunk's LiveKit metadata records, so a changed password is seen as drift
        without ever comparing (or listing) the password itself."""
        if not self.username:
            return ""
        mac = hmac.new(salt.encode(), f"{self.username}:{self.password}".encode(), hashlib.sha256)
        return "auth:" + mac.hexdigest()[:16]


@dataclass(frozen=True)
class InboundTrunk:
    name: str
    numbers: tuple[str, ...]
    allowed_addresses: tuple[str, ...]
    auth: Credentials = Credentials()
    metadata: str = ""  # Credentials.digest: how drift in the credentials is seen
    ringing_timeout_s: int = 0  # 0: livekit-sip's default (180 s)
    id: str = ""


@dataclass(frozen=True)
class OutboundTrunk:
    name: str
    address: str
    numbers: tuple[str, ...]
    transport: str
    auth: Credentials = Credentials()
    metadata: str = ""
    id: str = ""


@dataclass(frozen=True)
class DispatchRule:
    """One room per call (individual rule), with the pool's agent dispatched into it."""

    name: str
    trunk_ids: tuple[str, ...]
    room_prefix: str
    agent_name: str
    id: str = ""


SipObject = InboundTrunk | OutboundTrunk | DispatchRule


@dataclass(frozen=True)
class Observed:
    """Everything LiveKit holds (every owner's), as the glue listed it."""

    inbound: tuple[InboundTrunk, ...] = ()
    outbound: tuple[OutboundTrunk, ...] = ()
    rules: tuple[DispatchRule, ...] = ()


@dataclass(frozen=True)
class Create:
    obj: SipObject


@dataclass(frozen=True)
class Delete:
    obj: SipObject
    why: str


SipAction = Create | Delete


@dataclass(frozen=True)
class SipPlan:
    actions: tuple[SipAction, ...]
    claimed: Mapping[str, str]  # number -> name of the trunk that already answers it
    numbers: tuple[str, ...]  # the numbers this pool will answer


def _same(a: SipObject, b: SipObject) -> bool:
    """Equal in everything the pool declares (LiveKit's ids and defaults aside)."""
    if isinstance(a, InboundTrunk) and isinstance(b, InboundTrunk):
        return (
            sorted(a.numbers) == sorted(b.numbers)
            and sorted(a.allowed_addresses) == sorted(b.allowed_addresses)
            and a.metadata == b.metadata
            and a.ringing_timeout_s == b.ringing_timeout_s
        )
    if isinstance(a, OutboundTrunk) and isinstance(b, OutboundTrunk):
        return (
            a.address == b.address
            and sorted(a.numbers) == sorted(b.numbers)
            and a.transport == b.transport
            and a.metadata == b.metadata
        )
    if isinstance(a, DispatchRule) and isinstance(b, DispatchRule):
        return (
            sorted(a.trunk_ids) == sorted(b.trunk_ids)
            and a.room_prefix == b.room_prefix
            and a.agent_name == b.agent_name
        )
    return False


def _reconcile_one(
    want: SipObject | None, have: Sequence[SipObject], actions: list[SipAction]
) -> SipObject | None:
    """Keep one matching object, replace a drifted one, delete duplicates; return the kept one."""
    keep: SipObject | None = None
    for obj in have:
        if want is not None and keep is None and _same(want, obj):
            keep = obj
        else:
            actions.append(Delete(obj, "no longer declared" if want is None else "drifted"))
    if want is not None and keep is None:
        actions.append(Create(want))
    return keep


def plan_sip(
    namespace: str,
    pool: str,
    agent_name: str,
    spec: TelephonySpec | None,
    observed: Observed,
    *,
    inbound_auth: Credentials = Credentials(),
    outbound_auth: Credentials = Credentials(),
) -> SipPlan:
    """The LiveKit calls that make ``observed`` hold exactly what ``spec`` declares.

    A replaced trunk gets a new id, so the dispatch rule that points at it is replaced in the
    same plan (``trunk_ids`` of a created rule reference the inbound trunk by name until the
    glue knows the new id: ``"@" + name``).
    """
    mine = (namespace, pool)
    names = {part: object_name(namespace, pool, part) for part in ("inbound", "outbound", "rule")}

    claimed: dict[str, str] = {}
    if spec is not None:
        for trunk in observed.inbound:
            if owner_of(trunk.name) == mine:
                continue
            for n in trunk.numbers:
                if n in spec.numbers:
                    claimed[n] = trunk.name or trunk.id
    numbers = tuple(n for n in (spec.numbers if spec else ()) if n not in claimed)

    actions: list[SipAction] = []
    want_in: InboundTrunk | None = None
    # A trunk without numbers answers every number: only when catch-all is asked for.
    if spec is not None and (numbers or (spec.catch_all and not spec.numbers)):
        want_in = InboundTrunk(
            names["inbound"],
            numbers,
            spec.allowed_addresses,
            inbound_auth,
            inbound_auth.digest(names["inbound"]),
            spec.ringing_timeout_s,
        )
    have_in = [t for t in observed.inbound if t.name == names["inbound"]]
    kept_in = _reconcile_one(want_in, have_in, actions)

    want_out: OutboundTrunk | None = None
    if spec is not None and spec.outbound_address is not None:
        want_out = OutboundTrunk(
            names["outbound"],
            spec.outbound_address,
            spec.outbound_numbers,
            spec.outbound_transport,
            outbound_auth,
            outbound_auth.digest(names["outbound"]),
        )
    _reconcile_one(want_out, [t for t in observed.outbound if t.name == names["outbound"]], actions)

    want_rule: DispatchRule | None = None
    if want_in is not None and spec is not None:
        trunk_ref = kept_in.id if kept_in is not None else "@" + names["inbound"]
        want_rule = DispatchRule(names["rule"], (trunk_ref,), spec.room_prefix, agent_name)
    _reconcile_one(want_rule, [r for r in observed.rules if r.name == names["rule"]], actions)

    # Deletions first: a replaced trunk must free its numbers before the new one claims them.
    ordered = [a for a in actions if isinstance(a, Delete)] + [
        a for a in actions if isinstance(a, Create)
    ]
    return SipPlan(tuple(ordered), claimed, numbers)


def find_ids(namespace: str, pool: str, observed: Observed) -> dict[str, str]:
    """The ids of the pool's objects as LiveKit lists them (for ``status.telephony``)."""
    out: dict[str, str] = {}
    for key, items in (
        ("inboundTrunkId", observed.inbound),
        ("outboundTrunkId", observed.outbound),
        ("dispatchRuleId", observed.rules),
    ):
        part = {"inboundTrunkId": "inbound", "outboundTrunkId": "outbound"}.get(key, "rule")
        for obj in items:
            if obj.name == object_name(namespace, pool, part):
                out[key] = obj.id
    return out


def status_problem(plan: SipPlan | None, error: str | None) -> str | None:
    """One line for Degraded: the LiveKit error, else the numbers another trunk answers."""
    if error:
        return error
    if plan is not None and plan.claimed:
        taken = ", ".join(f"{n} (claimed by {owner})" for n, owner in sorted(plan.claimed.items()))
        return f"phone number(s) already claimed by another trunk: {taken}"
    return None
