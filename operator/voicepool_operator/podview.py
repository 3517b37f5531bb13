"""What the planner knows about one pod: plain data parsed from the API object.

Parsing is forgiving on purpose: a garbled annotation (a worker bug, a human `kubectl annotate`)
must never crash the operator; it is read as "unknown" and the pod is treated conservatively.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .constants import (
    ANN_CAPACITY,
    ANN_DELETION_COST,
    ANN_DRAIN,
    ANN_DRAIN_REQUESTED_AT,
    ANN_SAFE_TO_EVICT,
    ANN_SESSIONS,
    ANN_STATE,
    LABEL_BUSY,
    LABEL_TEMPLATE_HASH,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


#: A count is plain ASCII digits (surrounding blanks aside), at most 9 of them; anything else
#: is unreadable (Python's int() would also take "1_000", "+1" and non-ASCII digits).
_COUNT = re.compile(r"[0-9]{1,9}")


def _count(value: Any) -> int | None:
    text = str(value).strip()
    return int(text) if _COUNT.fullmatch(text) else None


def _report_error(ann: Mapping[str, Any]) -> str | None:
    """The raw session count when it is present but unreadable (shortened for messages)."""
    if ANN_SESSIONS not in ann or _count(ann[ANN_SESSIONS]) is not None:
        return None
    raw = repr(str(ann[ANN_SESSIONS]))
    return raw if len(raw) <= 66 else raw[:63] + "..."


@dataclass(frozen=True)
class PodView:
    name: str
    template_hash: str
    created: dt.datetime
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool
    ready_since: dt.datetime | None  # lastTransitionTime of the Ready condition
    terminating: bool
    sessions: int | None  # None: never reported (or unreadable)
    capacity: int | None
    reported_state: str | None  # starting | idle | busy | draining
    drain_requested: bool
    drain_requested_at: dt.datetime | None
    safe_to_evict: str | None
    deletion_cost: str | None
    busy_label: str | None = None  # the operator's voicepool.dev/busy label (PDB selector)
    report_error: str | None = None  # the session count as written, when it is unreadable
    #: Why the worker container cannot run (CrashLoopBackOff, ErrImagePull, ...), from the
    #: kubelet's container status; None while it is fine or not started yet.
    problem: str | None = None

    @property
    def reported(self) -> bool:
        return self.reported_state is not None or self.sessions is not None


#: Container waiting reasons that will not fix themselves without a new spec or image.
PROBLEM_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def container_problem(status: Mapping[str, Any]) -> str | None:
    """The first container's problem in words, e.g. ``CrashLoopBackOff (exit code 2: Error)``."""
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in PROBLEM_REASONS:
            continue
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if last:
            code = last.get("exitCode")
            return f"{reason} (exit code {code}: {last.get('reason') or 'Error'})"
        message = str(waiting.get("message") or "").strip()
        return f"{reason}: {message[:200]}" if message else str(reason)
    return None


def pod_view_from_dict(pod: Mapping[str, Any]) -> PodView:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ann: Mapping[str, Any] = meta.get("annotations") or {}
    labels: Mapping[str, Any] = meta.get("labels") or {}
    ready = False
    ready_since = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = str(cond.get("status")) == "True"
            ready_since = parse_time(cond.get("lastTransitionTime"))
    state = ann.get(ANN_STATE)
    return PodView(
        name=str(meta.get("name")),
        template_hash=str(labels.get(LABEL_TEMPLATE_HASH) or ""),
        created=parse_time(meta.get("creationTimestamp")) or EPOCH,
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        ready_since=ready_since,
        terminating=bool(meta.get("deletionTimestamp")),
        sessions=_count(ann.get(ANN_SESSIONS)) if ANN_SESSIONS in ann else None,
        capacity=_count(ann.get(ANN_CAPACITY)) if ANN_CAPACITY in ann else None,
        reported_state=str(state) if state else None,
        drain_requested=str(ann.get(ANN_DRAIN, "")).strip().lower() == "true",
        drain_requested_at=parse_time(ann.get(ANN_DRAIN_REQUESTED_AT)),
        safe_to_evict=ann.get(ANN_SAFE_TO_EVICT),
        deletion_cost=ann.get(ANN_DELETION_COST),
        busy_label=labels.get(LABEL_BUSY),
        report_error=_report_error(ann),
        problem=container_problem(status),
    )
