"""A pool's phone numbers as LiveKit SIP objects, decided without I/O.

``spec.telephony`` declares inbound numbers (who may call them, with which credentials) and an
outbound trunk. The operator owns three LiveKit objects per pool, found again by name (LiveKit
has no labels): ``voicepool/<namespace>/<pool>/inbound``, ``.../outbound`` and ``.../rule``.
``plan_sip`` compares what the pool wants with what LiveKit holds and returns the calls to make:
create what is missing (a trunk deleted by hand comes back), replace what drifted, delete what
the pool no longer declares. A number another trunk already answers is left out and named, so
the rest of the pool keeps working while ``Degraded`` says which number is taken by whom.

Secrets stay references here: the glue (``sip.py``) reads them just before it calls LiveKit,
and nothing derived from them reaches the status or an Event.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import voicepool_contract as contract
from voicepool_contract.phone import E164, MenuError, parse_destinations

from .conditions import Condition, with_degraded
from .spec import SpecError, local_object_name, secret_key

NAME_PREFIX = "voicepool"
_CIDR = re.compile(r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?$")
TRANSPORTS = ("auto", "udp", "tcp", "tls")


class TelephonyError(ValueError):
    """``spec.telephony`` cannot be used; the message names the field."""


@dataclass(frozen=True)
class SecretRef:
    name: str
    username_key: str = "username"
    password_key: str = "password"


@dataclass(frozen=True)
class TelephonySpec:
    numbers: tuple[str, ...] = ()
    catch_all: bool = False  # answer every number no other trunk claims
    allowed_addresses: tuple[str, ...] = ()
    inbound_auth: SecretRef | None = None
    room_prefix: str = "call-"
    ringing_timeout_s: int = 20  # no agent by then (every pod full): the caller gets busy
    outbound_address: str | None = None
    outbound_numbers: tuple[str, ...] = ()
    outbound_transport: str = "auto"
    outbound_auth: SecretRef | None = None
    allow_any_caller: bool = False  # an inbound trunk that answers any source, by choice
    allowed_destinations: tuple[str, ...] = ()  # E.164 prefixes outbound calls may go to

    @property
    def inbound(self) -> bool:
        return bool(self.numbers) or self.catch_all

    @property
    def outbound(self) -> bool:
        return self.outbound_address is not None


def object_name(namespace: str, pool: str, part: str) -> str:
    """The LiveKit name of one of a pool's SIP objects (how the operator finds it again)."""
    return f"{NAME_PREFIX}/{namespace}/{pool}/{part}"


def owner_of(name: str) -> tuple[str, str] | None:
    """(namespace, pool) of an object this operator created, or None for anyone else's."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == NAME_PREFIX:
        return parts[1], parts[2]
    return None


def _secret(raw: Any, where: str) -> SecretRef | None:
    if not raw:
        return None
    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise TelephonyError(f"{where}.name: required (a Secret in the pool's namespace)")
    try:
        return SecretRef(
            local_object_name(raw["name"], f"{where}.name"),
            secret_key(raw.get("usernameKey"), "username", f"{where}.usernameKey"),
            secret_key(raw.get("passwordKey"), "password", f"{where}.passwordKey"),
        )
    except SpecError as e:
        raise TelephonyError(str(e)) from None


def _numbers(raw: Any, where: str) -> tuple[str, ...]:
    numbers = tuple(str(n).strip() for n in raw or ())
    for n in numbers:
        if not E164.match(n):
            raise TelephonyError(f"{where}: {n!r} is not an E.164 number like +15550100000")
    if len(set(numbers)) != len(numbers):
        raise TelephonyError(f"{where}: a number is listed twice")
    return numbers


def parse_telephony(raw: Mapping[str, Any] | None) -> TelephonySpec | None:
    """``spec.telephony`` typed and checked; None when the pool has no phone numbers."""
    if not raw:
        return None
    inbound = raw.get("inbound") or {}
    outbound = raw.get("outbound") or {}
    addresses = tuple(str(a).strip() for a in inbound.get("allowedAddresses") or ())
    for a in addresses:
        if not _CIDR.match(a):
            raise TelephonyError(
                f"spec.telephony.inbound.allowedAddresses: {a!r} is not an IP or CIDR"
            )
    out_address = (str(outbound.get("address") or "").strip()) or None
    if outbound and out_address is None:
        raise TelephonyError("spec.telephony.outbound.address: required (host[:port])")
    if out_address is not None and not _ADDRESS.match(out_address):
        raise TelephonyError(
            f"spec.telephony.outbound.address: {out_address!r} is not host[:port] "
            "(no sip: prefix, no user part)"
        )
    transport = str(outbound.get("transport") or "auto").lower()
    if transport not in TRANSPORTS:
        raise TelephonyError(
            f"spec.telephony.outbound.transport: {transport!r} is not one of {TRANSPORTS}"
        )
    out_numbers = _numbers(outbound.get("numbers"), "spec.telephony.outbound.numbers")
    if out_address is not None and not out_numbers:
        raise TelephonyError(
            "spec.telephony.outbound.numbers: at least one caller-ID number is required"
        )
    inbound_auth = _secret(inbound.get("authSecretRef"), "spec.telephony.inbound.authSecretRef")
    allow_any = bool(inbound.get("allowAnyCaller", False))
    numbers = _numbers(inbound.get("numbers"), "spec.telephony.inbound.numbers")
    answers = bool(numbers) or bool(inbound.get("catchAll", False))
    if answers and not (addresses or inbound_auth or allow_any):
        raise TelephonyError(
            "spec.telephony.inbound: the trunk would answer anyone; set allowedAddresses (your "
            "SIP provider's addresses) or authSecretRef (digest credentials), or "
            "allowAnyCaller: true to take calls from any source"
        )
    try:
        destinations = parse_destinations(
            outbound.get("allowedDestinations") or (),
            setting="spec.telephony.outbound.allowedDestinations",
        )
    except MenuError as e:
        raise TelephonyError(str(e)) from None
    if out_address is not None and not destinations:
        raise TelephonyError(
            "spec.telephony.outbound.allowedDestinations: required; list the E.164 prefixes "
            "calls may go to (e.g. +1555), or + for any number"
        )
    return TelephonySpec(
        numbers=numbers,
        catch_all=bool(inbound.get("catchAll", False)),
        allowed_addresses=addresses,
        inbound_auth=inbound_auth,
        room_prefix=str(inbound.get("roomPrefix") or "call-"),
        ringing_timeout_s=int(inbound.get("ringingTimeoutSeconds") or 20),
        outbound_address=out_address,
        outbound_numbers=out_numbers,
        outbound_transport=transport,
        outbound_auth=_secret(
            outbound.get("authSecretRef"), "spec.telephony.outbound.authSecretRef"
        ),
        allow_any_caller=allow_any,
        allowed_destinations=destinations,
    )


# -- desired and observed state --------------------------------------------------------------


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


def with_telephony(
    conditions: Iterable[Condition], telephony_status: Mapping[str, Any] | None
) -> list[Condition]:
    """Fold the pool's telephony problem (from ``status.telephony``) into ``Degraded``."""
    status = telephony_status or {}
    problem = status.get("problem")
    reason = str(status.get("reason") or "TelephonyDegraded")
    return with_degraded(conditions, reason, str(problem) if problem else None)


def worker_env(pool: str, raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pool's call settings as worker environment (part of the pod template's hash).

    The outbound trunk is passed by *name* (``$(POD_NAMESPACE)`` is expanded by the kubelet):
    the worker resolves it to LiveKit's id when it dials, so a re-created trunk (new id) never
    rolls the pool's pods. Inbound numbers are not here for the same reason.
    """
    telephony = raw.get("telephony") or {}
    calls = telephony.get("calls") or {}
    privacy = raw.get("privacy") or {}
    env: list[dict[str, Any]] = []
    outbound = telephony.get("outbound") or {}
    if outbound.get("address"):
        name = f"{NAME_PREFIX}/$(POD_NAMESPACE)/{pool}/outbound"
        env.append({"name": contract.ENV_SIP_OUTBOUND_TRUNK, "value": name})
        allowed = ",".join(str(d).strip() for d in outbound.get("allowedDestinations") or ())
        env.append({"name": contract.ENV_SIP_ALLOWED_DESTINATIONS, "value": allowed})
    for key, var in contract.CALLS_ENV:
        if calls.get(key) is not None:
            env.append({"name": var, "value": str(calls[key])})
    for key, var in contract.PRIVACY_ENV:
        if privacy.get(key) is not None:
            env.append({"name": var, "value": "true" if privacy[key] else "false"})
    return env
