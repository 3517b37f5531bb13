"""The shipped recording rules and alerts, checked and unit-tested by ``promtool`` itself.

``promtool test rules`` feeds synthetic series (tests/rules/voicepool.rules.test.yaml) through
the real rule engine; this file also insists that every alert has a test that fires it and one
that keeps it quiet, and that the local stack's Prometheus config is one promtool accepts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from voicepool_devstack import prometheus

REPO = Path(__file__).resolve().parents[2]
RULES = prometheus.RULES_FILE
RULE_TESTS = REPO / "tests" / "rules" / "voicepool.rules.test.yaml"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: `make build` installs Debian's prometheus (promtool)")
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass() -> None:
    promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts() - fired == set(), "alerts without a test that fires them"
    assert alerts() - quiet == set(), "alerts without a test that keeps them quiet"
    assert {
        "VoicepoolTimeToFirstWordBudgetBurnFast",
        "VoicepoolTimeToFirstWordP90High",
        "VoicepoolPoolAtMaxReplicas",
        "VoicepoolDrainTimeouts",
        "VoicepoolInvalidWorkerReports",
        "VoicepoolOperatorDown",
        "VoicepoolNoReadyPods",
        "VoicepoolWorkerScrapeDown",
    } <= alerts()


def test_the_stack_config_is_valid(tmp_path: Path) -> None:
    path = prometheus.write_config(
        tmp_path,
        targets_dir=tmp_path / "targets",
        rule_files=[RULES],
    )
    promtool("check", "config", str(path))
    jobs = {j["job_name"]: j for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert set(jobs) == {prometheus.OPERATOR_JOB, prometheus.WORKER_JOB}
    assert jobs[prometheus.OPERATOR_JOB]["honor_labels"] is True  # keep the pool's namespace
    targets = {r.get("target_label") for r in jobs[prometheus.WORKER_JOB]["relabel_configs"]}
    assert {"namespace", "pool", "pod", "job"} <= targets


def test_graph_url_carries_the_expression() -> None:
    info = prometheus.PrometheusInfo("http://127.0.0.1:9", "/tmp/x")
    url = info.graph_url('sum(up{job="a"})')
    assert url.startswith("http://127.0.0.1:9/graph?g0.expr=sum%28up%7Bjob%3D%22a%22%7D%29")


def test_discovery_labels_spell_labels_like_kubernetes_sd() -> None:
    labels = prometheus.pod_discovery_labels(
        namespace="ns",
        pod="p-1",
        labels={"voicepool.dev/pool": "p", "app.kubernetes.io/managed-by": "voicepool-operator"},
        container="worker",
        port_name="http",
        port=8081,
    )
    assert labels["__meta_kubernetes_pod_label_voicepool_dev_pool"] == "p"
    assert (
        labels["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by"] == "voicepool-operator"
    )
    sources = {s for r in prometheus.worker_relabelings() for s in r.get("source_labels", [])}
    assert sources <= set(labels), "every label the relabelings read is one discovery sets"


def _exported() -> set[str]:
    """Every sample name the operator and worker can expose, with their suffixes."""
    from prometheus_client import Counter, Histogram
    from voicepool_operator import metrics as operator_metrics
    from voicepool_worker import metrics as worker_metrics

    names: set[str] = {"up"}
    for module in (operator_metrics, worker_metrics):
        for obj in vars(module).values():
            if isinstance(obj, Histogram):
                names |= {f"{obj._name}_{s}" for s in ("bucket", "count", "sum")}
            elif isinstance(obj, Counter):
                names.add(f"{obj._name}_total")
            elif hasattr(obj, "_name") and hasattr(obj, "_type"):
                names.add(obj._name)
    return names


def test_rules_and_dashboard_use_only_metrics_that_exist() -> None:
    import json
    import re

    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    board = json.loads((REPO / "charts/voicepool/dashboards/voicepool.json").read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    used = set()
    for e in exprs:
        bare = re.sub(r'"[^"]*"', '""', e)  # label values are not metric names
        for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if token.startswith(("voicepool_", "namespace_pool:")) or token == "up":
                used.add(token)
    unknown = used - _exported() - recorded
    assert unknown == set(), f"rules/dashboard query metrics nobody exports: {sorted(unknown)}"
    assert "voicepool_worker_time_to_first_word_seconds_bucket" in used


def test_top_bucket_matches_the_workers_histograms() -> None:
    from voicepool_worker import metrics as worker_metrics

    assert max(worker_metrics._BUCKETS) == prometheus.TOP_BUCKET_SECONDS
