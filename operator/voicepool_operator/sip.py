"""Thin glue: keep each pool's LiveKit SIP trunks and dispatch rule as ``spec.telephony`` says.

A kopf timer per pool (and a handler on spec changes) lists LiveKit's SIP objects, lets the pure
``telephony.plan_sip`` decide, makes the calls, and writes ``status.telephony`` (ids, numbers,
and a one-line ``problem``). It never touches pods: an unreachable LiveKit or a number claimed
by someone else shows up as ``Degraded`` (``telephony.with_telephony`` in the pool's
reconcile) while the pool keeps scaling. Deleting the pool deletes its SIP objects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import sip as lksip
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from . import telephony as tel
from .constants import GROUP, PLURAL, VERSION
from .kube import ApiError, Kube
from .spec import PoolSpec, SpecError, parse_spec

log = logging.getLogger("voicepool.operator.sip")

#: Drift (a trunk deleted by hand) is corrected within this many seconds.
SYNC_SECONDS = 10.0
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


async def _livekit(kube: Kube, namespace: str, pool: PoolSpec) -> api.LiveKitAPI:
    """A LiveKit API client with the pool's own credentials (a Secret in its own namespace)."""
    data = await kube.read_secret(namespace, pool.credentials_secret)
    key, secret = data.get(pool.api_key_key), data.get(pool.api_secret_key)
    if not key or not secret:
        raise TelephonyUnavailable(
            "CredentialsMissing",
            f"Secret {namespace}/{pool.credentials_secret} lacks the LiveKit API key or secret",
        )
    return api.LiveKitAPI(
        _http_url(pool.livekit_url),
        key,
        secret,
        timeout=aiohttp.ClientTimeout(total=LIVEKIT_TIMEOUT_S),
    )


async def _credentials(kube: Kube, namespace: str, ref: tel.SecretRef | None) -> tel.Credentials:
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
    owner = tel.owner_of(obj.name)
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


async def sync(kube: Kube, body: Mapping[str, Any], *, deleting: bool = False) -> dict[str, Any]:
    """Make LiveKit match the pool; returns the new ``status.telephony`` (nothing secret)."""
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    async with _locks.setdefault((namespace, name), asyncio.Lock()):
        return await _sync(kube, body, namespace, name, deleting)


async def _sync(
    kube: Kube, body: Mapping[str, Any], namespace: str, name: str, deleting: bool
) -> dict[str, Any]:
    spec = body.get("spec") or {}
    try:
        pool = parse_spec(spec)
    except SpecError as e:  # the reconcile reports it (InvalidSpec); nothing is read or sent
        return {"problem": str(e), "reason": "InvalidSpec"}
    url = pool.livekit_url
    try:
        declared = None if deleting else tel.parse_telephony(spec.get("telephony"))
    except tel.TelephonyError as e:
        return {"problem": str(e), "reason": "InvalidTelephony"}
    status: dict[str, Any] = {"numbers": list(declared.numbers) if declared else []}
    plan: tel.SipPlan | None = None
    try:
        lk = await _livekit(kube, namespace, pool)
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
                pool.agent_name,
                declared,
                observed,
                inbound_auth=inbound_auth,
                outbound_auth=outbound_auth,
            )
            for note, reason in await apply(lk, plan, observed):
                log.info("%s/%s: %s", namespace, name, note)
                if not deleting:
                    await kube.event(body, reason=reason, action="ReconcileTelephony", note=note)
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


async def _write(kube: Kube, body: Mapping[str, Any], status: Mapping[str, Any] | None) -> None:
    meta = body["metadata"]
    old = (body.get("status") or {}).get("telephony")
    new = dict(status) if status is not None else None
    if new is not None:
        new.setdefault("problem", None)
        new.setdefault("reason", None)
    if old == new or (old is None and new is None):
        return
    if new is not None and new.get("problem") and (old or {}).get("problem") != new["problem"]:
        await kube.event(
            body,
            reason=str(new["reason"]),
            action="ReconcileTelephony",
            note=new["problem"],
            type_="Warning",
        )
    # null removes a key in a merge patch: a cleared problem must not linger in the status
    await kube.patch_pool_status(meta["namespace"], meta["name"], {"telephony": new})


async def keep(kube: Kube, body: Mapping[str, Any]) -> None:
    """Reconcile the pool's SIP objects (and clean up after ``spec.telephony`` is removed)."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    declared = (body.get("spec") or {}).get("telephony")
    had = (body.get("status") or {}).get("telephony")
    if not declared and not had:
        return  # no phone numbers, none to clean up: LiveKit may not even have SIP
    status = await sync(kube, body)
    if not declared and not status.get("problem"):
        await _write(kube, body, None)
        return
    await _write(kube, body, status)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SYNC_SECONDS, initial_delay=0.5)
async def keep_phone_numbers(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every SYNC_SECONDS: a trunk deleted by hand comes back, a freed number is taken."""
    await keep(memo.kube, body)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.telephony")
async def phone_numbers_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Apply a changed ``spec.telephony`` at once rather than at the next timer tick."""
    await keep(memo.kube, body)


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=2.0)
async def remove_phone_numbers(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Deleting the pool deletes its trunks and rule (a few retries if LiveKit is away)."""
    if not (body.get("spec") or {}).get("telephony") and not (body.get("status") or {}).get(
        "telephony"
    ):
        return
    status = await sync(memo.kube, body, deleting=True)
    if status.get("problem"):
        if retry < 5:
            raise kopf.TemporaryError(f"removing SIP objects: {status['problem']}", delay=2.0)
        await memo.kube.event(
            body,
            reason="SipCleanupFailed",
            action="DeleteTelephony",
            note=f"gave up removing the pool's LiveKit SIP objects: {status['problem']}",
            type_="Warning",
        )
