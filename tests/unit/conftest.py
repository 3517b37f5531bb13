"""What the unit tests share: one clock, a valid pool spec, pods (as the planner sees them and
as the API returns them) and the LiveKit part of a worker's environment.

Plain values and factories (unit tests build their inputs at import time, for parametrize and
hypothesis), imported as ``from .conftest import ...``; each test module only states what
differs from them.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
from voicepool_contract import LABEL_TEMPLATE_HASH
from voicepool_operator.constants import IDLE_DELETION_COST
from voicepool_operator.podview import PodView
from voicepool_operator.spec import PoolSpec, parse_spec

# -- the clock ---------------------------------------------------------------------------------

#: "Now" for every unit test: a Monday, noon UTC (warm-pool schedules are read against it).
NOW = dt.datetime(2026, 3, 2, 12, 0, 0, tzinfo=dt.UTC)


def ago(seconds: float, now: dt.datetime = NOW) -> dt.datetime:
    return now - dt.timedelta(seconds=seconds)


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


# -- the pool spec -----------------------------------------------------------------------------

#: The smallest valid VoiceAgentPool spec.
MINIMAL_SPEC: dict[str, Any] = {
    "agentName": "receptionist",
    "livekit": {"url": "wss://livekit.example:443", "credentialsSecretRef": {"name": "lk"}},
    "template": {"image": "ghcr.io/example/worker:1"},
}


def spec_dict(**changes: Any) -> dict[str, Any]:
    """The minimal valid spec with top-level keys replaced (None removes the key)."""
    out = copy.deepcopy(MINIMAL_SPEC)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def make_spec(
    *,
    min_replicas: int = 0,
    max_replicas: int = 10,
    sessions_per_pod: int = 1,
    idle_sessions: int = 0,
    stabilization: int = 300,
    drain_timeout: int = 600,
    max_surge: int = 1,
    grace: int = 60,
    schedule: list[dict[str, Any]] | None = None,
    time_zone: str = "UTC",
) -> PoolSpec:
    """A parsed spec with the knobs the planner reads, each named."""
    warm: dict[str, Any] = {"idleSessions": idle_sessions, "timeZone": time_zone}
    if schedule is not None:
        warm["schedule"] = schedule
    return parse_spec(
        spec_dict(
            sessionsPerPod=sessions_per_pod,
            minReplicas=min_replicas,
            maxReplicas=max_replicas,
            warmPool=warm,
            scaleDown={"stabilizationWindowSeconds": stabilization},
            drain={"timeoutSeconds": drain_timeout},
            updateStrategy={"maxSurge": max_surge},
            unreadyGraceSeconds=grace,
        )
    )


# -- pods --------------------------------------------------------------------------------------

#: The pool's current template hash, and an older one (a rolling update's old pods).
HASH = "h1"
OLD_HASH = "h0"


def make_pod(name: str, **overrides: Any) -> PodView:
    """A ready idle pod of the current template whose eviction hints are already right."""
    fields: dict[str, Any] = {
        "name": name,
        "template_hash": HASH,
        "created": ago(3600),
        "phase": "Running",
        "ready": True,
        "ready_since": ago(3500),
        "terminating": False,
        "sessions": 0,
        "capacity": 1,
        "reported_state": "idle",
        "drain_requested": False,
        "drain_requested_at": None,
        "safe_to_evict": "true",
        "deletion_cost": IDLE_DELETION_COST,
    }
    fields.update(overrides)
    return PodView(**fields)


def pod_dict(
    name: str = "pool-abc",
    *,
    annotations: Mapping[str, Any] | None = None,
    ready: str | None = "True",
    ready_at: str | None = "2026-03-02T11:59:00Z",
    phase: str | None = "Running",
    created: str = "2026-03-02T11:00:00Z",
    template_hash: str = HASH,
    **meta: Any,
) -> dict[str, Any]:
    """A pod as the API returns it (``ready``/``phase`` None: the field is absent)."""
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if ready is not None:
        condition = {"type": "Ready", "status": ready}
        if ready_at is not None:
            condition["lastTransitionTime"] = ready_at
        status["conditions"] = [{"type": "PodScheduled", "status": "True"}, condition]
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {LABEL_TEMPLATE_HASH: template_hash},
            "annotations": dict(annotations or {}),
            **meta,
        },
        "status": status,
    }


# -- audio -------------------------------------------------------------------------------------


def pcm(value: int, n: int = 480) -> bytes:
    """``n`` samples of 16-bit PCM at one constant ``value`` (480: 10 ms at 48 kHz)."""
    return np.full(n, value, dtype="<i2").tobytes()


# -- the worker's environment ------------------------------------------------------------------

#: What every worker needs from the pod environment: where LiveKit is and its credentials.
LIVEKIT_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "k",
    "LIVEKIT_API_SECRET": "s",
}
