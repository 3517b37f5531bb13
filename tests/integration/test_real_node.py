"""Real pods on the real node: the project's images as real containers under a real kubelet.

One stack with ``node=True`` for the whole module: containerd + kubelet (static CPU manager)
beside a kwok node, the chart's operator Deployment running from the operator image, and
worker pods from the worker image joined to the stack's livekit-server. Skipped, with the
reason, only where the node cannot run (not root, no cgroups, another node on the machine).
The module's last test stops the stack and checks the machine is as it was before.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from voicepool_devstack import demo_node
from voicepool_devstack import node as node_mod
from voicepool_devstack.errors import DevstackError
from voicepool_devstack.stack import LocalStack, StackConfig
from voicepool_devstack.testing import create_namespace, wait_for
from voicepool_devstack.versions import HELM

from . import loopback
from .operator_harness import REPO, Cluster, install_crds, pool_manifest

_REASON = node_mod.unsupported_reason()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.livekit,
    pytest.mark.skipif(_REASON is not None, reason=f"real node unavailable: {_REASON}"),
]

RELEASE, RELEASE_NS = "voicepool", "voicepool-system"
PEERING = "voicepool-real-node"


# -- the machine before and after ------------------------------------------------------------


def host_snapshot() -> dict[str, Any]:
    """What the real node may touch on the host; `down` must put all of it back."""
    mounts = sorted(
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    procs = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                exe = (p / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith((b"kubelet", b"containerd", b"containerd-shim-runc-v2")):
                procs.add(int(p.name))
    return {
        "sysctls": {n: node_mod._sysctl(n) for n in node_mod.SYSCTLS},
        "mounts": mounts,
        # every top-level cgroup in every hierarchy (the node's own root and anything else)
        "cgroups": sorted(
            str(d) for m in node_mod._cgroup_mounts() for d in m.iterdir() if d.is_dir()
        ),
        "host_dirs": {d: Path(d).exists() for d in node_mod.HOST_DIRS},
        "lock": node_mod.LOCK.exists(),
        "node_processes": sorted(procs),
    }


@pytest.fixture(scope="module")
def real() -> Iterator[dict[str, Any]]:
    before = host_snapshot()
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-node-"))
    stack = LocalStack(StackConfig(workdir=workdir, nodes=1, node=True))
    try:
        state = stack.start()
    except DevstackError as e:
        stack.stop()
        pytest.fail(f"the real node did not come up: {e}")
    assert state.kubeconfig and state.livekit and state.node
    cfg = client.Configuration()
    config.load_kube_config(config_file=state.kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    install_crds(api)
    ctx: dict[str, Any] = {"stack": stack, "state": state, "api": api, "before": before}
    try:
        yield ctx
    finally:
        api.close()
        stack.stop()


_apiserver_env = demo_node.apiserver_env


def _helm(kubeconfig: str, *args: str) -> str:
    import subprocess

    proc = subprocess.run(
        [str(HELM.path("helm")), *args, "--kubeconfig", kubeconfig],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def ns(real: dict[str, Any]) -> str:
    core = client.CoreV1Api(real["api"])
    # The chart creates the worker ServiceAccount here (worker.namespaces).
    name = create_namespace(core, f"rn-{uuid.uuid4().hex[:6]}", worker_service_account=False)
    lk = real["state"].livekit
    core.create_namespaced_secret(
        name,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="lk"),
            string_data={"api-key": lk.api_key, "api-secret": lk.api_secret},
        ),
    )
    return name


@pytest.fixture(scope="module")
def chart_operator(real: dict[str, Any], ns: str) -> Iterator[client.V1Pod]:
    """The chart installed with the locally built operator image, one replica on the node."""
    state = real["state"]
    values = demo_node.chart_values(state, [ns], PEERING)
    vfile = Path(state.workdir) / "chart-values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    kube = state.kubeconfig
    _helm(kube, "install", RELEASE, str(REPO / "charts" / "voicepool"), "-n", RELEASE_NS,
          "--create-namespace", "--wait=false", "-f", str(vfile))  # fmt: skip
    core = client.CoreV1Api(real["api"])

    def running() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(
            RELEASE_NS, label_selector="app.kubernetes.io/component=operator"
        ).items
        for p in pods:
            if p.status.phase == "Running" and all(
                c.ready for c in p.status.container_statuses or []
            ):
                return p
        return None

    try:
        pod = wait_for(running, timeout=90, interval=0.5, what="the chart's operator pod Running")
    except TimeoutError:
        pytest.fail("operator pod not running:\n" + _describe(core, RELEASE_NS))
    yield pod
    if Path(kube).exists():  # the last test stops the whole stack itself
        _helm(kube, "uninstall", RELEASE, "-n", RELEASE_NS)


def _describe(core: client.CoreV1Api, namespace: str) -> str:
    out = []
    for p in core.list_namespaced_pod(namespace).items:
        statuses = [
            (c.name, c.state.to_dict() if c.state else None)
            for c in p.status.container_statuses or []
        ]
        out.append(f"{p.metadata.name} {p.status.phase} node={p.spec.node_name} {statuses}")
    return "\n".join(out) or "(no pods)"


def _exec(real: dict[str, Any], ns: str, pod: str, *cmd: str) -> str:
    from kubernetes.stream import stream

    core = client.CoreV1Api(real["api"])
    return str(
        stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            ns,
            command=list(cmd),
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
        )
    )


def _cpus_allowed(real: dict[str, Any], ns: str, pod: str) -> str:
    status = _exec(real, ns, pod, "cat", "/proc/1/status")
    line = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
    return line.split(":", 1)[1].strip()


def _worker_env(real: dict[str, Any]) -> list[dict[str, str]]:
    """Where the apiserver is, and transcripts in the log so a failure shows what was heard."""
    return [
        *_apiserver_env(real["state"]),
        {"name": "VOICEPOOL_LOG_TRANSCRIPTS", "value": "true"},
    ]


def worker_pool(real: dict[str, Any], name: str, **spec: Any) -> dict[str, Any]:
    state = real["state"]
    template = {
        "image": state.node["images"]["worker"],
        "imagePullPolicy": "Never",
        "hostNetwork": True,
        "resources": {"cpu": 1, "memory": "2Gi"},
        "env": _worker_env(real),
        **node_mod.placement(),
        **spec.pop("template", {}),
    }
    lk_url = state.livekit.url
    return pool_manifest(
        name,
        livekit={
            "url": lk_url,
            "credentialsSecretRef": {
                "name": "lk",
                "apiKeyKey": "api-key",
                "apiSecretKey": "api-secret",
            },
        },
        template=template,
        **spec,
    )


def _ready_condition(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


# -- tests -----------------------------------------------------------------------------------


def test_node_is_ready_beside_kwok(real: dict[str, Any]) -> None:
    core = client.CoreV1Api(real["api"])
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert "kwok-node-0" in nodes and node_mod.NODE_NAME in nodes
    node = nodes[node_mod.NODE_NAME]
    assert node.status.node_info.kubelet_version == "v1.34.4"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    # 100m kube-reserved: CPU 0 stays shared, the rest may be exclusive.
    assert node.status.allocatable["cpu"] == f"{int(node.status.capacity['cpu']) * 1000 - 100}m"


def test_chart_operator_runs_as_a_real_container_with_peering(
    real: dict[str, Any], chart_operator: client.V1Pod
) -> None:
    pod = chart_operator
    assert pod.spec.node_name == node_mod.NODE_NAME
    assert pod.status.container_statuses[0].container_id.startswith("containerd://")
    # kopf peering: the replica announces itself in the ClusterKopfPeering's status
    custom = client.CustomObjectsApi(real["api"])

    def peers() -> dict[str, Any] | None:
        obj = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", PEERING)
        return obj.get("status") or None

    assert wait_for(peers, timeout=60, what="a kopf peer in the peering object")
    logs = client.CoreV1Api(real["api"]).read_namespaced_pod_log(pod.metadata.name, RELEASE_NS)
    assert logs.strip(), "kubectl logs through the kubelet works"


def test_the_node_and_its_pods_are_reached_on_loopback(
    real: dict[str, Any], chart_operator: client.V1Pod
) -> None:
    """The node's address is 127.0.0.1, so a hostNetwork pod's IP is too and the kubelet probes
    it there; no socket of the stack, the node or its pods reaches off loopback."""
    core = client.CoreV1Api(real["api"])
    node = core.read_node(node_mod.NODE_NAME)
    assert {a.type: a.address for a in node.status.addresses} == {
        "InternalIP": "127.0.0.1",
        "Hostname": node_mod.NODE_NAME,
    }
    assert not [t for t in node.spec.taints or [] if t.key == node_mod.UNINITIALIZED_TAINT]
    pod = core.read_namespaced_pod(chart_operator.metadata.name, RELEASE_NS)
    assert (pod.status.pod_ip, pod.status.host_ip) == ("127.0.0.1", "127.0.0.1")
    probed = [c for c in pod.spec.containers if c.liveness_probe or c.readiness_probe]
    assert probed and _ready_condition(pod), "a probed container, Ready: probed on 127.0.0.1"
    stack = real["state"]
    verdict = loopback.check(stack.pids.values(), node_mod.pod_processes())
    print("\n" + verdict.report())
    assert verdict.sockets_of("kubelet") and verdict.sockets_of("voicepool-operator|kopf|python")
    assert not verdict.failures, "sockets off loopback:\n" + verdict.report()


def test_pinned_worker_gets_one_exclusive_cpu_and_ready_waits_for_livekit(
    real: dict[str, Any], ns: str, chart_operator: client.V1Pod
) -> None:
    cluster = Cluster(real["api"], ns)
    name = "pinned"
    cluster.create_pool(
        worker_pool(
            real,
            name,
            cpuPinning={"enabled": True},
            sessionsPerPod=1,
            minReplicas=1,
            maxReplicas=1,
            warmPool={"idleSessions": 0},
        )
    )
    samples: list[tuple[float, str, bool, int]] = []  # (t, phase, pod Ready, pool readyPods)
    deadline = time.monotonic() + 180
    pod = None
    while time.monotonic() < deadline:
        pods = cluster.pods(name)
        status = cluster.pool(name).get("status") or {}
        if pods:
            pod = pods[0]
            samples.append(
                (
                    time.monotonic(),
                    pod.status.phase,
                    _ready_condition(pod),
                    status.get("readyPods", 0),
                )
            )
            if samples[-1][2] and samples[-1][3] >= 1:
                break
        time.sleep(0.25)
    assert pod is not None and samples and samples[-1][2], (
        f"worker never Ready: {samples[-3:]}\n{_describe(cluster.core, ns)}"
    )
    # Readiness gated: the container ran for a while before it was Ready, and the pool never
    # counted a pod that was not Ready.
    running_not_ready = [s for s in samples if s[1] == "Running" and not s[2]]
    assert running_not_ready, "the probe never held the pod back (kwok-style instant Ready?)"
    assert not [s for s in samples if s[3] > 0 and not s[2]], "pool counted an unready pod"
    logs = cluster.core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert "registered with LiveKit" in logs

    assert pod.status.qos_class == "Guaranteed"
    pinned = _cpus_allowed(real, ns, pod.metadata.name)
    shared = _cpus_allowed(real, RELEASE_NS, chart_operator.metadata.name)
    assert pinned.isdigit(), f"one exclusive CPU, got {pinned!r}"
    assert pinned not in _expand(shared), f"pinned CPU {pinned} also in shared pool {shared}"
    print(f"\npinned worker Cpus_allowed_list={pinned}; operator (shared pool)={shared}")
    # the image carries the receptionist's phrases rendered at its build (seed_phrases): the
    # pod read them instead of rendering them before it registered
    shipped = _exec(real, ns, pod.metadata.name, "ls", "/venv/share/voicepool/tts").split()
    assert len([f for f in shipped if f.endswith(".pcm")]) >= 10, shipped
    cluster.delete_pool(name)
    _wait_pods_gone(cluster, name, 120)


def _wait_pods_gone(cluster: Cluster, pool: str, within: float) -> None:
    """Wait for a deleted pool's pods to go; if one stays, say what it was doing (phase,
    how long since its deletion, its containers' states and its worker's last log lines)."""
    try:
        wait_for(
            lambda: not cluster.pods(pool, include_terminating=True),
            timeout=within,
            what=f"pool {pool}'s pods gone",
        )
    except TimeoutError as e:
        lines = [str(e)]
        for pod in cluster.pods(pool, include_terminating=True):
            meta, status = pod.metadata, pod.status
            since = meta.deletion_timestamp
            age = f"{time.time() - since.timestamp():.0f}s ago" if since else "not deleted"
            states = [
                f"{c.name}: {next(k for k, v in c.state.to_dict().items() if v)}"
                for c in status.container_statuses or []
            ]
            lines.append(f"{meta.name}: {status.phase}, deleted {age}, containers {states}")
            try:
                log = cluster.core.read_namespaced_pod_log(meta.name, cluster.ns, tail_lines=15)
            except client.ApiException as err:
                log = f"(no log: {err.reason})"
            lines.append("  " + "\n  ".join(str(log).splitlines()))
        raise AssertionError("\n".join(lines)) from None


def _expand(cpus: str) -> set[str]:
    out: set[str] = set()
    for part in cpus.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out |= {str(i) for i in range(int(lo), int(hi) + 1)}
        elif part:
            out.add(part)
    return out


def _log_tail(cluster: Cluster, pod: str, lines: int = 40) -> str:
    """The worker's last log lines (no VAD load warnings), for a failure message."""
    try:
        text = cluster.core.read_namespaced_pod_log(pod, cluster.ns, tail_lines=lines * 4)
    except client.ApiException as e:
        return f"(no log of {pod}: {e.status})"
    kept = [line[:400] for line in text.splitlines() if "slower than realtime" not in line]
    return "\n".join(kept[-lines:])


def _pod_sessions(cluster: Cluster, pod: str) -> str | None:
    try:
        return cluster.annotations(pod).get("voicepool.dev/sessions")
    except client.ApiException:
        return None


def _core_events(core: client.CoreV1Api, ns: str, pod: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(ns).items
        if e.involved_object.kind == "Pod" and e.involved_object.name == pod
    ]


async def _poll(probe: Any, within: float, what: str) -> Any:
    return await asyncio.to_thread(wait_for, probe, timeout=within, interval=0.3, what=what)


@pytest.mark.timeout(420)
async def test_rolling_update_drains_the_busy_pod_until_the_caller_hangs_up(
    real: dict[str, Any], ns: str, chart_operator: client.V1Pod
) -> None:
    from voicepool_worker.caller import Call, CallerConfig

    cluster = Cluster(real["api"], ns)
    name, agent = "talk", f"talk-{uuid.uuid4().hex[:6]}"
    stop = threading.Event()  # ends the status sampler below
    cluster.create_pool(
        worker_pool(
            real,
            name,
            agentName=agent,
            cpuPinning={"enabled": False},
            template={"resources": {"cpu": "500m", "memory": "2Gi"}},
            sessionsPerPod=1,
            minReplicas=1,
            maxReplicas=2,
            warmPool={"idleSessions": 0},
            drain={"timeoutSeconds": 120},
        )
    )
    first = await _poll(lambda: cluster.ready_pods(name), 180, "the first worker Ready")
    old = first[0].metadata.name
    lk = real["state"].livekit
    call = Call(CallerConfig(lk.url, lk.api_key, lk.api_secret, agent), "rollout-call")
    await call.start(join_within=60)
    try:
        assert await call.wait_greeting(30), "the worker in the container never greeted"
        await _poll(lambda: _pod_sessions(cluster, old) == "1", 30, "the pod to report the call")

        # Status is coalesced (written after a second of quiet): let it show the Ready pod
        # before the rollout starts, so the samples below judge the rollout alone.
        await _poll(
            lambda: int((cluster.pool(name).get("status") or {}).get("readyPods") or 0) >= 1,
            30,
            "the pool's status to count its Ready pod",
        )
        ready_counts: list[int] = []

        def sample() -> None:
            while not stop.is_set():
                status = cluster.pool(name).get("status") or {}
                ready_counts.append(int(status.get("readyPods") or 0))
                stop.wait(0.3)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        env = [*_worker_env(real), {"name": "VOICEPOOL_REVISION", "value": "2"}]
        cluster.patch_pool_spec(name, {"template": {"env": env}})
        await _poll(
            lambda: cluster.annotations(old).get("voicepool.dev/drain") == "true",
            180,
            "the busy old pod marked draining once its replacement is Ready",
        )
        assert any(p.metadata.name != old for p in cluster.ready_pods(name))
        await asyncio.sleep(3)
        pod = cluster.core.read_namespaced_pod(old, ns)
        assert pod.metadata.deletion_timestamp is None, "a busy pod was deleted mid-call"
        # The claim is that it answers at all (latency is bench/'s): 40 s, as below.
        turn = await call.say("what are your opening hours", answer_timeout=40)
        assert turn.ttfw_ms is not None, (
            f"the draining pod stopped answering its caller:\n{_log_tail(cluster, old)}"
        )
    except BaseException:
        stop.set()  # the sampler would outlive a failed test
        raise
    finally:
        await call.hangup()

    exits: list[int] = []  # exit codes of the old worker container, as the kubelet saw them

    def gone() -> bool:
        try:
            pod = cluster.core.read_namespaced_pod(old, ns)
        except client.ApiException as e:
            return e.status == 404
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.terminated:
                exits.append(cs.state.terminated.exit_code)
        return False

    await _poll(gone, 90, "the drained pod to go after the hang-up")
    stop.set()
    sampler.join(timeout=5)
    # The container ends one of two ways, both after the caller hung up: the kubelet's SIGTERM
    # when the operator deletes the drained pod (a Killing event), or the worker's own clean
    # exit (code 0) once its drain is complete, racing the delete.
    killing = [e for e in _core_events(cluster.core, ns, old) if e.reason == "Killing"]
    assert killing or (exits and set(exits) == {0}), (
        f"the old worker neither got the kubelet's SIGTERM nor exited cleanly: exits {exits}"
    )
    if not ready_counts or min(ready_counts) < 1:
        unhealthy = [
            f"{e.involved_object.name}: {e.message}"
            for e in cluster.core.list_namespaced_event(ns).items
            if e.reason == "Unhealthy"
        ]
        pytest.fail(f"pool had 0 ready pods: {ready_counts}; probe failures: {unhealthy}")


@pytest.mark.timeout(300)
async def test_kubectl_delete_of_a_busy_pod_lets_the_call_finish(
    real: dict[str, Any], ns: str, chart_operator: client.V1Pod
) -> None:
    """SIGTERM from outside the operator: the worker drains within the grace period."""
    from voicepool_worker.caller import Call, CallerConfig

    cluster = Cluster(real["api"], ns)
    name = "talk"  # the pool of the rollout test, one idle worker left
    pool = cluster.pool(name)
    agent = pool["spec"]["agentName"]
    await _poll(lambda: cluster.ready_pods(name), 180, "an idle worker")
    lk = real["state"].livekit
    call = Call(CallerConfig(lk.url, lk.api_key, lk.api_secret, agent), "delete-call")
    await call.start(join_within=60)
    try:
        assert await call.wait_greeting(30)
        first = await call.say("what are your opening hours")
        assert first.ttfw_ms is not None
        # the pod that took the call (the warm pool may hold more than one idle worker)
        busy = await _poll(
            lambda: [
                p.metadata.name
                for p in cluster.ready_pods(name)
                if _pod_sessions(cluster, p.metadata.name) == "1"
            ],
            30,
            "the call reported",
        )
        victim = busy[0]
        cluster.core.delete_namespaced_pod(victim, ns)  # kubectl delete pod, grace from spec
        t_delete = time.monotonic()
        # The operator replaces the terminating pod; its start takes the 2 cores for a while,
        # so the caller speaks again once the replacement is Ready: tens of seconds after the
        # kubelet's SIGTERM, the call must still be answered by the terminating pod.
        await _poll(
            lambda: [p for p in cluster.ready_pods(name) if p.metadata.name != victim],
            180,
            "the replacement pod Ready",
        )
        pod = cluster.core.read_namespaced_pod(victim, ns)
        assert pod.metadata.deletion_timestamp is not None
        assert pod.spec.termination_grace_period_seconds == 120 + 30
        turn = await call.say("where are you located", answer_timeout=40)
        print(f"\nanswered {time.monotonic() - t_delete:.0f}s after kubectl delete (SIGTERM)")
        assert turn.ttfw_ms is not None, "SIGTERM cut the call"
    finally:
        await call.hangup()

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod(victim, ns)
            return False
        except client.ApiException as e:
            return e.status == 404

    await _poll(gone, 60, "the pod to go once its call ended")
    cluster.delete_pool(name)
    await asyncio.to_thread(_wait_pods_gone, cluster, name, 120)


@pytest.mark.timeout(180)
def test_crashing_worker_image_degrades_the_pool_without_a_pod_loop(
    real: dict[str, Any], ns: str, chart_operator: client.V1Pod
) -> None:
    cluster = Cluster(real["api"], ns)
    name = "crashy"
    # a team's agent the image does not carry: the runtime stops at start (exit 2), every time
    env = [*_worker_env(real), {"name": "VOICEPOOL_AGENT", "value": "no_such_team.agent:app"}]
    cluster.create_pool(
        worker_pool(
            real,
            name,
            agentName="crashy",
            cpuPinning={"enabled": False},
            template={"resources": {"cpu": "200m", "memory": "1Gi"}, "env": env},
            minReplicas=1,
            maxReplicas=3,
        )
    )
    t0 = time.monotonic()

    def degraded() -> dict[str, Any] | None:
        for c in (cluster.pool(name).get("status") or {}).get("conditions") or []:
            if c["type"] == "Degraded" and c["status"] == "True" and c["reason"] == "PodsCrashing":
                return dict(c)
        return None

    cond = wait_for(degraded, timeout=90, interval=0.5, what="Degraded=True PodsCrashing")
    seconds = time.monotonic() - t0
    assert "exit code 2" in cond["message"], cond
    print(f"\ncrashing worker -> Degraded/PodsCrashing after {seconds:.1f}s: {cond['message']}")
    wait_for(lambda: cluster.events("PodsCrashing"), timeout=30, what="a PodsCrashing Event")

    def restarted() -> int:  # the kubelet's back-off restarts the container in place
        return sum(
            cs.restart_count
            for p in cluster.pods(name, include_terminating=True)
            for cs in p.status.container_statuses or []
        )

    wait_for(restarted, timeout=60, interval=0.5, what="the kubelet to restart the container")
    created = [p for p in cluster.pods(name, include_terminating=True)]
    assert len(created) == 1, [p.metadata.name for p in created]
    assert len(cluster.events("PodsCrashing")) == 1, "one Event, not one per reconcile"
    cluster.delete_pool(name)
    wait_for(lambda: not cluster.pods(name, include_terminating=True), timeout=90, what="gone")


def test_down_leaves_the_machine_as_it_was(real: dict[str, Any]) -> None:
    """Runs last: stop the stack here and compare the host with the snapshot from before."""
    real["api"].close()
    stack: LocalStack = real["stack"]
    workdir = Path(stack.workdir)
    stack.stop()
    after = host_snapshot()
    assert after == real["before"], json.dumps(
        {k: (real["before"][k], after[k]) for k in after if after[k] != real["before"][k]},
        indent=1,
    )
    assert not workdir.exists()


def test_a_node_that_fails_to_start_shows_the_kubelets_error_and_is_undone(
    real: dict[str, Any],
) -> None:
    """Runs after the stack is down: a kubelet that refuses its config fails `up` at once with
    its own last log lines (not a hang), and the failed `up` leaves the machine as it was."""
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-node-bad-"))
    bad = {"registryPullQPS": -1}  # the kubelet validates its config and exits
    stack = LocalStack(
        StackConfig(
            workdir=workdir,
            nodes=1,
            node=True,
            livekit=False,
            prometheus=False,
            node_kubelet_config=bad,
        )
    )
    t0 = time.monotonic()
    try:
        with pytest.raises(DevstackError) as err:
            stack.start()
    finally:
        stack.stop()
    message = str(err.value)
    print(f"\nfailed node start reported after {time.monotonic() - t0:.1f}s:\n{message}")
    assert "kubelet exited" in message, message
    assert "Last lines of" in message and "registryPullQPS" in message, message
    after = host_snapshot()
    assert after == real["before"], json.dumps(
        {k: (real["before"][k], after[k]) for k in after if after[k] != real["before"][k]},
        indent=1,
    )
