"""Prometheus metrics of the operator (scraped from --metrics-port, default 9090)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

POOL_PODS = Gauge(
    "voicepool_pool_pods", "Worker pods of a pool by state", ["namespace", "pool", "state"]
)
POOL_SESSIONS = Gauge(
    "voicepool_pool_active_sessions", "Active conversations in a pool", ["namespace", "pool"]
)
POOL_CAPACITY = Gauge(
    "voicepool_pool_session_capacity",
    "Session capacity of ready, non-draining pods",
    ["namespace", "pool"],
)
POOL_DESIRED = Gauge(
    "voicepool_pool_desired_replicas", "Pods the planner wants", ["namespace", "pool"]
)
POOL_MAX_REPLICAS = Gauge(
    "voicepool_pool_max_replicas",
    "spec.maxReplicas: the VoicepoolPoolAtMaxReplicas alert compares desired replicas to it",
    ["namespace", "pool"],
)
RECONCILE_SECONDS = Histogram(
    "voicepool_reconcile_seconds",
    "Time to plan and apply one reconcile of a pool",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ACTIONS = Counter(
    "voicepool_actions_total",
    "Actions the operator took",
    ["namespace", "pool", "action", "reason"],
)
API_WRITES = Counter(
    "voicepool_api_writes_total",
    "Writes the operator sent to the Kubernetes API (creates, patches, deletes, events)",
    ["verb"],
)
RECONCILES = Counter(
    "voicepool_reconciles_total", "Reconciles of a pool (plan + apply)", ["namespace", "pool"]
)
INVALID_REPORTS = Counter(
    "voicepool_invalid_reports_total",
    "Unreadable session counts a pod reported (each distinct value once); the pod is taken as full",
    ["namespace", "pool", "pod"],
)
RECONCILE_ERRORS = Counter(
    "voicepool_reconcile_errors_total", "Reconciles that failed", ["namespace", "pool"]
)

WEBHOOK_EVENTS = Counter(
    "voicepool_webhook_events_total",
    "LiveKit webhook events by outcome: recorded, no_pool, ignored, duplicate, stale, unsigned, "
    "unknown_key, bad_signature, untrusted (a pool that does not trust the signing key), cap "
    "(the pool's waiting rooms are full), error",
    ["outcome"],
)

POD_STATES = ("starting", "idle", "busy", "draining", "unknown", "unreported", "terminating")


def forget_pool(namespace: str, pool: str) -> None:
    """Drop a deleted pool's series so dashboards do not show ghosts."""
    for state in POD_STATES:
        with contextlib.suppress(KeyError):
            POOL_PODS.remove(namespace, pool, state)
    for gauge in (POOL_SESSIONS, POOL_CAPACITY, POOL_DESIRED, POOL_MAX_REPLICAS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, pool)
    with contextlib.suppress(KeyError):
        RECONCILES.remove(namespace, pool)
