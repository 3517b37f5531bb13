"""The scripted receptionist, pure: a call's history of turns in, the next reply (and action) out.

Intents, answers, facts and the booking slots come from a YAML file the user supplies
(``VOICEPOOL_DIALOG``; ``dialog_default.yaml`` otherwise). Understanding is clause by clause:
a sentence is split into clauses, each clause scores every intent by the weighted keywords it
contains (stemmed, so "opening" matches "open"), and the turn is decided from all of them:

* questions win over pleasantries and over hang-up ("thanks, what are your opening hours"
  answers the hours); two questions in one sentence are both answered;
* a booking collects ``day``, ``time`` and ``name`` over as many turns as it takes, asking for
  what is missing; it never outranks what the caller says next: a question is answered (the
  missing slot asked again once, while the booking is fresh), a request for a person
  transfers, a goodbye ends the call, "never mind" drops it (``_pending_booking``);
* a weak match is asked back ("Are you asking about our prices?"); "yes" then answers it;
* hang-up and transfer are *actions* on the reply: the caller of ``respond`` carries them out
  (``dialog_actions.py``), this module never does I/O.

The state is rebuilt by replaying the caller's turns, so the same history always gives the same
reply and nothing is stored between turns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

KINDS = ("question", "booking", "social", "hangup", "transfer", "repeat")
ACTIONS = ("hangup", "transfer")
SLOTS = ("day", "time", "name")
SURE = 1.0
UNSURE = 0.4
MAX_ANSWERS = 2
DEFAULT_CANCEL = "All right, I won't book anything then. Is there anything else I can help with?"
DEFAULT_PATH = Path(__file__).with_name("dialog_default.yaml")

_SUFFIXES = ("ations", "ation", "ings", "ing", "ions", "ion", "ed", "es", "s", "e")
_CLAUSE_SPLIT = re.compile(r"[,.;!?]+|\b(?:and|but|also|then|actually|oh|plus)\b")
_YES = frozenset(
    [
        "yes",
        "yeah",
        "yep",
        "yup",
        "sure",
        "correct",
        "right",
        "exactly",
        "please",
        "ok",
        "okay",
        "indeed",
    ]
)
_NO = frozenset(["no", "nope", "nah", "not", "wrong"])
#: a caller who drops a booking: one of these words, or a bare "no" (``_cancels``)
_CANCEL_WORDS = frozenset(["cancel", "nevermind"])
_CANCEL_PHRASES = ("never mind", "forget it", "forget about it", "don't bother", "not anymore")
_DECLINE_OPENERS = frozenset(["no", "nope", "nah"])
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
        ]
    )
}
_NAME_INTRO = re.compile(r"\b(?:my name is|my name's|name is|this is|call me|it's|i'm|i am)\s+(.+)")
_MINUTES = {"fifteen": 15, "thirty": 30, "forty five": 45, "forty-five": 45, "o'clock": 0}
_NOT_NAMES = frozenset(
    [
        "yes",
        "no",
        "yeah",
        "ok",
        "okay",
        "sure",
        "the",
        "a",
        "an",
        "it",
        "its",
        "it's",
        "is",
        "this",
        "that",
        "i",
        "i'm",
        "im",
        "me",
        "my",
        "name",
        "please",
        "thanks",
        "thank",
        "you",
        "um",
        "uh",
        "hello",
        "hi",
        "well",
        "so",
        "just",
        "call",
    ]
)


class DialogError(ValueError):
    """A bad dialog file; the message names the file and the problem in one line."""


def stem(word: str) -> str:
    """Crude, consistent suffix stripping: keywords and caller words go through the same."""
    word = word.strip("'")
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9':]+", " ", text.lower()).split()


def stems(text: str) -> tuple[str, ...]:
    return tuple(stem(w) for w in words(text))


def clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE_SPLIT.split(text.lower()) if c and c.strip()]


@dataclass(frozen=True)
class Intent:
    name: str
    kind: str
    keywords: tuple[tuple[tuple[str, ...], float], ...]
    answer: str = ""
    label: str = ""
    ask: Mapping[str, str] = field(default_factory=dict)
    cancel: str = ""  # a booking's reply when the caller drops it

    def score(self, clause_stems: tuple[str, ...]) -> float:
        """Sum of the weights of the keywords (word sequences) found in the clause."""
        total = 0.0
        n = len(clause_stems)
        for phrase, weight in self.keywords:
            k = len(phrase)
            if any(clause_stems[i : i + k] == phrase for i in range(n - k + 1)):
                total += weight
        return total


@dataclass(frozen=True)
class Dialog:
    intents: tuple[Intent, ...]
    facts: Mapping[str, str]
    fallback: str
    clarify: str
    business: str = ""

    def intent(self, name: str) -> Intent:
        return next(i for i in self.intents if i.name == name)

    def render(self, template: str, slots: Mapping[str, str] | None = None) -> str:
        values = {**self.facts, **(slots or {})}
        try:
            return " ".join(template.format(**values).split())
        except (KeyError, IndexError, ValueError):
            return " ".join(template.split())

    def known_answers(self) -> list[str]:
        """Everything said word for word (the TTS may synthesise these ahead of a call)."""
        out = [self.render(i.answer) for i in self.intents if i.answer and i.kind != "booking"]
        for i in self.intents:
            out += [a for a in i.ask.values() if "{" not in a]
            if i.cancel:
                out.append(self.render(i.cancel))
            if i.kind in ("question", "booking", "transfer"):
                out.append(self.render(self.clarify, {"label": i.label}))
        return [*out, self.fallback]


def _keywords(raw: Any, where: str) -> tuple[tuple[tuple[str, ...], float], ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise DialogError(f"{where}: keywords must be a non-empty mapping of word -> weight")
    out = []
    for phrase, weight in raw.items():
        if not isinstance(weight, int | float) or weight <= 0:
            raise DialogError(f"{where}: keyword {phrase!r} needs a positive weight")
        st = stems(str(phrase))
        if not st:
            raise DialogError(f"{where}: keyword {phrase!r} has no words")
        out.append((st, float(weight)))
    return tuple(out)


def parse(data: Any, source: str = "dialog") -> Dialog:
    """Validate a loaded YAML document; the first problem is raised as a DialogError."""
    if not isinstance(data, Mapping):
        raise DialogError(f"{source}: the top level must be a mapping")
    facts = data.get("facts") or {}
    if not isinstance(facts, Mapping):
        raise DialogError(f"{source}: facts must be a mapping")
    raw_intents = data.get("intents")
    if not isinstance(raw_intents, list) or not raw_intents:
        raise DialogError(f"{source}: intents must be a non-empty list")
    intents: list[Intent] = []
    for n, raw in enumerate(raw_intents):
        if not isinstance(raw, Mapping) or not raw.get("name"):
            raise DialogError(f"{source}: intent #{n + 1} needs a name")
        name = str(raw["name"])
        where = f"{source}: intent {name!r}"
        kind = str(raw.get("kind", "question"))
        if kind not in KINDS:
            raise DialogError(f"{where}: kind {kind!r} is not one of: {', '.join(KINDS)}")
        answer = str(raw.get("answer") or "")
        if kind != "repeat" and not answer:
            raise DialogError(f"{where}: needs an answer")
        ask = {str(k): str(v) for k, v in (raw.get("ask") or {}).items()}
        if kind == "booking" and set(ask) != set(SLOTS):
            raise DialogError(f"{where}: a booking asks for exactly: {', '.join(SLOTS)}")
        intents.append(
            Intent(
                name=name,
                kind=kind,
                keywords=_keywords(raw.get("keywords"), where),
                answer=answer,
                label=str(raw.get("label") or name),
                ask=ask,
                cancel=str(raw.get("cancel") or DEFAULT_CANCEL) if kind == "booking" else "",
            )
        )
    if len({i.name for i in intents}) != len(intents):
        raise DialogError(f"{source}: two intents share a name")
    return Dialog(
        intents=tuple(intents),
        facts={str(k): " ".join(str(v).split()) for k, v in facts.items()},
        fallback=" ".join(str(data.get("fallback") or "Sorry, I didn't get that.").split()),
        clarify=str(data.get("clarify") or "Are you asking about {label}?"),
        business=str(data.get("business") or ""),
    )


def loads(text: str, source: str = "VOICEPOOL_DIALOG_YAML") -> Dialog:
    """A dialog from YAML text (e.g. a ConfigMap key passed in through the environment)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DialogError(f"{source} is not valid YAML: {e}".split("\n")[0]) from None
    return parse(data, source=source)


def from_config(path: str | None, text: str | None) -> Dialog:
    """``VOICEPOOL_DIALOG_YAML`` (inline) wins over ``VOICEPOOL_DIALOG`` (a file path)."""
    return loads(text) if text else load(path)


def load(path: str | Path | None = None) -> Dialog:
    """The dialog of ``path`` (``VOICEPOOL_DIALOG``), else the default receptionist."""
    p = Path(path) if path else DEFAULT_PATH
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise DialogError(f"cannot read dialog file {str(p)!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise DialogError(f"dialog file {str(p)!r} is not valid YAML: {e}".split("\n")[0]) from None
    return parse(data, source=str(p))


# -- slots ------------------------------------------------------------------------------------


def _hour_label(hour: int, minute: int, meridiem: str | None) -> str:
    if meridiem is None:  # a dental practice: 1-6 is the afternoon, 7-11 the morning
        meridiem = "PM" if hour == 12 or 1 <= hour <= 6 else "AM"
    return f"{hour}:{minute:02d} {meridiem}" if minute else f"{hour} {meridiem}"


def find_day(text: str) -> str | None:
    """The weekday named last ("move it from monday to thursday": Thursday), else
    tomorrow / today."""
    ws = words(text)
    days = [b for w in ws if (b := w.rstrip("s") if w.endswith("days") else w) in _WEEKDAYS]
    if days:
        return days[-1].capitalize()
    if "tomorrow" in ws:
        return "tomorrow"
    if "today" in ws:
        return "today"
    return None


def find_time(text: str) -> str | None:
    t = " " + " ".join(words(text.replace(".", ""))) + " "
    t = t.replace(" a m ", " am ").replace(" p m ", " pm ")
    if " noon " in t or " midday " in t:
        return "12 PM"
    m = re.search(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b", t) or re.search(
        r"\b(?:at|around|about|by)\s+(\d{1,2})(?::(\d{2}))?\b", t
    )
    if m:
        hour = int(m.group(1))
        minute = int(m.group(2) or 0)
        mer = m.group(3).upper() if m.lastindex and m.lastindex >= 3 and m.group(3) else None
        if 1 <= hour <= 12 and minute < 60:
            return _hour_label(hour, minute, mer)
    number = "|".join(_NUMBERS)
    minutes = "|".join(re.escape(k) for k in _MINUTES)
    m = re.search(rf"\bhalf past ({number})\b", t)
    if m and _NUMBERS[m.group(1)] >= 1:
        return _hour_label(_NUMBERS[m.group(1)], 30, None)
    m = re.search(rf"\b({number})(?: ({minutes}))?(?: (am|pm))?\b", t)
    if m and _NUMBERS[m.group(1)] >= 1:
        has_context = bool(m.group(2) or m.group(3)) or re.search(
            rf"\b(?:at|around|about|by) {m.group(1)}\b", t
        )
        if has_context:
            minute = _MINUTES.get(m.group(2) or "", 0)
            mer = m.group(3).upper() if m.group(3) else None
            return _hour_label(_NUMBERS[m.group(1)], minute, mer)
    return None


def find_name(text: str, expecting: bool) -> str | None:
    """``my name is Ann Lee`` anywhere; a bare short answer when the agent just asked."""
    ws = [w for w in words(text) if w not in ("um", "uh", "er")]
    joined = " ".join(ws)
    m = _NAME_INTRO.search(joined)
    candidate: list[str] = []
    if m and (expecting or not joined.startswith(("it's", "i'm", "i am"))):
        candidate = m.group(1).split()
    elif expecting and 1 <= len(ws) <= 3:
        candidate = ws
    candidate = [w for w in candidate[:2] if w not in _NOT_NAMES and w.isalpha()]
    if not candidate or (m is None and not expecting):
        return None
    return " ".join(w.capitalize() for w in candidate)


# -- the turn ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    text: str
    action: str | None = None  # "hangup" | "transfer": for the call-control code to carry out
    intents: tuple[str, ...] = ()


@dataclass(frozen=True)
class State:
    booking: Mapping[str, str] | None = None  # slots collected so far, while a booking runs
    clarify: str | None = None  # the intent a weak match asked back about
    last_reply: str = ""
    asked: str | None = None  # the slot the last reply asked for (a bare answer fills it)
    away: int = 0  # caller turns in a row that left a pending booking where it was


def understand(dialog: Dialog, text: str) -> list[tuple[Intent, float]]:
    """Per clause, the best-scoring intent (score > 0), in the order the caller said them."""
    found: list[tuple[Intent, float]] = []
    for clause in clauses(text):
        st = stems(clause)
        scored = [(i, i.score(st)) for i in dialog.intents]
        scored = [s for s in scored if s[1] > 0]
        if scored:
            best = max(scored, key=lambda s: s[1])
            found.append(best)
            # a clause may hold two sure intents of different kinds ("thanks goodbye")
            found += [s for s in scored if s is not best and s[1] >= SURE]
    return found


def _next_slot(slots: Mapping[str, str]) -> str | None:
    return next((s for s in SLOTS if s not in slots), None)


def _cancels(text: str) -> bool:
    """The caller drops what is pending: "never mind", "cancel that", a bare "no"."""
    ws = words(text)
    joined = " ".join(ws)
    return bool(
        set(ws) & _CANCEL_WORDS
        or any(p in joined for p in _CANCEL_PHRASES)
        or (ws and ws[0] in _DECLINE_OPENERS)
    )


def turn(dialog: Dialog, state: State, text: str, last_said: str = "") -> tuple[Reply, State]:
    """One caller utterance: the reply and the next state."""
    found = understand(dialog, text)
    day, time_ = find_day(text), find_time(text)
    # a day or a time said with a weak booking word is a booking ("can I come in on friday")
    if day or time_:
        found = [(i, SURE) if i.kind == "booking" and s >= UNSURE else (i, s) for i, s in found]
    sure = [i for i, score in found if score >= SURE]
    ws = set(words(text))
    if state.clarify and not any(i.kind in ("question", "booking") for i in sure):
        if ws & _YES and not ws & _NO:
            sure = [dialog.intent(state.clarify), *sure]
        elif ws & _NO:
            return Reply(dialog.fallback), replace(state, clarify=None, last_reply=dialog.fallback)

    def once(kind: str) -> list[Intent]:
        seen: list[Intent] = []
        for i in sure:
            if i.kind == kind and i not in seen:
                seen.append(i)
        return seen

    questions = once("question")[:MAX_ANSWERS]
    parts = [dialog.render(q.answer) for q in questions]
    names = [q.name for q in questions]
    asked_booking = next(iter(once("booking")), None)
    booking_intent = asked_booking
    if booking_intent is None and state.booking is not None:
        booking_intent = next((i for i in dialog.intents if i.kind == "booking"), None)
    if booking_intent is not None and (asked_booking or state.booking is not None):
        booking = dict(state.booking) if state.booking is not None else {}
        if asked_booking is None and questions:
            # a day said in a question belongs to it ("are you open on saturday"), not the slot
            rest = _clauses_without_questions(dialog, text)
            day, time_ = find_day(rest), find_time(rest)
        filled = False
        for slot, value in (("day", day), ("time", time_)):
            if value and booking.get(slot) != value:  # the caller's latest word wins
                booking[slot] = value
                filled = True
        name = find_name(text, expecting=state.asked == "name" and not sure)
        if name and "name" not in booking:
            booking["name"] = name
            filled = True
        if asked_booking is not None or filled:
            missing = _next_slot(booking)
            if missing is None:
                parts.append(dialog.render(booking_intent.answer, booking))
            else:
                parts.append(dialog.render(booking_intent.ask[missing], booking))
            names.append(booking_intent.name)
            out = " ".join(parts)
            after = State(booking if missing else None, None, out, missing, 0)
            return Reply(out, None, tuple(names)), after
        return _pending_booking(
            dialog, state, booking_intent, booking, text, last_said, parts, names, once, found
        )
    if parts:
        text_out = " ".join(parts)
        return Reply(text_out, None, tuple(names)), State(None, None, text_out)

    for kind in ("transfer", "hangup"):
        if once(kind):
            i = once(kind)[0]
            out = dialog.render(i.answer)
            return Reply(out, kind, (i.name,)), State(None, None, out)
    if once("repeat"):
        out = last_said or state.last_reply or dialog.fallback
        return Reply(out, None, ("repeat",)), replace(state, clarify=None)
    if once("social"):
        i = once("social")[0]
        out = dialog.render(i.answer)
        return Reply(out, None, (i.name,)), replace(state, clarify=None, last_reply=out)
    guess = _guess(found)
    if guess is not None:
        out = dialog.render(dialog.clarify, {"label": guess.label})
        return Reply(out, None, ("clarify",)), replace(state, clarify=guess.name, last_reply=out)
    return Reply(dialog.fallback), replace(state, clarify=None, last_reply=dialog.fallback)


def _clauses_without_questions(dialog: Dialog, text: str) -> str:
    """The caller's clauses that ask no question (where a booking's day or time may be)."""
    questions = [i for i in dialog.intents if i.kind == "question"]
    return ", ".join(
        c for c in clauses(text) if not any(q.score(stems(c)) >= SURE for q in questions)
    )


def _guess(found: Sequence[tuple[Intent, float]]) -> Intent | None:
    """The best weak match worth asking back about."""
    guesses = [
        (i, s)
        for i, s in found
        if UNSURE <= s < SURE and i.kind in ("question", "booking", "transfer")
    ]
    return max(guesses, key=lambda g: g[1])[0] if guesses else None


def _pending_booking(
    dialog: Dialog,
    state: State,
    booking_intent: Intent,
    booking: Mapping[str, str],
    text: str,
    last_said: str,
    parts: list[str],
    names: list[str],
    once: Callable[[str], list[Intent]],
    found: Sequence[tuple[Intent, float]],
) -> tuple[Reply, State]:
    """A turn that did not move a pending booking on: what the caller said comes first.

    A question is answered; a person or a goodbye is an action and drops the booking; a
    "never mind" drops it with a word. The missing slot is asked again only on the first
    turn away from the booking (the caller may just have missed the question); after that it
    waits, quiet, until the caller comes back to it (a day, a time, a booking word).
    """
    missing = _next_slot(booking) or SLOTS[-1]
    fresh = state.away == 0  # the agent's last reply was about the booking
    kept = State(booking, None, state.last_reply, None, state.away + 1)

    def reask(prefix: list[str], tags: list[str]) -> tuple[Reply, State]:
        out = " ".join([*prefix, dialog.render(booking_intent.ask[missing], booking)])
        reply = Reply(out, None, (*tags, booking_intent.name))
        return reply, replace(kept, last_reply=out, asked=missing)

    if parts:  # a question: answered, the slot asked again only while the booking is fresh
        if fresh:
            return reask(parts, names)
        out = " ".join(parts)
        return Reply(out, None, tuple(names)), replace(kept, last_reply=out)
    for kind in ("transfer", "hangup"):
        if once(kind):
            i = once(kind)[0]
            out = dialog.render(i.answer)
            return Reply(out, kind, (i.name,)), State(None, None, out)
    if _cancels(text):
        out = dialog.render(booking_intent.cancel)
        return Reply(out, None, (booking_intent.name,)), State(None, None, out)
    if once("repeat"):
        out = last_said or state.last_reply or dialog.fallback
        return Reply(out, None, ("repeat",)), state
    guess = _guess(found)
    if guess is not None and guess.kind != "booking":
        out = dialog.render(dialog.clarify, {"label": guess.label})
        after = replace(kept, clarify=guess.name, last_reply=out)
        return Reply(out, None, ("clarify",)), after
    if fresh:  # not understood, or small talk, right after the agent asked: ask again
        return reask([], [])
    if once("social"):
        i = once("social")[0]
        out = dialog.render(i.answer)
        return Reply(out, None, (i.name,)), replace(kept, last_reply=out)
    return Reply(dialog.fallback), replace(kept, last_reply=dialog.fallback)


def respond(dialog: Dialog, history: Sequence[tuple[str, str]]) -> Reply:
    """The reply to the last caller turn of ``history`` ((role, text) pairs, oldest first)."""
    state = State()
    reply = Reply(dialog.fallback)
    last_said = ""
    answered = False
    for role, text in history:
        if role == "assistant":
            last_said = text or last_said
            continue
        if role != "user" or not text.strip():
            continue
        reply, state = turn(dialog, state, text, last_said)
        answered = True
    if not answered:
        return Reply("Hello! How can I help you today?")
    return reply
