"""Render the receptionist's known phrases into the worker image, once, at its build.

Every worker start used to render them (about 90 s of speech, ~7 s of one core) in the
forkserver before it could take a call; kept on disk, a restart reads them back, but a new pod
starts with an empty ``/tmp``. ``worker/Dockerfile`` runs this in its build stage, so the image
carries them in ``clause_store.shipped_dir()`` and a new pod starts without rendering the
default phrases (a pool's own greeting or dialog is rendered at its first start, as before).

    python -m voicepool_worker.agents.receptionist.seed_phrases [FOLDER]
"""

from __future__ import annotations

import os
import sys
import time

from ... import sdk
from ...providers import piper_tts
from ...providers.clause_store import shipped_dir
from .phrases import known_phrases

#: The settings parser wants a LiveKit server; rendering the phrases never contacts one.
_NO_LIVEKIT = {
    "LIVEKIT_URL": "ws://image-build.invalid",
    "LIVEKIT_API_KEY": "unused",
    "LIVEKIT_API_SECRET": "unused",
}


def main(argv: list[str]) -> int:
    folder = argv[0] if argv else str(shipped_dir())
    cfg = sdk.load_settings({**_NO_LIVEKIT, **os.environ})
    if "piper" not in cfg.tts_chain or cfg.tts_cache <= 0:
        print("seed_phrases: the embedded piper TTS and its cache are off: nothing to render")
        return 0
    phrases = known_phrases(cfg)
    started = time.monotonic()
    piper_tts.preload(phrases, cache_size=cfg.tts_cache, threads=1, store_dir=folder)
    kept = len(list(os.scandir(folder))) if os.path.isdir(folder) else 0
    print(
        f"seed_phrases: {len(phrases)} phrases rendered into {folder} ({kept} clauses) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
