"""Progress lines for long steps: the first build takes many minutes on 2 cores, so every step
says what it does. One type and one printer for every devstack module (and the llama build)."""

from __future__ import annotations

import sys
from collections.abc import Callable

#: Where a step reports what it is doing (a line without the trailing newline).
Progress = Callable[[str], None]


def to_stderr(tag: str = "devstack") -> Progress:
    """A printer of ``[tag] message`` lines on stderr, flushed at once (builds run for minutes)."""

    def emit(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    return emit


#: The default for every devstack step.
stderr_progress: Progress = to_stderr()
