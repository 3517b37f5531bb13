"""The expectations overlay: our writes stand in for the lagging watch, with opaque versions.

resourceVersions are compared for equality only; the tests use versions that are not numbers
(the old code read them with int() and fell back to 0, so every expectation was dropped at
once and a second reconcile created the pod again).
"""

from __future__ import annotations

from typing import Any

import pytest
from voicepool_operator.expectations import Expectations


def pod(name: str, rv: str, **ann: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv, "annotations": dict(ann)}}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def names(objs: list[Any]) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in objs}


@pytest.mark.parametrize(("before", "ours"), [("aX9", "b7Q"), ("9", "10"), ("10", "9")])
def test_a_create_stands_in_until_the_index_has_the_pod(before: str, ours: str) -> None:
    exp = Expectations()
    assert exp.observe([pod("a", before)]) == [pod("a", before)]
    exp.created(pod("new", ours))
    assert names(exp.observe([pod("a", before)])) == {"a": before, "new": ours}
    assert names(exp.observe([pod("a", before), pod("new", ours)])) == {"a": before, "new": ours}
    assert len(exp) == 0


@pytest.mark.parametrize(("before", "ours"), [("zz", "aa"), ("99", "100"), ("100", "99")])
def test_a_patch_stands_in_while_the_index_shows_the_version_we_wrote_over(
    before: str, ours: str
) -> None:
    """Opaque versions: "aa" sorts before "zz", "100" before "99" as text; neither matters."""
    exp = Expectations()
    exp.observe([pod("a", before)])
    exp.patched(pod("a", ours, drain="true"))
    (seen,) = exp.observe([pod("a", before)])  # the watch lags
    assert seen["metadata"]["annotations"] == {"drain": "true"}
    (seen,) = exp.observe([pod("a", ours, drain="true")])  # caught up
    assert seen["metadata"]["resourceVersion"] == ours and len(exp) == 0


def test_a_later_write_by_someone_else_is_trusted() -> None:
    exp = Expectations()
    exp.observe([pod("a", "r1")])
    exp.patched(pod("a", "r2", drain="true"))
    (seen,) = exp.observe([pod("a", "r3", drain="true", sessions="1")])
    assert seen["metadata"]["resourceVersion"] == "r3" and len(exp) == 0


def test_two_writes_before_the_watch_shows_either() -> None:
    """Our second write over our first: the index showing the first is still stale."""
    exp = Expectations()
    exp.observe([pod("a", "r1")])
    exp.patched(pod("a", "r2", hint="x"))
    exp.observe([pod("a", "r1")])
    exp.patched(pod("a", "r3", hint="x", drain="true"))
    (seen,) = exp.observe([pod("a", "r2", hint="x")])
    assert seen["metadata"]["resourceVersion"] == "r3"
    (seen,) = exp.observe([pod("a", "r3", hint="x", drain="true")])
    assert len(exp) == 0


def test_a_delete_hides_the_pod_until_the_index_shows_it_going() -> None:
    exp = Expectations()
    exp.observe([pod("a", "r1"), pod("b", "r1")])
    exp.deleted("a")
    assert names(exp.observe([pod("a", "r1"), pod("b", "r1")])) == {"b": "r1"}
    terminating = pod("a", "r2")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert names(exp.observe([terminating, pod("b", "r1")])) == {"a": "r2", "b": "r1"}
    assert len(exp) == 0


def test_expectations_expire() -> None:
    """A write the watch never shows (a lost event) stops standing in after the TTL."""
    clock = Clock()
    exp = Expectations(ttl=30, clock=clock)
    exp.observe([])
    exp.created(pod("new", "r1"))
    clock.t = 29
    assert names(exp.observe([])) == {"new": "r1"}
    clock.t = 31
    assert exp.observe([]) == [] and len(exp) == 0
