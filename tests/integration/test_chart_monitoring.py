"""The chart tells Prometheus what to scrape: monitors, rules and scrape annotations.

- ServiceMonitor / PodMonitor / PrometheusRule render when the cluster serves the
  monitoring.coreos.com/v1 kinds ("auto") or a value forces them, and never otherwise.
- The PodMonitor relabels worker series exactly as the local stack's Prometheus does, so the
  live dashboard test on the local stack speaks for a cluster too.
- The PrometheusRule carries the plain rules file verbatim.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from voicepool_devstack import prometheus
from voicepool_devstack.versions import HELM

from .operator_harness import REPO

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "voicepool"
MONITORING = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
HELM_TEMPLATE = (
    str(HELM.path("helm")),
    "template",
    "voicepool",
    str(CHART),
    "--kube-version",
    "1.34.4",
)
SERVED = [a for k in MONITORING for a in ("--api-versions", f"monitoring.coreos.com/v1/{k}")]


def render(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [*HELM_TEMPLATE, "-n", "voicepool-system", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs} & set(MONITORING)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _camel(relabel: dict[str, Any]) -> dict[str, Any]:
    names = {"source_labels": "sourceLabels", "target_label": "targetLabel"}
    return {names.get(k, k): v for k, v in relabel.items()}


def test_monitors_render_only_when_served_or_asked_for() -> None:
    assert kinds(render()) == set(), "no monitoring.coreos.com objects without the CRDs"
    assert kinds(render(*SERVED)) == set(MONITORING)
    assert kinds(render("--set", "metrics.podMonitor.enabled=true")) == {"PodMonitor"}
    off = [
        a
        for k in ("serviceMonitor", "podMonitor", "prometheusRule")
        for a in ("--set", f"metrics.{k}.enabled=false")
    ]
    assert kinds(render(*SERVED, *off)) == set()


def test_pod_monitor_labels_workers_like_the_local_stack() -> None:
    docs = render(*SERVED, "--set", "metrics.podMonitor.labels.release=prom")
    pm = one(docs, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == (
        "voicepool-operator"
    )
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [_camel(r) for r in prometheus.worker_relabelings()]
    watched = render(*SERVED, "--set", "operator.watchNamespaces={calls}")
    assert one(watched, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["calls"]}


def test_service_monitor_keeps_the_pools_namespace_label() -> None:
    sm = one(render(*SERVED), "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert {"targetLabel": "job", "replacement": prometheus.OPERATOR_JOB} in endpoint["relabelings"]


def test_prometheus_rule_is_the_plain_rules_file() -> None:
    rule = one(render(*SERVED), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(prometheus.RULES_FILE.read_text())


def test_scrape_annotations_for_annotation_based_discovery() -> None:
    docs = render()
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")
    )
    assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    quiet = render("--set", "metrics.annotations=false")
    svc = next(d for d in quiet if d["kind"] == "Service")
    assert "annotations" not in svc["metadata"]


def test_bad_monitoring_values_are_refused() -> None:
    proc = subprocess.run(
        [*HELM_TEMPLATE, "--set", "metrics.podMonitor.enabled=sometimes"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "enabled" in proc.stderr
