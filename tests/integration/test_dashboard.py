"""The chart's Grafana dashboard, every panel run against the local stack's live Prometheus.

A real pool (operator process, worker processes started by the runner for its pods) takes a
real call through LiveKit; Prometheus scrapes the operator and the workers the way the chart's
monitors would (see voicepool_devstack/prometheus.py). Then every expression of every panel,
with ``$namespace`` and ``$pool`` filled in, goes through Prometheus' query API: the test fails
on any expression that errors or returns no series, and on a time-to-first-word panel without
a number. The variables' own ``label_values`` queries must offer the pool.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client
from voicepool_devstack import prometheus
from voicepool_devstack.runner import RUNNER_POD_ANNOTATIONS, PodRunner
from voicepool_devstack.testing import Environment, wait_for

from .operator_harness import REPO, Cluster, install_crds, pool_manifest, running_operator

pytestmark = pytest.mark.cluster

DASHBOARD = REPO / "charts" / "voicepool" / "dashboards" / "voicepool.json"
POOL = "dash"
#: Panels about the operator as a whole (its reconcile histogram has no pool label).
OPERATOR_WIDE = {"Reconcile latency p99 (all pools of the operator)"}


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) of every target of every panel."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["refId"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def fill(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable interpolation for the plain ``$name`` / ``${name}`` forms."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), expr)


def test_panels_select_by_namespace_and_pool() -> None:
    for title, ref, expr in panel_queries():
        if title in OPERATOR_WIDE:
            continue
        assert 'namespace=~"$namespace"' in expr and 'pool=~"$pool"' in expr, (title, ref)
    exprs = " ".join(e for _, _, e in panel_queries())
    assert "voicepool_worker_stt_final_seconds" not in exprs  # a metric that never existed


def _label_values(prom: prometheus.PrometheusInfo, label: str, match: str) -> list[str]:
    url = f"{prom.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return list(json.loads(resp.read())["data"])


async def _one_call(
    env: Environment, agent: str, room: str, observed: Callable[[], float | None]
) -> list[float | None]:
    """One call; turns until the workers' TTFW histogram counted two (at most six turns).

    What the panels need is the worker's own observations, scraped; the caller's answer may be
    slow on a loaded machine, so each turn waits long and the count decides, not the caller.
    """
    from voicepool_worker.caller import Call, CallerConfig

    lk = env.livekit
    call = Call(CallerConfig(lk.url, lk.api_key, lk.api_secret, agent), room)
    ttfw: list[float | None] = []
    phrases = ("what are your opening hours", "where are you located", "thank you goodbye")
    try:
        await call.start(join_within=90)
        await call.wait_greeting(60)
        for i in range(6):
            ttfw.append((await call.say(phrases[i % 3], answer_timeout=60)).ttfw_ms)
            await asyncio.sleep(3)  # a scrape between turns: rate() sees the counters move
            if ((await asyncio.to_thread(observed)) or 0) >= 2:
                break
    finally:
        await call.hangup()
    return ttfw


def _problems(
    prom: prometheus.PrometheusInfo, variables: dict[str, str], seen: dict[str, str]
) -> list[str]:
    """What is wrong with the panels now; ``seen`` gets each query's first value (for -s)."""
    out = []
    for title, ref, expr in panel_queries():
        query = fill(expr, variables)
        try:
            series = prometheus.query(prom, query)
        except prometheus.PrometheusQueryError as e:
            out.append(f"{title} [{ref}] errors: {e}")
            continue
        if series:
            seen[f"{title} [{ref}]"] = f"{len(series)} series, first {series[0]['value'][1]}"
        if not series:
            out.append(f"{title} [{ref}] returns no series: {query}")
        elif "first word" in title and not any(math.isfinite(float(s["value"][1])) for s in series):
            out.append(f"{title} [{ref}] has no number (NaN): {query}")
    return out


@pytest.mark.timeout(600)
def test_every_panel_query_returns_data(
    stack_env: Environment,
    api_client: client.ApiClient,
    namespace: str,
    livekit_secret: str,
    tmp_path: Path,
) -> None:
    if not stack_env.embedded:
        pytest.skip("needs the local stack's Prometheus (on a cluster, use the chart's monitors)")
    prom = stack_env.prometheus
    assert prom is not None, "the local stack's Prometheus did not start (see its one-line note)"
    install_crds(api_client)
    lk = stack_env.livekit
    agent = f"dash-{uuid.uuid4().hex[:6]}"
    manifest = pool_manifest(
        POOL,
        agentName=agent,
        livekit={"url": lk.url, "credentialsSecretRef": {"name": livekit_secret}},
        sessionsPerPod=1,
        minReplicas=1,
        maxReplicas=3,
        warmPool={"idlePods": 1},
        template={
            "image": "ghcr.io/voicepool/voicepool-worker:test",
            "resources": {"cpu": 1, "memory": "2Gi"},
            "annotations": RUNNER_POD_ANNOTATIONS,  # the real worker reports, not kwok
        },
    )
    cluster = Cluster(api_client, namespace)
    events: list[str] = []
    with running_operator(stack_env.kubeconfig) as op:
        prometheus.register_operator(prom, f"op-{namespace}", f"127.0.0.1:{op.metrics_port}")
        runner = PodRunner(
            api_client,
            namespace,
            stack_env.kubeconfig,
            tmp_path / "workers",
            on_event=events.append,
            prometheus=prom,
        )
        cluster.create_pool(manifest)
        runner.start()
        try:

            def idle() -> bool:
                return any(
                    (p.metadata.annotations or {}).get("voicepool.dev/state") == "idle"
                    for p in cluster.pods(POOL)
                )

            wait_for(idle, timeout=180, interval=1, what=f"a worker of {POOL} to report idle")
            count = (
                "sum(voicepool_worker_time_to_first_word_seconds_count"
                f'{{namespace="{namespace}", pool="{POOL}"}})'
            )
            ttfw = asyncio.run(
                _one_call(
                    stack_env,
                    agent,
                    f"room-{uuid.uuid4().hex[:6]}",
                    lambda: prometheus.scalar(prom, count),
                )
            )
            turns = prometheus.scalar(prom, count) or 0
            assert turns >= 1, f"no turn reached Prometheus (caller: {ttfw}; runner: {events})"

            variables = {"namespace": namespace, "pool": POOL, "datasource": "prometheus"}
            deadline = time.monotonic() + 90
            seen: dict[str, str] = {}
            problems = _problems(prom, variables, seen)
            while problems and time.monotonic() < deadline:
                time.sleep(2)  # a few more scrapes / rule evaluations
                problems = _problems(prom, variables, seen)
            assert not problems, "dashboard panels without data:\n" + "\n".join(problems)
            print(f"caller-side ttfw {ttfw} ms; panels:", *seen.items(), sep="\n  ")

            assert namespace in _label_values(prom, "namespace", "voicepool_pool_pods")
            sel = f'voicepool_pool_pods{{namespace=~"{namespace}"}}'
            assert POOL in _label_values(prom, "pool", sel)
            # The shipped recording rules run in the stack's Prometheus too.
            p90 = prometheus.scalar(
                prom,
                f'namespace_pool:voicepool_ttfw_seconds:p90_5m{{namespace="{namespace}",'
                f'pool="{POOL}"}}',
            )
            assert p90 is not None and math.isfinite(p90)
            up = prometheus.query(prom, f'up{{job="voicepool-workers",namespace="{namespace}"}}')
            assert up and all(s["metric"]["pool"] == POOL for s in up)
            cluster.delete_pool(POOL)  # the runner still runs: workers drain, pods go
            wait_for(lambda: not cluster.pool_exists(POOL), timeout=90, what="pool deleted")
        finally:
            runner.stop()
            prometheus.unregister_operator(prom, f"op-{namespace}")
