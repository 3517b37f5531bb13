"""The reconciler's own decisions -- which writes it sends and when -- on a recording stand-in.

These check the glue, not the API: how many status writes a burst costs, which Events are
Warnings, that an invalid spec is reported once, and that a deleted pool drains even when
its spec no longer parses. What the apiserver does with the writes is checked against the
real apiserver in tests/integration/test_operator.py.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from voicepool_operator import reconcile
from voicepool_operator.podtemplate import template_hash
from voicepool_operator.reconcile import Reconciler
from voicepool_operator.spec import parse_spec

from .conftest import pod_dict, spec_dict

POOL_SPEC: dict[str, Any] = spec_dict(
    sessionsPerPod=2,
    minReplicas=1,
    maxReplicas=5,
    warmPool={"idleSessions": 2},
    scaleDown={"stabilizationWindowSeconds": 0},
)


HASH = template_hash(parse_spec(POOL_SPEC))


class FakeKube:
    """Records every write; returns what an apiserver would (rv bumped on each write)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.rv = 100
        self.pods: dict[str, dict[str, Any]] = {}  # the API's pods, as the test last gave them

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = f"v{self.rv}"
        return obj

    async def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(manifest))
        obj["metadata"]["name"] = f"{obj['metadata']['generateName']}{self.rv}"
        self.writes.append(("create_pod", obj["metadata"]["name"]))
        return self._bump(obj)

    async def patch_pod_metadata(
        self, namespace: str, name: str, *, verb: str = "patch_pod", **meta: Any
    ) -> dict[str, Any]:
        self.writes.append((verb, name))
        obj = copy.deepcopy(self.pods.get(name) or {"metadata": {"name": name}})
        for part in ("annotations", "labels"):
            obj["metadata"].setdefault(part, {}).update(meta.get(part) or {})
        return self._bump(obj)

    async def delete_pod(self, namespace: str, name: str, **_: Any) -> None:
        self.writes.append(("delete_pod", name))

    async def ensure_pdb(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        self.writes.append(("create_pdb", manifest["metadata"]["name"]))
        return True

    async def patch_pool_status(self, namespace: str, name: str, status: Any) -> None:
        self.writes.append(("patch_status", copy.deepcopy(status)))

    async def event(self, regarding: Any, **kw: Any) -> None:
        self.writes.append(("event", kw["reason"]))
        self.events.append(kw)

    def count(self, verb: str) -> int:
        return sum(1 for v, _ in self.writes if v == verb)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pool(spec: Mapping[str, Any] | None = None, status: Any = None, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1, **meta},
        "spec": dict(spec or POOL_SPEC),
        "status": status or {},
    }


def pod(name: str, sessions: str | None = "0", rv: str = "r1", **extra: Any) -> dict[str, Any]:
    ann = {"voicepool.dev/state": "idle" if sessions in (None, "0") else "busy"}
    if sessions is not None:
        ann["voicepool.dev/sessions"] = sessions
    ann.update(extra.pop("annotations", {}))
    return pod_dict(
        name,
        annotations=ann,
        template_hash=extra.pop("thash", HASH),
        created="2026-01-01T00:00:00Z",
        ready_at=None,
        uid=f"uid-{name}",
        resourceVersion=rv,
        **extra,
    )


@pytest.fixture()
def kube() -> FakeKube:
    return FakeKube()


async def run(
    rec: Reconciler, kube: FakeKube, body: dict[str, Any], pods: list[dict[str, Any]], **kw: Any
) -> Any:
    """One reconcile with `pods` as both the API's state and the index's."""
    kube.pods = {p["metadata"]["name"]: p for p in pods}
    return await rec.reconcile(body, pods, **kw)


async def test_an_invalid_spec_is_reported_once_not_on_every_reconcile(kube: FakeKube) -> None:
    """Before: `_report_spec_error` patched status on every reconcile."""
    rec = Reconciler(kube)  # type: ignore[arg-type]
    bad = {**POOL_SPEC, "warmPool": {"timeZone": "Europe/Berln"}}
    body = pool(bad)
    await run(rec, kube, body, [])
    assert kube.count("patch_status") == 1 and kube.count("event") == 1
    (_, written) = next(w for w in kube.writes if w[0] == "patch_status")
    body["status"] = written  # the watch delivers our write
    for _ in range(5):
        await run(rec, kube, body, [])
    assert kube.count("patch_status") == 1 and kube.count("event") == 1
    assert kube.events[0]["type_"] == "Warning" and "Europe/Berln" in kube.events[0]["note"]


async def test_a_deleted_pool_with_an_invalid_spec_still_drains(kube: FakeKube) -> None:
    """Before: the finalizer waited forever for pods the operator would not touch."""
    rec = Reconciler(kube)  # type: ignore[arg-type]
    bad = {**POOL_SPEC, "warmPool": {"timeZone": "Europe/Berln"}}
    body = pool(bad, deletionTimestamp="2026-01-01T00:00:00Z")
    outcome = await run(rec, kube, body, [pod("idle"), pod("busy", "1")], deleting=True)
    drained = [name for verb, name in kube.writes if verb == "mark_drain"]
    assert sorted(drained) == ["busy", "idle"]
    assert outcome.remaining_pods == 2
    done = pod("idle", annotations={"voicepool.dev/drain": "true"}, rv="r2")
    await run(rec, kube, body, [done], deleting=True)
    assert ("delete_pod", "idle") in kube.writes


@pytest.mark.parametrize(
    ("reason", "pods"),
    [
        ("Failed", [pod("f", thash="x") | {"status": {"phase": "Failed"}}]),
        (
            "Unresponsive",
            [pod("u", "0") | {"status": {"phase": "Running", "conditions": []}}],
        ),
        (
            "DrainTimeout",
            [
                pod(
                    "d",
                    "1",
                    annotations={
                        "voicepool.dev/drain": "true",
                        "voicepool.dev/drain-requested-at": "2020-01-01T00:00:00Z",
                    },
                )
            ],
        ),
    ],
)
async def test_failed_and_unresponsive_deletions_are_warnings(
    kube: FakeKube, reason: str, pods: list[dict[str, Any]]
) -> None:
    """Before: only DrainTimeout was a Warning; a crashed or silent pod said Normal."""
    rec = Reconciler(kube)  # type: ignore[arg-type]
    spec = {**POOL_SPEC, "unreadyGraceSeconds": 0, "drain": {"timeoutSeconds": 60}}
    await run(rec, kube, pool(spec), pods)
    (event,) = [e for e in kube.events if e["reason"] == reason]
    assert event["type_"] == "Warning"
    assert all(
        e.get("type_", "Normal") == "Normal"
        for e in kube.events
        if e["reason"] in ("DrainComplete", "ScaleDown", "WarmPool")
    )


async def test_a_burst_of_changes_costs_one_status_write(kube: FakeKube) -> None:
    """Status is written once the pool is quiet, not once per pod change (a drain is 4)."""
    clock = Clock()
    rec = Reconciler(kube, clock=clock)  # type: ignore[arg-type]
    body = pool()
    await run(rec, kube, body, [pod("a", "0"), pod("b", "0")])  # first status: at once
    assert kube.count("patch_status") == 1
    body["status"] = next(w for v, w in reversed(kube.writes) if v == "patch_status")
    # Pod changes in quick succession: each changes the counts.
    waits = []
    for i, sessions in enumerate(["1", "2", "1", "2", "1"]):
        clock.t += 0.1
        outcome = await run(rec, kube, body, [pod("a", sessions, rv=f"r{i + 2}"), pod("b", "0")])
        waits.append(outcome.requeue_after)
    assert kube.count("patch_status") == 1, "no write while the burst goes on"
    assert all(w is not None and 0 < w <= reconcile.STATUS_QUIET_SECONDS for w in waits)
    clock.t += reconcile.STATUS_QUIET_SECONDS  # quiet: the loop wakes at requeue_after
    await run(rec, kube, body, [pod("a", "1", rv="r6"), pod("b", "0")])
    assert kube.count("patch_status") == 2
    (_, last) = [w for w in kube.writes if w[0] == "patch_status"][-1]
    assert last["activeSessions"] == 1


async def test_constant_churn_still_writes_status_within_the_max_delay(kube: FakeKube) -> None:
    clock = Clock()
    rec = Reconciler(kube, clock=clock)  # type: ignore[arg-type]
    body = pool()
    await run(rec, kube, body, [pod("a", "0"), pod("b", "0")])
    body["status"] = next(w for v, w in reversed(kube.writes) if v == "patch_status")
    steps = int(reconcile.STATUS_MAX_DELAY_SECONDS / 0.5) + 1
    for i in range(steps):
        clock.t += 0.5
        await run(rec, kube, body, [pod("a", str(i % 2 + 1), rv=f"r{i + 2}"), pod("b", "0")])
    assert kube.count("patch_status") == 2


async def test_an_unreadable_count_raises_one_warning_per_value(kube: FakeKube) -> None:
    from voicepool_operator import metrics

    rec = Reconciler(kube)  # type: ignore[arg-type]
    hostile = pod("h", "1" * 24)
    for _ in range(3):
        await run(rec, kube, pool(), [hostile, pod("w", "0")])
    warnings = [e for e in kube.events if e["reason"] == "InvalidReport"]
    assert len(warnings) == 1 and warnings[0]["type_"] == "Warning"
    assert "pod h" in warnings[0]["note"]
    value = metrics.INVALID_REPORTS.labels("ns", "p", "h")._value.get()
    assert value == 1
    await run(rec, kube, pool(), [pod("h", "lots", rv="r2"), pod("w", "0")])
    assert len([e for e in kube.events if e["reason"] == "InvalidReport"]) == 2


async def test_the_busy_label_and_hints_are_one_write(kube: FakeKube) -> None:
    rec = Reconciler(kube)  # type: ignore[arg-type]
    await run(rec, kube, pool(), [pod("a", "1"), pod("b", "0")])
    hints = [name for verb, name in kube.writes if verb == "patch_hints"]
    assert hints.count("a") == 1
    assert kube.count("create_pdb") == 1
    await run(rec, kube, pool(), [pod("a", "1", rv="r2"), pod("b", "0")])
    assert kube.count("create_pdb") == 1, "the PDB is created once per pool"
