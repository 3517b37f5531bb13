"""Pure bookkeeping of one worker's calls: capacity, registration, draining -> pod annotations.

Nothing here talks to LiveKit or Kubernetes, so every transition is unit-tested with plain
data. The glue (``main.py``) feeds it events and writes the ``PodReport`` it returns -- exactly
one merge-patch per session start/end, because the operator counts on that contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

# The names the operator reads live in one shared module (re-exported for the worker).
from voicepool_contract import (
    ANN_CAPACITY as ANN_CAPACITY,
)
from voicepool_contract import (
    ANN_DRAIN as ANN_DRAIN,
)
from voicepool_contract import (
    ANN_DRAIN_REASON as ANN_DRAIN_REASON,
)
from voicepool_contract import (
    ANN_REPORTED_AT as ANN_REPORTED_AT,
)
from voicepool_contract import (
    ANN_SESSIONS as ANN_SESSIONS,
)
from voicepool_contract import (
    ANN_STATE as ANN_STATE,
)
from voicepool_contract import (
    REPORTED_KEYS as REPORTED_KEYS,
)


class State(enum.StrEnum):
    """What the operator reads in ``voicepool.dev/state``."""

    STARTING = "starting"  # not yet registered with LiveKit
    IDLE = "idle"  # registered, no calls
    BUSY = "busy"  # at least one call in progress
    DRAINING = "draining"  # accepts nothing new; exits when its calls end


def rfc3339(now: datetime) -> str:
    """Second-resolution UTC timestamp, e.g. ``2026-11-25T10:00:00Z``."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def drain_requested(annotations: dict[str, str] | None) -> bool:
    """The operator's drain request, read from the pod's annotations."""
    return (annotations or {}).get(ANN_DRAIN, "").strip().lower() == "true"


#: livekit-server offers a job only to a worker whose reported load is below its
#: ``agents.target_load`` (0.7 unless configured; its job-request affinity is
#: ``target_load - load``), so a worker reporting its plain fill (calls / capacity) was offered
#: no call once 70 % full: 3 of 4 sessions, 8 of 10. The runtime reports its fill scaled to it.
LIVEKIT_TARGET_LOAD = 0.7


def reported_load(fill: float) -> float:
    """The load LiveKit sees for a fill of 0.0 (idle) .. 1.0 (full): below the target until full."""
    return min(1.0, max(0.0, fill)) * LIVEKIT_TARGET_LOAD


def load_threshold(capacity: int) -> float:
    """Threshold for LiveKit's ``load_fnc`` so the worker is FULL exactly at ``capacity``.

    The load is ``reported_load(active / capacity)``. Half a session below the next step keeps
    the comparison robust against float rounding: ``load >= threshold`` iff ``active >=
    capacity``.
    """
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    return reported_load((capacity - 0.5) / capacity)


#: Job processes that failed to start one after the other before the worker stops taking calls
#: (unready, reported full): livekit-agents retries a failing start forever while the worker
#: stays registered, so without this a pod whose agent cannot start (a missing binary, a model
#: that does not load) would be offered call after call and answer none.
BROKEN_AFTER_FAILED_STARTS = 3


#: The longest wait before a call process runs the agent's prewarm once starts keep failing.
START_BACKOFF_MAX_S = 30.0


def start_backoff_s(failed_starts: int, timeout_s: float) -> float:
    """How long a new call process waits before it runs the agent's prewarm: nothing while
    starts succeed; once the worker is unready for failed starts, 1, 2, 4 ... 30 s (at most
    half the start timeout), so a broken agent is retried a few times a minute, not ten times a
    second with a traceback each."""
    over = failed_starts - BROKEN_AFTER_FAILED_STARTS
    if over < 0:
        return 0.0
    return float(min(2.0 ** min(over, 16), _backoff_cap_s(timeout_s)))


def _backoff_cap_s(timeout_s: float) -> float:
    return min(START_BACKOFF_MAX_S, timeout_s / 2)


def start_deadline_s(timeout_s: float) -> float:
    """livekit-agents' limit on a process start: the agent's prewarm gets its whole timeout
    after the longest backoff wait, so a slow prewarm that failed for a while can still start."""
    return timeout_s + _backoff_cap_s(timeout_s)


@dataclass(frozen=True)
class PodReport:
    """One merge-patch worth of annotations, and why it is being written."""

    reason: str
    annotations: dict[str, str]


@dataclass(frozen=True)
class Sessions:
    """Immutable snapshot of the worker's calls; every transition returns a new snapshot."""

    capacity: int
    active: frozenset[str] = field(default_factory=frozenset)
    registered: bool = False
    draining: bool = False
    drain_reason: str = ""
    started_total: int = 0
    ended_total: int = 0
    failed_total: int = 0
    #: job processes that failed to start in a row (one that starts resets it)
    failed_starts: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")

    # -- derived views -------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self.active)

    @property
    def state(self) -> State:
        if self.draining:
            return State.DRAINING
        if not self.registered:
            return State.STARTING
        return State.BUSY if self.active else State.IDLE

    @property
    def broken(self) -> bool:
        """Its job processes keep failing to start: no call could be answered here."""
        return self.failed_starts >= BROKEN_AFTER_FAILED_STARTS

    @property
    def ready(self) -> bool:
        """Readiness: registered with LiveKit and still taking calls (full is still ready)."""
        return self.registered and not self.draining and not self.broken

    @property
    def unready_reason(self) -> str:
        """Why ``ready`` is false, in words for ``/readyz`` (empty when ready)."""
        if self.broken:
            return f"job processes fail to start: {self.failed_starts} in a row"
        return "" if self.ready else self.state.value

    @property
    def accepting(self) -> bool:
        """Whether a new job may be accepted right now."""
        return self.ready and self.count < self.capacity

    @property
    def load(self) -> float:
        """Count-based load for LiveKit (not CPU): 0.0 idle .. 1.0 full."""
        return min(1.0, self.count / self.capacity)

    @property
    def drained(self) -> bool:
        """A draining worker with no calls left may exit."""
        return self.draining and not self.active

    def annotations(self, now: datetime) -> dict[str, str]:
        """All reported annotations together, so a reader never sees a half-updated set.

        The eviction hints (safe-to-evict, deletion cost) are the operator's alone: it writes
        them from these reports, so one value never has two writers."""
        return {
            ANN_SESSIONS: str(self.count),
            ANN_CAPACITY: str(self.capacity),
            ANN_STATE: self.state.value,
            ANN_REPORTED_AT: rfc3339(now),
        }

    # -- transitions: (new snapshot, report to write or None) -----------------------------

    def register(self, now: datetime) -> tuple[Sessions, PodReport | None]:
        """First registration reports once (starting -> idle); re-registrations are silent."""
        if self.registered:
            return self, None
        nxt = replace(self, registered=True)
        return nxt, PodReport("registered", nxt.annotations(now))

    def start(self, job_id: str, now: datetime) -> tuple[Sessions, PodReport | None]:
        """A job was launched. Duplicate ids are ignored (no second patch)."""
        if job_id in self.active:
            return self, None
        nxt = replace(self, active=self.active | {job_id}, started_total=self.started_total + 1)
        return nxt, PodReport(f"session {job_id} started", nxt.annotations(now))

    def end(
        self, job_id: str, now: datetime, *, failed: bool = False
    ) -> tuple[Sessions, PodReport | None]:
        """A job's process closed. Unknown ids are ignored (no patch)."""
        if job_id not in self.active:
            return self, None
        nxt = replace(
            self,
            active=self.active - {job_id},
            ended_total=self.ended_total + 1,
            failed_total=self.failed_total + (1 if failed else 0),
        )
        word = "failed" if failed else "ended"
        return nxt, PodReport(f"session {job_id} {word}", nxt.annotations(now))

    def process_started(self, ok: bool) -> Sessions:
        """A job process finished starting (``ok``) or failed to (its prewarm raised or timed
        out). No report: readiness and the load LiveKit sees change, the annotations do not."""
        if ok:
            return replace(self, failed_starts=0) if self.failed_starts else self
        return replace(self, failed_starts=self.failed_starts + 1)

    def drain(self, reason: str, now: datetime) -> tuple[Sessions, PodReport | None]:
        """SIGTERM and the drain annotation land here alike; only the first one reports."""
        if self.draining:
            return self, None
        nxt = replace(self, draining=True, drain_reason=reason)
        return nxt, PodReport(f"draining ({reason})", nxt.annotations(now))
