"""The operator against the real apiserver + controller-manager + kwok.

Each test plays the workers by patching pod annotations and checks, through the API only,
what the operator did: pods, annotations, status conditions and Events. A DeletionAuditor
watches every pod deletion, so "no busy pod was deleted" is checked on evidence, not timing.
"""

from __future__ import annotations

import signal

import pytest
from kubernetes import client
from voicepool_devstack.testing import wait_for

from .operator_harness import Cluster, DeletionAuditor, OperatorProcess, pool_manifest

pytestmark = pytest.mark.cluster


def _cond(pool: dict, type_: str) -> dict:
    for c in pool.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def _names(pods: list[client.V1Pod]) -> set[str]:
    return {p.metadata.name for p in pods}


def test_warm_pool_comes_up_pinned_and_reported(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    # sessionsPerPod 2, warm idleSessions 4 -> ceil(4 / 2) = 2 warm pods
    cluster.create_pool(pool_manifest("warm", warmPool={"idleSessions": 4}))
    pods = wait_for(
        lambda: len(r := cluster.ready_pods("warm")) == 2 and r,
        timeout=60,
        what="2 warm pods Ready",
    )
    for pod in pods:
        assert pod.status.qos_class == "Guaranteed"
        labels = pod.metadata.labels
        assert labels["app.kubernetes.io/managed-by"] == "voicepool-operator"
        assert labels["app.kubernetes.io/instance"] == "warm"
        owner = pod.metadata.owner_references[0]
        assert owner.kind == "VoiceAgentPool" and owner.controller

    def status_ready() -> dict | None:
        pool = cluster.pool("warm")
        st = pool.get("status", {})
        ok = st.get("readyPods") == 2 and _cond(pool, "Ready").get("status") == "True"
        return pool if ok else None

    pool = wait_for(status_ready, timeout=30, what="pool status Ready with 2 ready pods")
    st = pool["status"]
    assert st["desiredReplicas"] == 2
    assert st["observedGeneration"] == pool["metadata"]["generation"]
    for c in st["conditions"]:
        assert {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        } <= set(c)
    assert len(cluster.events("ScaleUp") + cluster.events("WarmPool")) >= 1
    assert "voicepool_pool_pods" in operator.metrics()


def test_scales_up_on_sessions_and_down_only_idle(
    api_client: client.ApiClient, operator: OperatorProcess, cluster: Cluster
) -> None:
    with DeletionAuditor(api_client, cluster.ns) as audit:
        cluster.create_pool(pool_manifest("calls", warmPool={"idleSessions": 2}))
        first = wait_for(
            lambda: len(r := cluster.ready_pods("calls")) == 1 and r, timeout=60, what="1 warm pod"
        )
        busy = first[0].metadata.name
        cluster.report(busy, sessions=2)  # full: warm capacity gone -> scale up at once
        pods = wait_for(
            lambda: len(r := cluster.ready_pods("calls")) == 2 and r,
            timeout=30,
            what="scale-up to 2 pods",
        )
        second = next(p.metadata.name for p in pods if p.metadata.name != busy)
        cluster.report(second, sessions=1)  # 3 sessions + 2 warm -> ceil(5/2) = 3 pods
        wait_for(
            lambda: len(cluster.ready_pods("calls")) == 3, timeout=30, what="scale-up to 3 pods"
        )
        hints = cluster.annotations(busy)
        assert hints["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert int(hints["controller.kubernetes.io/pod-deletion-cost"]) > 0

        # Calls end on the second pod only: 2 sessions + 2 warm -> 2 pods. After the
        # stabilization window an idle pod goes; the busy pod must stay.
        cluster.report(second, sessions=0)
        wait_for(
            lambda: len(cluster.pods("calls")) == 2,
            timeout=60,
            what="scale-down to 2 pods after the window",
        )
        assert busy in _names(cluster.pods("calls"))
        assert cluster.events("ScaleDown"), "a drain event names the scale-down"

    assert audit.deleted, "the auditor saw the scale-down deletion"
    assert audit.busy_deletions() == {}


def test_rolling_update_never_cuts_calls(
    api_client: client.ApiClient, operator: OperatorProcess, cluster: Cluster
) -> None:
    with DeletionAuditor(api_client, cluster.ns) as audit:
        cluster.create_pool(pool_manifest("roll", warmPool={"idleSessions": 4}))
        old = wait_for(
            lambda: len(r := cluster.ready_pods("roll")) == 2 and r,
            timeout=60,
            what="2 pods of the first template",
        )
        old_hash = old[0].metadata.labels["voicepool.dev/template-hash"]
        busy = old[0].metadata.name
        cluster.report(busy, sessions=1)
        wait_for(
            lambda: len(cluster.ready_pods("roll")) == 3,
            timeout=30,
            what="scale-up for the call (1 + 4 warm -> 3 pods)",
        )

        cluster.patch_pool_spec(
            "roll",
            {
                "template": {
                    "image": "example.invalid/voicepool-worker:v2",
                    "resources": {"cpu": 1, "memory": "512Mi"},
                }
            },
        )

        def rolled() -> bool:
            pods = cluster.pods("roll")
            old_left = [
                p for p in pods if p.metadata.labels["voicepool.dev/template-hash"] == old_hash
            ]
            return [p.metadata.name for p in old_left] == [busy]

        wait_for(rolled, timeout=90, what="all idle old pods replaced; busy old pod kept")
        # The busy old pod is drained last, once a ready new pod has taken its place.
        ann = wait_for(
            lambda: (a := cluster.annotations(busy)).get("voicepool.dev/drain") == "true" and a,
            timeout=30,
            what="busy old pod takes no new calls",
        )
        assert ann.get("voicepool.dev/drain-reason") == "Rollout"
        pool = cluster.pool("roll")
        assert _cond(pool, "Progressing").get("status") == "True"

        cluster.report(busy, sessions=0, state="draining")  # the call ends
        wait_for(
            lambda: busy not in _names(cluster.pods("roll")),
            timeout=30,
            what="old pod deleted once its call ended",
        )
        wait_for(
            lambda: _cond(cluster.pool("roll"), "Progressing").get("status") == "False",
            timeout=30,
            what="rollout complete",
        )
        for pod in cluster.pods("roll"):
            assert pod.metadata.labels["voicepool.dev/template-hash"] != old_hash
    assert audit.busy_deletions() == {}


def test_pool_deletion_waits_for_calls(
    api_client: client.ApiClient, operator: OperatorProcess, cluster: Cluster
) -> None:
    with DeletionAuditor(api_client, cluster.ns) as audit:
        cluster.create_pool(pool_manifest("bye", warmPool={"idleSessions": 2}))
        pod = wait_for(
            lambda: (r := cluster.ready_pods("bye")) and r[0], timeout=60, what="warm pod"
        ).metadata.name
        cluster.report(pod, sessions=1)
        wait_for(lambda: len(cluster.ready_pods("bye")) == 2, timeout=30, what="scale-up")
        cluster.delete_pool("bye")

        wait_for(
            lambda: _names(cluster.pods("bye")) == {pod},
            timeout=30,
            what="idle pods deleted, busy pod kept",
        )
        assert cluster.pool_exists("bye"), "the finalizer holds the pool while a call runs"
        assert cluster.annotations(pod).get("voicepool.dev/drain-reason") == "PoolDeleted"

        cluster.report(pod, sessions=0, state="draining")
        wait_for(
            lambda: not cluster.pool_exists("bye"),
            timeout=60,
            what="pool gone after the last call ended",
        )
        wait_for(
            lambda: not cluster.pods("bye", include_terminating=True),
            timeout=30,
            what="all pods gone",
        )
    assert audit.busy_deletions() == {}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, "maxReplicas"),
        ({"sessionsPerPod": 0}, "sessionsPerPod"),
        ({"template": {"image": "x", "resources": {"cpu": "500m"}}}, "whole number of CPUs"),
        ({"template": {"image": "x", "resources": {"cpu": "1.5"}}}, "whole number of CPUs"),
        ({"livekit": {"url": "http://example", "credentialsSecretRef": {"name": "s"}}}, "ws://"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(
    cluster: Cluster, operator: OperatorProcess, spec: dict, needle: str
) -> None:
    with pytest.raises(client.ApiException) as err:
        cluster.create_pool(pool_manifest("bad", **spec))
    assert err.value.status == 422
    assert needle in str(err.value.body)


def test_cpu_pinning_off_allows_fractional_cpu(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_pool(
        pool_manifest(
            "shared",
            cpuPinning={"enabled": False},
            template={"image": "x", "resources": {"cpu": "500m", "memory": "256Mi"}},
        )
    )
    pods = wait_for(
        lambda: (r := cluster.ready_pods("shared")) and r, timeout=60, what="unpinned pod"
    )
    assert pods[0].status.qos_class == "Burstable"


def test_operator_restart_mid_drain_completes_the_drain(
    api_client: client.ApiClient, operator: OperatorProcess, cluster: Cluster
) -> None:
    with DeletionAuditor(api_client, cluster.ns) as audit:
        cluster.create_pool(pool_manifest("restart", warmPool={"idleSessions": 2}))
        old = wait_for(
            lambda: (r := cluster.ready_pods("restart")) and r[0], timeout=60, what="warm pod"
        ).metadata.name
        cluster.report(old, sessions=1)
        wait_for(lambda: len(cluster.ready_pods("restart")) == 2, timeout=30, what="scale-up")
        cluster.patch_pool_spec(
            "restart",
            {
                "template": {
                    "image": "example.invalid/voicepool-worker:v2",
                    "resources": {"cpu": 1, "memory": "512Mi"},
                }
            },
        )
        wait_for(
            lambda: cluster.annotations(old).get("voicepool.dev/drain") == "true",
            timeout=60,
            what="busy old pod marked draining",
        )

        operator.kill(signal.SIGKILL)  # no graceful shutdown: all state must be in the API
        cluster.report(old, sessions=0, state="draining")  # call ends while operator is down
        operator.start()

        wait_for(
            lambda: old not in _names(cluster.pods("restart")),
            timeout=60,
            what="restarted operator finishes the drain",
        )
    assert audit.busy_deletions() == {}
    assert old in audit.deleted
