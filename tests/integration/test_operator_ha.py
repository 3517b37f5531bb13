"""Two operator replicas on one peering object, as the chart runs them (real apiserver + kwok).

kopf peering is not leader election: replicas of equal priority all pause. The operator's
seniority priority makes exactly one replica (the oldest) act; these tests check that on
evidence -- the pods that exist and the reportingInstance of every Event -- and that the
standby takes over when the active replica is killed without a chance to say goodbye, and
that a LiveKit webhook posted to the standby (the chart's Service may pick either replica)
still scales a pool from zero, and its waiting room survives a failover.

A module of its own: the other suites' operator serves every namespace through the
"voicepool" peering object and would act on these pools too.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from livekit import api as lkapi
from voicepool_contract import ROOM_AGENT_KEY, WAITING_ROOM_PREFIX
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.ports import free_port
from voicepool_devstack.testing import Environment, wait_for

from .operator_harness import (
    Cluster,
    DeletionAuditor,
    OperatorProcess,
    create_peering,
    install_crds,
    pool_manifest,
    zero_pool_manifest,
)

pytestmark = pytest.mark.cluster
RESUMED = "Resuming operations"  # kopf's log line when a replica becomes the active one


@pytest.fixture()
def replicas(
    api_client: client.ApiClient, stack_env: Environment
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    install_crds(api_client)
    peering = f"ha-{uuid.uuid4().hex[:6]}"
    create_peering(api_client, peering)
    first = OperatorProcess(stack_env.kubeconfig, peering=peering, identity="replica-a")
    second = OperatorProcess(stack_env.kubeconfig, peering=peering, identity="replica-b")
    try:
        first.start()
        second.start()  # younger, so it stands by
        yield first, second
    finally:
        second.stop()
        first.stop()


def _instances(cluster: Cluster, action: str) -> list[str]:
    return [e.get("reportingInstance", "") for e in cluster.events() if e.get("action") == action]


@pytest.mark.timeout(240)
def test_one_replica_acts_and_the_standby_takes_over_after_a_crash(
    api_client: client.ApiClient,
    namespace: str,
    replicas: tuple[OperatorProcess, OperatorProcess],
) -> None:
    first, second = replicas
    cluster = Cluster(api_client, namespace)
    # Replicas start paused; only the one that sees no peer above it resumes.
    wait_for(lambda: RESUMED in first.log_text(), timeout=30, what="the oldest replica to resume")
    assert RESUMED not in second.log_text(), second.log_tail()

    with DeletionAuditor(api_client, namespace) as audit:
        cluster.create_pool(pool_manifest("ha", minReplicas=3, warmPool={"idleSessions": 0}))
        wait_for(lambda: len(cluster.ready_pods("ha")) == 3, timeout=60, what="3 pods Ready")
        wait_for(lambda: len(_instances(cluster, "CreatePod")) >= 3, timeout=30, what="3 Events")
        assert len(cluster.pods("ha", include_terminating=True)) == 3, "a pod was created twice"
        assert set(_instances(cluster, "CreatePod")) == {"replica-a"}

        busy = cluster.ready_pods("ha")[0].metadata.name
        cluster.report(busy, sessions=1)

        first.kill(signal.SIGKILL)  # no goodbye: its peering record must expire
        cluster.patch_pool_spec("ha", {"minReplicas": 4})
        wait_for(
            lambda: len(cluster.ready_pods("ha")) == 4,
            timeout=90,
            what="the standby to take over and scale up",
        )
        assert RESUMED in second.log_text(), second.log_tail()
        assert "replica-b" in _instances(cluster, "CreatePod")
        assert len(cluster.pods("ha", include_terminating=True)) == 4

        # The new active replica keeps the safety rules: the busy pod survives a scale-down.
        cluster.patch_pool_spec(
            "ha", {"minReplicas": 1, "scaleDown": {"stabilizationWindowSeconds": 0}}
        )
        wait_for(
            lambda: {p.metadata.name for p in cluster.pods("ha")} == {busy},
            timeout=60,
            what="idle pods drained and deleted by the new active replica",
        )
        cluster.delete_pool("ha")
        cluster.report(busy, sessions=0, state="draining")
        wait_for(lambda: not cluster.pool_exists("ha"), timeout=60, what="pool deleted")
    assert audit.busy_deletions() == {}


@pytest.fixture()
def webhook_replicas(
    api_client: client.ApiClient, stack_env: Environment
) -> Iterator[tuple[OperatorProcess, OperatorProcess, LiveKitInfo]]:
    """Two replicas, each serving LiveKit's webhook on its own port (as two pods would)."""
    if stack_env.livekit is None:
        pytest.skip("no LiveKit credentials in this environment")
    install_crds(api_client)
    peering = f"ha-{uuid.uuid4().hex[:6]}"
    create_peering(api_client, peering)
    lk = stack_env.livekit

    def replica(identity: str) -> OperatorProcess:
        own = dataclasses.replace(lk, webhook_port=free_port())
        return OperatorProcess(
            stack_env.kubeconfig, peering=peering, identity=identity, livekit=own
        )

    first, second = replica("replica-a"), replica("replica-b")
    try:
        first.start()
        second.start()
        yield first, second, lk
    finally:
        second.stop()
        first.stop()


def post_webhook(op: OperatorProcess, lk: LiveKitInfo, event: str, room: str, meta: str) -> int:
    """POST one event as livekit-server does: JSON body, a JWT with the body's sha256."""
    assert op.livekit is not None
    body = json.dumps(
        {
            "event": event,
            "room": {"name": room, "metadata": meta},
            "id": uuid.uuid4().hex,
            "createdAt": str(int(time.time())),
        }
    ).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = lkapi.AccessToken(lk.api_key, lk.api_secret).with_sha256(digest).to_jwt()
    req = urllib.request.Request(
        f"http://127.0.0.1:{op.livekit.webhook_port}/livekit/webhook",
        data=body,
        headers={"Authorization": token, "Content-Type": "application/webhook+json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


@pytest.mark.timeout(240)
def test_a_webhook_posted_to_the_standby_scales_a_pool_from_zero(
    api_client: client.ApiClient,
    namespace: str,
    webhook_replicas: tuple[OperatorProcess, OperatorProcess, LiveKitInfo],
) -> None:
    first, second, lk = webhook_replicas
    cluster = Cluster(api_client, namespace)
    wait_for(lambda: RESUMED in first.log_text(), timeout=30, what="the oldest replica to resume")
    assert RESUMED not in second.log_text(), second.log_tail()
    agent = f"ha-zero-{namespace}"
    cluster.livekit_secret(lk)  # the key the events are signed with is the pool's own
    cluster.create_pool(zero_pool_manifest("zero", agent))
    wait_for(
        lambda: cluster.pool("zero").get("status", {}).get("desiredReplicas") == 0,
        timeout=30,
        what="an empty pool",
    )
    assert cluster.pods("zero") == []

    meta = json.dumps({ROOM_AGENT_KEY: agent})
    assert post_webhook(second, lk, "room_started", "call-1", meta) == 200  # the standby
    assert RESUMED not in second.log_text(), "the standby must not have become active"
    rooms = [
        k
        for k in (cluster.pool("zero")["metadata"].get("annotations") or {})
        if k.startswith(WAITING_ROOM_PREFIX)
    ]
    assert len(rooms) == 1, "the standby records the room on the pool before it answers"
    wait_for(lambda: cluster.pods("zero"), timeout=30, what="the active replica to start a pod")
    wait_for(
        lambda: [e for e in cluster.events("WaitingCall") if e.get("action") == "CreatePod"],
        timeout=10,
        what="the WaitingCall Event",
    )
    assert set(_instances(cluster, "CreatePod")) == {"replica-a"}
    wait_for(
        lambda: cluster.pool("zero").get("status", {}).get("waitingCalls") == 1,
        timeout=30,
        what="status.waitingCalls 1",
    )

    # Failover: the room is on the pool, not in the dead replica's memory.
    first.kill(signal.SIGKILL)
    wait_for(lambda: RESUMED in second.log_text(), timeout=90, what="the standby to take over")
    cluster.patch_pool_spec("zero", {"maxReplicas": 7})  # a new generation to reconcile
    generation = cluster.pool("zero")["metadata"]["generation"]

    def reconciled_by_b() -> dict:
        status = dict(cluster.pool("zero").get("status") or {})
        return status if status.get("observedGeneration") == generation else {}

    status = wait_for(reconciled_by_b, timeout=60, what="the new active replica's status")
    assert status["waitingCalls"] == 1 and status["desiredReplicas"] == 1, status
    assert len(cluster.pods("zero", include_terminating=True)) == 1, "a pod was created twice"

    assert post_webhook(second, lk, "room_finished", "call-1", "") == 200
    wait_for(
        lambda: cluster.pool("zero").get("status", {}).get("waitingCalls") == 0,
        timeout=30,
        what="the room gone: status.waitingCalls 0",
    )
    assert not [
        k
        for k in (cluster.pool("zero")["metadata"].get("annotations") or {})
        if k.startswith(WAITING_ROOM_PREFIX)
    ]
