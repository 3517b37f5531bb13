"""Voice worker latency through the real livekit-server, with the embedded offline providers.

One ``voicepool-worker`` (pocketsphinx STT, rule-based dialog, piper TTS, silero VAD) and a
synthetic caller that speaks piper-synthesised questions, turn after turn. Printed:

* time to first word as the caller hears it (end of its speech -> first loud agent frame,
  network and jitter buffer included), p50/p95;
* the agent-side stages the worker logged per turn (end of speech -> final transcript, end of
  turn, LLM time to first token, TTS time to first byte, end of speech -> first agent frame
  published), p50/p95;
* worker RSS (main process + forkserver + call processes): idle, and with one call;
* side by side: a run without the TTS clause cache (the baseline) and one with it.

    python bench/worker_latency.py [--turns 24] [--tts-cache 0,64]

Uses ``VOICEPOOL_LIVEKIT_URL``/``_API_KEY``/``_API_SECRET`` when set, else starts the local
livekit-server (no Kubernetes needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plots  # bench/plots.py, next to this script
from voicepool_devstack.stack import LiveKitInfo, LocalStack, StackConfig
from voicepool_worker.caller import Call, CallerConfig
from voicepool_worker.latency import STAGES, percentile

from tests.integration.worker_harness import WorkerProcess, agent_name, rss_mb, rss_tree

PHRASES = (
    "what are your opening hours",
    "where are you located",
    "how much does a cleaning cost",
    "can i book an appointment",
)


def pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {percentile(values, 50):7.0f} ms   p95 {percentile(values, 95):7.0f} ms   "
        f"n={len(values)}"
    )


async def converse(lk: LiveKitInfo, agent: str, turns: int) -> tuple[list[float], list[str]]:
    cfg = CallerConfig(lk.url, lk.api_key, lk.api_secret, agent, identity="bench-caller")
    c = Call(cfg, f"bench-{uuid.uuid4().hex[:6]}")
    ttfw: list[float] = []
    misses: list[str] = []
    try:
        await c.start(join_within=30)
        for _ in range(1000):  # the greeting: wait for it to start, then to end
            if c.listener.loud_at:
                break
            await asyncio.sleep(0.02)
        await c.wait_agent_quiet(quiet=1.0, within=20)
        for i in range(turns):
            phrase = PHRASES[i % len(PHRASES)]
            turn = await c.say(phrase, answer_timeout=15)
            if turn.ttfw_ms is None:
                misses.append(phrase)
            else:
                ttfw.append(turn.ttfw_ms)
            print(
                f"  turn {i + 1:2d}: {phrase!r:35} ttfw "
                + (f"{turn.ttfw_ms:6.0f} ms" if turn.ttfw_ms is not None else "  (no answer)"),
                flush=True,
            )
        return ttfw, misses
    finally:
        await c.hangup()


#: Caller-side time to first word of every answered turn, per run label (for the plot).
TTFW_BY_RUN: dict[str, list[float]] = {}


def run(lk: LiveKitInfo, turns: int, workdir: Path, tts_cache: int) -> tuple[int, dict[str, float]]:
    """One worker, one call of ``turns`` turns; prints its report, returns (code, summary)."""
    agent = agent_name()
    w = WorkerProcess(
        lk,
        workdir,
        agent=agent,
        name=f"bench-worker-cache{tts_cache}",
        env={"VOICEPOOL_TTS_CACHE": str(tts_cache)},
    )
    try:
        w.wait_ready(timeout=120)
        time.sleep(3.0)  # let the warm process settle
        idle_rss = rss_mb(w.proc.pid)
        idle_pss = rss_mb(w.proc.pid, "Pss")
        print(f"worker ready (pid {w.proc.pid}); {turns} turns with agent {agent!r}", flush=True)

        peak = [0.0, 0.0]
        per_pid: dict[int, float] = {}
        per_pid_pss: dict[int, float] = {}

        async def sample_rss() -> None:
            while True:
                tree = rss_tree(w.proc.pid)
                pss = rss_tree(w.proc.pid, "Pss")
                peak[0] = max(peak[0], sum(tree.values()))
                peak[1] = max(peak[1], sum(pss.values()))
                for pid, mib in tree.items():
                    per_pid[pid] = max(per_pid.get(pid, 0.0), mib)
                for pid, mib in pss.items():
                    per_pid_pss[pid] = max(per_pid_pss.get(pid, 0.0), mib)
                await asyncio.sleep(0.5)

        async def main() -> tuple[list[float], list[str]]:
            sampler = asyncio.create_task(sample_rss())
            try:
                return await converse(lk, agent, turns)
            finally:
                sampler.cancel()

        ttfw, misses = asyncio.run(main())
        time.sleep(2.0)
        stages: dict[str, list[float]] = {name: [] for name in STAGES}
        for line in w.msgs("agent turn"):
            for name, seconds in (line.get("latency") or {}).items():
                stages.setdefault(name, []).append(float(seconds) * 1000)
        heard = [str(line.get("transcript", "")) for line in w.msgs("user turn")]
        call_pids = {int(line["pid"]) for line in w.msgs("caller joined") if "pid" in line}
        call_rss = max((per_pid.get(pid, 0.0) for pid in call_pids), default=0.0)
        call_pss = max((per_pid_pss.get(pid, 0.0) for pid in call_pids), default=0.0)
        hits = w.metric('voicepool_worker_tts_cache_total{result="hit"}') or 0.0
        miss = w.metric('voicepool_worker_tts_cache_total{result="miss"}') or 0.0
    finally:
        w.signal()
        with contextlib.suppress(AssertionError):
            w.wait_exit(timeout=30)
        w.stop()

    TTFW_BY_RUN[f"TTS cache {tts_cache}"] = ttfw
    exact = sum(1 for t in heard if t in PHRASES)
    print()
    print(f"turns answered: {len(ttfw)}/{turns}   transcripts exact: {exact}/{len(heard)}")
    print(f"time to first word, caller side : {pct(ttfw)}")
    labels = {
        "transcript": "end of speech -> final transcript",
        "end_of_turn": "end of speech -> turn committed",
        "llm_ttft": "LLM time to first token",
        "tts_ttfb": "TTS time to first byte",
        "ttfw": "end of speech -> first frame sent",
    }
    for name in STAGES:
        print(f"  {labels[name]:34}: {pct(stages.get(name, []))}")
    if ttfw:
        print(f"  mean caller-side ttfw           : {statistics.fmean(ttfw):7.0f} ms")
    print("memory (RSS counts pages shared with the forkserver in every process; PSS splits them)")
    print(
        f"  worker idle, 1 warm call process  : RSS {idle_rss:6.0f} MiB   PSS {idle_pss:6.0f} MiB"
    )
    print(f"  peak during one call (+ new warm) : RSS {peak[0]:6.0f} MiB   PSS {peak[1]:6.0f} MiB")
    print(
        f"  per session: the call process     : RSS {call_rss:6.0f} MiB   PSS {call_pss:6.0f} MiB"
    )
    print(f"TTS clause cache ({tts_cache} clauses): {hits:.0f} hits, {miss:.0f} misses")
    if misses:
        print(f"unanswered turns: {misses}")
    summary = {
        "ttfw_p50": percentile(ttfw, 50) if ttfw else float("nan"),
        "ttfw_p95": percentile(ttfw, 95) if ttfw else float("nan"),
        "tts_p50": percentile(stages["tts_ttfb"], 50) if stages.get("tts_ttfb") else float("nan"),
        "sent_p50": percentile(stages["ttfw"], 50) if stages.get("ttfw") else float("nan"),
    }
    return (0 if len(ttfw) >= max(1, turns * 9 // 10) else 1), summary


def compare(results: dict[int, dict[str, float]]) -> None:
    """The runs side by side; the first (no cache by default) is the baseline."""
    base_size = next(iter(results))
    base = results[base_size]
    print()
    print(f"side by side (baseline: TTS cache {base_size})")
    print(
        f"{'TTS cache':>10} {'ttfw p50':>9} {'ttfw p95':>9} {'tts p50':>8} {'sent p50':>9}  ratio"
    )
    for size, r in results.items():
        ratio = r["ttfw_p50"] / base["ttfw_p50"] if base["ttfw_p50"] else float("nan")
        print(
            f"{size:>10} {r['ttfw_p50']:9.0f} {r['ttfw_p95']:9.0f} {r['tts_p50']:8.0f} "
            f"{r['sent_p50']:9.0f}  {ratio:5.2f}x   (ms; goal ttfw p50 < 800)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=24)
    parser.add_argument(
        "--tts-cache",
        default="0,64",
        help="comma-separated VOICEPOOL_TTS_CACHE sizes, one run each, side by side "
        "(default: 0,64 -- no cache, the default and the baseline, then 64 clauses)",
    )
    parser.add_argument(
        "--plot", default=str(plots.OUT_DIR / "worker_latency.png"), help="PNG path, or none"
    )
    args = parser.parse_args()
    if args.turns < 1:
        parser.error("--turns must be >= 1")
    try:
        sizes = [int(x) for x in args.tts_cache.split(",") if x.strip()]
    except ValueError:
        parser.error("--tts-cache takes whole numbers, e.g. 0,64")
    if not sizes or min(sizes) < 0:
        parser.error("--tts-cache takes whole numbers >= 0, e.g. 0,64")
    workdir = Path(tempfile.mkdtemp(prefix="voicepool-bench-"))
    url = os.environ.get("VOICEPOOL_LIVEKIT_URL")
    key = os.environ.get("VOICEPOOL_LIVEKIT_API_KEY")
    secret = os.environ.get("VOICEPOOL_LIVEKIT_API_SECRET")

    def run_all(lk: LiveKitInfo) -> int:
        results: dict[int, dict[str, float]] = {}
        code = 0
        for size in sizes:
            print(f"\n== TTS clause cache {size} ==", flush=True)
            logs = workdir / f"cache{size}"
            logs.mkdir(parents=True, exist_ok=True)
            rc, results[size] = run(lk, args.turns, logs, size)
            code = code or rc
        if len(results) > 1:
            compare(results)
        if args.plot != "none":
            title = f"Time to first word per answered turn, caller side ({args.turns} asked)"
            print(f"\nplot: {plots.ttfw_histogram(TTFW_BY_RUN, Path(args.plot), title)}")
        return code

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
