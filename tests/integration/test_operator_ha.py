"""Two operator replicas on one peering object, as the chart runs them (real apiserver + kwok).

kopf peering is not leader election: replicas of equal priority all pause. The operator's
seniority priority makes exactly one replica (the oldest) act; these tests check that on
evidence -- the pods that exist and the reportingInstance of every Event -- and that the
standby takes over when the active replica is killed without a chance to say goodbye.

A module of its own: the other suites' operator serves every namespace through the
"voicepool" peering object and would act on these pools too.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from voicepool_devstack.testing import Environment, wait_for

from .operator_harness import (
    Cluster,
    DeletionAuditor,
    OperatorProcess,
    create_peering,
    install_crds,
    pool_manifest,
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
