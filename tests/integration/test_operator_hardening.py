"""Hardening against a real apiserver + controller-manager + kwok, driven as a user would.

- a hostile session count (24 digits) cannot move the pool, and status keeps being written;
- busy pods carry the operator's busy label, their PDB holds `kubectl drain` while idle pods
  are evicted at once;
- a pool whose spec became invalid is still deleted (its finalizer does not hang);
- the operator's own status writes (or anyone's status-only change) trigger no reconcile;
- `kubectl explain` documents every field of the CRD;
- a caller waiting in a LiveKit room starts a pod in a pool with none (livekit-server's
  signed webhook), and the pool's status shows `waitingCalls`.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from kubernetes import client
from livekit import api as lkapi
from voicepool_contract import (
    ANN_SESSIONS,
    ANN_STATE,
    GROUP,
    LABEL_BUSY,
    PLURAL,
    ROOM_AGENT_KEY,
    VERSION,
)
from voicepool_devstack.testing import Environment, wait_for
from voicepool_devstack.versions import KUBERNETES

from .operator_harness import (
    Cluster,
    DeletionAuditor,
    OperatorProcess,
    install_crds,
    pool_manifest,
)

# With the stack's LiveKit: the operator serves livekit-server's webhook (scale from 0).
pytestmark = [pytest.mark.cluster, pytest.mark.operator_webhook]


def kubectl(env: Environment, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBERNETES.path("kubectl")), "--kubeconfig", env.kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _cond(pool: dict, type_: str) -> dict:
    for c in pool.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def metric(op: OperatorProcess, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in op.metrics().splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_hostile_count_cannot_move_the_pool(
    operator: OperatorProcess, cluster: Cluster, core: client.CoreV1Api
) -> None:
    """The issue's case: a 24-digit count took a pool from 4 to 9 pods and broke status."""
    cluster.create_pool(
        pool_manifest("hostile", minReplicas=4, maxReplicas=9, warmPool={"idleSessions": 0})
    )
    pods = wait_for(
        lambda: len(r := cluster.ready_pods("hostile")) == 4 and r, timeout=60, what="4 pods"
    )
    bad = pods[0].metadata.name
    core.patch_namespaced_pod(
        bad, cluster.ns, {"metadata": {"annotations": {ANN_SESSIONS: "1" * 24, ANN_STATE: "busy"}}}
    )

    def degraded() -> dict | None:
        pool = cluster.pool("hostile")
        return pool if _cond(pool, "Degraded").get("reason") == "InvalidReports" else None

    pool = wait_for(degraded, timeout=30, what="Degraded=InvalidReports in status")
    assert bad in _cond(pool, "Degraded")["message"]
    st = pool["status"]
    # Taken as full: 2 sessions (sessionsPerPod 2), busy, and the pool stays at 4 pods.
    assert st["activeSessions"] == 2 and st["busyPods"] == 1
    assert st["desiredReplicas"] == 4
    assert len(cluster.pods("hostile")) == 4
    warnings = [e for e in cluster.events("InvalidReport") if e["type"] == "Warning"]
    assert warnings and bad in warnings[0]["note"]
    assert metric(operator, "voicepool_invalid_reports_total", pool="hostile", pod=bad) == 1
    # The operator still writes status: a readable count shows up at once.
    cluster.report(bad, sessions=1)
    wait_for(
        lambda: cluster.pool("hostile")["status"].get("activeSessions") == 1,
        timeout=30,
        what="status follows the next readable report",
    )
    assert _cond(cluster.pool("hostile"), "Degraded").get("status") == "False"


def test_busy_label_follows_the_report(operator: OperatorProcess, cluster: Cluster) -> None:
    cluster.create_pool(pool_manifest("label", warmPool={"idleSessions": 2}))
    (pod,) = wait_for(lambda: cluster.ready_pods("label"), timeout=60, what="warm pod")
    name = pod.metadata.name

    def label() -> str | None:
        return dict(cluster.core.read_namespaced_pod(name, cluster.ns).metadata.labels or {}).get(
            LABEL_BUSY
        )

    cluster.report(name, sessions=1)
    wait_for(lambda: label() == "true", timeout=10, what="busy label set")
    cluster.report(name, sessions=0)
    wait_for(lambda: label() == "false", timeout=10, what="busy label cleared")
    pdb = client.PolicyV1Api(cluster.core.api_client).read_namespaced_pod_disruption_budget(
        "label-busy", cluster.ns
    )
    # Every busy pod must stay (maxUnavailable 0 would need a scale subresource on the pool).
    assert pdb.spec.min_available == 2**31 - 1 and pdb.spec.max_unavailable is None
    assert pdb.spec.selector.match_labels == {"voicepool.dev/pool": "label", LABEL_BUSY: "true"}
    assert pdb.metadata.owner_references[0].kind == "VoiceAgentPool"


@pytest.mark.timeout(240)
def test_kubectl_drain_waits_for_the_busy_pod_and_evicts_idle_ones_at_once(
    api_client: client.ApiClient,
    operator: OperatorProcess,
    cluster: Cluster,
    stack_env: Environment,
) -> None:
    node = "kwok-node-1"
    cluster.create_pool(
        pool_manifest(
            "drain",
            sessionsPerPod=1,
            minReplicas=3,
            warmPool={"idleSessions": 0},
            scaleDown={"stabilizationWindowSeconds": 300},
            template={
                "image": "example.invalid/voicepool-worker:test",
                "resources": {"cpu": 1, "memory": "512Mi"},
                "nodeSelector": {"kubernetes.io/hostname": node},
            },
        )
    )
    pods = wait_for(
        lambda: len(r := cluster.ready_pods("drain")) == 3 and r, timeout=60, what="3 pods"
    )
    busy, *idle = [p.metadata.name for p in pods]
    cluster.report(busy, sessions=1, capacity=1)
    for name in idle:
        cluster.report(name, sessions=0, capacity=1)
    wait_for(
        lambda: (
            (cluster.core.read_namespaced_pod(busy, cluster.ns).metadata.labels or {}).get(
                LABEL_BUSY
            )
            == "true"
        ),
        timeout=10,
        what="busy label on the busy pod",
    )
    policy = client.PolicyV1Api(api_client)

    def pdb_ready() -> bool:
        pdb = policy.read_namespaced_pod_disruption_budget("drain-busy", cluster.ns)
        st = pdb.status
        return bool(
            st
            and st.observed_generation == pdb.metadata.generation
            and st.current_healthy == 1
            and st.disruptions_allowed == 0
        )

    wait_for(pdb_ready, timeout=30, what="the disruption controller to count the busy pod")

    log = Path(tempfile.mkstemp(prefix="kubectl-drain-", suffix=".log")[1])
    with DeletionAuditor(api_client, cluster.ns) as audit, log.open("w") as out:
        drain = subprocess.Popen(
            [
                str(KUBERNETES.path("kubectl")),
                "--kubeconfig",
                stack_env.kubeconfig,
                "drain",
                node,
                "--pod-selector=voicepool.dev/pool=drain",
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=120s",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # Idle pods are evicted at once; the busy one is refused by its PDB and retried.
            wait_for(lambda: set(idle) <= set(audit.deleted), timeout=30, what="idle pods evicted")
            wait_for(
                lambda: "disruption budget" in log.read_text(),
                timeout=30,
                what="kubectl drain refused the busy pod's eviction",
            )
            assert drain.poll() is None, log.read_text()
            assert busy not in audit.deleted
            alive = cluster.core.read_namespaced_pod(busy, cluster.ns)
            assert alive.metadata.deletion_timestamp is None

            # The call ends: the label is cleared and the next retry evicts the pod.
            cluster.report(busy, sessions=0, capacity=1)
            assert drain.wait(timeout=60) == 0, log.read_text()
        finally:
            if drain.poll() is None:
                drain.kill()
                drain.wait()
            kubectl(stack_env, "uncordon", node)
        assert busy in audit.deleted
    assert audit.busy_deletions() == {}, "no pod was evicted while it reported a call"


def test_a_pool_whose_spec_became_invalid_is_still_deleted(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    """Before: the finalizer waited forever for pods the operator would no longer touch."""
    cluster.create_pool(pool_manifest("berln", warmPool={"idleSessions": 2}))
    wait_for(lambda: cluster.ready_pods("berln"), timeout=60, what="warm pod")
    cluster.patch_pool_spec("berln", {"warmPool": {"idleSessions": 2, "timeZone": "Europe/Berln"}})
    wait_for(
        lambda: _cond(cluster.pool("berln"), "Degraded").get("reason") == "InvalidSpec",
        timeout=30,
        what="InvalidSpec reported",
    )
    cluster.delete_pool("berln")
    wait_for(lambda: not cluster.pool_exists("berln"), timeout=60, what="pool deleted")


def test_status_only_changes_trigger_no_reconcile(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    """Before: every status write (ours included) woke a second reconcile of the pool."""
    cluster.create_pool(pool_manifest("quiet", warmPool={"idleSessions": 2}))
    wait_for(
        lambda: _cond(cluster.pool("quiet"), "Ready").get("status") == "True",
        timeout=60,
        what="pool Ready",
    )
    reconciles = "voicepool_reconciles_total"
    time.sleep(2)  # let the last status write land
    before = metric(operator, reconciles, namespace=cluster.ns, pool="quiet")
    for i in range(3):
        cluster.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, cluster.ns, PLURAL, "quiet", {"status": {"templateHash": f"x{i}"}}
        )
        time.sleep(0.3)
    time.sleep(1.5)
    assert metric(operator, reconciles, namespace=cluster.ns, pool="quiet") == before
    # A spec change still re-plans at once.
    cluster.patch_pool_spec("quiet", {"warmPool": {"idleSessions": 4}})
    wait_for(lambda: len(cluster.ready_pods("quiet")) == 2, timeout=30, what="scale-up")
    assert metric(operator, reconciles, namespace=cluster.ns, pool="quiet") > before


def test_kubectl_explain_documents_every_field(
    api_client: client.ApiClient, stack_env: Environment
) -> None:
    install_crds(api_client)
    tree = kubectl(stack_env, "explain", "voiceagentpools", "--recursive")
    assert tree.returncode == 0, tree.stderr
    paths = explain_paths(tree.stdout)
    assert {"spec", "spec.drain", "status.conditions"} <= set(paths)
    undocumented = []
    for path in ["", *paths]:
        resource = f"voiceagentpools.{path}" if path else "voiceagentpools"
        out = kubectl(stack_env, "explain", resource)
        assert out.returncode == 0, out.stderr
        if not explain_description(out.stdout):
            undocumented.append(path or "<root>")
    assert undocumented == [], f"fields without a description: {undocumented}"


def explain_paths(recursive: str) -> list[str]:
    """Field paths from `kubectl explain --recursive` (indentation gives the nesting)."""
    lines = recursive.split("FIELDS:", 1)[1].splitlines()
    stack: list[tuple[int, str]] = []
    out: list[str] = []
    for line in lines:
        m = re.match(r"^(\s+)([A-Za-z0-9_$-]+)\s+<", line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(n for _, n in stack), name])
        stack.append((indent, name))
        if path != "metadata" and not path.startswith("metadata."):
            out.append(path)
    return out


def explain_description(text: str) -> str:
    """The DESCRIPTION section of one `kubectl explain` answer, blank if there is none.

    The section is the indented lines after "DESCRIPTION:", up to the next heading (FIELDS:,
    ENUM:) or the end; kubectl writes "<empty>" when the schema has no description.
    """
    if "DESCRIPTION:" not in text:
        return ""
    body: list[str] = []
    for line in text.split("DESCRIPTION:", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith(" "):
            break
        body.append(line.strip())
    found = " ".join(b for b in body if b)
    return "" if found in ("", "<empty>", "<no description>") else found


def test_a_waiting_room_scales_a_pool_from_zero(
    operator: OperatorProcess, cluster: Cluster, stack_env: Environment
) -> None:
    """minReplicas 0 and no warm pool: only LiveKit knows a caller waits for the agent."""
    lk = stack_env.livekit
    if not lk.webhook_port:
        pytest.skip("this LiveKit server posts no webhooks to the operator")
    agent = f"zero-{cluster.ns}"
    cluster.livekit_secret(lk)  # the pool's own key: the one its webhook events must be signed with
    cluster.create_pool(
        pool_manifest("zero", agentName=agent, minReplicas=0, warmPool={"idleSessions": 0})
    )
    wait_for(
        lambda: cluster.pool("zero").get("status", {}).get("desiredReplicas") == 0,
        timeout=30,
        what="an empty pool",
    )
    assert cluster.pods("zero") == []
    room = f"call-{cluster.ns}"

    async def rooms(create: bool) -> None:
        async with lkapi.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as api:
            if create:
                meta = json.dumps({ROOM_AGENT_KEY: agent})
                await api.room.create_room(lkapi.CreateRoomRequest(name=room, metadata=meta))
            else:
                await api.room.delete_room(lkapi.DeleteRoomRequest(room=room))

    asyncio.run(rooms(create=True))
    try:
        wait_for(lambda: cluster.pods("zero"), timeout=30, what="a pod for the waiting caller")
        wait_for(  # the Event follows the create by a few milliseconds
            lambda: [e for e in cluster.events("WaitingCall") if e.get("action") == "CreatePod"],
            timeout=10,
            what="the WaitingCall Event naming why the pod was created",
        )
        wait_for(
            lambda: cluster.pool("zero").get("status", {}).get("waitingCalls") == 1,
            timeout=30,
            what="status.waitingCalls 1",
        )
    finally:
        asyncio.run(rooms(create=False))
    wait_for(
        lambda: cluster.pool("zero").get("status", {}).get("waitingCalls") == 0,
        timeout=30,
        what="the room gone: status.waitingCalls 0",
    )
