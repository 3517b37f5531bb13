"""The demo's Prometheus discovery for real-node workers (pure: pods in, targets out)."""

from __future__ import annotations

import pytest
from kubernetes import client
from voicepool_devstack import node as node_mod
from voicepool_devstack.demo_node import worker_targets


def _pod(
    name: str,
    port: int,
    *,
    phase: str | None = "Running",
    node: str = node_mod.NODE_NAME,
    host_network: bool = True,
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace="demo",
            labels={"voicepool.dev/pool": "receptionist", "app.kubernetes.io/managed-by": "x"},
        ),
        spec=client.V1PodSpec(
            node_name=node,
            host_network=host_network,
            containers=[
                client.V1Container(
                    name="worker",
                    ports=[client.V1ContainerPort(name="http", container_port=port)],
                )
            ],
        ),
        status=client.V1PodStatus(phase=phase),
    )


def test_running_hostnetwork_workers_are_scraped_on_loopback_at_their_port() -> None:
    targets = worker_targets([_pod("a", 8081), _pod("b", 8082)])
    assert sorted(targets) == ["a", "b"]
    (address, labels), *_ = targets["b"]
    assert address == "127.0.0.1:8082"
    assert labels["__meta_kubernetes_pod_name"] == "b"
    assert labels["__meta_kubernetes_namespace"] == "demo"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "http"
    assert labels["__meta_kubernetes_pod_label_voicepool_dev_pool"] == "receptionist"


def test_pods_not_started_by_the_node_have_no_target() -> None:
    pods = [
        _pod("pending", 8081, phase="Pending"),
        _pod("no-status", 8082, phase=None),
        _pod("kwok", 8083, node="kwok-node-0"),
        _pod("pod-network", 8084, host_network=False),
    ]
    assert worker_targets(pods) == {}


def test_a_crashed_worker_keeps_its_target_until_the_pod_goes() -> None:
    (address, labels), *_ = worker_targets([_pod("dead", 8081, phase="Failed")])["dead"]
    assert address == "127.0.0.1:8081"
    assert labels["__meta_kubernetes_pod_phase"] == "Failed"


async def test_the_demo_phone_waits_out_gaps_inside_one_answer() -> None:
    """A TTS behind real time pauses mid-answer: the caller must not talk into the pause."""
    import asyncio

    from voicepool_devstack.demo_phone import agent_quiet
    from voicepool_devstack.phone import Phone, PhoneConfig

    p = Phone(PhoneConfig(server="127.0.0.1:5060", to="+1"))
    p.events = [{"ev": "voice_start", "t": 0}, {"ev": "voice_end", "t": 100}]

    async def more_speech() -> None:
        for t, ev in ((200, "voice_start"), (300, "voice_end")):
            await asyncio.sleep(0.2)
            async with p._changed:
                p.events.append({"ev": ev, "t": t})
                p._changed.notify_all()

    task = asyncio.create_task(more_speech())
    await agent_quiet(p, gap_s=0.5, within=10)
    assert p.events[-1] == {"ev": "voice_end", "t": 300}, "returned inside the answer's gap"
    await task


async def test_the_demo_names_an_agent_that_never_joined_and_hangs_its_calls_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A starved worker: a clear error (not a traceback), and no call left to the event loop."""
    from types import SimpleNamespace

    from voicepool_devstack import demo
    from voicepool_devstack.errors import DevstackError
    from voicepool_worker import caller

    hung_up: list[str] = []

    async def never_joins(self: caller.Call, *, join_within: float = 30.0) -> None:
        raise TimeoutError

    async def hangup(self: caller.Call) -> None:
        hung_up.append(self.room_name)

    monkeypatch.setattr(caller.Call, "start", never_joins)
    monkeypatch.setattr(caller.Call, "hangup", hangup)
    monkeypatch.setattr(demo, "say", lambda msg: None)
    fake = SimpleNamespace(
        lk=SimpleNamespace(url="ws://127.0.0.1:1", api_key="k", api_secret="s" * 32),
        idle_registered=lambda: ["warm"],
        warm_in_status=lambda: True,
        show=lambda: None,
    )
    with pytest.raises(DevstackError, match=r"no agent joined call-1 within 120s"):
        await demo._scenario(fake)  # type: ignore[arg-type]
    assert hung_up == ["call-1"]
