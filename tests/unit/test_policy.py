"""The worker policy: what a pool author may ask of worker pods (ServiceAccount, host network,
image), decided without I/O."""

from __future__ import annotations

from typing import Any

from voicepool_operator.podtemplate import build_pod
from voicepool_operator.policy import WorkerPolicy, check, service_account
from voicepool_operator.spec import PoolSpec, parse_spec


def spec(**template: Any) -> PoolSpec:
    return parse_spec(
        {
            "agentName": "a",
            "livekit": {"url": "ws://lk", "credentialsSecretRef": {"name": "lk"}},
            "template": {"image": "registry.example/voice/worker:1", **template},
        }
    )


def test_a_pool_without_a_service_account_gets_the_workers_one() -> None:
    policy = WorkerPolicy()
    assert check(spec(), policy) is None
    assert service_account(spec(), policy) == "voicepool-worker"
    pod = build_pod("p", "ns", "uid", spec(), "h", service_account=service_account(spec(), policy))
    assert pod["spec"]["serviceAccountName"] == "voicepool-worker"


def test_a_service_account_outside_the_allow_list_is_refused_naming_the_field() -> None:
    refusal = check(spec(serviceAccountName="default"), WorkerPolicy())
    assert refusal is not None and refusal.reason == "ServiceAccountNotAllowed"
    assert "spec.template.serviceAccountName: 'default'" in refusal.message
    allowed = WorkerPolicy(allowed_service_accounts=frozenset({"booking-worker"}))
    assert check(spec(serviceAccountName="booking-worker"), allowed) is None
    assert check(spec(serviceAccountName="voicepool-worker"), allowed) is None


def test_host_network_only_where_the_chart_allows_it() -> None:
    refusal = check(spec(hostNetwork=True), WorkerPolicy())
    assert refusal is not None and refusal.reason == "HostNetworkNotAllowed"
    assert "spec.template.hostNetwork" in refusal.message
    assert check(spec(hostNetwork=True), WorkerPolicy(allow_host_network=True)) is None


def test_images_may_be_restricted_to_prefixes() -> None:
    policy = WorkerPolicy(allowed_image_prefixes=("registry.example/voice/",))
    assert check(spec(), policy) is None
    refusal = check(spec(image="evil.example/miner:latest"), policy)
    assert refusal is not None and refusal.reason == "ImageNotAllowed"
    assert "spec.template.image" in refusal.message
