"""Operator reaction time at scale, on the real local stack (apiserver + kwok nodes).

A pool of N pods (default 500) with 4 sessions each (2,000 sessions) is built, then:
- scale-up samples: the one warm idle pod is filled -> time until the operator's new pod
  appears in a watch;
- drain samples: a busy pod's calls end -> time until the operator marks an idle pod draining.
Times are measured end to end (our patch -> apiserver -> operator watch -> plan -> write ->
apiserver -> our watch). Also printed: operator API writes per session event (the worker
writes exactly one patch per session start/end by design) and operator RSS.

    python bench/operator_reaction.py [--pods 500] [--samples 30]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client, config, watch
from voicepool_contract import ANN_DRAIN, ANN_SESSIONS, LABEL_BUSY
from voicepool_devstack.testing import create_namespace, environment, wait_for

from tests.integration.operator_harness import (
    Cluster,
    OperatorProcess,
    install_crds,
    pool_manifest,
)

SPP = 4
DRAIN = ANN_DRAIN


class PodWatch(threading.Thread):
    """Timestamps (monotonic) of pod ADDED events and of drain marks, by pod name."""

    def __init__(self, core: client.CoreV1Api, ns: str) -> None:
        super().__init__(daemon=True)
        self.core, self.ns = core, ns
        self.added: dict[str, float] = {}
        self.drained: dict[str, float] = {}
        self.labels: dict[str, list[tuple[float, str]]] = {}  # busy label changes by pod
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        rv = self.core.list_namespaced_pod(self.ns).metadata.resource_version
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(
                    self.core.list_namespaced_pod,
                    self.ns,
                    resource_version=rv,
                    timeout_seconds=5,
                    allow_watch_bookmarks=False,
                ):
                    now = time.monotonic()
                    pod = ev["object"]
                    rv = pod.metadata.resource_version
                    name = pod.metadata.name
                    with self.lock:
                        if ev["type"] == "ADDED":
                            self.added.setdefault(name, now)
                        ann = pod.metadata.annotations or {}
                        if ann.get(DRAIN) == "true":
                            self.drained.setdefault(name, now)
                        label = (pod.metadata.labels or {}).get(LABEL_BUSY)
                        seen = self.labels.setdefault(name, [])
                        if label and (not seen or seen[-1][1] != label):
                            seen.append((now, label))
                    if self.stop.is_set():
                        break
            except client.ApiException:
                rv = self.core.list_namespaced_pod(self.ns).metadata.resource_version

    def new_added(self, known: set[str], after: float) -> str | None:
        with self.lock:
            for name, t in self.added.items():
                if name not in known and t >= after:
                    return name
        return None

    def label_at(self, name: str, value: str, after: float) -> float | None:
        """When the pod's busy label first showed `value` after `after`."""
        with self.lock:
            for t, v in self.labels.get(name, []):
                if v == value and t >= after:
                    return t
        return None

    def new_drained(self, known: set[str], after: float) -> tuple[str, float] | None:
        with self.lock:
            for name, t in self.drained.items():
                if name not in known and t >= after:
                    return name, t
        return None


def writes_by_verb(op: OperatorProcess) -> Counter[str]:
    """voicepool_api_writes_total by verb (create_pod, mark_drain, patch_hints, event, ...)."""
    out: Counter[str] = Counter()
    for line in op.metrics().splitlines():
        if line.startswith("voicepool_api_writes_total{"):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            out[verb] += float(line.rsplit(" ", 1)[1])  # type: ignore[assignment]
    return out


def writes(op: OperatorProcess) -> float:
    return float(sum(writes_by_verb(op).values()))


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    idx = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[idx]


def image_like_python() -> str:
    """A venv with only the operator image's pinned deps (operator/requirements.lock).

    RSS is measured as shipped: the dev venv also holds test libraries (the kubernetes client)
    that kopf would import on startup, which the image does not contain.
    """
    repo = Path(__file__).resolve().parents[1]
    lock = (repo / "operator" / "requirements.lock").read_bytes()
    from voicepool_devstack.versions import cache_root

    venv = cache_root() / f"bench-operator-venv-{hashlib.sha1(lock).hexdigest()[:12]}"
    py = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        print(f"[bench] creating the image-like operator venv {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-r", str(repo / "operator" / "requirements.lock")], check=True)
        (venv / ".complete").touch()
    # The project itself (no deps) on every run, so the current source is measured.
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(repo)],
        check=True,
        cwd="/",
    )
    return str(py)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    n = args.pods
    print(f"[bench] starting the local stack (4 kwok nodes sized for {n} pods) ...", flush=True)
    with environment(nodes=4, node_cpu=str(n), node_memory="4Ti", node_pods=str(n)) as env:
        cfg = client.Configuration()
        config.load_kube_config(config_file=env.kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 16
        api = client.ApiClient(cfg)
        core = client.CoreV1Api(api)
        install_crds(api)
        ns = "bench"
        create_namespace(core, ns)
        op = OperatorProcess(env.kubeconfig, python=image_like_python())
        op.start()
        try:
            return run(api, core, ns, op, n, args.samples)
        finally:
            op.stop()


def run(
    api: client.ApiClient,
    core: client.CoreV1Api,
    ns: str,
    op: OperatorProcess,
    n: int,
    samples: int,
) -> int:
    cl = Cluster(api, ns)
    watcher = PodWatch(core, ns)
    watcher.start()
    t = time.monotonic()
    cl.create_pool(
        pool_manifest(
            "bench",
            sessionsPerPod=SPP,
            minReplicas=n,
            maxReplicas=n + samples + 10,
            warmPool={"idleSessions": SPP},
            scaleDown={"stabilizationWindowSeconds": 0},
            template={
                "image": "example.invalid/worker:bench",
                "resources": {"cpu": 1, "memory": "64Mi"},
            },
        )
    )
    wait_for(
        lambda: len(cl.ready_pods("bench")) >= n, timeout=600, interval=1.0, what=f"{n} pods Ready"
    )
    print(
        f"[bench] {n} pods created by the operator and Ready in {time.monotonic() - t:.1f}s",
        flush=True,
    )

    # Fill every pod: 4 sessions each -> N*4 sessions; the operator adds one warm pod.
    t = time.monotonic()
    before = writes(op)
    pods = [p.metadata.name for p in cl.pods("bench")]
    for name in pods:
        cl.report(name, SPP, capacity=SPP)
    events = len(pods)
    print(
        f"[bench] reported {events * SPP} sessions on {events} pods in {time.monotonic() - t:.1f}s",
        flush=True,
    )
    cl.patch_pool_spec("bench", {"minReplicas": 1})
    wait_for(
        lambda: len(cl.ready_pods("bench")) >= n + 1, timeout=120, what="warm pod for the full pool"
    )
    time.sleep(2)
    fill_writes = writes(op) - before

    # Scale-up reaction: fill the warm pod, see the next pod appear.
    up: list[float] = []
    label_set: list[float] = []
    label_cleared: list[float] = []
    for _ in range(samples):
        known = {p.metadata.name for p in cl.pods("bench", include_terminating=True)}
        idle = [
            p.metadata.name
            for p in cl.ready_pods("bench")
            if (p.metadata.annotations or {}).get(ANN_SESSIONS) != str(SPP)
        ]
        if not idle:
            time.sleep(0.5)
            continue
        t0 = time.monotonic()
        cl.report(idle[0], SPP, capacity=SPP)
        new = wait_for(
            lambda known=known, t0=t0: watcher.new_added(known, t0),
            timeout=30,
            interval=0.005,
            what="operator to create a pod",
        )
        up.append(watcher.added[new] - t0)
        hit = wait_for(
            lambda name=idle[0], t0=t0: watcher.label_at(name, "true", t0),
            timeout=10,
            interval=0.005,
            what="busy label set",
        )
        label_set.append(hit - t0)
        wait_for(
            lambda new=new: new in {p.metadata.name for p in cl.ready_pods("bench")},
            timeout=30,
            what="new pod Ready",
        )

    # Drain reaction: a busy pod's calls end -> surplus idle capacity -> a drain mark.
    down: list[float] = []
    before_verbs = writes_by_verb(op)
    drains_t0 = time.monotonic()
    drain_events = 0
    busy = [
        p.metadata.name
        for p in cl.pods("bench")
        if (p.metadata.annotations or {}).get(ANN_SESSIONS) == str(SPP)
    ]
    for name in busy[:samples]:
        known = set(watcher.drained)
        t0 = time.monotonic()
        cl.report(name, 0, capacity=SPP)
        drain_events += 1
        hit = wait_for(
            lambda known=known, t0=t0: watcher.new_drained(known, t0),
            timeout=30,
            interval=0.005,
            what="operator to mark a pod draining",
        )
        down.append(hit[1] - t0)
        if hit[0] != name:  # the pod whose calls ended stays: its busy label is cleared
            cleared = wait_for(
                lambda name=name, t0=t0: watcher.label_at(name, "false", t0),
                timeout=10,
                interval=0.005,
                what="busy label cleared",
            )
            label_cleared.append(cleared - t0)
        wait_for(
            lambda d=hit[0]: d not in {p.metadata.name for p in cl.pods("bench")},
            timeout=30,
            what="drained pod deleted",
        )
    after_verbs = writes_by_verb(op)
    by_verb = {v: after_verbs[v] - before_verbs.get(v, 0.0) for v in after_verbs}
    # A drain is the mark, its Event, the delete and its Event, plus (coalesced) status
    # writes. The busy-label/hint patch of the pod whose calls ended belongs to that session
    # event (the label must follow every report, drain or not), so it is shown on its own.
    hint_writes = by_verb.pop("patch_hints", 0.0)
    status_writes = by_verb.pop("patch_status", 0.0)  # per time, not per drain: coalesced
    drain_writes = sum(by_verb.values())
    drain_s = time.monotonic() - drains_t0
    lone = lone_drain(cl, op, watcher, [b for b in busy[samples:] if b])
    watcher.stop.set()
    rss, hwm = rss_mb(op.proc.pid) if op.proc else (float("nan"), float("nan"))

    print()
    print(
        f"Operator reaction, {n} pods / {n * SPP} sessions on kwok "
        f"({len(up)} scale-up and {len(down)} drain samples)"
    )
    print(f"{'metric':44} {'p50':>9} {'p99':>9} {'max':>9}  goal")
    for label, vals in (
        ("session event -> pod created (ms)", up),
        ("session event -> drain marked (ms)", down),
        ("session start -> busy label set (ms)", label_set),
        ("session end -> busy label cleared (ms)", label_cleared),
    ):
        ms = [v * 1000 for v in vals]
        top = max(ms, default=float("nan"))
        print(f"{label:44} {pct(ms, 0.5):9.1f} {pct(ms, 0.99):9.1f} {top:9.1f}  p99 < 1000")
    print(f"{'worker API writes per session event':44} {1.0:9.2f}{'':20}  <= 1 (by design)")
    print(
        f"{'operator writes per event while filling':44} {fill_writes / events:9.2f}"
        f"{'':20}  state changes only"
    )
    per = max(1, drain_events)
    print(
        f"{'operator writes per drain':44} {drain_writes / per:9.2f}{'':20}  <= 4"
        " (mark, Event, delete, Event)"
    )
    print("  by verb: " + ", ".join(f"{v} {n / per:.2f}" for v, n in sorted(by_verb.items()) if n))
    print(
        f"{'  + coalesced status writes per drain':44} {status_writes / per:9.2f}{'':20}"
        f"  {status_writes:.0f} in {drain_s:.1f} s of back-to-back drains: the pool's"
        " status, written once it is quiet for 1 s (<= 10 s stale), shared by every change"
        " in that second, not one per pod state change"
    )
    if lone is not None:
        lone_status = lone.pop("patch_status", 0.0)
        lone_hints = lone.pop("patch_hints", 0.0)
        print(
            f"{'a lone drain (quiet before and after)':44} {sum(lone.values()):9.2f}{'':20}"
            "  <= 4: " + ", ".join(f"{v} {n:.0f}" for v, n in sorted(lone.items()) if n)
        )
        print(
            f"{'  + its status write (the new pod counts)':44} {lone_status:9.2f}{'':20}"
            "  <= 1, once the pool is quiet; the pool's, not the drain's"
        )
        print(
            f"{'  + hint write of the pod whose calls ended':44} {lone_hints:9.2f}{'':20}"
            "  <= 1 (the busy label follows its report)"
        )
    print(
        f"{'busy-label/hint writes per session end':44} {hint_writes / per:9.2f}"
        f"{'':20}  <= 1 (the label follows the report)"
    )
    print(f"{'operator RSS now / peak (MB)':44} {rss:9.1f} {hwm:9.1f}{'':10}  < 150")
    if statistics.fmean(up or [0]) and os.environ.get("VOICEPOOL_BENCH_LOG"):
        print(op.log_tail(40))
    return 0


def lone_drain(
    cl: Cluster, op: OperatorProcess, watcher: PodWatch, busy: list[str]
) -> dict[str, float] | None:
    """One drain with the pool quiet before and after: every write it causes, by verb.

    Quiet = longer than the status quiet delay (1 s) on both sides, so the coalesced status
    write this drain causes is counted, and nothing else's is.
    """
    if not busy:
        return None
    time.sleep(3)
    before = writes_by_verb(op)
    known = set(watcher.drained)
    t0 = time.monotonic()
    cl.report(busy[0], 0, capacity=SPP)
    drained, _ = wait_for(
        lambda: watcher.new_drained(known, t0),
        timeout=30,
        interval=0.005,
        what="operator to mark a pod draining",
    )
    wait_for(
        lambda: drained not in {p.metadata.name for p in cl.pods("bench") if p.metadata},
        timeout=30,
        what="drained pod deleted",
    )
    time.sleep(3)
    after = writes_by_verb(op)
    return {v: after[v] - before.get(v, 0.0) for v in after if after[v] - before.get(v, 0.0)}


if __name__ == "__main__":
    sys.exit(main())
