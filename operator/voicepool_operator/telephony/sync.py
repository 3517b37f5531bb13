"""Thin glue: make LiveKit's SIP trunks and dispatch rule match what a pool declares.

``sync`` lists LiveKit's SIP objects, lets the pure ``plan.plan_sip`` decide, makes the calls
and returns the pool's ``status.telephony`` (ids, numbers, a one-line ``problem``). It never
writes status and never touches pods: the pool's reconcile runs it (``keeper.py``) and writes
the result with the rest of the status, folding a problem into ``Degraded`` while the pool
keeps scaling. Deleting the pool deletes its SIP objects (``handlers.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import sip as lksip
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from ..constants import GROUP
from ..kube import ApiError, Kube
from ..livekit import LiveKitSpec
from . import plan as tel
from .spec import PoolPhones, SecretRef, TelephonySpec, owner_of

log = logging.getLogger("voicepool.operator.sip")

LIVEKIT_TIMEOUT_S = 10.0
_LK_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError, OSError)
_TRANSPORT = {
    "auto": lksip.SIPTransport.SIP_TRANSPORT_AUTO,
    "udp": lksip.SIPTransport.SIP_TRANSPORT_UDP,
    "tcp": lksip.SIPTransport.SIP_TRANSPORT_TCP,
    "tls": lksip.SIPTransport.SIP_TRANSPORT_TLS,
}
_TRANSPORT_NAME = {v: k for k, v in _TRANSPORT.items()}
#: The timer, the update handler and the delete handler of one pool never sync at once.
_locks: dict[tuple[str, str], asyncio.Lock] = {}


class TelephonyUnavailable(Exception):
    """LiveKit (or a Secret it needs) cannot be used right now; the message says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _http_url(ws_url: str) -> str:
    return ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


async def _livekit(kube: Kube, namespace: str, ref: LiveKitSpec) -> api.LiveKitAPI:
    """A LiveKit API client with the pool's own credentials (a Secret in its own namespace)."""
    data = await kube.read_secret(namespace, ref.credentials_secret)
    key, secret = data.get(ref.api_key_key), data.get(ref.api_secret_key)
    if not key or not secret:
        raise TelephonyUnavailable(
            "CredentialsMissing",
            f"Secret {namespace}/{ref.credentials_secret} lacks the LiveKit API key or secret",
        )
    return api.LiveKitAPI(
        _http_url(ref.url),
        key,
        secret,
        timeout=aiohttp.ClientTimeout(total=LIVEKIT_TIMEOUT_S),
    )


async def _credentials(kube: Kube, namespace: str, ref: SecretRef | None) -> tel.Credentials:
    if ref is None:
        return tel.Credentials()
    data = await kube.read_secret(namespace, ref.name)
    user, password = data.get(ref.username_key), data.get(ref.password_key)
    if not user or not password:
        raise TelephonyUnavailable(
            "CredentialsMissing",
            f"Secret {namespace}/{ref.name} lacks keys {ref.username_key!r} and "
            f"{ref.password_key!r} for SIP digest auth",
        )
    return tel.Credentials(user, password)


async def observe(lk: api.LiveKitAPI) -> tel.Observed:
    """Every SIP trunk and rule LiveKit holds, as plain data."""
    ins = await lk.sip.list_inbound_trunk(lksip.ListSIPInboundTrunkRequest())
    outs = await lk.sip.list_outbound_trunk(lksip.ListSIPOutboundTrunkRequest())
    rules = await lk.sip.list_dispatch_rule(lksip.ListSIPDispatchRuleRequest())
    return tel.Observed(
        inbound=tuple(
            tel.InboundTrunk(
                t.name,
                tuple(t.numbers),
                tuple(t.allowed_addresses),
                metadata=t.metadata,
                ringing_timeout_s=int(t.ringing_timeout.seconds),
                id=t.sip_trunk_id,
            )
            for t in ins.items
        ),
        outbound=tuple(
            tel.OutboundTrunk(
                t.name,
                t.address,
                tuple(t.numbers),
                _TRANSPORT_NAME.get(t.transport, "auto"),
                metadata=t.metadata,
                id=t.sip_trunk_id,
            )
            for t in outs.items
        ),
        rules=tuple(
            tel.DispatchRule(
                r.name,
                tuple(r.trunk_ids),
                r.rule.dispatch_rule_individual.room_prefix,
                r.room_config.agents[0].agent_name if r.room_config.agents else "",
                id=r.sip_dispatch_rule_id,
            )
            for r in rules.items
        ),
    )


async def _create(lk: api.LiveKitAPI, obj: tel.SipObject, ids: Mapping[str, str]) -> str:
    if isinstance(obj, tel.InboundTrunk):
        made = await lk.sip.create_inbound_trunk(
            lksip.CreateSIPInboundTrunkRequest(
                trunk=lksip.SIPInboundTrunkInfo(
                    name=obj.name,
                    metadata=obj.metadata,
                    numbers=list(obj.numbers),
                    allowed_addresses=list(obj.allowed_addresses),
                    auth_username=obj.auth.username,
                    auth_password=obj.auth.password,
                    ringing_timeout=Duration(seconds=obj.ringing_timeout_s),
                )
            )
        )
        return str(made.sip_trunk_id)
    if isinstance(obj, tel.OutboundTrunk):
        out = await lk.sip.create_outbound_trunk(
            lksip.CreateSIPOutboundTrunkRequest(
                trunk=lksip.SIPOutboundTrunkInfo(
                    name=obj.name,
                    metadata=obj.metadata,
                    address=obj.address,
                    numbers=list(obj.numbers),
                    transport=_TRANSPORT[obj.transport],
                    auth_username=obj.auth.username,
                    auth_password=obj.auth.password,
                )
            )
        )
        return str(out.sip_trunk_id)
    trunk_ids = [ids.get(t[1:], "") if t.startswith("@") else t for t in obj.trunk_ids]
    owner = owner_of(obj.name)
    rule = await lk.sip.create_dispatch_rule(
        lksip.CreateSIPDispatchRuleRequest(
            dispatch_rule=lksip.SIPDispatchRuleInfo(
                name=obj.name,
                trunk_ids=[t for t in trunk_ids if t],
                rule=lksip.SIPDispatchRule(
                    dispatch_rule_individual=lksip.SIPDispatchRuleIndividual(
                        room_prefix=obj.room_prefix
                    )
                ),
                attributes={f"{GROUP}/pool": "/".join(owner) if owner else ""},
                room_config=RoomConfiguration(
                    agents=[RoomAgentDispatch(agent_name=obj.agent_name)]
                ),
            )
        )
    )
    return str(rule.sip_dispatch_rule_id)


async def _delete(lk: api.LiveKitAPI, obj: tel.SipObject) -> None:
    try:
        if isinstance(obj, tel.DispatchRule):
            await lk.sip.delete_dispatch_rule(
                lksip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=obj.id)
            )
        else:
            await lk.sip.delete_trunk(lksip.DeleteSIPTrunkRequest(sip_trunk_id=obj.id))
    except api.TwirpError as e:
        if e.code != "not_found":  # already gone is what we wanted
            raise


async def apply(
    lk: api.LiveKitAPI, plan: tel.SipPlan, observed: tel.Observed
) -> list[tuple[str, str]]:
    """Carry out a plan in order; returns (note, reason) of each change, for Events."""
    ids: dict[str, str] = {t.name: t.id for t in observed.inbound}
    ids.update({t.name: t.id for t in observed.outbound})
    done: list[tuple[str, str]] = []
    for action in plan.actions:
        what = _kind(action.obj)
        if isinstance(action, tel.Delete):
            await _delete(lk, action.obj)
            done.append(
                (f"Deleted LiveKit SIP {what} {action.obj.id} ({action.why})", "SipObjectDeleted")
            )
        else:
            ids[action.obj.name] = await _create(lk, action.obj, ids)
            done.append(
                (
                    f"Created LiveKit SIP {what} {ids[action.obj.name]} ({action.obj.name})",
                    "SipObjectCreated",
                )
            )
    return done


def _kind(obj: tel.SipObject) -> str:
    if isinstance(obj, tel.InboundTrunk):
        return "inbound trunk"
    if isinstance(obj, tel.OutboundTrunk):
        return "outbound trunk"
    return "dispatch rule"


async def sync(
    kube: Kube,
    pool: Mapping[str, Any],
    spec: PoolPhones,
    *,
    deleting: bool = False,
    events: bool = True,
) -> dict[str, Any]:
    """Make LiveKit match the pool (nothing, when ``deleting``); returns the new
    ``status.telephony`` (nothing secret). ``pool`` is the object, for Events."""
    meta = pool["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    async with _locks.setdefault((namespace, name), asyncio.Lock()):
        if spec.problem and not deleting:
            return {"numbers": [], "problem": spec.problem, "reason": "InvalidTelephony"}
        declared = None if deleting else spec.telephony
        return await _sync(kube, pool, namespace, name, spec, declared, events and not deleting)


async def _sync(
    kube: Kube,
    pool: Mapping[str, Any],
    namespace: str,
    name: str,
    spec: PoolPhones,
    declared: TelephonySpec | None,
    events: bool,
) -> dict[str, Any]:
    url = spec.livekit.url
    status: dict[str, Any] = {"numbers": list(declared.numbers) if declared else []}
    plan: tel.SipPlan | None = None
    try:
        lk = await _livekit(kube, namespace, spec.livekit)
        try:
            inbound_auth = await _credentials(
                kube, namespace, declared.inbound_auth if declared else None
            )
            outbound_auth = await _credentials(
                kube, namespace, declared.outbound_auth if declared else None
            )
            observed = await observe(lk)
            plan = tel.plan_sip(
                namespace,
                name,
                spec.agent_name,
                declared,
                observed,
                inbound_auth=inbound_auth,
                outbound_auth=outbound_auth,
            )
            for note, reason in await apply(lk, plan, observed):
                log.info("%s/%s: %s", namespace, name, note)
                if events:
                    await kube.event(pool, reason=reason, action="ReconcileTelephony", note=note)
            if plan.actions:
                observed = await observe(lk)
            status.update(tel.find_ids(namespace, name, observed))
            status["numbers"] = list(plan.numbers)
        finally:
            await lk.aclose()
    except TelephonyUnavailable as e:
        status.update(problem=str(e), reason=e.reason)
        return status
    except _LK_ERRORS as e:
        why = getattr(e, "message", None) or str(e) or type(e).__name__
        status.update(
            problem=f"LiveKit SIP at {url} unavailable: {why}", reason="LiveKitUnreachable"
        )
        return status
    except ApiError as e:
        status.update(problem=f"cannot read a Secret: {e}", reason="CredentialsMissing")
        return status
    problem = tel.status_problem(plan, None)
    if problem:
        status.update(problem=problem, reason="NumberClaimed")
    return status
