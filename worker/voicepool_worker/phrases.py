"""What the agent will say word for word, so the embedded TTS can cache it ahead of the call.

Its own module because both the forkserver preload (``preload_models``) and the call process
(``agent.prewarm``) need the list, and the agent itself imports the preload.
"""

from __future__ import annotations

from . import config, resilience
from .callcontrol import (
    GOODBYE_TEXT,
    HOLD_TEXT,
    IDLE_PROMPT_TEXT,
    MAX_LENGTH_TEXT,
    TRANSFER_FAILED_TEXT,
)


def known_phrases(cfg: config.WorkerConfig) -> list[str]:
    """What the agent will say word for word: the embedded TTS caches it in the background."""
    phrases = [cfg.greeting, HOLD_TEXT, TRANSFER_FAILED_TEXT, GOODBYE_TEXT, resilience.SORRY_TEXT]
    phrases += [IDLE_PROMPT_TEXT, MAX_LENGTH_TEXT]
    if cfg.llm == "rules":
        from . import dialog

        phrases += dialog.from_config(cfg.dialog_path, cfg.dialog_yaml).known_answers()
    return [p for p in phrases if p.strip()]
