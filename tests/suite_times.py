"""A per-suite time table at the end of every run: where the suite's minutes go.

Written as JSON too when ``VOICEPOOL_SUITE_TIMES`` names a file (``make test``'s lanes). A
suite is one test module; its time is the wall time of its tests' setup, call and teardown
(module and session fixtures count where they run: the first module to use the local stack pays
for starting it). Registered as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import pytest

_spent: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_failed: dict[str, int] = defaultdict(int)
_started = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    suite = report.nodeid.split("::", 1)[0]
    _spent[suite] += report.duration
    if report.when == "call":
        _counts[suite] += 1
    if report.failed:
        _failed[suite] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _spent:
        return
    wall = time.monotonic() - _started
    tr = terminalreporter
    tr.section("time per suite (setup + call + teardown, wall seconds)")
    width = max(len(s) for s in _spent)
    for suite, seconds in sorted(_spent.items(), key=lambda kv: -kv[1]):
        flag = f"  {_failed[suite]} failed" if _failed[suite] else ""
        tr.write_line(f"{suite:<{width}}  {seconds:7.1f} s  {_counts[suite]:4d} tests{flag}")
    total = sum(_spent.values())
    tr.write_line(f"{'all suites':<{width}}  {total:7.1f} s  (session wall time {wall:.0f} s)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``VOICEPOOL_SUITE_TIMES=<file>``: the table as JSON too (tests/lanes.py joins lanes)."""
    path = os.environ.get("VOICEPOOL_SUITE_TIMES")
    if not path:
        return
    table = {
        suite: {"seconds": round(seconds, 1), "tests": _counts[suite], "failed": _failed[suite]}
        for suite, seconds in _spent.items()
    }
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
