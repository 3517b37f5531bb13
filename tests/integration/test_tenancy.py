"""A pool author gets a pool and nothing more, tried as a tenant would, on the real apiserver,
the real livekit-server (and a loopback stand-in for a LiveKit the tenant controls):

- a Secret name that leads into another namespace is refused at ``kubectl apply``, the
  operator's own API layer refuses it again, and no value of the other namespace's Secret
  ever reaches the tenant's LiveKit;
- a second team's pool with the same ``agentName`` is never scaled by the first team's rooms,
  and forged, foreign-signed, replayed and stale webhook events are refused and counted;
- a worker whose reports the apiserver refuses is not counted as capacity and the pool names
  it (``PodsNotReporting``), while the worker says why and is not ready;
- ``examples/pool.yaml`` applied as a user would: its worker reports through the
  ServiceAccount the operator gave it, under the chart's RBAC and admission policy.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import kopf
import pytest
import yaml
from aiohttp import web
from kubernetes import client
from livekit import api as lkapi
from voicepool_contract import ANN_KWOK_REPORT, KWOK_REPORT_NONE, ROOM_AGENT_KEY
from voicepool_devstack.ports import free_port
from voicepool_devstack.runner import RUNNER_POD_ANNOTATIONS, PodRunner
from voicepool_devstack.testing import Environment, create_namespace, wait_for
from voicepool_devstack.versions import HELM
from voicepool_operator.kube import Kube

from .operator_harness import (
    REPO,
    Cluster,
    OperatorProcess,
    pool_manifest,
    zero_pool_manifest,
)

# The module's operator serves livekit-server's webhook (tests/integration/conftest.py).
pytestmark = [pytest.mark.cluster, pytest.mark.operator_webhook]

VICTIM_KEY, VICTIM_SECRET = "victim-key", "victim-secret-" + "v" * 32
VICTIM_SIP_PASSWORD = "victim-sip-password"


@pytest.fixture()
def victim(core: client.CoreV1Api) -> Iterator[str]:
    """Another team's namespace, with a LiveKit key and SIP credentials worth stealing."""
    name = create_namespace(core, f"victim-{uuid.uuid4().hex[:6]}")
    for secret, data in (
        ("lk", {"apiKey": VICTIM_KEY, "apiSecret": VICTIM_SECRET}),
        ("sip", {"username": "victim-user", "password": VICTIM_SIP_PASSWORD}),
    ):
        core.create_namespaced_secret(
            name, client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data=data)
        )
    yield name
    core.delete_namespace(name, propagation_policy="Background")


class StandInLiveKit:
    """A loopback HTTP server where a tenant points ``spec.livekit.url``: it answers LiveKit's
    Twirp SIP calls with empty messages and records everything that reaches it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _record(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization", ""),
                "headers": json.dumps(dict(request.headers)),
                "body": body.decode("latin-1"),
            }
        )
        return web.Response(body=b"", content_type="application/protobuf")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> StandInLiveKit:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _issuer(authorization: str) -> str | None:
    token = authorization.removeprefix("Bearer ").strip()
    if not token:
        return None
    claims = jwt.decode(token, options={"verify_signature": False})
    return str(claims.get("iss"))


@pytest.mark.timeout(180)
def test_a_secret_name_that_leaves_the_namespace_never_reaches_another_namespace(
    cluster: Cluster,
    operator: OperatorProcess,
    victim: str,
    stack_env: Environment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attacker_key = f"attacker-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespaced_secret(
        cluster.ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="lk"),
            string_data={"apiKey": attacker_key, "apiSecret": "attacker-secret-" + "a" * 32},
        ),
    )
    with StandInLiveKit() as livekit:

        def livekit_with(secret: str) -> dict[str, Any]:
            return {"url": livekit.url, "credentialsSecretRef": {"name": secret}}

        inbound = {"numbers": ["+15550100000"], "allowedAddresses": ["127.0.0.1/32"]}
        outbound = {"address": "127.0.0.1:5099", "numbers": ["+15550109999"]}
        outbound["allowedDestinations"] = ["+1555"]  # type: ignore[assignment]
        attempts: list[tuple[dict[str, Any], str]] = []
        for name in (
            f"../../{victim}/secrets/lk",
            f"..%2F..%2F{victim}%2Fsecrets%2Flk",
            "%2e%2e",
            "..",
            f"/api/v1/namespaces/{victim}/secrets/lk",
        ):
            attempts.append(({"livekit": livekit_with(name)}, "livekit.credentialsSecretRef.name"))
        sip_path = f"../{victim}/secrets/sip"
        attempts.append(
            (
                {
                    "livekit": livekit_with("lk"),
                    "telephony": {"inbound": {**inbound, "authSecretRef": {"name": sip_path}}},
                },
                "telephony.inbound.authSecretRef.name",
            )
        )
        attempts.append(
            (
                {
                    "livekit": livekit_with("lk"),
                    "telephony": {"outbound": {**outbound, "authSecretRef": {"name": sip_path}}},
                },
                "telephony.outbound.authSecretRef.name",
            )
        )
        for i, (spec, field) in enumerate(attempts):
            with pytest.raises(client.ApiException) as err:
                cluster.create_pool(pool_manifest(f"steal-{i}", **spec))
            assert err.value.status == 422, err.value
            body = str(err.value.body)
            assert field in body and "the pool's own namespace" in body, body

        # Behind the CRD, the operator's own API layer refuses or quotes such a name too.
        monkeypatch.setenv("KUBECONFIG", stack_env.kubeconfig)

        async def read(name: str) -> dict[str, str] | str:
            kube = Kube(
                kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()), "tenancy-test"
            )
            try:
                return await kube.read_secret(cluster.ns, name)
            except ValueError as e:
                return str(e)
            finally:
                await kube.close()

        assert "refusing an API path" in str(asyncio.run(read("..")))
        assert asyncio.run(read(f"../../{victim}/secrets/lk")) == {}  # one quoted segment: 404

        # A pool of the tenant's own, on the tenant's own LiveKit: the operator talks to it
        # (SIP sync every 10 s) with the tenant's own key only.
        cluster.core.create_namespaced_secret(
            cluster.ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="sip"),
                string_data={"username": "tenant", "password": "tenant-password"},
            ),
        )
        cluster.create_pool(
            pool_manifest(
                "own",
                livekit=livekit_with("lk"),
                telephony={
                    "inbound": inbound,
                    "outbound": {**outbound, "authSecretRef": {"name": "sip"}},
                },
            )
        )
        wait_for(lambda: len(livekit.requests) >= 6, timeout=60, what="the operator's SIP sync")
        seen = list(livekit.requests)
    issuers = {_issuer(r["authorization"]) for r in seen}
    assert issuers == {attacker_key}, issuers
    everything = json.dumps(seen)
    for value in (VICTIM_KEY, VICTIM_SECRET, VICTIM_SIP_PASSWORD, "victim-user", victim):
        assert value not in everything, f"{value!r} reached the tenant's LiveKit"
    print(f"\n{len(seen)} request(s) reached the stand-in LiveKit, all signed by {attacker_key}")


def _post(port: int, body: bytes, authorization: str) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/livekit/webhook",
        data=body,
        headers={"Authorization": authorization, "Content-Type": "application/webhook+json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _event(room: str, agent: str, *, created: float | None = None) -> bytes:
    return json.dumps(
        {
            "event": "room_started",
            "room": {"name": room, "metadata": json.dumps({ROOM_AGENT_KEY: agent})},
            "id": f"EV_{uuid.uuid4().hex[:12]}",
            "createdAt": str(int(time.time() if created is None else created)),
        }
    ).encode()


def _signed(body: bytes, key: str, secret: str) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return lkapi.AccessToken(key, secret).with_sha256(digest).to_jwt()


def _metric(text: str, outcome: str) -> float:
    needle = f'voicepool_webhook_events_total{{outcome="{outcome}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.timeout(180)
def test_a_second_teams_pool_with_the_same_agent_name_is_not_scaled(
    api_client: client.ApiClient,
    cluster: Cluster,
    core: client.CoreV1Api,
    operator: OperatorProcess,
    stack_env: Environment,
) -> None:
    lk = stack_env.livekit
    if not lk.webhook_port:
        pytest.skip("this LiveKit server posts no webhooks to the operator")
    agent = f"shared-{uuid.uuid4().hex[:6]}"
    # Team A: its pool's Secret holds the key the local livekit-server signs webhooks with.
    cluster.livekit_secret(lk)
    cluster.create_pool(zero_pool_manifest("zero", agent))
    # Team B: the same agentName, its own LiveKit key.
    team_b = Cluster(api_client, create_namespace(core, f"team-b-{uuid.uuid4().hex[:6]}"))
    b_key, b_secret = "team-b-key", "team-b-secret-" + "b" * 32
    team_b.livekit_secret(dataclasses.replace(lk, api_key=b_key, api_secret=b_secret))
    team_b.create_pool(zero_pool_manifest("zero", agent))
    try:
        for c in (cluster, team_b):
            wait_for(
                lambda c=c: c.pool("zero").get("status", {}).get("desiredReplicas") == 0,
                timeout=30,
                what="an empty pool",
            )
        before = operator.metrics()

        # A's caller waits in a room of the real livekit-server: only A's pool scales.
        room = f"call-{uuid.uuid4().hex[:6]}"

        async def rooms(create: bool) -> None:
            async with lkapi.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as api:
                if create:
                    meta = json.dumps({ROOM_AGENT_KEY: agent})
                    await api.room.create_room(lkapi.CreateRoomRequest(name=room, metadata=meta))
                else:
                    await api.room.delete_room(lkapi.DeleteRoomRequest(room=room))

        asyncio.run(rooms(create=True))
        try:
            wait_for(lambda: cluster.pods("zero"), timeout=30, what="a pod for A's caller")
            wait_for(
                lambda: _metric(operator.metrics(), "untrusted") > _metric(before, "untrusted"),
                timeout=10,
                what="B's pool counted as not trusting A's key",
            )
            assert team_b.pods("zero") == []
            assert not team_b.pool("zero").get("status", {}).get("waitingCalls")
        finally:
            asyncio.run(rooms(create=False))

        port = lk.webhook_port
        other_room = f"call-{uuid.uuid4().hex[:6]}"
        body = _event(other_room, agent)
        assert _post(port, body, "") == 401  # unsigned
        assert _post(port, body, _signed(body, "nobody", "s" * 40)) == 401  # unknown key
        assert _post(port, body, _signed(body, lk.api_key, "wrong-" * 8)) == 401  # forged
        stale = _event(other_room, agent, created=time.time() - 3600)
        assert _post(port, stale, _signed(stale, lk.api_key, lk.api_secret)) == 400
        assert cluster.pool("zero").get("status", {}).get("waitingCalls", 0) <= 1

        # Signed with B's own key (B's LiveKit): it scales B, and never A.
        b_body = _event(other_room, agent)
        assert _post(port, b_body, _signed(b_body, b_key, b_secret)) == 200
        assert _post(port, b_body, _signed(b_body, b_key, b_secret)) == 200  # a replay
        wait_for(lambda: team_b.pods("zero"), timeout=30, what="a pod for B's own caller")
        annotations = cluster.pool("zero")["metadata"].get("annotations") or {}
        assert not [k for k in annotations if other_room in str(annotations[k])]
        after = operator.metrics()
        for outcome in ("unsigned", "unknown_key", "bad_signature", "stale", "duplicate"):
            assert _metric(after, outcome) > _metric(before, outcome), outcome
    finally:
        core.delete_namespace(team_b.ns, propagation_policy="Background")


def _helm(env: Environment, *args: str) -> None:
    proc = subprocess.run(
        [str(HELM.path("helm")), *args, "--kubeconfig", env.kubeconfig],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{proc.stderr}"


@pytest.fixture()
def chart_workers(stack_env: Environment, core: client.CoreV1Api) -> Iterator[str]:
    """A namespace whose worker ServiceAccount, Role and admission policy come from the chart
    (its operator Deployment scaled to zero: the tests run the operator as a process)."""
    ns = create_namespace(core, f"example-{uuid.uuid4().hex[:6]}", worker_service_account=False)
    release = f"tenancy-voicepool-{uuid.uuid4().hex[:4]}"
    _helm(stack_env, "install", release, str(REPO / "charts" / "voicepool"), "-n", ns,
          "--set", "operator.replicas=0", "--set", f"peering.name={release}",
          "--set", "dashboard.enabled=false", "--wait=false")  # fmt: skip
    try:
        yield ns
    finally:
        _helm(stack_env, "uninstall", release, "-n", ns)
        core.delete_namespace(ns, propagation_policy="Background")


def _runner(api_client: client.ApiClient, ns: str, env: Environment, tmp: Path) -> PodRunner:
    return PodRunner(
        api_client,
        ns,
        env.kubeconfig,
        tmp,
        on_event=lambda line: print(f"[runner] {line}"),
        as_service_account=True,
    )


def _worker_metric(port: int, name: str) -> float | None:
    """A sum over the worker's /metrics lines that start with ``name``; None until it serves
    them (503 before livekit-agents started)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.timeout(300)
def test_the_example_pool_reports_through_the_service_account_the_operator_gave_it(
    api_client: client.ApiClient,
    operator: OperatorProcess,
    chart_workers: str,
    stack_env: Environment,
    tmp_path: Path,
) -> None:
    ns = chart_workers
    c = Cluster(api_client, ns)
    manifest = yaml.safe_load((REPO / "examples" / "pool.yaml").read_text())
    manifest["spec"]["livekit"]["url"] = stack_env.livekit.url
    # One warm worker process on a 2-core machine, whatever the Berlin office hours.
    manifest["spec"]["warmPool"] = {"idlePods": 1}
    # kwok plays the container, the real worker process its reports (PodRunner)
    manifest["spec"]["template"]["annotations"] = RUNNER_POD_ANNOTATIONS
    assert "serviceAccountName" not in manifest["spec"]["template"]
    c.livekit_secret(stack_env.livekit, name="livekit-credentials")
    runner = _runner(api_client, ns, stack_env, tmp_path)
    runner.start()
    try:
        c.create_pool(manifest)
        pod = wait_for(
            lambda: (p := c.pods("receptionist")) and p[0], timeout=60, what="the warm pod"
        )
        assert pod.spec.service_account_name == "voicepool-worker"

        def worker() -> Any:
            return runner.workers.get(pod.metadata.name)

        w = wait_for(worker, timeout=60, what="the worker process")

        def reported() -> bool:
            ok = _worker_metric(w.http_port, 'voicepool_worker_pod_patches_total{result="ok"}')
            return ok is not None and ok >= 2

        wait_for(reported, timeout=120, interval=1.0, what="the worker's own reports accepted")
        assert (
            _worker_metric(w.http_port, 'voicepool_worker_pod_patches_total{result="refused"}') == 0
        )
        log = w.log_path.read_text(errors="replace")
        assert "pod annotations reported" in log and "pod reports refused" not in log
        ann = c.annotations(pod.metadata.name)
        assert ann.get("voicepool.dev/state") == "idle", ann
        status = wait_for(
            lambda: (s := c.pool("receptionist").get("status", {})).get("idlePods") == 1 and s,
            timeout=30,
            what="the pool to count its warm pod",
        )
        assert status.get("unreportedPods", 0) == 0
        c.delete_pool("receptionist")
        wait_for(
            lambda: not c.pool_exists("receptionist"), timeout=90, what="the pool drained away"
        )
    finally:
        runner.stop()


@pytest.mark.timeout(300)
def test_a_worker_whose_reports_are_refused_is_not_capacity_and_the_pool_says_why(
    api_client: client.ApiClient,
    cluster: Cluster,
    operator: OperatorProcess,
    stack_env: Environment,
    tmp_path: Path,
) -> None:
    """The namespace has the worker ServiceAccount but no Role for it: every report is 403."""
    cluster.livekit_secret(stack_env.livekit)  # "lk", which the pool names
    runner = _runner(api_client, cluster.ns, stack_env, tmp_path)
    runner.start()
    try:
        cluster.create_pool(
            pool_manifest(
                "silent",
                livekit={"url": stack_env.livekit.url, "credentialsSecretRef": {"name": "lk"}},
                sessionsPerPod=1,
                warmPool={"idleSessions": 0},
                maxReplicas=1,
                unreadyGraceSeconds=5,
                # kwok plays no worker here: the only reporter is the real one, refused
                template={
                    "image": "example.invalid/voicepool-worker:test",
                    "resources": {"cpu": 1, "memory": "512Mi"},
                    "annotations": {ANN_KWOK_REPORT: KWOK_REPORT_NONE},
                },
            )
        )
        pod = wait_for(
            lambda: (p := cluster.ready_pods("silent")) and p[0], timeout=60, what="a pod"
        )
        w = wait_for(lambda: runner.workers.get(pod.metadata.name), timeout=60, what="the worker")

        def refused_line() -> bool:
            return "pod reports refused" in w.log_path.read_text(errors="replace")

        wait_for(refused_line, timeout=120, interval=1.0, what="the worker's refusal line")

        def not_ready() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{w.http_port}/readyz", timeout=3)
                return False
            except urllib.error.HTTPError as e:
                return e.code == 503 and "pod reports refused" in e.read().decode()
            except OSError:
                return False

        wait_for(not_ready, timeout=30, what="/readyz 503 naming the refusal")
        refused = 'voicepool_worker_pod_patches_total{result="refused"}'
        wait_for(
            lambda: (_worker_metric(w.http_port, refused) or 0) >= 1,
            timeout=60,
            what="the refusal counted on /metrics",
        )

        def degraded() -> dict[str, Any] | None:
            status = cluster.pool("silent").get("status", {})
            for cond in status.get("conditions", []):
                if cond["type"] == "Degraded" and cond["reason"] == "PodsNotReporting":
                    return dict(status)
            return None

        status = wait_for(degraded, timeout=60, what="Degraded PodsNotReporting")
        message = next(c["message"] for c in status["conditions"] if c["type"] == "Degraded")
        assert pod.metadata.name in message
        assert status["unreportedPods"] == 1 and status["idlePods"] == 0
        assert status["idleCapacity"] == 0
    finally:
        runner.stop()
