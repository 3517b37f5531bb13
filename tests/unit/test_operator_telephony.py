"""spec.telephony -> the LiveKit SIP calls that make it so, decided without I/O."""

from __future__ import annotations

import pytest
from voicepool_operator.conditions import Condition, with_degraded
from voicepool_operator.podtemplate import build_pod
from voicepool_operator.spec import parse_spec
from voicepool_operator.telephony.plan import (
    Create,
    Credentials,
    Delete,
    DispatchRule,
    InboundTrunk,
    Observed,
    OutboundTrunk,
    plan_sip,
    status_problem,
)
from voicepool_operator.telephony.spec import (
    TelephonyError,
    object_name,
    owner_of,
    parse_telephony,
)

NS, POOL, AGENT = "voice", "front-desk", "receptionist"
IN, OUT, RULE = (object_name(NS, POOL, p) for p in ("inbound", "outbound", "rule"))
SPEC = {"inbound": {"numbers": ["+15550100000"], "allowedAddresses": ["127.0.0.1/32"]}}


def converge(spec: dict[str, object] | None, observed: Observed, **kw: Credentials) -> Observed:
    """Apply a plan to an in-memory LiveKit, as the glue would, and return the result."""
    parsed = parse_telephony(spec)
    plan = plan_sip(NS, POOL, AGENT, parsed, observed, **kw)
    ins, outs, rules = list(observed.inbound), list(observed.outbound), list(observed.rules)
    n = 0
    for action in plan.actions:
        obj = action.obj
        if isinstance(action, Delete):
            for items in (ins, outs, rules):
                items[:] = [o for o in items if o.id != obj.id]
            continue
        n += 1
        if isinstance(obj, InboundTrunk):
            ins.append(
                InboundTrunk(
                    obj.name,
                    obj.numbers,
                    obj.allowed_addresses,
                    id=f"ST_in{n}",
                    metadata=obj.metadata,
                    ringing_timeout_s=obj.ringing_timeout_s,
                )
            )
        elif isinstance(obj, OutboundTrunk):
            outs.append(
                OutboundTrunk(
                    obj.name,
                    obj.address,
                    obj.numbers,
                    obj.transport,
                    metadata=obj.metadata,
                    id=f"ST_out{n}",
                )
            )
        else:
            ids = tuple(
                next(t.id for t in ins if t.name == ref[1:]) if ref.startswith("@") else ref
                for ref in obj.trunk_ids
            )
            rules.append(DispatchRule(obj.name, ids, obj.room_prefix, obj.agent_name, id=f"SDR{n}"))
    return Observed(tuple(ins), tuple(outs), tuple(rules))


def test_a_new_pool_gets_a_trunk_and_a_rule_that_dispatches_its_agent() -> None:
    got = converge(SPEC, Observed())
    (trunk,) = got.inbound
    assert trunk.name == IN and trunk.numbers == ("+15550100000",)
    (rule,) = got.rules
    assert rule.trunk_ids == (trunk.id,) and rule.agent_name == AGENT
    assert rule.room_prefix == "call-"
    # converged: a second pass changes nothing
    assert plan_sip(NS, POOL, AGENT, parse_telephony(SPEC), got).actions == ()


def test_a_trunk_deleted_by_hand_comes_back_and_the_rule_follows_it() -> None:
    got = converge(SPEC, Observed())
    hand = Observed((), got.outbound, got.rules)  # someone deleted the trunk in LiveKit
    plan = plan_sip(NS, POOL, AGENT, parse_telephony(SPEC), hand)
    kinds = [(type(a).__name__, type(a.obj).__name__) for a in plan.actions]
    assert kinds == [
        ("Delete", "DispatchRule"),
        ("Create", "InboundTrunk"),
        ("Create", "DispatchRule"),
    ]
    again = converge(SPEC, hand)
    assert again.rules[0].trunk_ids == (again.inbound[0].id,)


def test_changed_numbers_replace_the_trunk() -> None:
    got = converge(SPEC, Observed())
    spec = {"inbound": {"numbers": ["+15550100000", "+15550100009"], "allowAnyCaller": True}}
    after = converge(spec, got)
    assert sorted(after.inbound[0].numbers) == ["+15550100000", "+15550100009"]
    assert len(after.inbound) == 1 and len(after.rules) == 1


def test_a_changed_password_is_drift_but_the_password_is_never_compared_or_shown() -> None:
    spec = {"inbound": {"numbers": ["+15550100000"], "authSecretRef": {"name": "sip-auth"}}}
    got = converge(spec, Observed(), inbound_auth=Credentials("alice", "one"))
    assert got.inbound[0].metadata.startswith("auth:") and "one" not in got.inbound[0].metadata
    same = plan_sip(
        NS, POOL, AGENT, parse_telephony(spec), got, inbound_auth=Credentials("alice", "one")
    )
    assert same.actions == ()
    changed = plan_sip(
        NS, POOL, AGENT, parse_telephony(spec), got, inbound_auth=Credentials("alice", "two")
    )
    assert any(isinstance(a, Create) for a in changed.actions)
    assert "two" not in repr(changed)


def test_a_number_claimed_by_another_trunk_is_left_out_and_named() -> None:
    other = InboundTrunk("someone-else", ("+15550100000",), (), id="ST_x")
    spec = {"inbound": {"numbers": ["+15550100000", "+15550100001"], "allowAnyCaller": True}}
    plan = plan_sip(NS, POOL, AGENT, parse_telephony(spec), Observed(inbound=(other,)))
    assert plan.claimed == {"+15550100000": "someone-else"}
    assert plan.numbers == ("+15550100001",)
    (trunk,) = [a.obj for a in plan.actions if isinstance(a.obj, InboundTrunk)]
    assert trunk.numbers == ("+15550100001",)
    problem = status_problem(plan, None)
    assert problem is not None and "+15550100000" in problem and "someone-else" in problem


def test_when_every_number_is_claimed_no_catch_all_trunk_is_made() -> None:
    """A trunk without numbers answers *every* number: never by accident."""
    other = InboundTrunk(object_name(NS, "other-pool", "inbound"), ("+15550100000",), (), id="a")
    plan = plan_sip(NS, POOL, AGENT, parse_telephony(SPEC), Observed(inbound=(other,)))
    assert plan.actions == ()
    assert plan.claimed == {"+15550100000": object_name(NS, "other-pool", "inbound")}


def test_catch_all_makes_a_trunk_without_numbers() -> None:
    got = converge({"inbound": {"catchAll": True, "allowAnyCaller": True}}, Observed())
    assert got.inbound[0].numbers == () and len(got.rules) == 1


def test_outbound_trunk_and_removal_of_everything() -> None:
    spec = {
        **SPEC,
        "outbound": {
            "address": "127.0.0.1:25060",
            "numbers": ["+15550109999"],
            "transport": "udp",
            "allowedDestinations": ["+1555"],
        },
    }
    got = converge(spec, Observed())
    assert got.outbound[0].address == "127.0.0.1:25060" and got.outbound[0].transport == "udp"
    foreign = InboundTrunk("hand-made", ("+15550200000",), (), id="ST_h")
    gone = converge(None, Observed((*got.inbound, foreign), got.outbound, got.rules))
    assert gone.inbound == (foreign,)  # only our own objects are ever deleted
    assert gone.outbound == () and gone.rules == ()


def test_owner_of_only_recognises_our_names() -> None:
    assert owner_of(IN) == (NS, POOL)
    assert owner_of("voicepool/x") is None and owner_of("my-trunk") is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"inbound": {"numbers": ["5550100"]}}, "not an E.164 number"),
        ({"inbound": {"numbers": ["+15550100000", "+15550100000"]}}, "listed twice"),
        ({"inbound": {"allowedAddresses": ["example.com"]}}, "not an IP or CIDR"),
        ({"inbound": {"authSecretRef": {}}}, None),
        ({"inbound": {"authSecretRef": {"key": "x"}}}, "authSecretRef.name"),
        ({"outbound": {"numbers": ["+15550109999"]}}, "outbound.address: required"),
        ({"outbound": {"address": "sip:pbx@x", "numbers": ["+15550109999"]}}, "host[:port]"),
        ({"outbound": {"address": "pbx:5060"}}, "at least one caller-ID"),
        (
            {"outbound": {"address": "pbx", "numbers": ["+15550109999"], "transport": "ws"}},
            "transport",
        ),
        # Closed by default: a trunk that would answer anyone, dialling anywhere.
        ({"inbound": {"numbers": ["+15550100000"]}}, "would answer anyone"),
        ({"inbound": {"catchAll": True}}, "would answer anyone"),
        ({"inbound": {"numbers": ["+15550100000"], "allowAnyCaller": True}}, None),
        (
            {"outbound": {"address": "pbx", "numbers": ["+15550109999"]}},
            "outbound.allowedDestinations: required",
        ),
        (
            {
                "outbound": {
                    "address": "pbx",
                    "numbers": ["+15550109999"],
                    "allowedDestinations": ["1555"],
                }
            },
            "allowedDestinations: '1555' is not an E.164 prefix",
        ),
        # A Secret is a name in the pool's own namespace, never a path.
        (
            {"inbound": {"authSecretRef": {"name": "../../kube-system/secrets/x"}}},
            "authSecretRef.name: '../../kube-system/secrets/x' is not the name of a Secret",
        ),
        (
            {"inbound": {"authSecretRef": {"name": "%2e%2e"}}},
            "authSecretRef.name: '%2e%2e' is not the name of a Secret",
        ),
        (
            {
                "outbound": {
                    "address": "pbx",
                    "numbers": ["+15550109999"],
                    "allowedDestinations": ["+"],
                    "authSecretRef": {"name": "/abs"},
                }
            },
            "outbound.authSecretRef.name: '/abs' is not the name of a Secret",
        ),
    ],
)
def test_bad_telephony_specs_name_the_field(raw: dict[str, object], needle: str | None) -> None:
    if needle is None:
        assert parse_telephony(raw) is not None
        return
    with pytest.raises(TelephonyError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_telephony(raw)


def test_a_telephony_problem_degrades_the_pool_without_touching_other_conditions() -> None:
    ok = [
        Condition("Ready", "True", "AsExpected", "ok"),
        Condition("Degraded", "False", "AsExpected", "no problems"),
    ]
    assert with_degraded(ok, "LiveKitUnreachable", None) == ok
    out = with_degraded(ok, "LiveKitUnreachable", "LiveKit SIP at ws://x unavailable: refused")
    assert out[0] == ok[0]
    assert out[1] == Condition(
        "Degraded", "True", "LiveKitUnreachable", "LiveKit SIP at ws://x unavailable: refused"
    )
    already = [Condition("Degraded", "True", "PodsFailing", "2 pods crash")]
    merged = with_degraded(already, "NumberClaimed", "number taken")
    assert merged == [Condition("Degraded", "True", "PodsFailing", "2 pods crash; number taken")]


def _pod_env(spec: dict[str, object]) -> dict[str, str]:
    pool = parse_spec(
        {
            "agentName": AGENT,
            "livekit": {"url": "ws://lk", "credentialsSecretRef": {"name": "lk"}},
            "template": {"image": "w"},
            **spec,
        }
    )
    container = build_pod(POOL, NS, "uid", pool, "h")["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_worker_env_names_the_outbound_trunk_and_carries_call_and_privacy_settings() -> None:
    telephony = {
        **SPEC,
        "outbound": {
            "address": "pbx:5060",
            "numbers": ["+15550109999"],
            "allowedDestinations": ["+1555", "+44"],
        },
        "calls": {
            "idleTimeoutSeconds": 20,
            "transferTo": "tel:+15550107777",
            "warmTransferTo": "+15550107778",
        },
    }
    env = _pod_env(
        {"telephony": telephony, "privacy": {"maskPhoneNumbers": False, "logTranscripts": True}}
    )
    settings = {
        "VOICEPOOL_SIP_OUTBOUND_TRUNK",
        "VOICEPOOL_SIP_ALLOWED_DESTINATIONS",
        "VOICEPOOL_IDLE_TIMEOUT_SECONDS",
        "VOICEPOOL_MAX_CALL_SECONDS",
        "VOICEPOOL_TRANSFER_TO",
        "VOICEPOOL_WARM_TRANSFER_TO",
        "VOICEPOOL_DTMF_MENU",
        "VOICEPOOL_OUTBOUND_GREETING",
        "VOICEPOOL_MASK_PHONE_NUMBERS",
        "VOICEPOOL_LOG_TRANSCRIPTS",
    }
    assert {k: v for k, v in env.items() if k in settings} == {
        "VOICEPOOL_SIP_OUTBOUND_TRUNK": f"voicepool/$(POD_NAMESPACE)/{POOL}/outbound",
        "VOICEPOOL_SIP_ALLOWED_DESTINATIONS": "+1555,+44",
        "VOICEPOOL_IDLE_TIMEOUT_SECONDS": "20",
        "VOICEPOOL_TRANSFER_TO": "tel:+15550107777",
        "VOICEPOOL_WARM_TRANSFER_TO": "+15550107778",
        "VOICEPOOL_MASK_PHONE_NUMBERS": "false",
        "VOICEPOOL_LOG_TRANSCRIPTS": "true",
    }
    plain = _pod_env({})
    for name in (
        "VOICEPOOL_SIP_OUTBOUND_TRUNK",
        "VOICEPOOL_TRANSFER_TO",
        "VOICEPOOL_MASK_PHONE_NUMBERS",
    ):
        assert name not in plain


def test_a_telephony_problem_never_changes_what_the_workers_are_told() -> None:
    """The trunks are parsed apart from the call settings: an open trunk (Degraded) keeps the
    pods' environment, so it does not roll them."""
    calls = {"calls": {"transferTo": "tel:+15550107777"}}
    good = _pod_env({"telephony": {**SPEC, **calls}})
    open_trunk = {"inbound": {"numbers": ["+15550100000"]}, **calls}
    bad = parse_spec(
        {
            "agentName": AGENT,
            "livekit": {"url": "ws://lk", "credentialsSecretRef": {"name": "lk"}},
            "template": {"image": "w"},
            "telephony": open_trunk,
        }
    )
    assert bad.telephony is None and "would answer anyone" in str(bad.telephony_problem)
    assert (
        _pod_env({"telephony": open_trunk})["VOICEPOOL_TRANSFER_TO"]
        == good["VOICEPOOL_TRANSFER_TO"]
    )
