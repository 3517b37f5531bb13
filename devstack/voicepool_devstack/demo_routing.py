"""``make demo``, routing step: two regions and a failover (docs/routing.md), narrated.

Two stacks, each its own cluster (kube-apiserver, kwok) and livekit-server; a voicepool operator
and a pool in each; in region A a VoiceRoute that prefers A and falls back to B, whose pool A's
operator watches through a kubeconfig Secret (a ServiceAccount that may only read pools).
``voicepool-router`` places calls: A while it is warm; when A's livekit-server is stopped, B,
with no call lost; A again once it is back. The regions' workers are stand-in agents
(``stand_in_agent``: they take the dispatch and join the room), so the step needs no models.
Exits non-zero, naming what did not happen, if any of it fails; everything is stopped either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from .agents import AgentProcess
from .errors import DevstackError
from .livekit import LiveKitInfo
from .ports import free_port
from .procs import kill_group
from .regions import NamedStack, reader_kubeconfig
from .testing import create_namespace
from .versions import KUBERNETES, REPO_ROOT

NS = "voice"
AGENT = "receptionist"
T0 = time.monotonic()


class DemoFailed(Exception):
    """What the demo expected and did not see."""


def say(msg: str) -> None:
    print(f"[routing {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def kubectl(kubeconfig: str, *args: str, show: bool = True, stdin: str | None = None) -> str:
    if show:
        print(f"\n$ kubectl {' '.join(args)}", flush=True)
    out = subprocess.run(
        [str(KUBERNETES.path("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if out.returncode != 0:
        raise DemoFailed(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    if show:
        print(out.stdout, flush=True)
    return out.stdout


def wait(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(DemoFailed, OSError, client.ApiException):
            value = probe()
            if value:
                return value
        time.sleep(0.25)
    raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def process(name: str, args: list[str], env: dict[str, str], logs: Path) -> Iterator[None]:
    """A child process in its own group, its output in ``logs/<name>.log``, always stopped."""
    with (logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield
    finally:
        kill_group(proc.pid, proc, grace=20)


def operator(kubeconfig: str, name: str, logs: Path) -> contextlib.AbstractContextManager[None]:
    return process(
        name,
        [
            sys.executable,
            "-m",
            "voicepool_operator.main",
            "--standalone",  # one replica per region here: no peering object to coordinate on
            "--metrics-port=0",
            f"--liveness-port={free_port()}",
        ],
        {"KUBECONFIG": kubeconfig},
        logs,
    )


def post(port: int, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/sessions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read() or b"{}")


def route_yaml(a: LiveKitInfo, b: LiveKitInfo) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "voicepool.dev/v1alpha1",
            "kind": "VoiceRoute",
            "metadata": {"name": "support", "namespace": NS},
            "spec": {
                "probeIntervalSeconds": 1,
                "regions": [
                    {
                        "name": "region-a",
                        "priority": 0,
                        "livekit": {"url": a.url, "credentialsSecretRef": {"name": "livekit-a"}},
                        "pool": {"name": "support"},
                    },
                    {
                        "name": "region-b",
                        "priority": 1,
                        "livekit": {"url": b.url, "credentialsSecretRef": {"name": "livekit-b"}},
                        "pool": {"name": "support", "kubeconfigSecretRef": {"name": "cluster-b"}},
                    },
                ],
            },
        },
        sort_keys=False,
    )


def pool_yaml(lk: LiveKitInfo) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "voicepool.dev/v1alpha1",
            "kind": "VoiceAgentPool",
            "metadata": {"name": "support", "namespace": NS},
            "spec": {
                "agentName": AGENT,
                "livekit": {"url": lk.url, "credentialsSecretRef": {"name": "livekit"}},
                "sessionsPerPod": 2,
                "warmPool": {"idleSessions": 4},
                "template": {
                    "image": "example.invalid/voicepool-worker:demo",
                    "resources": {"cpu": 1, "memory": "512Mi"},
                },
            },
        }
    )


def secret_yaml(name: str, data: dict[str, str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "stringData": data,
        }
    )


def keys(lk: LiveKitInfo) -> dict[str, str]:
    return {"apiKey": lk.api_key, "apiSecret": lk.api_secret}


def region_of(kc: str) -> Callable[[str], dict[str, Any]]:
    def get(name: str) -> dict[str, Any]:
        out = kubectl(kc, "get", "voiceroute", "support", "-n", NS, "-o", "json", show=False)
        for r in json.loads(out).get("status", {}).get("regions") or []:
            if r.get("name") == name:
                return dict(r)
        return {}

    return get


def scenario(a: NamedStack, b: NamedStack, logs: Path) -> None:
    kc_a, kc_b = a.kubeconfig, b.kubeconfig
    for kc in (kc_a, kc_b):
        kubectl(kc, "apply", "-f", str(REPO_ROOT / "crds"), show=False)
        kubectl(
            kc, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s", show=False
        )
    apis = []
    for kc in (kc_a, kc_b):
        cfg = client.Configuration()
        config.load_kube_config(config_file=kc, client_configuration=cfg)  # type: ignore[no-untyped-call]
        apis.append(client.ApiClient(cfg))
        create_namespace(client.CoreV1Api(apis[-1]), NS)
    say("region B's cluster gives region A a kubeconfig that may only read its pools")
    kube_b = reader_kubeconfig(apis[1], kc_b, NS)
    for kc, lk in ((kc_a, a.livekit), (kc_b, b.livekit)):
        kubectl(kc, "apply", "-f", "-", stdin=secret_yaml("livekit", keys(lk)), show=False)
        kubectl(kc, "apply", "-f", "-", stdin=pool_yaml(lk), show=False)
    for name, data in (
        ("livekit-a", keys(a.livekit)),
        ("livekit-b", keys(b.livekit)),
        ("cluster-b", {"kubeconfig": kube_b}),
    ):
        kubectl(kc_a, "apply", "-f", "-", stdin=secret_yaml(name, data), show=False)
    token = secrets.token_urlsafe(24)
    port = free_port()
    agents = [AgentProcess(a.livekit, AGENT), AgentProcess(b.livekit, AGENT)]
    try:
        with (
            operator(kc_a, "operator-a", logs),
            operator(kc_b, "operator-b", logs),
            process(
                "router",
                [
                    sys.executable,
                    "-m",
                    "voicepool_operator.routing.router",
                    f"--namespace={NS}",
                    "--address=127.0.0.1",
                    f"--port={port}",
                ],
                {"KUBECONFIG": kc_a, "VOICEPOOL_ROUTER_TOKEN": token},
                logs,
            ),
        ):
            for agent in agents:
                agent.wait_registered()
            say("the route: prefer region A (tier 0), fall back to region B (tier 1)")
            print(route_yaml(a.livekit, b.livekit))
            kubectl(kc_a, "apply", "-f", "-", stdin=route_yaml(a.livekit, b.livekit))
            region = region_of(kc_a)
            for name in ("region-a", "region-b"):

                def warm(n: str = name) -> bool:
                    return bool(region(n).get("idleSessions", 0) > 0)

                wait(warm, 90, f"{name} warm")
            kubectl(kc_a, "get", "voiceroutes", "-n", NS)
            run(port, token, 3, "region-a", "A is warm: calls go to the preferred region")

            say("stopping region A's livekit-server")
            a.stop_livekit()
            run(port, token, 3, "region-b", "A is down: the router moves on, no call lost")
            wait(lambda: region("region-a").get("ready") is False, 30, "region A shown down")
            kubectl(kc_a, "get", "voiceroutes", "-n", NS)
            degraded = kubectl(
                kc_a,
                "get",
                "voiceroute",
                "support",
                "-n",
                NS,
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Degraded")].message}',
                show=False,
            )
            say(f"Degraded: {degraded}")

            say("starting region A's livekit-server again")
            registered = agents[0].registrations()
            a.start_livekit()
            agents[0].wait_registered(more_than=registered)
            wait(lambda: region("region-a").get("ready") is True, 60, "region A ready again")
            wait(
                lambda: post(port, token, {"route": "support"})[1].get("region") == "region-a",
                60,
                "a call routed to region A again",
            )
            say("A is back: new calls go to the preferred region again")
            kubectl(kc_a, "get", "voiceroutes", "-n", NS)
    finally:
        for agent in agents:
            agent.stop()
        for api in apis:
            api.close()  # type: ignore[no-untyped-call]


def run(port: int, token: str, calls: int, expect: str, what: str) -> None:
    say(what)
    for _ in range(calls):
        t0 = time.monotonic()
        status, answer = post(port, token, {"route": "support"})
        took = (time.monotonic() - t0) * 1000
        if status != 200 or answer.get("region") != expect:
            raise DemoFailed(f"expected a call routed to {expect}, got {status}: {answer}")
        failed = ", ".join(f"{f['region']} ({f['reason']})" for f in answer.get("failovers", []))
        say(
            f"  POST /v1/sessions -> {answer['region']} room {answer['room']} in {took:.0f} ms"
            + (f", after giving up {failed}" if failed else "")
        )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-demo-routing-"))
    logs = workdir / "logs"
    logs.mkdir()
    say("two regions, each its own cluster and livekit-server (docs/routing.md)")
    try:
        with (
            NamedStack("demo-a", workdir=workdir / "a") as a,
            NamedStack("demo-b", workdir=workdir / "b") as b,
        ):
            scenario(a, b, logs)
    except (DemoFailed, DevstackError) as e:
        print(f"demo (routing): FAILED: {e} (logs kept in {logs})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo (routing): interrupted; everything was stopped", file=sys.stderr)
        return 130
    shutil.rmtree(workdir, ignore_errors=True)
    say("routing demo finished; every process was stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
