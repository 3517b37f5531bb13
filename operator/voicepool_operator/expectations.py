"""Our own writes, laid over the watch-fed pod index until the watch has caught up with them.

kopf's index lags our writes by a few milliseconds, so a second reconcile right after a create
would create the pod again. An expectation holds the object our write returned, and stands in
for the index's copy while that copy is still the one we wrote over.

resourceVersions are opaque (API conventions): only equality means anything, never order.
So an expectation remembers the versions the *index* may still show without having seen our
latest write: the one it showed when we first wrote, and those of our own earlier writes.
While the index shows one of them the expectation wins; once it shows any other version
(our latest, or a later one by someone else) the index is trusted again. Pure
bookkeeping with an injected clock, unit-tested in tests/unit/test_expectations.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: How long an expectation may stand in for the watch before we trust the index again.
TTL_SECONDS = 30.0

#: The index had no such pod when we wrote (a create).
ABSENT = ""


@dataclass(frozen=True)
class _Expect:
    obj: Mapping[str, Any] | None  # None: we deleted the pod
    stale: frozenset[str]  # index versions that predate our latest write (ABSENT: no pod)
    expires: float


def _rv(obj: Mapping[str, Any] | None) -> str:
    if not obj:
        return ABSENT
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


class Expectations:
    """Per-pool overlay of pods we created, patched or deleted and the watch has not shown."""

    def __init__(
        self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._pending: dict[str, _Expect] = {}
        self._index_rv: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def observe(self, index_pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The index's pods with our not-yet-watched writes laid over them."""
        by_name = {_name(p): p for p in index_pods}
        self._index_rv = {n: _rv(p) for n, p in by_name.items()}
        now = self.clock()
        for name, exp in list(self._pending.items()):
            current = by_name.get(name)
            if now > exp.expires:
                del self._pending[name]
            elif exp.obj is None:  # our delete
                if current is None or current["metadata"].get("deletionTimestamp"):
                    del self._pending[name]
                else:
                    by_name.pop(name)
            elif _rv(current) not in exp.stale:  # the index moved past what we wrote over
                del self._pending[name]
            else:
                by_name[name] = exp.obj
        return list(by_name.values())

    def created(self, obj: Mapping[str, Any]) -> None:
        self._put(_name(obj), obj)

    def patched(self, obj: Mapping[str, Any]) -> None:
        """A patch returned `obj`; stand in for the index's copy until it changes."""
        self._put(_name(obj), obj)

    def deleted(self, name: str) -> None:
        self._put(name, None)

    def _put(self, name: str, obj: Mapping[str, Any] | None) -> None:
        before = self._pending.get(name)
        if before is not None:  # a write over our own unwatched write
            stale = before.stale | ({_rv(before.obj)} if before.obj is not None else set())
        else:
            stale = frozenset({self._index_rv.get(name, ABSENT)})
        self._pending[name] = _Expect(obj, frozenset(stale), self.clock() + self.ttl)
