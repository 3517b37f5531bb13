"""spec.telephony against the real apiserver and the real LiveKit SIP API (redis + livekit-sip).

The operator process reconciles a pool's numbers into LiveKit trunks and a dispatch rule; the
test reads LiveKit's own lists, deletes a trunk by hand, claims a number twice, points a pool at
a dead LiveKit, and deletes pools -- and checks status, conditions, Events and LiveKit itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from typing import Any

import pytest
from livekit import api
from livekit.protocol import sip as lksip
from voicepool_devstack.ports import free_port
from voicepool_devstack.testing import Environment, wait_for
from voicepool_devstack.versions import KUBERNETES

from .operator_harness import Cluster, OperatorProcess, pool_manifest

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.livekit,
    pytest.mark.sip,
    pytest.mark.usefixtures("livekit_secret"),  # the pools' credentialsSecretRef "lk"
]


def sip_pool(env: Environment, name: str, numbers: list[str], url: str | None = None) -> Any:
    return pool_manifest(
        name,
        agentName=f"agent-{name}",
        livekit={"url": url or env.livekit.url, "credentialsSecretRef": {"name": "lk"}},
        telephony={"inbound": {"numbers": numbers, "allowedAddresses": ["127.0.0.1/32"]}},
    )


def livekit_sip(env: Environment) -> tuple[list[Any], list[Any]]:
    """(inbound trunks, dispatch rules) as LiveKit lists them."""

    async def read() -> tuple[list[Any], list[Any]]:
        lk = env.livekit
        async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as lkapi:
            ins = await lkapi.sip.list_inbound_trunk(lksip.ListSIPInboundTrunkRequest())
            rules = await lkapi.sip.list_dispatch_rule(lksip.ListSIPDispatchRuleRequest())
            return list(ins.items), list(rules.items)

    return asyncio.run(read())


def delete_trunk(env: Environment, trunk_id: str) -> None:
    async def go() -> None:
        lk = env.livekit
        async with api.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as lkapi:
            await lkapi.sip.delete_trunk(lksip.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))

    asyncio.run(go())


def telephony(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.pool(name).get("status", {}).get("telephony") or {})


def degraded(cluster: Cluster, name: str) -> dict[str, Any]:
    for c in cluster.pool(name).get("status", {}).get("conditions", []):
        if c["type"] == "Degraded":
            return dict(c)
    return {}


def number() -> str:
    return f"+1555{uuid.uuid4().int % 10**7:07d}"


def test_pool_numbers_become_a_trunk_and_rule_that_heal_and_go_with_the_pool(
    operator: OperatorProcess, cluster: Cluster, stack_env: Environment
) -> None:
    to = number()
    cluster.create_pool(sip_pool(stack_env, "desk", [to]))
    status = wait_for(
        lambda: (t := telephony(cluster, "desk")).get("dispatchRuleId") and t,
        timeout=60,
        what="status.telephony with trunk and rule ids",
    )
    trunks, rules = livekit_sip(stack_env)
    (trunk,) = [t for t in trunks if t.sip_trunk_id == status["inboundTrunkId"]]
    assert list(trunk.numbers) == [to] and list(trunk.allowed_addresses) == ["127.0.0.1/32"]
    (rule,) = [r for r in rules if r.sip_dispatch_rule_id == status["dispatchRuleId"]]
    assert list(rule.trunk_ids) == [trunk.sip_trunk_id]
    assert rule.room_config.agents[0].agent_name == "agent-desk"
    assert rule.rule.dispatch_rule_individual.room_prefix == "call-"
    assert status["numbers"] == [to] and not status.get("problem")
    assert degraded(cluster, "desk").get("status") == "False"

    wide = subprocess.run(
        [str(KUBERNETES.path("kubectl")), "get", "vap", "desk", "-n", cluster.ns, "-o", "wide"],
        env={**os.environ, "KUBECONFIG": stack_env.kubeconfig},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "NUMBERS" in wide and to in wide, wide
    assert cluster.events("SipObjectCreated"), "every change is an Event"

    # drift: the trunk deleted by hand comes back (new id), and the rule follows it
    delete_trunk(stack_env, status["inboundTrunkId"])
    healed = wait_for(
        lambda: (
            (t := telephony(cluster, "desk")).get("inboundTrunkId")
            not in (
                None,
                status["inboundTrunkId"],
            )
            and t
        ),
        timeout=40,
        what="a new inbound trunk after the old one was deleted by hand",
    )
    trunks, rules = livekit_sip(stack_env)
    (rule,) = [r for r in rules if r.sip_dispatch_rule_id == healed["dispatchRuleId"]]
    assert list(rule.trunk_ids) == [healed["inboundTrunkId"]]

    cluster.delete_pool("desk")
    wait_for(lambda: not cluster.pool_exists("desk"), timeout=90, what="pool deleted")
    trunks, rules = livekit_sip(stack_env)
    assert healed["inboundTrunkId"] not in {t.sip_trunk_id for t in trunks}
    assert healed["dispatchRuleId"] not in {r.sip_dispatch_rule_id for r in rules}


def test_a_number_claimed_twice_or_a_dead_livekit_degrade_only_telephony(
    operator: OperatorProcess, cluster: Cluster, stack_env: Environment
) -> None:
    taken, free = number(), number()
    cluster.create_pool(sip_pool(stack_env, "first", [taken]))
    wait_for(
        lambda: telephony(cluster, "first").get("inboundTrunkId"), timeout=60, what="first trunk"
    )
    cluster.create_pool(sip_pool(stack_env, "second", [taken, free]))
    cond = wait_for(
        lambda: (c := degraded(cluster, "second")).get("status") == "True" and c,
        timeout=60,
        what="Degraded on the pool whose number is taken",
    )
    assert cond["reason"] == "NumberClaimed" and taken in cond["message"], cond
    assert f"{cluster.ns}/first" in cond["message"], cond
    assert telephony(cluster, "second")["numbers"] == [free]  # the rest still answers
    wait_for(lambda: cluster.ready_pods("second"), timeout=60, what="the degraded pool's pods")

    dead = f"ws://127.0.0.1:{free_port()}"
    cluster.create_pool(sip_pool(stack_env, "lost", [number()], url=dead))
    cond = wait_for(
        lambda: (c := degraded(cluster, "lost")).get("status") == "True" and c,
        timeout=60,
        what="Degraded when LiveKit is unreachable",
    )
    assert cond["reason"] == "LiveKitUnreachable" and dead.replace("ws", "") in cond["message"]
    wait_for(
        lambda: cluster.ready_pods("lost"), timeout=60, what="pods of a pool whose LiveKit is away"
    )
    lk = stack_env.livekit
    for ev in cluster.events():
        assert lk.api_secret not in str(ev), "no secret in Events"
    assert lk.api_secret not in str(cluster.pool("lost").get("status"))
    for name in ("first", "second", "lost"):
        cluster.delete_pool(name)
