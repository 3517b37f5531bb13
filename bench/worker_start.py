"""How long a worker takes from its process start to taking calls, with its known phrases kept
on disk (as shipped) and rendered at every start (``VOICEPOOL_TTS_CACHE_DIR=""``, the way
every start went before).

A worker's start is what a new pod, a restarted container and every test worker pay before
the first call can be offered: the figure is taken from ``Popen`` of ``voicepool-worker`` (the
receptionist on the embedded providers, against a real livekit-server on loopback) to the
first ``200`` from its ``/readyz`` (it has registered with LiveKit), polled every 50 ms. The
two settings alternate, one worker at a time, so a slow moment of the machine falls on both.

    python bench/worker_start.py [--runs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import rewrite  # bench/results.py, next to this script
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.stack import LocalStack, StackConfig

from tests.integration.worker_harness import WorkerProcess, agent_name

SETTINGS = (
    ("kept on disk (as shipped)", {}),
    ("rendered at every start", {"VOICEPOOL_TTS_CACHE_DIR": ""}),
)


def start_s(lk: LiveKitInfo, logs: Path, env: dict[str, str]) -> float:
    """Seconds from the worker's process start to its first ready answer."""
    started = time.monotonic()
    w = WorkerProcess(lk, logs, agent=agent_name(), env=env, name="start")
    try:
        while time.monotonic() - started < 120:
            if w.get("/readyz")[0] == 200:
                return time.monotonic() - started
            if w.proc.poll() is not None:
                raise SystemExit(f"the worker exited while starting:\n{w.tail()}")
            time.sleep(0.05)
        raise SystemExit(f"the worker was not ready within 120 s:\n{w.tail()}")
    finally:
        w.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="workers started per setting")
    parser.add_argument("--no-results", action="store_true", help="do not rewrite the page")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-bench-start-"))
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    stack = LocalStack(StackConfig(workdir=workdir / "stack", kubernetes=False, livekit=True))
    try:
        state = stack.start()
        assert state.livekit is not None
        start_s(state.livekit, workdir, {})  # the first start keeps the phrases on disk
        times: dict[str, list[float]] = {label: [] for label, _ in SETTINGS}
        for i in range(args.runs):
            for label, env in SETTINGS:
                took = start_s(state.livekit, workdir, env)
                times[label].append(took)
                print(f"  run {i + 1}: {label:28} {took:5.2f} s", flush=True)
    finally:
        stack.stop()
    how = (
        "From Popen of the worker (receptionist, embedded providers, real livekit-server on "
        "loopback) to its first 200 from /readyz, polled every 50 ms; the settings alternate."
    )
    table = [
        "| known phrases | start to ready, median | min | max | runs |",
        "|---|---|---|---|---|",
    ]
    for label, _ in SETTINGS:
        t = times[label]
        table.append(
            f"| {label} | {statistics.median(t):.2f} s | {min(t):.2f} s | {max(t):.2f} s "
            f"| {len(t)} |"
        )
    print("\n" + how)
    print("\n".join(table))
    if not args.no_results:
        print(f"rewrote {rewrite('worker_start', [how, '', *table, ''])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
