"""What ``make demo`` narrates, and whether it happened: the demo's exit code tells the truth.

Each step the demo tells the user about either happens (``done``) or not (``missed``); a missed
step is narrated as such, the demo goes on to show the rest, and at the end the list of missed
steps is printed and the demo exits 1. It used to say "the agent did not answer" or "no BYE
within 40 s" and still exit 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

EXIT_MISSED = 1


@dataclass
class Story:
    say: Callable[[str], None]
    missed_steps: list[str] = field(default_factory=list)
    #: Called with each missed step (the demo saves the workers' logs while the pods exist).
    on_missed: Callable[[str], None] | None = None

    def done(self, what: str) -> None:
        self.say(what)

    def missed(self, what: str) -> None:
        """A step that did not happen: said now, and counted against the exit code."""
        self.missed_steps.append(what)
        self.say(f"NOT AS NARRATED: {what}")
        if self.on_missed is not None:
            self.on_missed(what)

    def check(self, ok: bool, done: str, missed: str) -> bool:
        (self.done if ok else self.missed)(done if ok else missed)
        return ok

    def summary(self) -> list[str]:
        if not self.missed_steps:
            return ["every step happened as narrated"]
        return [f"{len(self.missed_steps)} step(s) did not happen as narrated:"] + [
            f"  - {m}" for m in self.missed_steps
        ]

    def exit_code(self) -> int:
        return EXIT_MISSED if self.missed_steps else 0
