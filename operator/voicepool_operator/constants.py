"""Names shared by the operator, the chart and the worker: one place, so they cannot drift."""

from __future__ import annotations

from typing import Final

GROUP: Final = "voicepool.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "voiceagentpools"
KIND: Final = "VoiceAgentPool"

# Labels (app.kubernetes.io/* per the Kubernetes recommended labels).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_POOL: Final = f"{GROUP}/pool"
LABEL_TEMPLATE_HASH: Final = f"{GROUP}/template-hash"
# Set by the operator on pods that hold calls; the pool's PodDisruptionBudget selects it.
LABEL_BUSY: Final = f"{GROUP}/busy"

WORKER_NAME: Final = "voicepool-worker"
MANAGED_BY: Final = "voicepool-operator"
PART_OF: Final = "voicepool"

# Reported by the worker on its own pod (one patch per session start/end).
ANN_SESSIONS: Final = f"{GROUP}/sessions"
ANN_CAPACITY: Final = f"{GROUP}/capacity"
ANN_STATE: Final = f"{GROUP}/state"
ANN_REPORTED_AT: Final = f"{GROUP}/reported-at"

# Written by the operator: the drain request the worker obeys like SIGTERM.
ANN_DRAIN: Final = f"{GROUP}/drain"
ANN_DRAIN_REQUESTED_AT: Final = f"{GROUP}/drain-requested-at"
ANN_DRAIN_REASON: Final = f"{GROUP}/drain-reason"

# Hints for the cluster autoscaler and for ReplicaSet-style deleters.
ANN_SAFE_TO_EVICT: Final = "cluster-autoscaler.kubernetes.io/safe-to-evict"
ANN_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
BUSY_DELETION_COST: Final = "10000"
IDLE_DELETION_COST: Final = "-10000"

WORKER_HTTP_PORT: Final = 8081
FIELD_MANAGER: Final = MANAGED_BY
