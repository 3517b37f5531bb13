"""An agent whose warm processes take long to start (a large model loading): its ``prewarm``
writes ``$SLOW_START_UNTIL.started``, then waits until ``$SLOW_START_UNTIL`` exists (at most
five minutes).

A pod deleted while it starts (a scale-down, a rollout, a node drain) has no call to wait for:
the runtime must exit on SIGTERM at once, not when its processes are done starting.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flawed_agents import entrypoint  # joins, speaks (a tone), stays until the caller leaves
from voicepool_worker import sdk


def prewarm(_proc: sdk.JobProcess) -> None:
    until = Path(os.environ["SLOW_START_UNTIL"])
    Path(f"{until}.started").touch()
    deadline = time.monotonic() + 300
    while not until.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


app = sdk.AgentApp(entrypoint=entrypoint, prewarm=prewarm)
