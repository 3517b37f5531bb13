"""Hostile or buggy session counts: one pod's word can never move the whole pool.

A worker writes `voicepool.dev/sessions` itself, so the value is untrusted input. Anything but
an integer in [0, sessionsPerPod] is unreadable: the pod is planned as a full pod (busy, never
deleted before its deadline, not warm), it adds no more than its own capacity to the desired
replicas, and status stays a bounded integer. Hypothesis feeds arbitrary annotation strings
through the same parser the operator uses on API objects.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voicepool_operator.planner import (
    DeletePod,
    MarkDraining,
    PodState,
    SetEvictionHints,
    bounded,
    classify,
    plan,
)
from voicepool_operator.podview import pod_view_from_dict
from voicepool_operator.spec import PoolSpec

from .conftest import HASH, NOW, make_spec, pod_dict

INT64 = 2**63 - 1


def spec_of(spp: int = 4, warm: int = 4, lo: int = 1, hi: int = 50) -> PoolSpec:
    return make_spec(
        sessions_per_pod=spp,
        idle_sessions=warm,
        min_replicas=lo,
        max_replicas=hi,
        stabilization=0,
        drain_timeout=3600,
    )


def reported_pod(
    name: str, sessions: str | None, *, state: str = "busy", **ann: str
) -> dict[str, Any]:
    """A Running, Ready pod of the current template with the worker's report (None: no count)."""
    annotations = {"voicepool.dev/state": state, **ann}
    if sessions is not None:
        annotations["voicepool.dev/sessions"] = sessions
    return pod_dict(name, annotations=annotations, ready_at="2026-03-02T11:00:05Z")


def idle_pod(name: str) -> dict[str, Any]:
    return reported_pod(
        name,
        "0",
        state="idle",
        **{
            "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
            "controller.kubernetes.io/pod-deletion-cost": "-10000",
        },
    )


@pytest.mark.parametrize(
    "raw",
    ["1" * 24, "-1", "lots", "", "+1", "1_0", "\u0661", "2.0", "0x1", "5", "1000000000"],
)
def test_an_unreadable_count_is_a_full_pod(raw: str) -> None:
    """The issue's 24-digit count took a pool from 4 to 9 pods; now it is one full pod."""
    spec = spec_of(spp=4, warm=4)
    view = pod_view_from_dict(reported_pod("hostile", raw))
    bounded_view, report = bounded(view, spec)
    assert report is not None and report.pod == "hostile"
    assert bounded_view.sessions == 4
    assert classify(bounded_view, spec, NOW) is PodState.BUSY

    pods = [pod_view_from_dict(d) for d in (reported_pod("hostile", raw), idle_pod("w"))]
    result = plan(spec, HASH, pods, NOW)
    # 4 (the hostile pod at capacity) + 4 warm = 2 pods: the pool it already has.
    assert result.status.desired_replicas == 2
    assert result.status.active_sessions == 4
    assert result.status.idle_capacity == 4  # only the real idle pod is warm
    assert [r.pod for r in result.invalid_reports] == ["hostile"]
    degraded = next(c for c in result.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "InvalidReports")
    assert "hostile" in degraded.message
    hints = [a for a in result.actions if isinstance(a, SetEvictionHints)]
    assert [(a.pod, a.safe_to_evict, a.busy_label) for a in hints] == [("hostile", "false", "true")]


@pytest.mark.parametrize("raw", ["0", "1", "4", "0004", " 2 "])
def test_a_readable_count_is_taken_as_it_is(raw: str) -> None:
    view = pod_view_from_dict(reported_pod("p", raw))
    assert bounded(view, spec_of(spp=4))[1] is None
    assert view.sessions == int(raw) and view.report_error is None


def test_a_missing_count_is_not_an_invalid_report() -> None:
    """Never reported (a new pod) is not hostile; its state decides, as before."""
    view = pod_view_from_dict(reported_pod("p", None, state="idle"))
    assert view.sessions is None and view.report_error is None
    assert bounded(view, spec_of())[1] is None


def test_a_draining_pod_with_an_unreadable_count_waits_for_its_deadline() -> None:
    spec = spec_of()
    d = reported_pod("d", "NaN", state="draining", **{"voicepool.dev/drain": "true"})
    d["metadata"]["annotations"]["voicepool.dev/drain-requested-at"] = "2026-03-02T11:59:00Z"
    result = plan(spec, HASH, [pod_view_from_dict(d)], NOW)
    assert not [a for a in result.actions if isinstance(a, DeletePod)]
    stamped = reported_pod("d", "NaN", state="draining", **{"voicepool.dev/drain": "true"})
    again = plan(spec, HASH, [pod_view_from_dict(stamped)], NOW)
    (mark,) = [a for a in again.actions if isinstance(a, MarkDraining)]
    assert mark.reason == "DrainObserved" and "unknown call(s)" in mark.message


annotation_text = st.one_of(
    st.text(max_size=40),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["0", "1", "2", "3", "4", "5", "99", "1e3", "9" * 24]),
)


@given(
    raws=st.lists(annotation_text, min_size=1, max_size=6),
    states=st.lists(st.sampled_from(["idle", "busy", "draining", "starting", "x"]), max_size=6),
    idle=st.integers(0, 3),
    spp=st.integers(1, 4),
    warm=st.integers(0, 8),
)
@settings(max_examples=300, deadline=None)
def test_arbitrary_annotation_strings_never_move_the_pool(
    raws: list[str], states: list[str], idle: int, spp: int, warm: int
) -> None:
    spec = spec_of(spp=spp, warm=warm, lo=0, hi=10_000)
    reported = [
        reported_pod(f"r{i}", raw, state=states[i] if i < len(states) else "busy")
        for i, raw in enumerate(raws)
    ]
    idles = [idle_pod(f"i{i}") for i in range(idle)]
    views = [pod_view_from_dict(d) for d in reported + idles]
    result = plan(spec, HASH, views, NOW)
    st_ = result.status

    # Status: bounded integers the CRD schema accepts, whatever the pods wrote.
    for value in st_.to_status_dict().values():
        assert isinstance(value, str) or (isinstance(value, int) and 0 <= value <= INT64)
    assert st_.active_sessions <= len(views) * spp

    # Desired: never beyond every reporting pod at full capacity plus the warm sessions.
    ceiling = math.ceil((len(reported) * spp + warm) / spp)
    assert st_.desired_replicas <= max(spec.min_replicas, ceiling)

    # A pod whose count is unreadable is never deleted, never scaled down, never warm.
    unreadable = {r.pod for r in result.invalid_reports}
    for d, raw in zip(reported, raws, strict=True):
        name = d["metadata"]["name"]
        text = raw.strip()
        readable = text.isascii() and text.isdigit() and len(text) <= 9 and int(text) <= spp
        assert (name in unreadable) == (not readable), (raw, result.invalid_reports)
    for action in result.actions:
        if isinstance(action, DeletePod):
            assert action.pod not in unreadable, action
        if isinstance(action, MarkDraining):
            assert action.pod not in unreadable or action.reason == "DrainObserved", action
    free = sum(
        spp - (v.sessions or 0)
        for v in views
        if v.name not in unreadable and classify(v, spec, NOW) in (PodState.IDLE, PodState.BUSY)
    )
    assert st_.idle_capacity == free
