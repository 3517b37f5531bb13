"""The servers are real: RBAC'd apiserver, scheduler, kwok nodes, GC, and livekit-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kubernetes import client
from livekit import api as lkapi
from voicepool_devstack.testing import Environment, create_namespace, wait_for

pytestmark = pytest.mark.cluster


def _pod(name: str, cpu: str, owner: client.V1OwnerReference | None = None) -> client.V1Pod:
    res = {"cpu": cpu, "memory": "256Mi"}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, owner_references=[owner] if owner else None),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image="example.invalid/worker:1",
                    resources=client.V1ResourceRequirements(requests=res, limits=res),
                )
            ],
        ),
    )


def _ready(pod: client.V1Pod) -> bool:
    conds = pod.status.conditions or []
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conds
    )


def test_pod_runs_on_kwok_node_and_is_garbage_collected(
    core: client.CoreV1Api, namespace: str
) -> None:
    cm = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    owner = client.V1OwnerReference(
        api_version="v1",
        kind="ConfigMap",
        name="owner",
        uid=cm.metadata.uid,
        block_owner_deletion=True,
    )
    core.create_namespaced_pod(namespace, _pod("owned", "1", owner))

    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("owned", namespace)) and _ready(p) and p,
        timeout=60,
        what="pod Running and Ready",
    )
    assert pod.spec.node_name, "the scheduler bound the pod to a node"
    assert pod.status.qos_class == "Guaranteed"

    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("owned", namespace)
            return False
        except client.ApiException as e:
            return e.status == 404

    wait_for(gone, timeout=60, what="garbage collector to delete the owned pod")


def test_scheduler_respects_cpu_requests(
    core: client.CoreV1Api, namespace: str, stack_env: Environment
) -> None:
    if not stack_env.embedded:
        pytest.skip("node sizes are only known for the embedded kwok nodes")
    core.create_namespaced_pod(namespace, _pod("too-big", "9"))  # nodes have 8 CPUs

    def unschedulable() -> bool:
        p = core.read_namespaced_pod("too-big", namespace)
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in (p.status.conditions or [])
        )

    wait_for(unschedulable, timeout=30, what="scheduler to mark the 9-CPU pod Unschedulable")
    assert core.read_namespaced_pod("too-big", namespace).spec.node_name is None


def test_create_namespace_returns_once_pods_can_be_created(core: client.CoreV1Api) -> None:
    """The shared helper waits for the default ServiceAccount, without which pods are refused."""
    name = create_namespace(core, f"h-{uuid.uuid4().hex[:8]}")
    try:
        assert core.read_namespaced_service_account("default", name).metadata.name == "default"
        core.create_namespaced_pod(name, _pod("first", "100m"))  # no retry needed
        with pytest.raises(client.ApiException) as err:  # a name clash is an error, not a wait
            create_namespace(core, name, timeout=1)
        assert err.value.status == 409
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def test_rbac_is_enforced(api_client: client.ApiClient, namespace: str) -> None:
    """An unauthenticated client is refused: authn/authz are real, not an insecure port."""
    cfg = client.Configuration()
    cfg.host = api_client.configuration.host
    cfg.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    cfg.verify_ssl = api_client.configuration.verify_ssl
    with client.ApiClient(cfg) as anon, pytest.raises(client.ApiException) as err:
        client.CoreV1Api(anon).list_namespaced_pod(namespace)
    assert err.value.status in (401, 403)


async def test_livekit_server_rooms(stack_env: Environment) -> None:
    lk = stack_env.livekit
    room_name = "foundation-check"
    async with lkapi.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as api:
        room = await api.room.create_room(lkapi.CreateRoomRequest(name=room_name, empty_timeout=60))
        assert room.name == room_name and room.sid
        rooms = await api.room.list_rooms(lkapi.ListRoomsRequest())
        assert room_name in [r.name for r in rooms.rooms]
        await api.room.delete_room(lkapi.DeleteRoomRequest(room=room_name))

    # A token minted with the wrong secret is refused: the server checks what we mint.
    async with lkapi.LiveKitAPI(lk.http_url, lk.api_key, "not-the-secret-" + "x" * 20) as bad:
        with pytest.raises(lkapi.TwirpError):
            await asyncio.wait_for(bad.room.list_rooms(lkapi.ListRoomsRequest()), 10)
