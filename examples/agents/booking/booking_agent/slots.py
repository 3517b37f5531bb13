"""The practice's free appointment slots, from the calendar file this package ships.

Pure: a ``Calendar`` answers "what is free on <day>?" with the times and the sentence the agent
speaks, so a small model never has to phrase (or garble) a time itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Answer:
    """What ``find_free_slots`` found: the day (None if the caller named none) and its times."""

    day: str | None
    times: tuple[str, ...]
    sentence: str


def day_in(text: str) -> str | None:
    """The first weekday named in ``text`` ("next Tuesday morning" -> "tuesday")."""
    for word in _WORD.findall(text.lower()):
        for day in DAYS:
            if word in (day, day[:3], day + "s"):
                return day
    return None


def _part_of_day(text: str) -> str | None:
    words = set(_WORD.findall(text.lower()))
    if "morning" in words:
        return "AM"
    if words & {"afternoon", "evening"}:
        return "PM"
    return None


def _spoken_list(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class Calendar:
    """The free slots of each weekday (``slots.json``: ``{"free": {"monday": ["9:00 AM"]}}``)."""

    def __init__(self, data: dict[str, Any]) -> None:
        free = data.get("free") or {}
        self.practice = str(data.get("practice") or "the practice")
        self.closed = frozenset(str(d).lower() for d in data.get("closed") or ())
        self.free: dict[str, tuple[str, ...]] = {
            day: tuple(str(t) for t in free.get(day) or ()) for day in DAYS
        }

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calendar:
        """The calendar at ``path``, or the one shipped in this package."""
        if path is not None:
            return cls(json.loads(Path(path).read_text()))
        shipped = resources.files(__package__).joinpath("slots.json").read_text()
        return cls(json.loads(shipped))

    def free_on(self, asked: str) -> Answer:
        """The free slots of the day named in ``asked`` (a morning or afternoon narrows them)."""
        day = day_in(asked)
        if day is None:
            return Answer(None, (), "Which day would you like to come in, Monday to Saturday?")
        name = day.capitalize()
        if day in self.closed:
            return Answer(day, (), f"We are closed on {name}. Would another day suit you?")
        times = self.free[day]
        part = _part_of_day(asked)
        if part is not None:
            times = tuple(t for t in times if t.endswith(part))
        when = {"AM": " morning", "PM": " afternoon"}.get(part or "", "")
        if not times:
            return Answer(day, (), f"Sorry, nothing is free on {name}{when}. Another day perhaps?")
        slots = "slot" if len(times) == 1 else "slots"
        return Answer(
            day,
            times,
            f"On {name}{when} we have free {slots} at {_spoken_list(times)}. "
            "Which one would you like?",
        )
