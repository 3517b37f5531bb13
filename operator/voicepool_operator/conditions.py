"""Status conditions per the Kubernetes API conventions.

`lastTransitionTime` moves only when `status` flips, so `kubectl describe` tells how long a
pool has been in its state; reason/message/observedGeneration follow every reconcile.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The order conditions are shown in; unknown types keep their place after these.
ORDER = ("Ready", "Scaling", "Progressing", "Draining", "Degraded")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: Sequence[Mapping[str, Any]],
    new: Iterable[Condition],
    now: dt.datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """The new conditions, keeping each one's transition time while its status holds."""
    previous = {str(c.get("type")): c for c in old}
    merged: dict[str, dict[str, Any]] = {}
    for cond in new:
        before = previous.get(cond.type)
        since = _iso(now)
        if before is not None and before.get("status") == cond.status:
            since = str(before.get("lastTransitionTime") or since)
        merged[cond.type] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }
    for type_, before in previous.items():  # conditions this reconcile did not speak about
        merged.setdefault(type_, dict(before))

    def key(c: dict[str, Any]) -> tuple[int, str]:
        t = c["type"]
        return (ORDER.index(t) if t in ORDER else len(ORDER), t)

    return sorted(merged.values(), key=key)


def with_degraded(
    conditions: Iterable[Condition], reason: str, problem: str | None
) -> list[Condition]:
    """Fold a problem found outside the planner (telephony, a refused pod create) into
    ``Degraded``: appended to a Degraded that is already True, else it becomes the reason.
    The pool's pods keep being planned as usual: only the condition says what is wrong."""
    out = list(conditions)
    if not problem:
        return out
    for i, cond in enumerate(out):
        if cond.type == "Degraded":
            if cond.status == "True":
                out[i] = Condition("Degraded", "True", cond.reason, f"{cond.message}; {problem}")
            else:
                out[i] = Condition("Degraded", "True", reason, problem)
            return out
    out.append(Condition("Degraded", "True", reason, problem))
    return out
