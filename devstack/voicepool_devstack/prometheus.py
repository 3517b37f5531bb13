"""Prometheus in the local stack: Debian's ``prometheus`` on loopback, scraping like the chart.

Workers are labelled the way the chart's PodMonitor labels them in a cluster. Debian builds
its prometheus without Kubernetes service discovery, and kwok pods have no reachable IP anyway,
so the runner that plays the kubelet plays discovery too: for each worker it starts it writes a
``file_sd`` target with the ``__meta_kubernetes_*`` labels Kubernetes discovery would give that
pod's ``http`` port, pointing at the worker's loopback port. The scrape job then applies the
*same* relabelings as the PodMonitor (keep pods the operator manages and their ``http`` port;
``namespace``, ``pool`` and ``pod`` from the pod). A pod whose worker crashed keeps its target
until the pod is gone, so it shows as a failed scrape (``up == 0``), never as a silent gap.
The operator runs as a process, not a pod, so whoever starts one registers it with
``register_operator``.

Monitoring is optional: Prometheus missing or failing to start costs one line, never the stack.
The stack's Prometheus also loads the chart's plain rules file, so the recording rules run live.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .apt import ensure_packages
from .errors import DevstackError
from .ports import free_port
from .procs import Processes, http_get
from .progress import Progress
from .versions import REPO_ROOT

PACKAGES = ("prometheus",)  # Debian's package ships promtool too
OPERATOR_JOB = "voicepool-operator"
WORKER_JOB = "voicepool-workers"
RULES_FILE = REPO_ROOT / "charts" / "voicepool" / "rules" / "voicepool.rules.yaml"
#: The worker's largest finite latency bucket: histogram_quantile cannot say more than this.
TOP_BUCKET_SECONDS = 10.0
#: Short so tests and the demo see data within seconds; a cluster would use 15-30 s.
SCRAPE_INTERVAL = "2s"


def ensure_installed(progress: Progress) -> None:
    """Install Debian's prometheus (and promtool) when missing, or say how to."""
    ensure_packages(
        PACKAGES, "Prometheus in the local stack and the promtool rules tests", progress
    )


def binary(name: str = "prometheus") -> str | None:
    return shutil.which(name)


def worker_relabelings() -> list[dict[str, Any]]:
    """The chart PodMonitor's relabelings, in Prometheus' own (snake_case) config spelling.

    tests/integration/test_chart.py checks the rendered PodMonitor against this list, so the
    local stack and a cluster label worker series the same way.
    """
    return [
        {
            "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by"],
            "regex": "voicepool-operator",
            "action": "keep",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": "http",
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {
            "source_labels": ["__meta_kubernetes_pod_label_voicepool_dev_pool"],
            "target_label": "pool",
        },
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": WORKER_JOB},
    ]


def _sanitize(name: str) -> str:
    """Label-name spelling of Kubernetes discovery: every invalid character becomes ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_discovery_labels(
    *,
    namespace: str,
    pod: str,
    labels: dict[str, str],
    container: str,
    port_name: str,
    port: int,
    phase: str = "Running",
) -> dict[str, str]:
    """The ``__meta_kubernetes_*`` labels ``kubernetes_sd_configs`` (role: pod) gives a port."""
    out = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_container_port_number": str(port),
    }
    for key, value in labels.items():
        out[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
        out[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    return out


def _write_target(path: Path, address: str, labels: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
    tmp.replace(path)  # atomic: Prometheus never reads half a file


def register_worker(
    info: PrometheusInfo | None, address: str, discovery_labels: dict[str, str]
) -> None:
    """Make the stack's Prometheus discover one worker pod's port at ``address``."""
    if info is None:
        return
    ns = discovery_labels["__meta_kubernetes_namespace"]
    pod = discovery_labels["__meta_kubernetes_pod_name"]
    port = discovery_labels["__meta_kubernetes_pod_container_port_name"] or "unnamed"
    path = Path(info.targets_dir) / f"worker-{ns}-{pod}-{port}.json"
    _write_target(path, address, discovery_labels)


def unregister_worker(info: PrometheusInfo | None, namespace: str, pod: str) -> None:
    """Forget every port of the pod (call it when the pod is gone, not when its worker dies)."""
    if info is not None:
        for path in Path(info.targets_dir).glob(f"worker-{namespace}-{pod}-*.json"):
            path.unlink(missing_ok=True)


def config(*, targets_dir: Path, rule_files: list[Path]) -> dict[str, Any]:
    """prometheus.yml for the stack (pure: tested without a server)."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": OPERATOR_JOB,
                # The operator's series carry the pool's namespace/pool; keep them (the chart's
                # ServiceMonitor sets honorLabels for the same reason).
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_dir / "operator-*.json")]}],
            },
            {
                "job_name": WORKER_JOB,
                # Targets written by the runner with Kubernetes discovery's labels (see above).
                "file_sd_configs": [{"files": [str(targets_dir / "worker-*.json")]}],
                "relabel_configs": worker_relabelings(),
            },
        ],
    }


@dataclass
class PrometheusInfo:
    url: str
    targets_dir: str

    def graph_url(self, expr: str, range_input: str = "15m") -> str:
        """Prometheus' own graph page for ``expr``."""
        query = urllib.parse.urlencode(
            {"g0.expr": expr, "g0.tab": "0", "g0.range_input": range_input}
        )
        return f"{self.url}/graph?{query}"


def register_operator(
    info: PrometheusInfo | None, name: str, address: str, labels: dict[str, str] | None = None
) -> None:
    """Make the stack's Prometheus scrape an operator process at ``address`` (host:port)."""
    if info is None:
        return
    path = Path(info.targets_dir) / f"operator-{name}.json"
    _write_target(path, address, {"instance": name, **(labels or {})})


def unregister_operator(info: PrometheusInfo | None, name: str) -> None:
    if info is not None:
        (Path(info.targets_dir) / f"operator-{name}.json").unlink(missing_ok=True)


def query(info: PrometheusInfo, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Instant query through the HTTP API; raises ``PrometheusQueryError`` on an API error."""
    url = f"{info.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        raise PrometheusQueryError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    return list(result) if isinstance(result, list) else [{"value": result}]


def scalar(info: PrometheusInfo, expr: str) -> float | None:
    """The value of a one-series query, or None when it returns nothing."""
    result = query(info, expr)
    if not result:
        return None
    return float(result[0]["value"][1])


class PrometheusQueryError(RuntimeError):
    pass


def check_config(path: Path) -> str | None:
    """``promtool check config``: None when fine, else promtool's complaint."""
    promtool = binary("promtool")
    if promtool is None:
        return None
    proc = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def write_config(workdir: Path, **kwargs: Any) -> Path:
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(**kwargs), sort_keys=False))
    return path


def start(procs: Processes) -> PrometheusInfo | None:
    """Start Prometheus among the stack's ``procs``; None, with one line, if it cannot run."""
    progress = procs.progress
    skip = "the stack runs without monitoring"
    exe = binary()
    if exe is None:
        progress(
            f"prometheus not installed (run `make build` or apt-get install prometheus); {skip}"
        )
        return None
    try:
        workdir = procs.workdir / "prometheus"
        targets = workdir / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        path = write_config(
            workdir,
            targets_dir=targets,
            rule_files=[RULES_FILE] if RULES_FILE.exists() else [],
        )
        problem = check_config(path)
        if problem:
            progress(f"prometheus config refused by promtool ({problem.splitlines()[-1]}); {skip}")
            return None
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        progress(f"starting prometheus (scrapes the operator and workers every {SCRAPE_INTERVAL})")
        procs.spawn(
            "prometheus",
            [
                exe,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
        )
        procs.wait(
            "prometheus",
            lambda: http_get(url + "/-/ready").startswith(b"Prometheus"),
            f"prometheus ready on {url}",
            timeout=30,
        )
    except (DevstackError, OSError) as e:
        procs.stop("prometheus")
        first = str(e).splitlines()[0]
        progress(f"prometheus failed to start ({first}; log {procs.logs}/prometheus.log); {skip}")
        return None
    return PrometheusInfo(url, str(targets))


def pool_figures(info: PrometheusInfo, namespace: str, pool: str, window: str = "1h") -> list[str]:
    """What a user looks up after a run: p90 time to first word and calls served, by PromQL.

    ``max_over_time`` per worker: a worker's counter only grows while it lives, and workers
    that drained and exited during the window still count.
    """
    sel = f'namespace="{namespace}", pool="{pool}"'
    p90_expr = (
        "histogram_quantile(0.9, sum by (le) (increase("
        f"voicepool_worker_time_to_first_word_seconds_bucket{{{sel}}}[{window}])))"
    )
    calls_expr = f"sum(max_over_time(voicepool_worker_sessions_started_total{{{sel}}}[{window}]))"
    turns_expr = f"sum(max_over_time(voicepool_worker_turns_total{{{sel}}}[{window}]))"
    lines = []
    try:
        p90 = scalar(info, p90_expr)
        calls = scalar(info, calls_expr)
        turns = scalar(info, turns_expr)
    except (OSError, PrometheusQueryError) as e:
        return [f"Prometheus did not answer ({e})"]
    if p90 is None or p90 != p90:  # no series, or NaN: no turn was answered
        p90_text = "no data"
    elif p90 >= TOP_BUCKET_SECONDS:
        p90_text = f"over {TOP_BUCKET_SECONDS * 1000:.0f} ms (past the last histogram bucket)"
    else:
        p90_text = f"{p90 * 1000:.0f} ms"
    n = "?" if turns is None else f"{turns:.0f}"
    lines.append(f"p90 time to first word: {p90_text} over {n} answered turns   <- {p90_expr}")
    lines.append(f"calls served:           {'no data' if calls is None else f'{calls:.0f}'}"
                 f"   <- {calls_expr}")  # fmt: skip
    lines.append(f"graph (while the stack runs): {info.graph_url(p90_expr)}")
    return lines
