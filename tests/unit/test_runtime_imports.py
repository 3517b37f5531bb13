"""The worker's main module must not import prometheus-client before ``main()`` runs.

prometheus-client picks its multiprocess mode when it is first imported; ``main()`` sets
``PROMETHEUS_MULTIPROC_DIR`` first thing. Imported earlier (livekit-agents imports it), the
main process keeps its counters in memory, and /metrics (which reads the directory) shows none
of its sessions, capacity or pod reports.
"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_worker_entry_point_leaves_prometheus_client_unimported() -> None:
    probe = (
        "import sys, voicepool_worker.runtime.server; "
        "print(sorted(m for m in ('prometheus_client', 'livekit.agents') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
