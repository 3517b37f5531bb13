"""``voicepool-worker`` (and ``python -m voicepool_worker.main``): the runtime's entry point."""

from __future__ import annotations

from .runtime.server import main

if __name__ == "__main__":
    main()
