"""``make demo``: bring up the embedded stack, show it working, tear it down.

It grows with the operator: once the operator is installed it applies ``examples/pool.yaml``
and shows the pool's status while synthetic sessions come and go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import DevstackError
from .stack import LocalStack, StackConfig
from .versions import KUBERNETES


def kubectl(kubeconfig: str, *args: str) -> None:
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    subprocess.run(
        [str(KUBERNETES.path("kubectl")), *args],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        check=True,
    )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-demo-"))
    try:
        with LocalStack(StackConfig(workdir=workdir)) as stack:
            kc = stack.state.kubeconfig
            assert kc is not None
            kubectl(kc, "version")
            kubectl(kc, "get", "nodes", "-o", "wide")
            kubectl(kc, "api-resources", "--api-group=")
            lk = stack.state.livekit
            if lk:
                print(f"\nlivekit-server is serving on {lk.url}")
        print("\ndemo finished; everything was stopped and cleaned up")
        return 0
    except DevstackError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
