"""Routing's pure parts: the VoiceRoute spec, the region choice, the status fold, and the
kubeconfig a remote region is reached with. Plain data only; the I/O is tested on real servers
in tests/integration/test_routing.py."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from voicepool_operator.routing.choice import (
    Candidate,
    Cooldown,
    Pending,
    candidates,
    order,
    trunk_fault,
)
from voicepool_operator.routing.kubeclient import KubeconfigError, connection_from_kubeconfig
from voicepool_operator.routing.spec import RouteSpecError, http_url, parse_route
from voicepool_operator.routing.status import (
    STALE_AFTER_S,
    ClusterSeen,
    LiveKitSeen,
    PoolSeen,
    changed,
    fold,
    invalid,
    pool_seen,
    stale_seen,
)

from .conftest import NOW, ago

NS = "voice"


def region(name: str, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "livekit": {"url": f"wss://{name}.livekit.example", "credentialsSecretRef": {"name": "lk"}},
        "pool": {"name": "support"},
    }
    out.update(over)
    return out


def route(*regions: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {"regions": list(regions) or [region("a")], **over}


# -- spec ----------------------------------------------------------------------------------


def test_a_minimal_route_gets_the_crd_defaults() -> None:
    spec = parse_route(route(region("eu")), NS)
    (eu,) = spec.regions
    assert (eu.priority, eu.weight) == (0, 100)
    assert eu.pool.namespace == NS and not eu.pool.remote
    assert eu.credentials.keys == ("apiKey", "apiSecret")
    assert eu.livekit_http_url == "https://eu.livekit.example"
    assert spec.accept_timeout_s == 3.0 and spec.ringing_timeout_s == 30
    assert spec.allowed_destinations == ()


def test_a_remote_pool_may_be_in_any_namespace_of_its_cluster() -> None:
    spec = parse_route(
        route(
            region(
                "us",
                pool={
                    "name": "p",
                    "namespace": "other",
                    "kubeconfigSecretRef": {"name": "us-kube"},
                },
            )
        ),
        NS,
    )
    assert spec.regions[0].pool.namespace == "other"
    assert spec.regions[0].pool.kubeconfig is not None
    assert spec.regions[0].pool.kubeconfig.keys == ("kubeconfig",)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda r: r["livekit"]["credentialsSecretRef"].update(name="../kube-system/x"),
            "credentialsSecretRef.name",
        ),
        (
            lambda r: r["livekit"]["credentialsSecretRef"].update(name="%2e%2e"),
            "credentialsSecretRef.name",
        ),
        (lambda r: r["livekit"]["credentialsSecretRef"].update(apiKeyKey=".."), "apiKeyKey"),
        (
            lambda r: r["pool"].update(kubeconfigSecretRef={"name": "a/b"}),
            "kubeconfigSecretRef.name",
        ),
        (lambda r: r["pool"].update(namespace="kube-system"), "pool.namespace"),
        (lambda r: r["pool"].update(name="A_B"), "pool.name"),
        (lambda r: r["livekit"].update(url="http://x"), "livekit.url"),
        (lambda r: r.update(weight=0), "weight"),
        (lambda r: r.update(priority=-1), "priority"),
        (lambda r: r.update(name="Bad Name"), "name"),
        (lambda r: r.update(outboundTrunks=["t", "t"]), "outboundTrunks"),
    ],
)
def test_bad_regions_are_refused_naming_the_field(change: Any, field: str) -> None:
    raw = region("eu")
    change(raw)
    with pytest.raises(RouteSpecError, match=field.replace(".", r"\.")):
        parse_route(route(raw), NS)


def test_route_level_checks() -> None:
    with pytest.raises(RouteSpecError, match="at least one region"):
        parse_route({"regions": []}, NS)
    with pytest.raises(RouteSpecError, match="listed twice"):
        parse_route(route(region("a"), region("a")), NS)
    with pytest.raises(RouteSpecError, match="allowedDestinations"):
        parse_route(route(calls={"allowedDestinations": ["1555"]}), NS)
    with pytest.raises(RouteSpecError, match="acceptTimeoutMilliseconds"):
        parse_route(route(dispatch={"acceptTimeoutMilliseconds": 5}), NS)
    ok = parse_route(route(calls={"allowedDestinations": ["+1 555"]}), NS)
    assert ok.allowed_destinations == ("+1555",)


def test_http_url() -> None:
    assert http_url("ws://127.0.0.1:7880") == "http://127.0.0.1:7880"
    assert http_url("wss://lk.example/x") == "https://lk.example/x"


# -- choice --------------------------------------------------------------------------------


def cand(
    name: str, priority: int = 0, weight: int = 100, idle: int = 1, ready: bool = True
) -> Candidate:
    return Candidate(name, priority, weight, ready, idle, agent_name="agent")


def test_the_lowest_tier_with_idle_capacity_goes_first_then_the_next_tiers() -> None:
    regions = [cand("b", priority=1, idle=9), cand("a", priority=0, idle=1), cand("c", priority=2)]
    assert [c.name for c in order(regions, random.Random(1))] == ["a", "b", "c"]


def test_full_not_ready_and_skipped_regions_are_no_candidates() -> None:
    regions = [
        cand("full", idle=0),
        cand("down", ready=False, idle=5),
        cand("cool", idle=5),
        cand("ok", priority=3, idle=1),
    ]
    assert [c.name for c in order(regions, random.Random(1), skip={"cool"})] == ["ok"]
    assert order([cand("full", idle=0)], random.Random(1)) == []


def test_within_a_tier_the_draw_follows_weight_times_idle_sessions() -> None:
    """a: 100 x 1, b: 100 x 3, c: 200 x 1 -> first choice 1/6, 3/6, 2/6."""
    regions = [cand("a", idle=1), cand("b", idle=3), cand("c", weight=200, idle=1)]
    rng = random.Random(7)
    n = 12000
    firsts = Counter(order(regions, rng)[0].name for _ in range(n))
    for name, share in (("a", 1 / 6), ("b", 3 / 6), ("c", 2 / 6)):
        assert abs(firsts[name] / n - share) < 0.02, (name, firsts)
    # every region of the tier is still in the order (the failover list)
    assert sorted(c.name for c in order(regions, rng)) == ["a", "b", "c"]


def test_candidates_read_spec_and_status_and_subtract_calls_not_yet_in_the_status() -> None:
    spec_regions = [region("a", priority=0, weight=5), region("b", priority=1), region("c")]
    status_regions = [
        {"name": "a", "ready": True, "idleSessions": 3, "agentName": "ag"},
        {"name": "b", "ready": False, "idleSessions": 7},
        {"name": "x", "ready": True, "idleSessions": 9},  # not in the spec (any more)
        {"name": "c", "ready": True, "idleSessions": "lots"},  # not an integer: no capacity
    ]
    got = {c.name: c for c in candidates(spec_regions, status_regions, {"a": 2})}
    assert set(got) == {"a", "b", "c"}
    assert (got["a"].idle, got["a"].weight, got["a"].agent_name) == (1, 5, "ag")
    assert got["a"].url == "wss://a.livekit.example"
    assert not got["b"].ready and got["c"].idle == 0
    assert candidates(spec_regions, status_regions, {"a": 5})[0].idle == 0


def test_pending_calls_count_until_the_status_changes_or_they_expire() -> None:
    p = Pending(ttl=10.0)
    p.seen("a", {"idleSessions": 3})
    p.placed("a", 100.0)
    p.placed("a", 101.0)
    p.seen("a", {"idleSessions": 3})  # unchanged: still pending
    assert p.counts(102.0) == {"a": 2}
    assert p.counts(110.5) == {"a": 1}  # the first expired
    p.seen("a", {"idleSessions": 1})  # the status caught up
    assert p.counts(110.5) == {}


def test_cooldown_skips_a_failed_region_for_a_while() -> None:
    c = Cooldown(5.0)
    c.failed("a", 100.0)
    assert c.active(104.9) == {"a"}
    assert c.active(105.0) == frozenset()


@pytest.mark.parametrize(
    ("sip", "code", "skip"),
    [
        (503, None, True),
        (500, "unavailable", True),
        (408, None, True),
        (None, "deadline_exceeded", True),
        (None, "unavailable", True),
        (486, None, False),
        (603, None, False),
        (404, None, False),
        (480, None, False),
        (487, "canceled", False),
        (None, "invalid_argument", False),
    ],
)
def test_a_trunk_is_skipped_on_5xx_and_timeouts_only(
    sip: int | None, code: str | None, skip: bool
) -> None:
    assert trunk_fault(sip, code) is skip


def test_an_invite_nobody_answered_is_a_trunk_timeout() -> None:
    """livekit-sip 1.8 reports a trunk that never answered as canceled, without SIP status."""
    assert trunk_fault(None, "canceled", "twirp error unknown: sip request timed out")
    assert not trunk_fault(None, "canceled", "call canceled")


# -- status --------------------------------------------------------------------------------

POOL = {
    "metadata": {"name": "support"},
    "spec": {"agentName": "receptionist"},
    "status": {"idleCapacity": 4, "activeSessions": 2, "sessionCapacity": 6},
}


def up(pool: dict[str, Any] | None = POOL, seen: dt.datetime = NOW) -> ClusterSeen:
    return ClusterSeen(True, seen, pool_seen(pool))


LK_OK = LiveKitSeen(True, NOW)


def test_pool_seen_reads_only_bounded_counts() -> None:
    assert pool_seen(None) == PoolSeen(found=False)
    bad = copy.deepcopy(POOL)
    bad["status"] = {"idleCapacity": -3, "activeSessions": "9" * 30, "sessionCapacity": True}
    seen = pool_seen(bad)
    assert (seen.idle, seen.busy, seen.capacity) == (0, 0, 0)
    deleting = copy.deepcopy(POOL)
    deleting["metadata"]["deletionTimestamp"] = "2026-03-02T12:00:00Z"
    assert pool_seen(deleting).deleting


def test_a_healthy_route_is_ready_and_not_degraded() -> None:
    spec = parse_route(route(region("a"), region("b", priority=1)), NS)
    st = fold(spec, {"a": up(), "b": up()}, {"a": LK_OK, "b": LK_OK}, now=NOW, generation=3)
    assert st["readyRegions"] == 2 and st["idleSessions"] == 8 and st["sessionCapacity"] == 12
    assert st["summary"] == "a=4/6 b=4/6"
    a = st["regions"][0]
    assert a["ready"] and a["reachable"] and a["agentName"] == "receptionist"
    assert (a["idleSessions"], a["busySessions"], a["capacity"]) == (4, 2, 6)
    assert a["lastSeen"] == "2026-03-02T12:00:00Z" and a["reason"] == "Ready"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["observedGeneration"] == 3
    assert conds["Degraded"]["status"] == "False"


@pytest.mark.parametrize(
    ("cluster", "livekit", "reason", "words"),
    [
        (up(None), LK_OK, "PoolNotFound", "voice/support not found"),
        (
            ClusterSeen(False, reason="KubeconfigUnreadable", message="Secret voice/k: not YAML"),
            LK_OK,
            "KubeconfigUnreadable",
            "not YAML",
        ),
        (
            ClusterSeen(False, reason="ClusterUnreachable", message="connection refused"),
            LK_OK,
            "ClusterUnreachable",
            "refused",
        ),
        (up(seen=ago(STALE_AFTER_S + 1)), LK_OK, "ClusterStale", "silent"),
        (
            up(),
            LiveKitSeen(
                False, NOW, "LiveKitKeyRejected", "LiveKit at wss://b rejected the API key"
            ),
            "LiveKitKeyRejected",
            "rejected",
        ),
        (
            up(),
            LiveKitSeen(False, NOW, "LiveKitUnreachable", "LiveKit at wss://b unreachable"),
            "LiveKitUnreachable",
            "unreachable",
        ),
    ],
)
def test_a_region_down_is_named_with_its_cause_and_the_others_keep_routing(
    cluster: ClusterSeen, livekit: LiveKitSeen, reason: str, words: str
) -> None:
    spec = parse_route(route(region("a"), region("b")), NS)
    st = fold(spec, {"a": up(), "b": cluster}, {"a": LK_OK, "b": livekit}, now=NOW, generation=1)
    a, b = st["regions"]
    assert a["ready"] and not b["ready"] and b["idleSessions"] == 0
    assert b["reason"] == reason and words in b["message"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True"  # region a still takes calls
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == reason
    assert "region b" in conds["Degraded"]["message"] and words in conds["Degraded"]["message"]
    assert st["summary"] == "a=4/6 b=down"


def test_regions_not_observed_yet_are_pending_not_degraded() -> None:
    spec = parse_route(route(region("a"), region("b")), NS)
    st = fold(spec, {"a": up()}, {}, now=NOW, generation=1)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["reason"] == "Pending" and conds["Degraded"]["status"] == "False"
    assert st["summary"] == "a=pending b=pending"


def test_every_region_full_or_down() -> None:
    spec = parse_route(route(region("a"), region("b")), NS)
    full = copy.deepcopy(POOL)
    full["status"]["idleCapacity"] = 0
    st = fold(spec, {"a": up(full), "b": up(None)}, {"a": LK_OK, "b": LK_OK}, now=NOW, generation=1)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["reason"] == "NoIdleSessions"
    st = fold(spec, {"a": up(None), "b": up(None)}, {"a": LK_OK, "b": LK_OK}, now=NOW, generation=1)
    conds = {c["type"]: c for c in st["conditions"]}
    assert (
        conds["Ready"]["reason"] == "NoRegionReady" and conds["Degraded"]["reason"] == "RegionsDown"
    )


def test_transition_times_hold_while_the_status_holds() -> None:
    spec = parse_route(route(region("a")), NS)
    first = fold(spec, {"a": up()}, {"a": LK_OK}, now=NOW, generation=1)
    then = NOW + dt.timedelta(minutes=5)
    later = fold(
        spec,
        {"a": up(seen=then)},
        {"a": LK_OK},
        now=then,
        generation=1,
        old_conditions=first["conditions"],
    )
    assert [c["lastTransitionTime"] for c in later["conditions"]] == [
        c["lastTransitionTime"] for c in first["conditions"]
    ]


def test_a_write_is_due_for_real_changes_and_seldom_for_last_seen_alone() -> None:
    spec = parse_route(route(region("a")), NS)
    first = fold(spec, {"a": up()}, {"a": LK_OK}, now=NOW, generation=1)
    moved = fold(
        spec, {"a": up(seen=NOW + dt.timedelta(seconds=5))}, {"a": LK_OK}, now=NOW, generation=1
    )
    assert not changed(first, moved) and not stale_seen(first, moved)
    much_later = NOW + dt.timedelta(seconds=STALE_AFTER_S)
    moved = fold(spec, {"a": up(seen=much_later)}, {"a": LK_OK}, now=much_later, generation=1)
    assert stale_seen(first, moved)
    full = copy.deepcopy(POOL)
    full["status"]["idleCapacity"] = 0
    assert changed(first, fold(spec, {"a": up(full)}, {"a": LK_OK}, now=NOW, generation=1))


def test_an_invalid_spec_routes_nothing() -> None:
    st = invalid("spec.regions[a].pool.namespace: no", now=NOW, generation=2, old_conditions=[])
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["reason"] == conds["Degraded"]["reason"] == "InvalidSpec"
    assert st["regions"] == [] and st["readyRegions"] == 0


# -- kubeconfig ------------------------------------------------------------------------------


def kubeconfig(**user: Any) -> str:
    b64 = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n").decode()
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "b",
            "contexts": [{"name": "b", "context": {"cluster": "b", "user": "u"}}],
            "clusters": [
                {
                    "name": "b",
                    "cluster": {
                        "server": "https://127.0.0.1:6443",
                        "certificate-authority-data": b64,
                    },
                }
            ],
            "users": [{"name": "u", "user": user or {"token": "t0k"}}],
        }
    )


def test_a_self_contained_kubeconfig_reads() -> None:
    info = connection_from_kubeconfig(kubeconfig())
    assert info.server == "https://127.0.0.1:6443" and info.token == "t0k"
    assert info.ca_data is not None and b"BEGIN CERTIFICATE" in info.ca_data
    cert = base64.b64encode(b"cert").decode()
    info = connection_from_kubeconfig(
        kubeconfig(**{"client-certificate-data": cert, "client-key-data": cert})
    )
    assert info.certificate_data == b"cert" and info.token is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{{{", "not YAML"),
        ("- a list", "not a kubeconfig"),
        (kubeconfig(**{"client-certificate": "/etc/passwd", "client-key": "/k"}), "names a file"),
        (kubeconfig(exec={"command": "sh"}), "exec"),
        (kubeconfig(username="u"), "neither a token"),
        (kubeconfig(**{"client-certificate-data": "!!", "client-key-data": "!!"}), "not base64"),
    ],
)
def test_unusable_kubeconfigs_are_refused_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(KubeconfigError, match=words):
        connection_from_kubeconfig(text)


# -- the CRD ---------------------------------------------------------------------------------

CRD = Path(__file__).resolve().parents[2] / "crds" / "voicepool.dev_voiceroutes.yaml"


def _fields(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        out.append((f"{path}.{name}", sub))
        out += _fields(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _fields(schema["items"], f"{path}[]")
    return out


def test_every_field_of_the_voiceroute_crd_has_a_description() -> None:
    doc = yaml.safe_load(CRD.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = [(p, s) for p, s in _fields(schema, "") if p != ".metadata"]
    assert len(fields) > 50
    bare = [p for p, s in fields if not str(s.get("description") or "").strip()]
    assert bare == []
    # a description with a comma in a YAML flow mapping silently becomes a new key
    odd = [
        p
        for p, s in fields
        if set(s)
        - {
            "type",
            "description",
            "default",
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "pattern",
            "items",
            "properties",
            "required",
            "x-kubernetes-validations",
            "x-kubernetes-list-type",
            "x-kubernetes-list-map-keys",
            "format",
            "nullable",
            "enum",
            "minItems",
            "maxItems",
        }
    ]
    assert odd == []


def test_the_voiceroute_crd_checks_secret_names_like_the_pools() -> None:
    doc = yaml.safe_load(CRD.read_text())
    text = CRD.read_text()
    assert text.count("must be the name of a Secret in the route's own namespace") == 2
    assert doc["spec"]["names"]["shortNames"] == ["vr"]
    columns = {c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Regions", "Idle", "Capacity", "Status"} <= columns
