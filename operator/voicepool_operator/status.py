"""The pool's status as data, and its codec to and from the API's camelCase status.

Pure: the planner returns a `PoolStatus`; the reconciler writes `to_status_dict()` and reads
the stabilization history back with `history_from_status` after a restart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any


def camel_case(name: str) -> str:
    """A Python field name as the API spells it: ``session_capacity`` -> ``sessionCapacity``."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


@dataclass(frozen=True)
class Recommendation:
    """A raw desired-replica value and when it was first computed (stabilization history)."""

    time: dt.datetime
    desired: int


@dataclass(frozen=True)
class PoolStatus:
    replicas: int = 0
    ready_pods: int = 0
    idle_pods: int = 0
    busy_pods: int = 0
    draining_pods: int = 0
    starting_pods: int = 0
    unknown_pods: int = 0
    unreported_pods: int = 0
    terminating_pods: int = 0
    updated_pods: int = 0
    active_sessions: int = 0
    session_capacity: int = 0
    idle_capacity: int = 0
    desired_replicas: int = 0
    warm_target: int = 0
    template_hash: str = ""

    def to_status_dict(self) -> dict[str, Any]:
        """Every field under its API name (``ready_pods`` is ``readyPods``)."""
        return {camel_case(f.name): getattr(self, f.name) for f in fields(self)}


def iso(t: dt.datetime) -> str:
    """Second-resolution RFC 3339 UTC, as the API writes times."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_from_status(status: Mapping[str, Any]) -> list[Recommendation]:
    """Scale recommendations persisted in status, so a restart keeps the stabilization window."""
    out: list[Recommendation] = []
    for item in status.get("scaleHistory") or []:
        try:
            when = dt.datetime.fromisoformat(str(item["time"]).replace("Z", "+00:00"))
            out.append(Recommendation(time=when, desired=int(item["desired"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def history_to_status(history: Iterable[Recommendation]) -> list[dict[str, Any]]:
    return [{"time": iso(r.time), "desired": r.desired} for r in history]
