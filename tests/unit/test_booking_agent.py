"""The example team agent's pure parts: the shipped calendar's answers and the tool routing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from booking_agent.intents import tool_for
from booking_agent.slots import Calendar, day_in


def test_the_shipped_calendar_answers_with_exact_times() -> None:
    cal = Calendar.load()
    answer = cal.free_on("Tuesday")
    assert answer.day == "tuesday" and answer.times == ("9:30 AM", "2:15 PM")
    assert answer.sentence.startswith("On Tuesday we have free slots at 9:30 AM and 2:15 PM.")
    one = cal.free_on("wednesday")
    assert "free slot at 10:00 AM." in one.sentence


@pytest.mark.parametrize(
    ("asked", "day", "times"),
    [
        ("Friday", "friday", ("11:00 AM",)),
        ("next thursday afternoon", "thursday", ("1:00 PM", "3:30 PM")),
        ("Monday morning", "monday", ("9:00 AM", "11:30 AM")),
        ("mon", "monday", ("9:00 AM", "11:30 AM", "4:00 PM")),
        ("Saturday", "saturday", ()),
        ("Sunday", "sunday", ()),
        ("tomorrow", None, ()),
    ],
)
def test_free_on_reads_the_day_from_what_the_model_passed(
    asked: str, day: str | None, times: tuple[str, ...]
) -> None:
    answer = Calendar.load().free_on(asked)
    assert (answer.day, answer.times) == (day, times)
    assert answer.sentence  # always something to say


def test_closed_days_and_full_days_say_so() -> None:
    cal = Calendar.load()
    assert "closed on Sunday" in cal.free_on("sunday").sentence
    assert "nothing is free on Saturday" in cal.free_on("saturday").sentence
    assert "Which day" in cal.free_on("soon").sentence


def test_a_calendar_file_of_your_own(tmp_path: Path) -> None:
    path = tmp_path / "slots.json"
    path.write_text(json.dumps({"practice": "X", "free": {"monday": ["8:00 AM"]}}))
    assert Calendar.load(path).free_on("Monday").times == ("8:00 AM",)


def test_day_in_finds_the_first_weekday() -> None:
    assert day_in("Is Tuesday or Friday better?") == "tuesday"
    assert day_in("Which slots are free on Tuesdays?") == "tuesday"
    assert day_in("sometime next week") is None


@pytest.mark.parametrize(
    ("said", "tool"),
    [
        ("Which slots are free on Tuesday?", "find_free_slots"),
        ("Do you have anything available on Friday morning?", "find_free_slots"),
        ("I'd like to book an appointment", "find_free_slots"),
        ("When can I come on Monday", "find_free_slots"),
        ("Thank you, goodbye.", "end_call"),
        ("What are your opening hours?", None),
        ("Where are you located?", None),
    ],
)
def test_tool_for_routes_what_the_caller_asks(said: str, tool: str | None) -> None:
    assert tool_for(said) == tool
