"""The one results page (docs/results.md) every bench rewrites its own section of.

A section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; a run replaces
its bench's section whole (the last run's figures, with when, where and how they were taken),
and leaves the others as they are. Figures live there, not in dated paragraphs of the docs.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "results.md"
HEADER = """# Results

The figures of the last run of each benchmark, rewritten by the bench itself (`make bench`).
How each figure is taken: [worker.md](worker.md) ("The voice loop") and the bench's own
output. Figures taken on a shared machine carry its load average: on 2 cores, every latency
taken beside other work is inflated.
"""


@dataclass(frozen=True)
class Goal:
    """One goal of the voice loop with what this run measured, beside the baseline."""

    name: str
    target: str
    value: str
    baseline: str
    ok: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "not measured" if self.ok is None else ("met" if self.ok else "MISSED")


def goal_table(goals: Sequence[Goal]) -> list[str]:
    out = [
        "| goal | target | as shipped | baseline (same run) | verdict |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {g.name} | {g.target} | {g.value} | {g.baseline} | {g.verdict} |" for g in goals]
    return out


def rewrite(name: str, body: Sequence[str], page: Path = PAGE) -> Path:
    """Replace bench ``name``'s section of the results page with ``body``."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    section = [
        f"<!-- bench:{name} -->",
        f"## {name}",
        "",
        f"`{' '.join(['python', *sys.argv])}` -- {stamp}, load average {load:.2f} at the end "
        f"({os.cpu_count()} cores)",
        "",
        *body,
        f"<!-- /bench:{name} -->",
    ]
    text = page.read_text() if page.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n?", re.S
    )
    block = "\n".join(section) + "\n"
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{block}"
    )
    page.write_text(text)
    return page
