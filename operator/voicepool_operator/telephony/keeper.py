"""Each pool's SIP sync, run beside its reconcile: the reconcile is the one writer of status.

LiveKit may be slow or away, so the sync never runs inside a reconcile: ``TelephonyKeeper.poll``
starts it in the background when it is due (the spec changed, or ``SYNC_SECONDS`` passed: a
trunk deleted by hand comes back) and returns the last result at once. When a sync ends, the
pool is woken, and the next reconcile writes ``status.telephony`` and folds its problem into
``Degraded`` in the same status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..kube import Kube
from .spec import PoolPhones
from .sync import sync

log = logging.getLogger("voicepool.operator.sip")

#: Drift (a trunk deleted by hand) is corrected within this many seconds.
SYNC_SECONDS = 10.0


@dataclass
class _Phones:
    """What the keeper remembers of one pool."""

    status: dict[str, Any] | None = None  # the last sync's result (None: not yet)
    synced_at: float | None = None
    generation: int | None = None  # the spec generation of the last sync
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def _syncing(state: _Phones) -> bool:
    return state.task is not None and not state.task.done()


class TelephonyKeeper:
    def __init__(
        self,
        kube: Kube,
        wake: Callable[[str, str], None],
        *,
        interval: float = SYNC_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.wake = wake
        self.interval = interval
        self.clock = clock
        self._pools: dict[tuple[str, str], _Phones] = {}

    def poll(
        self, pool: Mapping[str, Any], spec: PoolPhones
    ) -> tuple[Mapping[str, Any] | None, float | None]:
        """(``status.telephony`` to write, seconds until the next sync is due).

        None (and no sync) for a pool that declares no telephony and had none to clean up.
        Until the first sync of this process ends, the status already written stands.
        """
        meta = pool["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        had = (pool.get("status") or {}).get("telephony")
        declared = spec.declared
        state = self._pools.get(key)
        if not declared and state is not None and state.status is not None:
            if not state.status.get("problem") and not _syncing(state):
                self._pools.pop(key, None)  # removed from the spec and cleaned up in LiveKit
                return None, None
        elif not declared and not had:
            return None, None
        state = self._pools.setdefault(key, _Phones())
        generation = int(meta.get("generation") or 0)
        now = self.clock()
        running = _syncing(state)
        due = (
            state.synced_at is None
            or state.generation != generation
            or now - state.synced_at >= self.interval
        )
        if due and not running:
            state.task = asyncio.create_task(self._sync(key, pool, spec, generation))
        shown = state.status if state.status is not None else had
        wait = self.interval if state.synced_at is None else state.synced_at + self.interval - now
        return shown, max(0.5, wait)

    async def _sync(
        self, key: tuple[str, str], pool: Mapping[str, Any], spec: PoolPhones, generation: int
    ) -> None:
        state = self._pools[key]
        before = (
            state.status
            if state.status is not None
            else (pool.get("status") or {}).get("telephony")
        )
        try:
            status = await sync(self.kube, pool, spec)
        except Exception as e:  # never let one pool's LiveKit trouble kill its keeper
            log.warning("%s/%s: SIP sync failed: %s", key[0], key[1], e)
            status = {"problem": f"SIP sync failed: {e}", "reason": "TelephonySyncFailed"}
        status.setdefault("problem", None)
        status.setdefault("reason", None)
        state.status, state.synced_at, state.generation = status, self.clock(), generation
        problem = status.get("problem")
        if problem and (before or {}).get("problem") != problem:
            await self.kube.event(
                pool,
                reason=str(status.get("reason") or "TelephonyDegraded"),
                action="ReconcileTelephony",
                note=str(problem),
                type_="Warning",
            )
        if status != before:
            self.wake(*key)

    def forget(self, namespace: str, name: str) -> None:
        state = self._pools.pop((namespace, name), None)
        if state is not None and state.task is not None:
            state.task.cancel()

    async def close(self) -> None:
        for state in self._pools.values():
            if state.task is not None:
                state.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.task
