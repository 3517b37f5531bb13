"""What the agent will say word for word, so the embedded TTS can cache it ahead of the call.

Its own module because both the forkserver preload (``preload_models``) and the call process
(``agent.prewarm``) need the list, and the agent itself imports the preload.
"""

from __future__ import annotations

from ... import sdk
from . import resilience


def known_phrases(cfg: sdk.Settings) -> list[str]:
    """What the agent will say word for word: the embedded TTS caches it in the background."""
    phrases = [cfg.greeting, *sdk.CALL_CONTROL_PHRASES, resilience.SORRY_TEXT]
    if cfg.llm == "rules":
        from ...providers import dialog

        phrases += dialog.from_config(cfg.dialog_path, cfg.dialog_yaml).known_answers()
    return [p for p in phrases if p.strip()]
