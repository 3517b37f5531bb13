"""``spec.telephony`` typed and checked, once: the numbers a pool answers, the trunk it calls out
over, and who may call in or be called (pure).

Closed by default: an inbound trunk needs ``allowedAddresses`` or ``authSecretRef`` (or an
explicit ``allowAnyCaller``), outbound calls go only to ``allowedDestinations``. Secrets stay
names of the pool's own namespace; the glue (``sync.py``) reads them just before it calls
LiveKit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import voicepool_contract as contract
from voicepool_contract.phone import E164, PhoneSettingError, parse_destinations

from ..livekit import LiveKitSpec, parse_livekit
from ..validate import SpecError, local_object_name, secret_key

_CIDR = re.compile(r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?$")
TRANSPORTS = ("auto", "udp", "tcp", "tls")
#: LiveKit has no labels: the operator finds its SIP objects again by name.
NAME_PREFIX = "voicepool"


def object_name(namespace: str, pool: str, part: str) -> str:
    """The LiveKit name of one of a pool's SIP objects (how the operator finds it again)."""
    return f"{NAME_PREFIX}/{namespace}/{pool}/{part}"


def owner_of(name: str) -> tuple[str, str] | None:
    """(namespace, pool) of an object this operator created, or None for anyone else's."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == NAME_PREFIX:
        return parts[1], parts[2]
    return None


class TelephonyError(SpecError):
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
    except PhoneSettingError as e:
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


def calls_env(raw: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """``spec.telephony.calls`` as the worker's environment (name, value), the fields set only."""
    calls = (raw or {}).get("calls") or {}
    return tuple(
        (var, str(calls[key])) for key, var in contract.CALLS_ENV if calls.get(key) is not None
    )


def outbound_env(pool: str, spec: TelephonySpec | None) -> list[dict[str, str]]:
    """The outbound trunk by *name* (``$(POD_NAMESPACE)`` is expanded by the kubelet) and the
    destinations it may call. The worker resolves the name to LiveKit's id when it dials, so a
    re-created trunk (new id) never rolls the pool's pods; inbound numbers are not here for the
    same reason."""
    if spec is None or spec.outbound_address is None:
        return []
    return [
        {
            "name": contract.ENV_SIP_OUTBOUND_TRUNK,
            "value": f"{NAME_PREFIX}/$(POD_NAMESPACE)/{pool}/outbound",
        },
        {
            "name": contract.ENV_SIP_ALLOWED_DESTINATIONS,
            "value": ",".join(spec.allowed_destinations),
        },
    ]


@dataclass(frozen=True)
class PoolPhones:
    """What the SIP sync needs of a pool: its agent, its LiveKit, its declared telephony (None
    when it declares none or it does not parse: then ``problem`` says why)."""

    agent_name: str
    livekit: LiveKitSpec
    telephony: TelephonySpec | None = None
    problem: str | None = None

    @property
    def declared(self) -> bool:
        return self.telephony is not None or self.problem is not None


def parse_phones(raw_spec: Mapping[str, Any]) -> PoolPhones:
    """The telephony side of a pool's spec; SpecError when its agent or LiveKit is unusable."""
    agent = str(raw_spec.get("agentName") or "").strip()
    if not agent:
        raise SpecError("spec.agentName: required (the LiveKit agent name workers register as)")
    livekit = parse_livekit(raw_spec.get("livekit") or {})
    try:
        return PoolPhones(agent, livekit, parse_telephony(raw_spec.get("telephony")))
    except TelephonyError as e:
        return PoolPhones(agent, livekit, None, str(e))
