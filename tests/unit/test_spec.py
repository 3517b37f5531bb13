"""Spec validation, quantities, pod views and the worker pod template: plain data in and out."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from voicepool_operator.constants import (
    ANN_CAPACITY,
    ANN_DELETION_COST,
    ANN_DRAIN,
    ANN_DRAIN_REQUESTED_AT,
    ANN_SAFE_TO_EVICT,
    ANN_SESSIONS,
    ANN_STATE,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_POOL,
    LABEL_TEMPLATE_HASH,
)
from voicepool_operator.planner import PodState, classify
from voicepool_operator.podtemplate import GRACE_MARGIN_SECONDS, build_pod, template_hash
from voicepool_operator.podview import EPOCH, parse_time, pod_view_from_dict
from voicepool_operator.spec import (
    DAYS,
    ConversationSpec,
    LiveKitSpec,
    PoolSpec,
    PrivacySpec,
    SpecError,
    WarmWindow,
    parse_quantity,
    parse_spec,
)

from .conftest import MINIMAL_SPEC as MINIMAL
from .conftest import NOW, pod_dict, spec_dict


def spec_error(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return str(info.value)


# -- parse_spec: defaults --------------------------------------------------------------------


def test_defaults_match_the_crd() -> None:
    """A minimal pool gets the documented defaults."""
    spec = parse_spec(MINIMAL)
    assert spec.agent_name == "receptionist"
    assert spec.livekit == LiveKitSpec("wss://livekit.example:443", "lk", "apiKey", "apiSecret")
    assert (spec.sessions_per_pod, spec.min_replicas, spec.max_replicas) == (1, 1, 10)
    assert (spec.warm_idle_sessions, spec.warm_windows, spec.time_zone) == (0, (), "UTC")
    assert (spec.cpu_pinning, spec.cpu, spec.memory) == (True, "1", "2Gi")
    assert spec.drain_timeout_seconds == 3600
    assert spec.stabilization_window_seconds == 60
    assert spec.max_surge == 1 and spec.unready_grace_seconds == 60
    # Parsed once: what the workers are told is typed too, with nothing declared.
    assert spec.conversation == ConversationSpec() and spec.privacy == PrivacySpec()
    assert (spec.telephony, spec.telephony_problem, spec.calls) == (None, None, ())


def test_explicit_nulls_take_the_defaults() -> None:
    """A field set to null (e.g. by a Helm value) means 'default', not an error."""
    raw = spec_dict(warmPool={"idleSessions": None})
    raw["minReplicas"] = None
    raw["drain"] = {"timeoutSeconds": None}
    spec = parse_spec(raw)
    assert spec.min_replicas == 1 and spec.drain_timeout_seconds == 3600
    assert spec.warm_idle_sessions == 0


def test_all_fields_read() -> None:
    """Every knob lands in its typed field."""
    raw = spec_dict(
        livekit={
            "url": "ws://lk:7880",
            "credentialsSecretRef": {"name": "s", "apiKeyKey": "k", "apiSecretKey": "p"},
        },
        sessionsPerPod=3,
        minReplicas=2,
        maxReplicas=5,
        warmPool={"idlePods": 2, "timeZone": "Europe/Berlin"},
        template={"image": "w:2", "resources": {"cpu": "2", "memory": "4Gi"}},
        drain={"timeoutSeconds": 120},
        scaleDown={"stabilizationWindowSeconds": 0},
        updateStrategy={"maxSurge": 2},
        unreadyGraceSeconds=0,
    )
    spec = parse_spec(raw)
    assert (spec.livekit.api_key_key, spec.livekit.api_secret_key) == ("k", "p")
    assert (spec.sessions_per_pod, spec.min_replicas, spec.max_replicas) == (3, 2, 5)
    assert spec.warm_idle_sessions == 6  # idlePods x sessionsPerPod
    assert spec.time_zone == "Europe/Berlin"
    assert (spec.cpu, spec.memory) == ("2", "4Gi")
    assert (spec.drain_timeout_seconds, spec.stabilization_window_seconds) == (120, 0)
    assert (spec.max_surge, spec.unready_grace_seconds) == (2, 0)


@pytest.mark.parametrize(
    ("cpu", "pinning", "rendered"),
    [
        (1, True, "1"),
        ("2", True, "2"),
        (2.0, True, "2"),
        ("2000m", True, "2"),  # whole CPUs, written in millicores
        ("1500m", False, "1500m"),
        ("0.5", False, "500m"),
        (0.25, False, "250m"),
    ],
)
def test_cpu_rendering(cpu: Any, pinning: bool, rendered: str) -> None:
    """CPU is normalised to whole CPUs when integral, millicores otherwise."""
    raw = spec_dict(
        template={"image": "w", "resources": {"cpu": cpu}}, cpuPinning={"enabled": pinning}
    )
    assert parse_spec(raw).cpu == rendered


# -- parse_spec: errors name the field -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"agentName": "  "}, ["spec.agentName", "required"]),
        ({"livekit": {"url": "http://lk", "credentialsSecretRef": {"name": "s"}}}, ["url"]),
        ({"livekit": {"credentialsSecretRef": {"name": "s"}}}, ["spec.livekit.url"]),
        ({"livekit": {"url": "ws://lk"}}, ["spec.livekit.credentialsSecretRef.name"]),
        ({"template": {}}, ["spec.template.image", "required"]),
        ({"sessionsPerPod": 0}, ["spec.sessionsPerPod", ">= 1", "got 0"]),
        ({"sessionsPerPod": "2"}, ["spec.sessionsPerPod", "integer", "'2'"]),
        ({"sessionsPerPod": True}, ["spec.sessionsPerPod", "integer"]),
        ({"sessionsPerPod": 1.5}, ["spec.sessionsPerPod", "integer"]),
        ({"minReplicas": -1}, ["spec.minReplicas", ">= 0"]),
        ({"maxReplicas": 0}, ["spec.maxReplicas", ">= 1"]),
        ({"drain": {"timeoutSeconds": 0}}, ["spec.drain.timeoutSeconds", ">= 1"]),
        (
            {"scaleDown": {"stabilizationWindowSeconds": -5}},
            ["spec.scaleDown.stabilizationWindowSeconds"],
        ),
        ({"updateStrategy": {"maxSurge": 0}}, ["spec.updateStrategy.maxSurge", ">= 1"]),
        ({"unreadyGraceSeconds": "soon"}, ["spec.unreadyGraceSeconds", "integer"]),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], fragments: list[str]) -> None:
    """One SpecError whose message says which field is wrong and why."""
    message = spec_error(spec_dict(**changes))
    for fragment in fragments:
        assert fragment in message


def test_bad_url_message() -> None:
    """The URL error quotes the value and the accepted schemes."""
    message = spec_error(
        spec_dict(livekit={"url": "http://lk:7880", "credentialsSecretRef": {"name": "s"}})
    )
    assert message == "spec.livekit.url: 'http://lk:7880' must start with ws:// or wss://"


def test_max_below_min_names_both() -> None:
    """maxReplicas < minReplicas: both fields and values in the message."""
    message = spec_error(spec_dict(minReplicas=5, maxReplicas=3))
    assert message == "spec.maxReplicas (3) must be >= spec.minReplicas (5)"


def test_max_equal_min_is_fine() -> None:
    """A fixed-size pool is allowed."""
    spec = parse_spec(spec_dict(minReplicas=3, maxReplicas=3))
    assert spec.min_replicas == spec.max_replicas == 3


@pytest.mark.parametrize("cpu", ["1500m", "0.5", 1.5, "2500m"])
def test_fractional_cpu_refused_under_pinning(cpu: Any) -> None:
    """Exclusive cores need whole CPUs; the message points at the way out."""
    message = spec_error(spec_dict(template={"image": "w", "resources": {"cpu": cpu}}))
    assert message.startswith("spec.template.resources.cpu:")
    assert "whole number of CPUs" in message and "cpuPinning.enabled: false" in message


@pytest.mark.parametrize("cpu", [0, "0", "0m"])
def test_zero_cpu_refused(cpu: Any) -> None:
    """No CPU at all is never a valid worker."""
    message = spec_error(spec_dict(template={"image": "w", "resources": {"cpu": cpu}}))
    assert message == "spec.template.resources.cpu: must be > 0"


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"cpu": "lots"}, "spec.template.resources.cpu"),
        ({"cpu": True}, "spec.template.resources.cpu"),
        ({"memory": "2 GB"}, "spec.template.resources.memory"),
        ({"memory": "-1Gi"}, "spec.template.resources.memory"),
    ],
)
def test_bad_quantities_name_the_field(resources: dict[str, Any], field: str) -> None:
    """Unparseable CPU or memory says which one."""
    message = spec_error(spec_dict(template={"image": "w", "resources": resources}))
    assert message.startswith(f"{field}:")


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "not a zone", "../../etc/passwd"])
def test_bad_time_zone(tz: str) -> None:
    """An unknown IANA zone is named in the message."""
    message = spec_error(spec_dict(warmPool={"timeZone": tz}))
    assert message == f"spec.warmPool.timeZone: unknown time zone {tz!r}"


def test_idle_sessions_and_idle_pods_are_exclusive() -> None:
    """The warm size is given one way or the other, at either level."""
    both = {"idleSessions": 2, "idlePods": 1}
    assert spec_error(spec_dict(warmPool=both)) == (
        "spec.warmPool: set idleSessions or idlePods, not both"
    )
    schedule = [{"start": "09:00", "end": "17:00", **both}]
    assert spec_error(spec_dict(warmPool={"schedule": schedule})) == (
        "spec.warmPool.schedule[0]: set idleSessions or idlePods, not both"
    )


def test_negative_warm_size() -> None:
    """Negative warm sizes name the nested field."""
    assert "spec.warmPool.idlePods: must be >= 0" in spec_error(
        spec_dict(warmPool={"idlePods": -1})
    )
    schedule = [{"start": "09:00", "end": "17:00", "idleSessions": -2}]
    assert "spec.warmPool.schedule[0].idleSessions: must be >= 0" in spec_error(
        spec_dict(warmPool={"schedule": schedule})
    )


@pytest.mark.parametrize("value", ["24:00", "9:00", "12:60", "noon", "12:00:00", None, 900])
def test_bad_time_of_day(value: Any) -> None:
    """Window bounds are HH:MM, 00:00-23:59; the message names start or end and the index."""
    ok = {"start": "09:00", "end": "17:00"}
    schedule = [ok, {**ok, "end": value}]
    message = spec_error(spec_dict(warmPool={"schedule": schedule}))
    assert message == f"spec.warmPool.schedule[1].end: {value!r} is not a time of day HH:MM"
    message = spec_error(spec_dict(warmPool={"schedule": [{**ok, "start": value}]}))
    assert message.startswith("spec.warmPool.schedule[0].start:")


@pytest.mark.parametrize("days", [["Monday"], ["mon"], ["Mon", "Fri", "Sun", "Hol"]])
def test_bad_day(days: list[str]) -> None:
    """Days are Mon..Sun exactly; the message lists the accepted ones."""
    schedule = [{"start": "09:00", "end": "17:00", "days": days}]
    message = spec_error(spec_dict(warmPool={"schedule": schedule}))
    assert message.startswith("spec.warmPool.schedule[0].days: unknown day(s)")
    assert "Mon, Tue, Wed, Thu, Fri, Sat, Sun" in message


def test_empty_window_refused() -> None:
    """start == end would be an empty window (not a 24 h one): say so."""
    schedule = [{"start": "08:00", "end": "08:00"}]
    assert "start and end are equal" in spec_error(spec_dict(warmPool={"schedule": schedule}))


def test_schedule_parsed() -> None:
    """Windows keep their order, bounds, days (default: every day) and size in sessions."""
    schedule = [
        {"start": "09:00", "end": "17:30", "days": ["Mon", "Tue"], "idleSessions": 4},
        {"start": "22:00", "end": "06:00", "idlePods": 2},
    ]
    spec = parse_spec(spec_dict(sessionsPerPod=2, warmPool={"schedule": schedule}))
    assert spec.warm_windows == (
        WarmWindow(dt.time(9, 0), dt.time(17, 30), ("Mon", "Tue"), 4),
        WarmWindow(dt.time(22, 0), dt.time(6, 0), DAYS, 4),
    )


# -- warm windows and desired ----------------------------------------------------------------


def _at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A local naive time on 2026-03-(day): the 2nd is a Monday."""
    return dt.datetime(2026, 3, day, hour, minute)


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        (_at(6, 21, 59), False),  # Fri before start
        (_at(6, 22, 0), True),  # Fri at start
        (_at(7, 0, 0), True),  # Sat midnight: Friday's night
        (_at(7, 5, 59), True),
        (_at(7, 6, 0), False),  # end exclusive
        (_at(7, 22, 0), False),  # Saturday's own night is not listed
        (_at(6, 1, 0), False),  # Friday early morning belongs to Thursday
    ],
)
def test_window_past_midnight(local: dt.datetime, inside: bool) -> None:
    """The part after midnight belongs to the previous day's window."""
    window = WarmWindow(dt.time(22, 0), dt.time(6, 0), ("Fri",), 1)
    assert window.contains(local) is inside


def test_window_seconds_do_not_matter() -> None:
    """16:59:59 is still inside a window ending at 17:00."""
    window = WarmWindow(dt.time(9, 0), dt.time(17, 0), DAYS, 1)
    assert window.contains(_at(2, 16, 59).replace(second=59, microsecond=999))
    assert not window.contains(_at(2, 17, 0))


def test_warm_sessions_use_the_pool_time_zone() -> None:
    """The same instant is inside office hours in one zone and outside in another."""
    schedule = [{"start": "09:00", "end": "17:00", "idleSessions": 5}]
    berlin = parse_spec(
        spec_dict(warmPool={"idleSessions": 1, "timeZone": "Europe/Berlin", "schedule": schedule})
    )
    new_york = parse_spec(
        spec_dict(
            warmPool={"idleSessions": 1, "timeZone": "America/New_York", "schedule": schedule}
        )
    )
    assert berlin.warm_sessions(NOW) == 5  # 13:00 in Berlin
    assert new_york.warm_sessions(NOW) == 1  # 07:00 in New York


def test_desired_for_clamps_and_reports_unclamped() -> None:
    """(clamped, unclamped): the planner reports AtMaxReplicas from the second."""
    spec = parse_spec(
        spec_dict(sessionsPerPod=2, minReplicas=1, maxReplicas=3, warmPool={"idleSessions": 1})
    )
    assert spec.desired_for(0, NOW) == (1, 1)
    assert spec.desired_for(4, NOW) == (3, 3)
    assert spec.desired_for(9, NOW) == (3, 5)
    no_floor = parse_spec(spec_dict(minReplicas=0))
    assert no_floor.desired_for(0, NOW) == (0, 0)


# -- parse_quantity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", Decimal(2)),
        (2, Decimal(2)),
        (0.5, Decimal("0.5")),
        ("1500m", Decimal("1.5")),
        ("250m", Decimal("0.25")),
        ("0.5", Decimal("0.5")),
        (" 3 ", Decimal(3)),
        ("1k", Decimal(1000)),
        ("2M", Decimal(2_000_000)),
        ("1G", Decimal(10**9)),
        ("1T", Decimal(10**12)),
        ("512Mi", Decimal(512 * 2**20)),
        ("2Gi", Decimal(2 * 2**30)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("4Ki", Decimal(4096)),
        ("1Ti", Decimal(2**40)),
    ],
)
def test_parse_quantity(value: Any, expected: Decimal) -> None:
    """The quantity forms people write for CPU and memory."""
    assert parse_quantity(value, "x") == expected


@pytest.mark.parametrize(
    "value", ["", "abc", "-1", "1.5.2", "1e3", "2 Gi", "2gi", "Mi", True, None]
)
def test_parse_quantity_errors(value: Any) -> None:
    """Anything else is a SpecError naming the field and the value."""
    with pytest.raises(SpecError) as info:
        parse_quantity(value, "spec.thing")
    assert str(info.value).startswith(f"spec.thing: {value!r} is not a quantity")


# -- pod views -------------------------------------------------------------------------------


def test_pod_view_reads_everything() -> None:
    """A pod reported by a healthy worker, with the operator's drain annotations."""
    view = pod_view_from_dict(
        pod_dict(
            annotations={
                ANN_SESSIONS: "2",
                ANN_CAPACITY: "4",
                ANN_STATE: "busy",
                ANN_DRAIN: "true",
                ANN_DRAIN_REQUESTED_AT: "2026-03-02T11:58:00Z",
                ANN_SAFE_TO_EVICT: "false",
                ANN_DELETION_COST: "10000",
            }
        )
    )
    assert view.name == "pool-abc" and view.template_hash == "h1"
    assert view.created == dt.datetime(2026, 3, 2, 11, 0, tzinfo=dt.UTC)
    assert view.phase == "Running" and view.ready
    assert view.ready_since == dt.datetime(2026, 3, 2, 11, 59, tzinfo=dt.UTC)
    assert not view.terminating
    assert (view.sessions, view.capacity, view.reported_state) == (2, 4, "busy")
    assert view.drain_requested
    assert view.drain_requested_at == dt.datetime(2026, 3, 2, 11, 58, tzinfo=dt.UTC)
    assert (view.safe_to_evict, view.deletion_cost) == ("false", "10000")
    assert view.reported


def test_pod_view_of_a_fresh_pod() -> None:
    """Nothing reported yet: None, not 0, so the planner can tell 'unknown' from 'idle'."""
    view = pod_view_from_dict(pod_dict(ready=None, phase=None))
    assert view.phase == "Pending" and not view.ready and view.ready_since is None
    assert (view.sessions, view.capacity, view.reported_state) == (None, None, None)
    assert not view.drain_requested and view.drain_requested_at is None
    assert not view.reported


@pytest.mark.parametrize(
    ("annotations", "sessions", "capacity"),
    [
        ({ANN_SESSIONS: "lots", ANN_CAPACITY: "4"}, None, 4),
        ({ANN_SESSIONS: "-1"}, None, None),
        ({ANN_SESSIONS: "1.5"}, None, None),
        ({ANN_SESSIONS: ""}, None, None),
        ({ANN_SESSIONS: None, ANN_CAPACITY: []}, None, None),
        ({ANN_SESSIONS: " 3 ", ANN_CAPACITY: "x"}, 3, None),
        ({ANN_SESSIONS: 7}, 7, None),  # not a string: still readable
    ],
)
def test_pod_view_garbled_counts_read_as_unknown(
    annotations: dict[str, Any], sessions: int | None, capacity: int | None
) -> None:
    """A garbled count never crashes the operator; it reads as None (unknown)."""
    view = pod_view_from_dict(pod_dict(annotations=annotations))
    assert (view.sessions, view.capacity) == (sessions, capacity)


def test_pod_view_garbled_times_and_flags() -> None:
    """Bad timestamps read as unknown (creation: the epoch); only 'true' requests a drain."""
    raw = pod_dict(
        annotations={ANN_DRAIN: "yes", ANN_DRAIN_REQUESTED_AT: "yesterday"},
        creationTimestamp="not a time",
    )
    raw["status"]["conditions"][1]["lastTransitionTime"] = "garbage"
    view = pod_view_from_dict(raw)
    assert view.created == EPOCH
    assert view.ready_since is None and view.drain_requested_at is None
    assert not view.drain_requested


@pytest.mark.parametrize("flag", ["true", "True", " TRUE ", "true\n"])
def test_pod_view_drain_flag_is_lenient_about_case_and_space(flag: str) -> None:
    """`kubectl annotate ... drain=True` works like the operator's own 'true'."""
    assert pod_view_from_dict(pod_dict(annotations={ANN_DRAIN: flag})).drain_requested


def test_pod_view_terminating_and_not_ready() -> None:
    """deletionTimestamp marks terminating; Ready=False is read as not ready."""
    view = pod_view_from_dict(pod_dict(ready="False", deletionTimestamp="2026-03-02T12:00:00Z"))
    assert view.terminating and not view.ready
    assert view.ready_since == dt.datetime(2026, 3, 2, 11, 59, tzinfo=dt.UTC)


def test_pod_view_of_an_empty_object_does_not_crash() -> None:
    """Even a pod with no metadata or status yields a (useless but safe) view."""
    view = pod_view_from_dict({})
    assert view.created == EPOCH and view.template_hash == "" and not view.ready
    assert view.phase == "Pending"


def test_garbled_busy_pod_that_stopped_being_ready_is_unknown() -> None:
    """Unreadable sessions on a pod that served: never starting, never idle."""
    raw = pod_dict(ready="False", annotations={ANN_SESSIONS: "??", ANN_STATE: "busy"})
    view = pod_view_from_dict(raw)
    spec = parse_spec(MINIMAL)
    assert classify(view, spec, NOW) is PodState.UNKNOWN


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-02T12:00:00Z", NOW),
        ("2026-03-02T13:00:00+01:00", NOW),
        ("2026-03-02T12:00:00", NOW),  # naive: read as UTC
        (dt.datetime(2026, 3, 2, 12, 0), NOW),
        (NOW, NOW),
        ("", None),
        (None, None),
        ("soon", None),
    ],
)
def test_parse_time(value: Any, expected: dt.datetime | None) -> None:
    """RFC 3339 in, aware UTC-comparable datetimes out; garbage in, None out."""
    assert parse_time(value) == expected


# -- pod template ----------------------------------------------------------------------------


def _build(spec: PoolSpec) -> dict[str, Any]:
    return build_pod("front-desk", "calls", "uid-123", spec, template_hash(spec))


def test_pinned_pod_is_guaranteed_qos() -> None:
    """Pinning: requests == limits with an integer CPU, so the kubelet grants whole cores."""
    spec = parse_spec(spec_dict(template={"image": "w", "resources": {"cpu": 2, "memory": "4Gi"}}))
    (container,) = _build(spec)["spec"]["containers"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert resources["requests"] is not resources["limits"]


def test_unpinned_pod_has_no_cpu_limit() -> None:
    """Without pinning: CPU requested (may be fractional), only memory limited."""
    raw = spec_dict(
        template={"image": "w", "resources": {"cpu": "1500m"}}, cpuPinning={"enabled": False}
    )
    (container,) = _build(parse_spec(raw))["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "1500m", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_pod_metadata_labels_and_owner() -> None:
    """Recommended labels, pool + hash selectors, and the pool as controlling owner."""
    raw = spec_dict(
        template={
            "image": "w",
            "labels": {"team": "voice", LABEL_NAME: "spoofed"},
            "annotations": {"note": "x"},
        }
    )
    spec = parse_spec(raw)
    meta = _build(spec)["metadata"]
    assert meta["generateName"] == "front-desk-" and meta["namespace"] == "calls"
    assert meta["labels"] == {
        "team": "voice",
        LABEL_NAME: "voicepool-worker",  # ours win over the template's
        LABEL_INSTANCE: "front-desk",
        LABEL_COMPONENT: "worker",
        LABEL_MANAGED_BY: "voicepool-operator",
        LABEL_PART_OF: "voicepool",
        LABEL_POOL: "front-desk",
        LABEL_TEMPLATE_HASH: template_hash(spec),
    }
    # The template's annotations, plus plain Prometheus discovery of the worker's /metrics.
    assert meta["annotations"] == {
        "note": "x",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8081",
        "prometheus.io/path": "/metrics",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "voicepool.dev/v1alpha1",
            "kind": "VoiceAgentPool",
            "name": "front-desk",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_pod_spec_grace_security_and_probes() -> None:
    """Grace covers the drain timeout; restricted security; the worker's probes."""
    spec = parse_spec(spec_dict(drain={"timeoutSeconds": 900}))
    pod = _build(spec)
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    pod_spec = pod["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 900 + GRACE_MARGIN_SECONDS
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    (container,) = pod_spec["containers"]
    assert container["image"] == "ghcr.io/example/worker:1"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "args" not in container and "nodeSelector" not in pod_spec


def test_pod_env_and_user_overrides() -> None:
    """The worker learns its pool from env; a template env var of the same name wins."""
    raw = spec_dict(
        sessionsPerPod=2,
        template={"image": "w", "env": [{"name": "LIVEKIT_URL", "value": "ws://override"}]},
        conversation={"systemPrompt": "Be brief.", "greeting": ""},
    )
    (container,) = _build(parse_spec(raw))["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LIVEKIT_URL"] == {"name": "LIVEKIT_URL", "value": "ws://override"}
    assert [e["name"] for e in container["env"]].count("LIVEKIT_URL") == 1
    assert env["LIVEKIT_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "lk", "key": "apiKey"}}
    assert env["VOICEPOOL_POOL"]["value"] == "front-desk"
    assert env["VOICEPOOL_SESSIONS_PER_POD"]["value"] == "2"
    assert env["VOICEPOOL_SYSTEM_PROMPT"]["value"] == "Be brief."
    assert env["VOICEPOOL_GREETING"]["value"] == ""  # an empty greeting is a choice
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_pod_copies_scheduling_fields() -> None:
    """Scheduling knobs from the template reach the pod spec."""
    raw = spec_dict(
        template={
            "image": "w",
            "args": ["--verbose"],
            "nodeSelector": {"pool": "voice"},
            "tolerations": [{"key": "voice", "operator": "Exists"}],
            "priorityClassName": "calls",
        }
    )
    pod = _build(parse_spec(raw))
    assert pod["spec"]["nodeSelector"] == {"pool": "voice"}
    assert pod["spec"]["priorityClassName"] == "calls"
    assert pod["spec"]["containers"][0]["args"] == ["--verbose"]


def test_template_hash_is_stable_and_short() -> None:
    """Same spec, same hash (also across key order); 10 hex characters for a label."""
    a = template_hash(parse_spec(MINIMAL))
    reordered = dict(reversed(list(copy.deepcopy(MINIMAL).items())))
    assert template_hash(parse_spec(reordered)) == a
    assert len(a) == 10 and all(c in "0123456789abcdef" for c in a)


@pytest.mark.parametrize(
    "changes",
    [
        {"template": {"image": "w:2"}},
        {"sessionsPerPod": 2},
        {"drain": {"timeoutSeconds": 60}},
        {"cpuPinning": {"enabled": False}},
        {"conversation": {"greeting": "Hi"}},
        {"livekit": {"url": "ws://other", "credentialsSecretRef": {"name": "lk"}}},
    ],
)
def test_template_hash_changes_with_the_pod(changes: dict[str, Any]) -> None:
    """Anything that shapes the worker pod starts a rolling update."""
    assert template_hash(parse_spec(spec_dict(**changes))) != template_hash(parse_spec(MINIMAL))


@pytest.mark.parametrize(
    "changes",
    [
        {"minReplicas": 0},
        {"maxReplicas": 50},
        {"warmPool": {"idleSessions": 5, "timeZone": "Europe/Berlin"}},
        {"scaleDown": {"stabilizationWindowSeconds": 0}},
        {"updateStrategy": {"maxSurge": 3}},
        {"unreadyGraceSeconds": 5},
    ],
)
def test_template_hash_ignores_scaling_knobs(changes: dict[str, Any]) -> None:
    """Scaling changes never restart calls-carrying pods."""
    assert template_hash(parse_spec(spec_dict(**changes))) == template_hash(parse_spec(MINIMAL))


# -- tenancy: every name is an object of the pool's own namespace -----------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../kube-system/secrets/x",
        "..",
        ".",
        "%2e%2e",
        "a/b",
        "/absolute",
        "Upper",
        "with space",
        "a..b",
        "x" * 254,
    ],
)
def test_secret_names_that_leave_the_namespace_are_refused(name: str) -> None:
    livekit = {"url": "ws://lk", "credentialsSecretRef": {"name": name}}
    message = spec_error(spec_dict(livekit=livekit))
    assert "spec.livekit.credentialsSecretRef.name" in message
    assert "is not the name of a Secret in the pool's namespace" in message


def test_secret_data_keys_service_accounts_and_priority_classes_are_checked() -> None:
    livekit = {"url": "ws://lk", "credentialsSecretRef": {"name": "lk", "apiKeyKey": "a/b"}}
    assert "credentialsSecretRef.apiKeyKey" in spec_error(spec_dict(livekit=livekit))
    template = {"image": "w", "serviceAccountName": "../default"}
    assert "spec.template.serviceAccountName" in spec_error(spec_dict(template=template))
    template = {"image": "w", "priorityClassName": "System/Critical"}
    assert "spec.template.priorityClassName" in spec_error(spec_dict(template=template))
    ok = parse_spec(spec_dict(template={"image": "w", "serviceAccountName": "team-a.worker"}))
    assert ok.service_account == "team-a.worker" and ok.host_network is False


def test_a_keypad_menu_the_worker_would_refuse_is_refused_at_the_pool() -> None:
    telephony = {"calls": {"keypadMenu": "1=hours;1=again"}}
    message = spec_error(spec_dict(telephony=telephony))
    assert "spec.telephony.calls.keypadMenu" in message and "defined twice" in message
    parse_spec(spec_dict(telephony={"calls": {"keypadMenu": "1=hours;4>1=book"}}))
