"""``make demo``: the whole system on the embedded local stack, narrated, then torn down.

Steps: start apiserver + controller-manager + scheduler + kwok + livekit-server; ``helm
install`` the chart (CRDs, RBAC, admission policy; the operator Deployment is scaled to zero
because kwok runs no containers, so the operator runs here as a process with the same code);
apply ``examples/pool.yaml``; run real ``voicepool-worker`` processes for the pool's pods (the
runner plays the kubelet); place synthetic calls through LiveKit and show the pool react:
scale-up, a rolling update whose busy pod drains only after its call ends, scale-down.

Where the machine can run the real node (``voicepool-devstack up --node``), the chart's operator
and the workers run instead as real containers from the project's images on a real kubelet
(``demo_node.py``), and the demo ends by showing a pinned worker's exclusive cpuset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from voicepool_contract import (
    ANN_DRAIN,
    ANN_DRAIN_REASON,
    ANN_SESSIONS,
    ANN_STATE,
    LABEL_POOL,
    LABEL_TEMPLATE_HASH,
)

from . import demo_node, prometheus
from . import node as node_mod
from .errors import DevstackError
from .livekit import LiveKitInfo
from .ports import free_port
from .procs import kill_group
from .runner import RUNNER_POD_ANNOTATIONS, PodRunner
from .sip import SipInfo
from .stack import LocalStack, StackConfig, StackState
from .story import Story
from .testing import create_namespace
from .versions import HELM, KUBERNETES, REPO_ROOT

NS = "voicepool-demo"
POOL = "receptionist"
GROUP, VERSION, PLURAL = "voicepool.dev", "v1alpha1", "voiceagentpools"
T0 = time.monotonic()
JOIN_WITHIN_S = 120.0


def say(msg: str) -> None:
    print(f"[demo {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def kubectl(kubeconfig: str, *args: str) -> None:
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    subprocess.run(
        [str(KUBERNETES.path("kubectl")), *args],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        check=False,
    )
    print(flush=True)


def helm(kubeconfig: str, *args: str) -> None:
    proc = subprocess.run(
        [str(HELM.path("helm")), *args, "--kubeconfig", kubeconfig],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DevstackError(f"helm {' '.join(args[:2])} failed: {proc.stderr.strip()}")


#: Set when the demo is being torn down, so polling threads stop at once.
STOPPING = threading.Event()


def wait(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not STOPPING.is_set():
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise DevstackError(f"timed out after {timeout:.0f}s waiting for {what}")


class Demo:
    ns, name = NS, POOL

    def __init__(
        self,
        kubeconfig: str,
        livekit: LiveKitInfo,
        workdir: Path,
        prom: prometheus.PrometheusInfo | None = None,
        sip: SipInfo | None = None,
        real: StackState | None = None,
    ) -> None:
        self.prom = prom  # the stack's Prometheus (None when it did not start)
        self.kc = kubeconfig
        self.lk = livekit
        self.sip = sip
        self.workdir = workdir
        self.real = real  # the stack's state when pods run on the real node
        self.operator_metrics_port: int | None = None  # the chart operator's, on the node
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        self.api = client.ApiClient(cfg)
        # Any: the generated models make every field Optional; these objects come from the API.
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    # -- cluster verbs ----------------------------------------------------------------------

    def pods(self) -> list[Any]:
        sel = f"{LABEL_POOL}={POOL}"
        return [
            p
            for p in self.core.list_namespaced_pod(NS, label_selector=sel).items
            if not p.metadata.deletion_timestamp
        ]

    def pool(self) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, POOL))

    def idle_registered(self) -> list[str]:
        """Pods whose worker reported itself idle (registered with LiveKit, no call)."""
        return [
            p.metadata.name
            for p in self.pods()
            if (p.metadata.annotations or {}).get(ANN_STATE) == "idle"
            and (p.metadata.annotations or {}).get(ANN_DRAIN) != "true"
        ]

    def warm_in_status(self) -> bool:
        status = self.pool().get("status") or {}
        return int(status.get("readyPods") or 0) >= 1 and int(status.get("idlePods") or 0) >= 1

    def show(self) -> None:
        kubectl(self.kc, "get", "voiceagentpools", "-n", NS)

    def show_wide(self) -> None:
        kubectl(self.kc, "get", "voiceagentpools", "-n", NS, "-o", "wide")

    def show_pods(self) -> None:
        if self.real is not None:
            kubectl(self.kc, "get", "pods", "-n", NS, "-o", "wide")
        kubectl(
            self.kc,
            "get",
            "pods",
            "-n",
            NS,
            "-o",
            "custom-columns=POD:.metadata.name,PHASE:.status.phase,"
            "STATE:.metadata.annotations.voicepool\\.dev/state,"
            "SESSIONS:.metadata.annotations.voicepool\\.dev/sessions,"
            "DRAIN:.metadata.annotations.voicepool\\.dev/drain-reason,"
            "TEMPLATE:.metadata.labels.voicepool\\.dev/template-hash",
        )

    def save_pod_logs(self, why: str) -> None:
        """Keep every pool pod's log now (a missed step's evidence: the pod may soon be gone).
        Workers run as processes (no real node) already log into the work dir."""
        if self.real is None:
            return
        out = self.workdir / "pod-logs"
        out.mkdir(exist_ok=True)
        sel = f"{LABEL_POOL}={POOL}"
        for p in self.core.list_namespaced_pod(NS, label_selector=sel).items:  # terminating too
            name = p.metadata.name
            try:
                text = self.core.read_namespaced_pod_log(name, NS)
            except client.ApiException as e:
                text = f"(no log: {e.status} {e.reason})"
            with (out / f"{name}.log").open("a") as f:
                f.write(f"--- saved because: {why}\n{text}\n")
        say(f"saved the pool's pod logs in {out}")

    # -- setup ------------------------------------------------------------------------------

    def install(self) -> None:
        # Ready for pods; the chart creates the worker ServiceAccount in it (worker.namespaces).
        create_namespace(self.core, NS, worker_service_account=False)
        say("helm install voicepool (CRDs, RBAC, admission policy, dashboard) ...")
        if self.real is not None:
            chart = demo_node.chart_values(self.real, [NS], "voicepool")
            self.operator_metrics_port = int(chart["metrics"]["port"])
            values = self.workdir / "values.yaml"
            values.write_text(yaml.safe_dump(chart))
            extra = ["-f", str(values)]
            say("  the chart's operator Deployment runs on the real node from the local image")
        else:
            extra = ["--set", "operator.replicas=0", "--set", f"worker.namespaces={{{NS}}}"]
        helm(
            self.kc,
            "install",
            "voicepool",
            str(REPO_ROOT / "charts" / "voicepool"),
            "-n",
            "voicepool-system",
            "--create-namespace",
            *extra,
            "--wait=false",
        )
        self.core.create_namespaced_secret(
            NS,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="livekit-credentials"),
                string_data={"apiKey": self.lk.api_key, "apiSecret": self.lk.api_secret},
            ),
        )
        kubectl(self.kc, "get", "crds")

    @contextlib.contextmanager
    def operator(self) -> Iterator[None]:
        if self.real is not None:  # the chart's Deployment: wait for its container
            wait(self._operator_running, 180, "the operator pod on the real node")
            say("voicepool-operator runs as a real container (the chart's Deployment)")
            kubectl(self.kc, "get", "pods", "-n", "voicepool-system", "-o", "wide")
            # hostNetwork: the operator's metrics port is a port of the node, on loopback
            address = f"127.0.0.1:{self.operator_metrics_port}"
            prometheus.register_operator(self.prom, "chart-operator", address)
            discovery = demo_node.NodeDiscovery(self.core, self.prom, NS)
            discovery.start()
            try:
                yield
            finally:
                discovery.stop()
                prometheus.unregister_operator(self.prom, "chart-operator")
            return
        log = (self.workdir / "operator.log").open("ab")
        port, metrics_port = free_port(), free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voicepool_operator.main",
                f"--metrics-port={metrics_port}",
                "--metrics-address=127.0.0.1",
                f"--liveness-port={port}",
            ],
            env={**os.environ, "KUBECONFIG": self.kc},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        say(f"voicepool-operator started (pid {proc.pid}, log {self.workdir / 'operator.log'})")
        prometheus.register_operator(self.prom, "demo-operator", f"127.0.0.1:{metrics_port}")
        try:
            yield
        finally:
            kill_group(proc.pid, proc, grace=20)
            say("operator stopped")

    def _operator_running(self) -> bool:
        pods = self.core.list_namespaced_pod(
            "voicepool-system", label_selector=demo_node.OPERATOR_SELECTOR
        ).items
        return any(
            p.status.phase == "Running" and all(c.ready for c in p.status.container_statuses or [])
            for p in pods
        )

    def apply_pool(self) -> None:
        manifest = yaml.safe_load((REPO_ROOT / "examples" / "pool.yaml").read_text())
        spec = manifest["spec"]
        spec["livekit"]["url"] = self.lk.url
        # Deterministic and short for a demo: no office-hours window, quick scale-down.
        spec["warmPool"] = {"idlePods": 1}
        spec["scaleDown"] = {"stabilizationWindowSeconds": 10}
        spec["drain"] = {"timeoutSeconds": 300}
        spec["template"]["resources"] = {"cpu": 1, "memory": "2Gi"}
        if self.real is None:  # kwok plays the container, the runner's worker its reports
            spec["template"]["annotations"] = RUNNER_POD_ANNOTATIONS
        else:
            # 1900m allocatable on 2 cores: three unpinned 500m workers fit; pinning is shown
            # at the end with one cpu: 1 worker.
            spec["template"] = demo_node.worker_template(self.real, spec["template"])
            spec["template"]["resources"] = {"cpu": "500m", "memory": "2Gi"}
            spec["cpuPinning"] = {"enabled": False}
        say(
            "kubectl apply -f examples/pool.yaml (local LiveKit URL, no schedule window, "
            "10 s scale-down window)"
        )
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest)

    def roll_template(self) -> None:
        env = [
            *self.pool()["spec"]["template"].get("env", []),
            {"name": "VOICEPOOL_DEMO_REVISION", "value": "2"},
        ]
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, POOL, {"spec": {"template": {"env": env}}}
        )

    def delete_pool(self, name: str = POOL) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)

    def show_pinning(self) -> None:
        """Real node only: one pinned worker, its node, QoS and exclusive cpuset."""
        assert self.real is not None
        manifest = yaml.safe_load((REPO_ROOT / "examples" / "pool.yaml").read_text())
        manifest["metadata"]["name"] = "pinned"
        spec = manifest["spec"]
        spec.update(agentName="pinned", minReplicas=1, maxReplicas=1, warmPool={"idlePods": 0})
        spec["livekit"]["url"] = self.lk.url
        spec["template"] = demo_node.worker_template(self.real, spec["template"])
        spec["cpuPinning"] = {"enabled": True}
        say("pinning: a pool with cpuPinning and cpu: 1 (Guaranteed QoS, static CPU manager)")
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest)

        def ready_pod() -> str | None:
            for p in self.core.list_namespaced_pod(
                NS, label_selector="voicepool.dev/pool=pinned"
            ).items:
                if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []):
                    return str(p.metadata.name)
            return None

        pod = wait(ready_pod, 300, "the pinned worker to be Ready")
        kubectl(
            self.kc,
            "get",
            "pods",
            "-n",
            NS,
            "-o",
            "custom-columns=POD:.metadata.name,NODE:.spec.nodeName,QOS:.status.qosClass,"
            "CPU:.spec.containers[0].resources.limits.cpu",
        )
        kubectl(self.kc, "exec", "-n", NS, pod, "--", "grep", "Cpus_allowed_list", "/proc/1/status")
        operator = self.core.list_namespaced_pod(
            "voicepool-system", label_selector=demo_node.OPERATOR_SELECTOR
        ).items[0]
        say("and the operator pod (Burstable QoS) for comparison: the node's shared pool")
        kubectl(
            self.kc,
            "exec",
            "-n",
            "voicepool-system",
            operator.metadata.name,
            "--",
            "grep",
            "Cpus_allowed_list",
            "/proc/1/status",
        )
        say("the pinned worker's PID 1 may run on its one CPU only; the other pods share the rest")
        self.delete_pool("pinned")


async def _scenario(demo: Demo, story: Story | None = None) -> list[tuple[str, float | None]]:
    from voicepool_worker.caller import Call, CallerConfig

    lk = demo.lk
    cfg = CallerConfig(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret, agent_name=POOL)
    ttfw: list[tuple[str, float | None]] = []
    calls: list[Call] = []  # hung up on the way out, whatever happens
    try:
        await _scenario_steps(demo, cfg, ttfw, calls, story or Story(say))
    finally:
        for call in calls:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.hangup(), 10)
    return ttfw


async def _scenario_steps(
    demo: Demo, cfg: Any, ttfw: list[tuple[str, float | None]], calls: list[Any], story: Story
) -> None:
    from voicepool_worker.caller import Call

    async def wait_async(probe: Callable[[], Any], within: float, what: str) -> Any:
        try:
            return await asyncio.to_thread(wait, probe, within, what)
        except asyncio.CancelledError:
            STOPPING.set()  # interrupted: let the polling thread end so teardown can run
            raise

    async def turn(call: Call, label: str, text: str) -> None:
        say(f"{label}: caller says {text!r}")
        r = await call.say(text)
        ttfw.append((label, r.ttfw_ms))
        if r.ttfw_ms is None:
            story.missed(f"{label}: the agent did not answer")
        else:
            story.done(f"{label}: agent answered, time to first word {r.ttfw_ms:.0f} ms")

    async def dial(room: str) -> Call:
        call = Call(cfg, room)
        calls.append(call)
        try:  # the agent joins once a worker takes the job: slow when the cores are busy
            await call.start(join_within=JOIN_WITHIN_S)
        except TimeoutError:
            raise DevstackError(
                f"no agent joined {room} within {JOIN_WITHIN_S:.0f}s (workers starved of CPU?)"
            ) from None
        heard = await call.wait_greeting()
        say(f"{room}: agent joined{' and greeted the caller' if heard else ''}")
        return call

    await wait_async(demo.idle_registered, 300, "the warm worker to register with LiveKit")
    say(
        "the warm pod's worker registered with LiveKit and reports idle; the pool counts it "
        "once its readiness probe passes"
    )
    # The operator writes status after a second of quiet: show the pool once it counts the pod.
    await wait_async(demo.warm_in_status, 60, "the pool's status to count its warm pod")
    demo.show()

    say("call-1 dials in (explicit dispatch of agent 'receptionist')")
    call1 = await dial("call-1")
    await turn(call1, "call-1", "what are your opening hours")
    busy1 = {
        p.metadata.name
        for p in demo.pods()
        if (p.metadata.annotations or {}).get(ANN_SESSIONS) == "1"
    }
    await wait_async(lambda: len(demo.pods()) >= 2, 120, "scale-up to 2 pods")
    say("scale-up: 1 active call + 1 warm pod -> 2 pods")
    demo.show()

    await wait_async(demo.idle_registered, 300, "the new warm worker")
    say("call-2 dials in while call-1 continues")
    call2 = await dial("call-2")
    await turn(call2, "call-2", "what are your opening hours")
    await wait_async(lambda: len(demo.pods()) >= 3, 120, "scale-up to 3 pods")
    say("scale-up: 2 active calls + 1 warm pod -> 3 pods")
    demo.show()
    demo.show_pods()

    say("call-2 hangs up; after the 10 s stabilization window one idle pod is drained")
    await call2.hangup()
    await wait_async(lambda: len(demo.pods()) <= 2, 120, "scale-down to 2 pods")
    still = {p.metadata.name for p in demo.pods()}
    kept = sorted(busy1 & still)
    story.check(
        bool(busy1) and busy1 <= still,
        f"scale-down done: pods {sorted(still)}; call-1's pod {kept} was never touched",
        f"scale-down removed call-1's pod {sorted(busy1)} (left {sorted(still)})",
    )
    demo.show()

    say("rolling update: the pool template changes while call-1 is still talking")
    old_hash = demo.pods()[0].metadata.labels[LABEL_TEMPLATE_HASH]
    demo.roll_template()
    await wait_async(
        lambda: any(
            (p.metadata.annotations or {}).get(ANN_DRAIN_REASON) == "Rollout"
            and (p.metadata.annotations or {}).get(ANN_SESSIONS) == "1"
            for p in demo.pods()
        ),
        300,  # once the new pods are Ready: model loading, slow when the cores are busy
        "call-1's pod to be marked draining",
    )
    demo.show()
    demo.show_pods()
    say("call-1's pod is draining: it takes no new calls, but its caller keeps talking")
    await turn(call1, "call-1 (draining pod)", "thank you goodbye")
    say("call-1 hangs up -> its worker finishes, exits 0, and the pod goes")
    await call1.hangup()
    await wait_async(
        lambda: all(p.metadata.labels[LABEL_TEMPLATE_HASH] != old_hash for p in demo.pods()),
        180,
        "the old-template pods to go",
    )
    say("rollout complete; no call was cut")
    demo.show()
    demo.show_pods()
    if demo.sip is not None:
        from .demo_phone import phone_call

        await wait_async(demo.idle_registered, 300, "an idle worker for the phone call")
        ttfw += await phone_call(demo, demo.sip, story, wait_async)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-demo-"))
    say(f"work dir {workdir}")
    reason = node_mod.unsupported_reason()
    if reason:
        say(f"note: no real node here ({reason}); workers run as processes beside kwok pods")
    try:
        with LocalStack(StackConfig(workdir=workdir / "stack", node=reason is None)) as stack:
            kc, lk = stack.state.kubeconfig, stack.state.livekit
            assert kc is not None and lk is not None
            kubectl(kc, "get", "nodes", "-o", "wide")
            real = stack.state if reason is None else None
            demo = Demo(kc, lk, workdir, stack.state.prometheus, stack.state.sip, real)
            story = Story(say, on_missed=demo.save_pod_logs)
            demo.install()
            runner = PodRunner(
                demo.api,
                NS,
                kc,
                workdir / "workers",
                on_event=lambda m: say(f"runner: {m}"),
                prometheus=stack.state.prometheus,
                # as the kubelet does: each worker reports with its pod's ServiceAccount token
                as_service_account=True,
            )
            with demo.operator():
                demo.apply_pool()
                if real is None:
                    runner.start()
                if stack.state.prometheus is not None:
                    say(f"Prometheus (live while the demo runs): {stack.state.prometheus.url}")
                try:
                    ttfw = asyncio.run(_scenario(demo, story))
                    say("deleting the pool: the finalizer waits for calls, then pods go")
                    demo.delete_pool()
                    wait(lambda: not demo.pods(), 60, "pool pods to go")
                    if real is not None:
                        demo.show_pinning()
                finally:
                    if real is None:
                        runner.stop()
            print("\ntime to first word per turn:")
            for name, ms in ttfw:
                print(f"  {name:24s} {'no answer' if ms is None else f'{ms:.0f} ms'}")
            if stack.state.prometheus is not None:
                print(f"\nfrom Prometheus ({stack.state.prometheus.url}), by PromQL:")
                for line in prometheus.pool_figures(stack.state.prometheus, NS, POOL):
                    print(f"  {line}")
        print()
        for line in story.summary():
            print(line)
        if story.exit_code():
            say(f"demo finished with missed steps; every process was stopped (logs in {workdir})")
            return story.exit_code()
        shutil.rmtree(workdir, ignore_errors=True)
        say("demo finished; every process was stopped and temp files removed")
        return 0
    except DevstackError as e:
        print(f"demo: error: {e} (logs kept in {workdir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; everything was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
