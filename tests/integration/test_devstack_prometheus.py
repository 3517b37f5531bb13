"""The local stack's Prometheus: it starts and scrapes, or costs exactly one line.

Real processes, no cluster: a LocalStack with neither Kubernetes nor LiveKit, then
``prometheus.start`` on it -- with Debian's prometheus (a target registered the way the runner
registers a worker is scraped and relabelled), with none installed, and with one that dies.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from voicepool_devstack import prometheus
from voicepool_devstack.ports import free_port
from voicepool_devstack.stack import LocalStack, StackConfig
from voicepool_devstack.testing import wait_for


def bare_stack(tmp_path: Path, lines: list[str]) -> LocalStack:
    stack = LocalStack(
        StackConfig(workdir=tmp_path, kubernetes=False, livekit=False, progress=lines.append)
    )
    stack.logs.mkdir(parents=True, exist_ok=True)
    return stack


@pytest.fixture()
def fake_worker() -> Iterator[str]:
    """A /metrics endpoint speaking the worker's exposition format, on loopback."""
    body = (
        b"# TYPE voicepool_worker_active_sessions gauge\nvoicepool_worker_active_sessions 1\n"
        b"# TYPE voicepool_worker_sessions_started_total counter\n"
        b"voicepool_worker_sessions_started_total 3\n"
        b"# TYPE voicepool_worker_turns_total counter\nvoicepool_worker_turns_total 7\n"
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.mark.timeout(90)
def test_scrapes_a_registered_worker_with_pool_labels(tmp_path: Path, fake_worker: str) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not installed: `make build` installs Debian's package")
    lines: list[str] = []
    stack = bare_stack(tmp_path, lines)
    try:
        info = prometheus.start(stack.procs)
        assert info is not None, lines
        labels = prometheus.pod_discovery_labels(
            namespace="calls",
            pod="front-desk-abc12",
            labels={
                "app.kubernetes.io/managed-by": "voicepool-operator",
                "voicepool.dev/pool": "front-desk",
            },
            container="worker",
            port_name="http",
            port=8081,
        )
        prometheus.register_worker(info, fake_worker, labels)
        # A pod the operator does not manage is dropped by the PodMonitor's keep rule.
        stranger = {**labels, "__meta_kubernetes_pod_name": "other"}
        stranger["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by"] = "helm"
        prometheus.register_worker(info, fake_worker, stranger)

        def scraped() -> list[dict[str, object]]:
            return prometheus.query(info, "voicepool_worker_active_sessions")

        (series,) = wait_for(scraped, timeout=60, interval=0.5, what="the worker scraped")
        assert series["metric"] == {
            "__name__": "voicepool_worker_active_sessions",
            "instance": fake_worker,
            "job": "voicepool-workers",
            "namespace": "calls",
            "pool": "front-desk",
            "pod": "front-desk-abc12",
        }
        with urllib.request.urlopen(f"{info.url}/api/v1/rules", timeout=10) as resp:
            rules = json.loads(resp.read())
        names = {g["name"] for g in rules["data"]["groups"]}
        assert {"voicepool-ttfw", "voicepool-capacity", "voicepool-alerts"} <= names
        # A worker whose /metrics is down is a failed target (up == 0) with its labels, the
        # series VoicepoolWorkerScrapeDown alerts on -- not a silent gap.
        dead = {**labels, "__meta_kubernetes_pod_name": "front-desk-dead1"}
        prometheus.register_worker(info, f"127.0.0.1:{free_port()}", dead)

        def down() -> list[dict[str, object]]:
            return prometheus.query(info, 'up{pod="front-desk-dead1"} == 0')

        (failed,) = wait_for(down, timeout=60, interval=0.5, what="the dead worker's target")
        assert failed["metric"]["job"] == "voicepool-workers"
        assert failed["metric"]["pool"] == "front-desk"
        figures = prometheus.pool_figures(info, "calls", "front-desk")

        assert "over 7 answered turns" in figures[0] and "calls served:           3" in figures[1]
        assert figures[2].startswith(f"graph (while the stack runs): {info.url}/graph?g0.expr=")
    finally:
        stack.stop(remove=False)
    assert "prometheus" not in stack.state.pids


def test_missing_prometheus_costs_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus, "binary", lambda name="prometheus": None)
    lines: list[str] = []
    assert prometheus.start(bare_stack(tmp_path, lines).procs) is None
    assert len(lines) == 1 and "not installed" in lines[0] and "without monitoring" in lines[0]


def test_prometheus_that_dies_costs_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "prometheus"
    fake.write_text("#!/bin/sh\necho 'err: listen tcp: address already in use' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(prometheus, "binary", lambda name="prometheus": str(fake))
    monkeypatch.setattr(prometheus, "check_config", lambda path: None)
    lines: list[str] = []
    stack = bare_stack(tmp_path, lines)
    assert prometheus.start(stack.procs) is None
    failed = [line for line in lines if "failed to start" in line]
    assert len(failed) == 1 and "without monitoring" in failed[0], lines
    assert "prometheus" not in stack.state.pids  # nothing left to stop
