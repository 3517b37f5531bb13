"""The voice loop through the real livekit-server, on the default offline providers.

Real ``voicepool-worker`` processes (pocketsphinx STT, rule-based dialog, piper TTS, silero
VAD, WebRTC APM) and synthetic WebRTC callers that speak piper-synthesised sentences from
``bench/voice_eval.tsv`` (a support/booking line; phrased unlike the dialog's keywords). How
each figure is taken is printed next to it. Sections (``--sections``, default all):

* ``quiet``: time to first word (TTFW) at the caller: from its true end of voicing (the last
  10 ms frame of its speech above the speech floor, stamped when handed to WebRTC) to the
  first agent frame above the floor it receives; p50/p90/max and the share not answered
  within 3 s; the agent-side stage breakdown; STT word error rate; replies that fit;
* ``bargein``: the caller talks over a long reply: first voiced frame sent -> the agent's
  last loud frame before it fell silent, early barge-in (the energy onset) on and off;
* ``echo``: the agent's voice played back into the caller's microphone (speakerphone,
  -10 dB, 100 ms later) while the caller only asks its questions: spurious user turns over
  >= 30 s of agent speech, echo cancellation on vs off;
* ``noise``: street noise and babble mixed into the microphone at 10 dB SNR: WER, fits,
  spurious turns, early barge-in pauses the VAD did not confirm, noise suppression on vs off;
* ``concurrency``: 2 simultaneous calls on one worker (``sessionsPerPod: 2``): TTFW and PSS
  per extra call;
* ``memory``: worker RSS/PSS after each of 20 calls.

Exits 1 when the quiet TTFW p50 > 800 ms or p90 > 1200 ms (the figure is printed).

    python bench/worker_latency.py [--sections quiet,bargein,...] [--turns 32]

Uses ``VOICEPOOL_LIVEKIT_URL``/``_API_KEY``/``_API_SECRET`` when set, else starts the local
livekit-server (no Kubernetes needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import plots  # bench/plots.py, next to this script
from line_noise import frames as noise_frames
from line_noise import speech_level
from results import Goal, goal_table, rewrite
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.stack import LocalStack, StackConfig
from voicepool_worker.caller import (
    VOICES,
    BargeIn,
    Call,
    CallerConfig,
    TurnResult,
    speech_frames,
)
from voicepool_worker.latency import STAGES, percentile
from voicepool_worker.measure import (
    SPEECH_FLOOR_RMS,
    UNANSWERED_AFTER_MS,
    TtfwSplit,
    TtfwSummary,
    barge_in_split,
    fits,
    mix,
    rms,
    ttfw_split,
    wer,
)

from tests.integration.voice_scenarios import EchoOutcome, barge_ins, echo_call
from tests.integration.worker_harness import WorkerProcess, agent_name, rss_mb, rss_tree

EVAL_FILE = Path(__file__).with_name("voice_eval.tsv")
SECTIONS = ("quiet", "pausing", "bargein", "echo", "noise", "concurrency", "memory", "limits", "ab")
#: the quiet line's calls: as shipped with the TTS clause cache on and off, and the baseline
QUIET_ROWS = (
    ("default", "as shipped, TTS cache on"),
    ("cache_off", "as shipped, TTS cache off"),
    ("baseline", "baseline: pocketsphinx, silence only, TTS cache off"),
)
PAUSING_ROWS = (("default", "as shipped"), ("baseline", "baseline: silence only"))
#: what "today's default" was before the end-of-turn model and whisper (side by side)
BASELINE_ENV = {
    "VOICEPOOL_STT": "pocketsphinx",
    "VOICEPOOL_TURN_DETECTION": "vad",
    "VOICEPOOL_TTS_CACHE": "0",
}
PAUSE_MIN_S = 0.4
PAUSE_MAX_S = 0.7
ECHO_GAIN_DB = -10.0
ECHO_DELAY_MS = 100.0
ECHO_SECONDS = 30.0
NOISE_SNR_DB = 10.0
MEMORY_CALLS = 20
STAGE_LABELS = {
    "transcript": "end of speech -> final transcript",
    "end_of_turn": "end of speech -> turn committed",
    "llm_ttft": "LLM time to first token",
    "tts_ttfb": "TTS time to first byte",
    "ttfw": "end of speech -> first frame sent",
}


@dataclass(frozen=True)
class Line:
    intents: tuple[str, ...]
    text: str


def load_eval(path: Path = EVAL_FILE) -> list[Line]:
    out: list[Line] = []
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        intents, text = raw.split("\t", 1)
        out.append(Line(tuple(i.strip() for i in intents.split(",")), text.strip()))
    return out


def with_pause(frames: tuple[bytes, ...], pause_s: float) -> list[bytes]:
    """The sentence with ``pause_s`` of silence inserted at its quietest 10 ms between 35 and
    65 % of its voiced span (a gap between two words): the sentence's own intonation is kept,
    as a caller's is when they stop to think mid-sentence."""
    loud = [i for i, f in enumerate(frames) if rms(f) >= SPEECH_FLOOR_RMS]
    first, last = loud[0], loud[-1]
    lo, hi = first + int(0.35 * (last - first)), first + int(0.65 * (last - first))
    cut = min(range(lo, hi + 1), key=lambda i: rms(frames[i]))
    silence = [bytes(len(frames[0]))] * round(pause_s * 100)
    return [*frames[:cut], *silence, *frames[cut:]]


def pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {percentile(values, 50):6.0f} ms  p90 {percentile(values, 90):6.0f} ms  "
        f"n={len(values)}"
    )


@dataclass
class CallRecord:
    room: str
    turns: list[TurnResult] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    stop_ms: list[float | None] = field(default_factory=list)


@dataclass
class Analysis:
    ttfw: list[float | None]
    wer: float
    fit: int
    spurious: int
    interrupted: int
    heard: list[str]
    replies: list[str]
    split: int  # sentences the worker took as more than one turn (cut at a pause)
    where: list[TtfwSplit] = field(default_factory=list)  # uplink / agent / downlink per turn


def false_pauses(w: WorkerProcess, room: str) -> int:
    """Early barge-in pauses the VAD did not confirm (the reply resumed): a noise or an echo
    the onset took for the caller's voice."""
    return sum(1 for x in w.msgs("onset resumed") if x.get("room") == room)


def analyse(w: WorkerProcess, rec: CallRecord, *, settle_s: float = 2.0) -> Analysis:
    """Pair the worker's logged user turns and replies with what the caller did, by time."""
    time.sleep(settle_s)
    users = [x for x in w.msgs("user turn") if x.get("room") == rec.room]
    agents = [x for x in w.msgs("agent turn") if x.get("room") == rec.room]
    windows = [
        (t.started_wall, rec.turns[i + 1].started_wall if i + 1 < len(rec.turns) else 1e18)
        for i, t in enumerate(rec.turns)
    ]
    heard: list[str] = []
    replies: list[str] = []
    spoken_span = [(t.started_wall, t.ended_wall + 2.0) for t in rec.turns]
    spurious = sum(
        1 for u in users if not any(a <= float(u.get("t", 0)) <= b for a, b in spoken_span)
    )
    split = 0
    for a, b in windows:
        split += sum(1 for u in users if a <= float(u["t"]) < b) > 1
        heard.append(" ".join(str(u["transcript"]) for u in users if a <= float(u["t"]) < b))
        replies.append(" ".join(str(x["reply"]) for x in agents if a <= float(x["t"]) < b))
    fit = sum(1 for line, r in zip(rec.lines, replies, strict=True) if fits(r, line.intents))
    where: list[TtfwSplit] = []
    for t, (a, b) in zip(rec.turns, windows, strict=True):
        # the last user turn the worker committed for this sentence, and the reply after it
        mine = [u for u in users if a <= float(u["t"]) < b and "stopped_at" in u]
        said = [x for x in agents if a <= float(x["t"]) < b and "started_at" in x]
        if mine and said:
            got = ttfw_split(
                t.ended_wall, t.ttfw_ms, float(mine[-1]["stopped_at"]), float(said[0]["started_at"])
            )
            if got is not None:
                where.append(got)
    return Analysis(
        ttfw=[t.ttfw_ms for t in rec.turns],
        wer=wer((line.text, h) for line, h in zip(rec.lines, heard, strict=True)),
        fit=fit,
        spurious=spurious,
        interrupted=sum(1 for x in agents if x.get("interrupted")),
        heard=heard,
        replies=replies,
        split=split,
        where=where,
    )


def stages_of(w: WorkerProcess, rooms: set[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for line in w.msgs("agent turn"):
        if line.get("room") in rooms:
            for name, seconds in (line.get("latency") or {}).items():
                out.setdefault(name, []).append(float(seconds) * 1000)
    return out


class Bench:
    def __init__(self, lk: LiveKitInfo, workdir: Path, lines: list[Line]) -> None:
        self.lk = lk
        self.workdir = workdir
        self.lines = lines
        self.workers: dict[str, WorkerProcess] = {}
        self.worker_env: dict[str, dict[str, str]] = {}  # what each worker was started with
        self.failures: list[str] = []
        self.lever: dict[str, str] = {}  # the ``ab`` section's settings
        self.voice = "espeak"  # the caller's voice (not the agent's piper voice)
        self.goals: list[Goal] = []
        self.stops: dict[str, list[float]] = {}  # barge-in stop times per worker
        self.report: list[str] = []  # the results page's lines beyond the goals

    def worker(self, name: str, env: dict[str, str] | None = None) -> WorkerProcess:
        if name not in self.workers:
            self.worker_env[name] = dict(env or {})
            self.workers[name] = WorkerProcess(
                self.lk,
                self.workdir,
                agent=agent_name(),
                name=f"bench-{name}",
                env={"VOICEPOOL_LOG_TRANSCRIPTS": "true", **(env or {})},  # judged from the log
            )
        return self.workers[name]

    def ready(self, name: str) -> WorkerProcess:
        w = self.workers[name]
        w.wait_ready(timeout=180)
        w.wait_available(timeout=60)  # the previous section's call has ended
        return w

    def close(self) -> None:
        for w in self.workers.values():
            w.signal()
        for w in self.workers.values():
            with contextlib.suppress(AssertionError):
                w.wait_exit(timeout=30)
            w.stop()

    def caller(self, w: WorkerProcess, tag: str, **kw: Any) -> Call:
        cfg = CallerConfig(
            self.lk.url, self.lk.api_key, self.lk.api_secret, w.agent, identity=f"caller-{tag}"
        )
        return Call(cfg, f"bench-{tag}-{uuid.uuid4().hex[:6]}", voice=self.voice, **kw)

    async def converse(
        self,
        w: WorkerProcess,
        tag: str,
        lines: list[Line],
        *,
        show: bool = True,
        **kw: Any,
    ) -> CallRecord:
        c = self.caller(w, tag, **kw)
        rec = CallRecord(c.room_name)
        try:
            await c.start(join_within=60)
            await c.wait_greeting(within=30)
            for i, line in enumerate(lines):
                turn = await c.say(line.text, answer_timeout=15)
                rec.turns.append(turn)
                rec.lines.append(line)
                if show:
                    got = f"{turn.ttfw_ms:6.0f} ms" if turn.ttfw_ms is not None else "  (none)"
                    print(f"  [{tag}] {i + 1:2d} ttfw {got}  {line.text!r}", flush=True)
        finally:
            await c.hangup()
        return rec

    # -- sections ----------------------------------------------------------------------------

    def quiet(self) -> None:
        print("\n== quiet line: TTFW, stages, WER, replies that fit ==", flush=True)
        rows: dict[str, tuple[TtfwSummary, Analysis]] = {}
        for name, label in QUIET_ROWS:
            w = self.ready(name)
            print(f"-- {label} --", flush=True)
            rec = asyncio.run(self.converse(w, f"quiet-{name}", self.lines))
            a = analyse(w, rec)
            rows[name] = (TtfwSummary.of(a.ttfw, miss_ms=UNANSWERED_AFTER_MS), a)
            self._quiet_detail(w, rec, a, rows[name][0])
        print(
            "\nside by side (TTFW at the caller; an unanswered turn counts as "
            f"{UNANSWERED_AFTER_MS:.0f} ms in every percentile):"
        )
        table = [
            "| quiet line | TTFW p50 | p90 | max | not answered in 3 s | WER | fit |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, label in QUIET_ROWS:
            s, a = rows[name]
            table.append(
                f"| {label} | {s.p50_ms:.0f} ms | {s.p90_ms:.0f} ms | {s.max_ms:.0f} ms | "
                f"{s.late_share:.0%} | {a.wer:.1%} | {a.fit}/{len(a.ttfw)} |"
            )
        print("\n".join(table))
        self.report += ["", *table]
        shipped, base = rows["cache_off"], rows["baseline"]
        self.goal(
            "WebRTC TTFW p50, TTS cache off", "<= 500 ms", shipped[0].p50_ms, base[0].p50_ms, 500
        )
        self.goal(
            "WebRTC TTFW p90, TTS cache off", "<= 700 ms", shipped[0].p90_ms, base[0].p90_ms, 700
        )
        self.goal(
            f"WER, unseen sentences, {self.voice} voice",
            "<= 10 %",
            shipped[1].wer,
            base[1].wer,
            0.10,
            fmt="{:.1%}",
        )
        n = len(self.lines)
        self.goal(
            "replies that fit through the voice loop",
            ">= 80 %",
            shipped[1].fit / n,
            base[1].fit / n,
            0.80,
            fmt="{:.0%}",
            higher=True,
        )
        with contextlib.suppress(Exception):  # the plot is a convenience, not a figure
            got = [t for t in rows["cache_off"][1].ttfw if t is not None]
            path = plots.OUT_DIR / "worker_latency.png"
            title = f"Time to first word per turn, caller side ({len(self.lines)} asked)"
            print(f"plot: {plots.ttfw_histogram({'quiet line': got}, path, title)}")
        fails = rows["default"][0].failures()
        if fails:
            print(f"FAIL (the old 800/1200 ms budget, TTS cache on): {'; '.join(fails)}")
            self.failures += fails

    def _quiet_detail(self, w: WorkerProcess, rec: CallRecord, a: Analysis, s: TtfwSummary) -> None:
        print("time to first word, caller side (true end of voicing -> first loud agent frame)")
        print(f"  {s.line()}")
        for name in STAGES:
            print(f"  {STAGE_LABELS[name]:34}: {pct(stages_of(w, {rec.room}).get(name, []))}")
        print("where the caller's TTFW goes (one machine's wall clock, worker's marks):")
        for label, part in (
            ("caller end of voicing -> agent VAD end", "uplink_ms"),
            ("agent VAD end -> first frame to source", "agent_ms"),
            ("first frame to source -> caller hears", "downlink_ms"),
        ):
            print(f"  {label:40}: {pct([getattr(x, part) for x in a.where])}")
        verdicts = [x for x in w.msgs("turn model") if x.get("room") == rec.room]
        if verdicts:
            unfinished = sum(1 for x in verdicts if not x.get("complete"))
            took = [float(x["took_ms"]) for x in verdicts if "took_ms" in x]
            print(
                f"  end-of-turn model: {len(verdicts)} verdicts, {unfinished} 'not finished'"
                f" (waited for more); inference {pct(took)}"
            )
        print(f"STT word error rate on the {len(rec.lines)} sentences: {a.wer:.1%}")
        print(f"replies that fit the question: {a.fit}/{len(rec.lines)}")
        print(
            f"spurious user turns: {a.spurious}; sentences cut into 2+ turns at a pause: {a.split}"
        )
        for line, h, r in zip(rec.lines, a.heard, a.replies, strict=True):
            ok = "fits" if fits(r, line.intents) else "MISS"
            print(f"    {ok}  said {line.text!r}")
            print(f"          heard {h!r}\n          reply {r[:70]!r}")

    def pausing(self) -> None:
        print(
            "\n== pausing caller: a 400-700 ms pause in the middle of each sentence ==",
            flush=True,
        )
        rows = []
        for name, label in PAUSING_ROWS:
            w = self.ready(name)
            print(f"-- {label} --", flush=True)
            heard, split, either, ttfw = asyncio.run(self._pausing_call(w, name))
            summary = TtfwSummary.of(ttfw, miss_ms=UNANSWERED_AFTER_MS)
            rows.append((label, heard, split, either, len(ttfw), summary))
        print(
            "heard over = the agent's voice reached the caller before the caller had finished the"
            " sentence; split = the worker committed the sentence as 2+ user turns (its reply to"
            " the first half was dropped when the caller went on, and the answer is to the second"
            " half only); cut off = either"
        )
        table = [
            "| pausing caller | cut off | heard over | split into 2+ turns | TTFW p50 after it |",
            "|---|---|---|---|---|",
        ]
        for label, heard, split, either, n, s in rows:
            table.append(
                f"| {label} | {either}/{n} | {heard}/{n} | {split}/{n} | {s.p50_ms:.0f} ms |"
            )
        print("\n".join(table))
        self.report += ["", *table]
        (_, _, _, cut, n, _), (_, _, _, bcut, bn, _) = rows[0], rows[-1]
        self.goal(
            "pausing caller cut off", "<= 5 % of turns", cut / n, bcut / bn, 0.05, fmt="{:.0%}"
        )

    async def _pausing_call(
        self, w: WorkerProcess, name: str
    ) -> tuple[int, int, int, list[float | None]]:
        """Heard over, split, either (turn counts) and the TTFW of each sentence."""
        c = self.caller(w, f"pause-{name}")
        cut = 0
        early_at: list[bool] = []
        ttfw: list[float | None] = []
        rec = CallRecord(c.room_name)
        try:
            await c.start(join_within=60)
            await c.wait_greeting(within=30)
            for i, line in enumerate(self.lines):
                pause_s = PAUSE_MIN_S + (PAUSE_MAX_S - PAUSE_MIN_S) * ((i * 7) % 10) / 9
                frames = with_pause(speech_frames(line.text, self.voice), pause_s)
                heard_before = len(c.listener.loud_at)
                turn = await c.say(line.text, answer_timeout=15, frames=frames)
                spoke_from = c.first_voiced_sent or 0.0
                spoke_to = c.last_voiced_sent or 0.0
                early = any(spoke_from < t < spoke_to for t in c.listener.loud_at[heard_before:])
                cut += early
                early_at.append(early)
                ttfw.append(turn.ttfw_ms)
                rec.turns.append(turn)
                rec.lines.append(line)
                print(
                    f"  [pause-{name}] {i + 1:2d} pause {pause_s * 1000:3.0f} ms "
                    f"{'CUT OFF' if early else 'ok     '} {line.text!r}",
                    flush=True,
                )
        finally:
            await c.hangup()
        await asyncio.sleep(2.0)  # the worker's last log lines land
        users = [float(x["t"]) for x in w.msgs("user turn") if x.get("room") == rec.room]
        starts = [t.started_wall for t in rec.turns] + [1e18]
        split_at = [sum(1 for u in users if a <= u < b) > 1 for a, b in itertools.pairwise(starts)]
        either = sum(1 for s, e in zip(split_at, early_at, strict=True) if s or e)
        return cut, sum(split_at), either, ttfw

    def goal(
        self,
        name: str,
        target: str,
        value: float,
        baseline: float,
        limit: float,
        *,
        fmt: str = "{:.0f} ms",
        higher: bool = False,
    ) -> None:
        ok = None if value != value else (value >= limit if higher else value <= limit)

        def show(v: float) -> str:
            return "n/a" if v != v else fmt.format(v)

        self.goals.append(Goal(name, target, show(value), show(baseline), ok))

    def ab(self) -> None:
        """A lever side by side: the same sentences, turn by turn, to a worker with the
        defaults and one with ``--lever`` settings (two calls, only one talking at a time, so
        both see the same load)."""
        lever = self.lever
        print(f"\n== A/B: defaults vs {' '.join(f'{k}={v}' for k, v in lever.items())} ==")
        base, alt = self.ready("default"), self.ready("lever")

        async def run() -> tuple[CallRecord, CallRecord]:
            ca, cb = self.caller(base, "ab-base"), self.caller(alt, "ab-lever")
            ra, rb = CallRecord(ca.room_name), CallRecord(cb.room_name)
            try:
                await asyncio.gather(ca.start(join_within=60), cb.start(join_within=60))
                await asyncio.gather(ca.wait_greeting(within=30), cb.wait_greeting(within=30))
                for i, line in enumerate(self.lines):
                    for c, r, tag in ((ca, ra, "base "), (cb, rb, "lever")):
                        turn = await c.say(line.text, answer_timeout=15)
                        r.turns.append(turn)
                        r.lines.append(line)
                        got = f"{turn.ttfw_ms:6.0f}" if turn.ttfw_ms is not None else "  none"
                        print(f"  [{tag}] {i + 1:2d} ttfw {got} ms", flush=True)
            finally:
                await asyncio.gather(ca.hangup(), cb.hangup())
            return ra, rb

        ra, rb = asyncio.run(run())
        for tag, w, rec in (("defaults", base, ra), ("lever", alt, rb)):
            a = analyse(w, rec)
            print(f"  {tag:8} TTFW {TtfwSummary.of(a.ttfw).line()}")
            print(
                f"  {'':8} uplink {pct([x.uplink_ms for x in a.where])}; agent "
                f"{pct([x.agent_ms for x in a.where])}; downlink "
                f"{pct([x.downlink_ms for x in a.where])}"
            )
            print(f"  {'':8} WER {a.wer:.1%}; fit {a.fit}/{len(rec.lines)}; split {a.split}")
        print(f"  load average now: {os.getloadavg()[0]:.2f}")

    def bargein(self, trials: int = 6) -> None:
        print("\n== barge-in: the caller talks over a long reply ==", flush=True)
        interjections = [x.text for x in self.lines[::5]][:trials]
        rows = []
        for name, label in (("default", "early on"), ("early_off", "early off")):
            w = self.ready(name)
            print(f"  {label} (VOICEPOOL_EARLY_BARGE_IN):", flush=True)
            rows.append((label, self._barge_in_call(w, name, interjections)))
        print(
            "barge-in stop time (caller's first voiced frame sent -> last loud agent frame "
            "before 0.6 s of silence), early barge-in on (the default) and off, side by side:"
        )
        for label, got in rows:
            print(f"  {label:9} {got}")
        on, off = self.stops.get("default", []), self.stops.get("early_off", [])
        value = percentile(on, 50) if on else math.nan
        self.goals.append(
            Goal(
                "barge-in stop time p50",
                "<= 250 ms",
                "n/a" if value != value else f"{value:.0f} ms",
                f"{percentile(off, 50):.0f} ms with early barge-in off" if off else "n/a",
                None if value != value else value <= 250,
            )
        )

    def _barge_in_call(self, w: WorkerProcess, name: str, interjections: list[str]) -> str:
        """One call that talks over ``interjections``; prints each, returns its summary line."""

        async def run() -> tuple[CallRecord, list[BargeIn]]:
            c = self.caller(w, f"barge-{name}")
            rec = CallRecord(c.room_name)
            got: list[BargeIn] = []
            try:
                await c.start(join_within=60)
                await c.wait_greeting(within=30)
                for b in await barge_ins(c, interjections):
                    got.append(b)
                    rec.stop_ms.append(b.stop_ms if b.agent_was_talking else None)
                    took = f"{b.stop_ms:6.0f} ms" if b.stop_ms is not None else "never"
                    print(f"    agent silent {took} after voicing start  ({b.text!r})", flush=True)
            finally:
                await c.hangup()
            return rec, got

        rec, tries = asyncio.run(run())
        got = [x for x in rec.stop_ms if x is not None]
        time.sleep(1.0)  # the worker's log lines land
        mine = rec.room

        def marks(msg: str) -> list[float]:
            return [float(x["at"]) for x in w.msgs(msg) if x.get("room") == mine]

        starts, stops, onsets = (
            marks("caller speaking"),
            marks("agent silent"),
            marks("onset pause"),
        )
        talked = [b for b in tries if b.agent_was_talking and b.voiced_wall is not None]
        splits = [
            s
            for b in talked
            if (s := barge_in_split(b.voiced_wall, b.silent_wall, starts, stops)) is not None
        ]
        early = [
            (o - b.voiced_wall) * 1000
            for b in talked
            if b.voiced_wall is not None
            and (o := min((t for t in onsets if t >= b.voiced_wall - 0.05), default=None))
            is not None
            and o - b.voiced_wall < 3.0
        ]
        print(
            "    where it went (worker's wall-clock marks): first voiced frame sent -> the"
            f" energy onset paused the agent {pct(early)}; -> the agent's VAD hears speech"
            f" (uplink, APM, VAD onset) {pct([s.detect_ms for s in splits])}; -> the framework"
            " interrupts (VOICEPOOL_INTERRUPTION_MIN_DURATION "
            + self.worker_env[name].get("VOICEPOOL_INTERRUPTION_MIN_DURATION", "0.05, default")
            + f") {pct([s.interrupt_ms for s in splits])}; onsets resumed (no speech followed):"
            f" {false_pauses(w, mine)}",
            flush=True,
        )
        # a barge-in the agent never stopped for counts at the 3 s the bench waits
        self.stops[name] = [x if x is not None else 3000.0 for x in rec.stop_ms]
        return f"{pct(got)}; never stopped: {len(rec.stop_ms) - len(got)}"

    def echo(self) -> None:
        print(
            f"\n== echo: agent voice back into the mic at {ECHO_GAIN_DB:.0f} dB, "
            f"{ECHO_DELAY_MS:.0f} ms later ==",
            flush=True,
        )
        gain = 10 ** (ECHO_GAIN_DB / 20)
        rows = []
        for name, label in (("default", "AEC on"), ("aec_off", "AEC off")):
            w = self.ready(name)

            async def run(w: WorkerProcess = w, name: str = name) -> EchoOutcome:
                # the Call (its rtc.Room) is made inside the loop that runs it
                c = self.caller(w, f"echo-{name}", echo_gain=gain, echo_delay_ms=ECHO_DELAY_MS)
                return await echo_call(c, w, seconds=ECHO_SECONDS)

            out = asyncio.run(run())
            rows.append(
                (
                    label,
                    out.agent_talk_s,
                    out.spurious,
                    out.interrupted,
                    false_pauses(w, out.room),
                    len(out.asked),
                    out.at_hangup,
                )
            )
            print(f"  {label}: the worker heard {out.user_turns}", flush=True)
        print(
            f"  {'':8} {'agent talk':>10} {'spurious turns':>15} {'interrupted':>12}"
            f" {'false pauses':>13}"
        )
        for label, talked, spurious, interrupted, paused, asked, at_hangup in rows:
            print(
                f"  {label:8} {talked:9.0f}s {spurious:15d} {interrupted:12d} {paused:13d}"
                f"  ({asked} asked; {at_hangup} more committed at hang-up)"
            )
        print(
            "  spurious = user turns committed while the caller was silent (it heard itself),"
            " before it hung up (then the session commits what its STT still holds, unanswered)"
        )
        print("  false pauses = early barge-in onsets the VAD did not confirm (the reply resumed)")
        on, off = rows[0], rows[-1]
        self.goals.append(
            Goal("echo: spurious turns", "0", str(on[2]), f"{off[2]} with AEC off", on[2] == 0)
        )

    def noise(self, per_kind: int = 6) -> None:
        print(f"\n== background noise at {NOISE_SNR_DB:.0f} dB SNR ==", flush=True)
        utter = [speech_frames(x.text, self.voice) for x in self.lines]
        level = speech_level(utter)
        picks = {"street": self.lines[0::5][:per_kind], "babble": self.lines[2::5][:per_kind]}
        rows = []
        for name, label in (("default", "NS on"), ("ns_off", "NS off"), ("baseline", "baseline")):
            w = self.ready(name)
            for kind, lines in picks.items():
                if name == "baseline" and kind != "street":
                    continue
                noise = noise_frames(kind, level, NOISE_SNR_DB)
                w.wait_available(timeout=60)  # the previous call on this worker has ended
                rec = asyncio.run(self.converse(w, f"{kind}-{name}", lines, noise=noise))
                a = analyse(w, rec)
                s = TtfwSummary.of(a.ttfw)
                paused = false_pauses(w, rec.room)
                rows.append((label, kind, a.wer, a.fit, len(lines), a.spurious, paused, s.p50_ms))
        print(
            f"  {'':7} {'noise':7} {'WER':>6} {'fit':>6} {'spurious':>9} {'false pauses':>13}"
            f" {'TTFW p50':>9}"
        )
        for label, kind, e, fit, n, spurious, paused, p50 in rows:
            ttfw = "no reply" if p50 != p50 else f"{p50:7.0f}ms"  # NaN: no turn was answered
            print(
                f"  {label:8} {kind:7} {e:6.1%} {fit:3d}/{n:<2d} {spurious:9d} {paused:13d}"
                f" {ttfw:>9}"
            )
        street = {label: e for label, kind, e, *_ in rows if kind == "street"}
        self.goal(
            f"WER at {NOISE_SNR_DB:.0f} dB street noise",
            "<= 20 %",
            street.get("NS on", math.nan),
            street.get("baseline", math.nan),
            0.20,
            fmt="{:.1%}",
        )

    def concurrency(self, per_call: int = 10) -> None:
        print("\n== 2 simultaneous calls on one worker (sessionsPerPod 2) ==", flush=True)
        w = self.ready("duo")
        time.sleep(3.0)
        idle_pss = rss_mb(w.proc.pid, "Pss")
        peak = {"pss": 0.0, "rss": 0.0}
        call_pss: dict[int, float] = {}

        async def sample(stop: asyncio.Event) -> None:
            while not stop.is_set():
                pss = rss_tree(w.proc.pid, "Pss")
                peak["pss"] = max(peak["pss"], sum(pss.values()))
                peak["rss"] = max(peak["rss"], rss_mb(w.proc.pid))
                for pid, mib in pss.items():
                    call_pss[pid] = max(call_pss.get(pid, 0.0), mib)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

        async def run() -> list[CallRecord]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(stop))
            try:
                return list(
                    await asyncio.gather(
                        self.converse(w, "duo-a", self.lines[:per_call]),
                        self.converse(w, "duo-b", self.lines[per_call : 2 * per_call]),
                    )
                )
            finally:
                stop.set()
                await sampler

        recs = asyncio.run(run())
        ttfw = [t for r in recs for t in (x.ttfw_ms for x in r.turns)]
        s = TtfwSummary.of(ttfw)
        print(f"  TTFW over both calls: {s.line()}")
        pids = {int(x["pid"]) for x in w.msgs("caller joined") if "pid" in x}
        per_call_pss = [call_pss.get(p, 0.0) for p in pids]
        print(
            f"  PSS: idle worker {idle_pss:.0f} MiB, peak with 2 calls {peak['pss']:.0f} MiB "
            f"(+{(peak['pss'] - idle_pss) / 2:.0f} MiB per call); each call process "
            f"{', '.join(f'{x:.0f}' for x in per_call_pss)} MiB PSS; peak RSS {peak['rss']:.0f} MiB"
        )
        extra = (peak["pss"] - idle_pss) / 2
        self.goal(
            "PSS per extra concurrent call", "<= 250 MB", extra, math.nan, 250, fmt="{:.0f} MiB"
        )
        self.goal("idle worker PSS", "<= 1 GB", idle_pss, math.nan, 1024, fmt="{:.0f} MiB")

    def memory(self, calls: int = MEMORY_CALLS) -> None:
        print(f"\n== worker memory over {calls} calls ==", flush=True)
        w = self.ready("memory")
        time.sleep(3.0)
        before = (rss_mb(w.proc.pid), rss_mb(w.proc.pid, "Pss"))
        after: list[tuple[float, float]] = []
        line = Line(("goodbye",), "alright, cheers, talk to you later.")
        for i in range(calls):
            w.wait_available(timeout=60)
            rec = asyncio.run(self.converse(w, f"mem{i}", [line], show=False))
            ended = len(w.msgs("session ended")) + len(w.msgs("session failed"))
            deadline = time.monotonic() + 20
            while ended < i + 1 and time.monotonic() < deadline:
                time.sleep(0.2)
                ended = len(w.msgs("session ended")) + len(w.msgs("session failed"))
            time.sleep(2.0)  # the replacement warm process settles
            after.append((rss_mb(w.proc.pid), rss_mb(w.proc.pid, "Pss")))
            t = rec.turns[0].ttfw_ms if rec.turns else None
            print(
                f"  after call {i + 1:2d}: RSS {after[-1][0]:6.0f} MiB  PSS {after[-1][1]:6.0f} MiB"
                f"  (ttfw {t if t is None else round(t)})",
                flush=True,
            )
        failed = len(w.msgs("session failed"))
        print(
            f"  worker (main + forkserver + warm process): before {before[0]:.0f} MiB RSS / "
            f"{before[1]:.0f} MiB PSS; after call 1 {after[0][0]:.0f}/{after[0][1]:.0f}; "
            f"after call {calls} {after[-1][0]:.0f}/{after[-1][1]:.0f}; "
            f"growth calls 2..{calls}: {after[-1][1] - after[1][1]:+.0f} MiB PSS; failed: {failed}"
        )

    def limits(self) -> None:
        print("\n== bad input: silence, 60 s without a pause, clipped audio ==", flush=True)
        w = self.ready("memory")
        pid_rss = rss_mb(w.proc.pid)
        sentences = [speech_frames(x.text, self.voice) for x in self.lines]
        nonstop: list[bytes] = []
        while len(nonstop) < 6000:  # 60 s of speech with the pauses cut out
            for frames in sentences:
                nonstop += [f for f in frames if rms(f) >= SPEECH_FLOOR_RMS]
        nonstop = nonstop[:6000]
        clipped = [
            mix(f, f, 7.0) for f in speech_frames(self.lines[0].text, self.voice)
        ]  # +18 dB, clipped

        async def run() -> tuple[TurnResult, float]:
            c = self.caller(w, "limits")
            try:
                await c.start(join_within=60)
                await c.wait_greeting(within=30)
                await asyncio.sleep(20.0)  # a caller who says nothing
                await c.speak_frames(nonstop)
                await c.wait_agent_quiet(quiet=2.0, within=30)
                await c.speak_frames(clipped)
                await c.wait_agent_quiet(quiet=2.0, within=30)
                during = rss_mb(w.proc.pid)
                after = await c.say(self.lines[1].text, answer_timeout=15)
            finally:
                await c.hangup()
            return after, during

        after, during = asyncio.run(run())
        time.sleep(3.0)
        failed = len(w.msgs("session failed"))
        print(
            f"  20 s of silence, 60 s of speech without a pause, clipped speech, then a question: "
            f"{'answered' if after.ttfw_ms is not None else 'NOT answered'}; sessions failed: "
            f"{failed}; worker RSS {pid_rss:.0f} -> {during:.0f} (during) -> "
            f"{rss_mb(w.proc.pid):.0f} MiB (after)"
        )
        if after.ttfw_ms is None or failed:
            self.failures.append("the call did not survive bad input")


WORKERS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    # name: (sections that use it, its environment beyond the defaults)
    "default": (("quiet", "pausing", "bargein", "echo", "noise"), {}),
    "cache_off": (("quiet",), {"VOICEPOOL_TTS_CACHE": "0"}),
    "baseline": (("quiet", "pausing", "noise"), BASELINE_ENV),  # wins over --env
    "early_off": (("bargein",), {"VOICEPOOL_EARLY_BARGE_IN": "false"}),
    "aec_off": (("echo",), {"VOICEPOOL_ECHO_CANCELLATION": "false"}),
    "ns_off": (("noise",), {"VOICEPOOL_NOISE_SUPPRESSION": "false"}),
    "duo": (("concurrency",), {"VOICEPOOL_SESSIONS_PER_POD": "2"}),
    "memory": (("memory", "limits"), {"VOICEPOOL_GREETING": ""}),
    "lever": (("ab",), {}),  # plus --lever settings
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--turns", type=int, default=0, help="first N eval sentences (0: all)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every worker")
    parser.add_argument(
        "--lever", action="append", default=[], help="KEY=VALUE of the ab section's B worker"
    )
    parser.add_argument(
        "--voice",
        default="espeak",
        choices=VOICES,
        help="the caller's voice (espeak: not the agent's own piper voice)",
    )
    parser.add_argument(
        "--no-results", action="store_true", help="do not rewrite docs/results.md (a trial run)"
    )
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.sections == parser.get_default("sections"):
        chosen = [s for s in chosen if s != "ab"]  # only on request, with --lever
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    extra = dict(kv.split("=", 1) for kv in args.env)
    lines = load_eval()
    if args.turns:
        lines = lines[: args.turns]
    if args.voice == "espeak":
        from voicepool_devstack.apt import ensure_packages

        ensure_packages(["espeak-ng"], "the caller's voice (--voice espeak)", print)
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-bench-"))
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores); logs in {workdir}")

    def run_all(lk: LiveKitInfo) -> int:
        bench = Bench(lk, workdir, lines)
        bench.lever = dict(kv.split("=", 1) for kv in args.lever)
        bench.voice = args.voice
        try:
            for name, (uses, env) in WORKERS.items():  # start together: they warm in parallel
                if name == "default" and "ab" in chosen:
                    uses = (*uses, "ab")
                if any(s in chosen for s in uses):
                    more = bench.lever if name == "lever" else {}
                    if name == "baseline":
                        bench.worker(name, {**extra, **env})
                    else:
                        bench.worker(name, {**env, **extra, **more})
            steps: dict[str, Callable[[], None]] = {
                "quiet": bench.quiet,
                "pausing": bench.pausing,
                "bargein": bench.bargein,
                "echo": bench.echo,
                "noise": bench.noise,
                "concurrency": bench.concurrency,
                "memory": bench.memory,
                "limits": bench.limits,
                "ab": bench.ab,
            }
            for name in chosen:
                started = time.monotonic()
                steps[name]()
                print(
                    f"  ({name}: {time.monotonic() - started:.0f} s; load average "
                    f"{os.getloadavg()[0]:.2f}: figures taken beside other work are inflated)",
                    flush=True,
                )
        finally:
            bench.close()
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
        table = goal_table(bench.goals)
        print("\nthe goals of the voice loop (issue 25), as shipped beside the baseline:")
        print("\n".join(table))
        missed = [g.name for g in bench.goals if g.ok is False]
        if not args.no_results:
            body = [
                f"Caller voice: {args.voice}; {len(lines)} sentences of bench/voice_eval.tsv; "
                f"sections: {', '.join(chosen)}; baseline = {BASELINE_ENV}"
                + (f"; every worker also {extra}" if extra else ""),
                "",
                *table,
                *bench.report,
                "",
            ]
            print(f"results: {rewrite('worker_latency', body)}")
        if missed:
            print(f"FAIL: goals missed: {'; '.join(missed)}")
        if bench.failures:
            print(f"FAIL: {'; '.join(bench.failures)}")
        return 1 if missed or bench.failures else 0

    url = os.environ.get("VOICEPOOL_LIVEKIT_URL")
    key = os.environ.get("VOICEPOOL_LIVEKIT_API_KEY")
    secret = os.environ.get("VOICEPOOL_LIVEKIT_API_SECRET")
    if url and key and secret:
        http = url.replace("wss://", "https://").replace("ws://", "http://")
        return run_all(LiveKitInfo(url, http, key, secret))
    stack = LocalStack(StackConfig(workdir=workdir / "stack", kubernetes=False, livekit=True))
    try:
        state = stack.start()
        assert state.livekit is not None
        return run_all(state.livekit)
    finally:
        stack.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
