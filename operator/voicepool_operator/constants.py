"""The operator's names: the shared contract (`voicepool_contract`) plus its own.

Annotation and label names the worker, devstack and tests also use live in the contract
module; this one adds what only the operator and its chart need.
"""

from __future__ import annotations

from typing import Final

from voicepool_contract import (
    ANN_CAPACITY,
    ANN_DELETION_COST,
    ANN_DRAIN,
    ANN_DRAIN_REASON,
    ANN_DRAIN_REQUESTED_AT,
    ANN_REPORTED_AT,
    ANN_SAFE_TO_EVICT,
    ANN_SESSIONS,
    ANN_STATE,
    BUSY_DELETION_COST,
    GROUP,
    IDLE_DELETION_COST,
    KIND,
    LABEL_BUSY,
    LABEL_POOL,
    LABEL_TEMPLATE_HASH,
    PLURAL,
    VERSION,
)

__all__ = [
    "ANN_CAPACITY",
    "ANN_DELETION_COST",
    "ANN_DRAIN",
    "ANN_DRAIN_REASON",
    "ANN_DRAIN_REQUESTED_AT",
    "ANN_REPORTED_AT",
    "ANN_SAFE_TO_EVICT",
    "ANN_SESSIONS",
    "ANN_STATE",
    "BUSY_DELETION_COST",
    "FIELD_MANAGER",
    "GROUP",
    "IDLE_DELETION_COST",
    "KIND",
    "LABEL_BUSY",
    "LABEL_COMPONENT",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_PART_OF",
    "LABEL_POOL",
    "LABEL_TEMPLATE_HASH",
    "MANAGED_BY",
    "PART_OF",
    "PLURAL",
    "VERSION",
    "WORKER_HTTP_PORT",
    "WORKER_NAME",
]

# Labels (app.kubernetes.io/* per the Kubernetes recommended labels).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"

WORKER_NAME: Final = "voicepool-worker"
MANAGED_BY: Final = "voicepool-operator"
PART_OF: Final = "voicepool"

WORKER_HTTP_PORT: Final = 8081
# Plain Prometheus discovery by annotation (setups without the Prometheus Operator's PodMonitor).
PROMETHEUS_ANNOTATIONS: Final = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(WORKER_HTTP_PORT),
    "prometheus.io/path": "/metrics",
}
FIELD_MANAGER: Final = MANAGED_BY
