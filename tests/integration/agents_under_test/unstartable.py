"""An agent whose warm processes cannot start until a file appears (a missing binary, a model
that does not load): its ``prewarm`` raises while ``$UNSTARTABLE_UNTIL`` names no file.

The runtime must not stay ready and be offered calls it cannot answer; once a process starts
again (the file exists), it takes calls again.
"""

from __future__ import annotations

import os
from pathlib import Path

from flawed_agents import entrypoint  # joins, speaks (a tone), stays until the caller leaves
from voicepool_worker import sdk


def prewarm(_proc: sdk.JobProcess) -> None:
    if not Path(os.environ["UNSTARTABLE_UNTIL"]).exists():
        raise FileNotFoundError("espeak-ng: not found (the image lacks the team's TTS binary)")


app = sdk.AgentApp(entrypoint=entrypoint, prewarm=prewarm)
