"""Dialog score on held-out caller sentences, and the local LLMs' speed, side by side.

For every sentence of ``bench/data/dialog_heldout.yaml`` (written apart from the dialog's
keyword lists) each brain answers as the first caller turn; a reply *fits* when it contains,
for every intent the sentence asks about, one of that intent's ``fits`` words. Printed per
brain: the score (fitting replies / sentences), and for the llama.cpp models the time to
first token (from the request to the first streamed token, in process) and tokens per second
(tokens after the first / time after the first), p50 over the sentences.

* ``rules``: the scripted receptionist (``dialog_default.yaml``);
* ``llama:<model>``: each installed GGUF (SmolLM2-135M, Qwen2.5-Coder-0.5B) through the
  worker's own ``LlamaLLM`` with the default system prompt, ``--threads`` threads;
* ``--contention``: the embedded piper voice's time to render one clause alone, then while
  two llama generations run (two calls on one pod), with 1 and with 2 threads per call.

    python bench/dialog_score.py [--llm-sentences 16] [--threads 1] [--contention]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HELDOUT = Path(__file__).with_name("data") / "dialog_heldout.yaml"


def load_heldout(path: Path = HELDOUT) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    data = yaml.safe_load(path.read_text())
    return list(data["sentences"]), {k: [str(w) for w in v] for k, v in data["fits"].items()}


def fits(reply: str, expect: Sequence[str], table: Mapping[str, Sequence[str]]) -> bool:
    """Every expected intent is addressed: one of its words is in the reply."""
    low = reply.lower()
    return all(any(w.lower() in low for w in table[intent]) for intent in expect)


def score_rules(sentences: list[dict[str, Any]], table: Mapping[str, Sequence[str]]) -> float:
    from voicepool_worker.providers import dialog

    d = dialog.load()
    misses = []
    for s in sentences:
        reply = dialog.respond(d, [("user", s["say"])]).text
        if not fits(reply, s["expect"], table):
            misses.append((s["say"], reply))
    for said, reply in misses:
        print(f"    miss: {said!r} -> {reply[:70]!r}")
    return 1 - len(misses) / len(sentences)


async def _ask(model: Any, text: str) -> tuple[str, float | None, float, int]:
    from livekit.agents import llm
    from voicepool_worker.config import DEFAULT_SYSTEM_PROMPT

    ctx = llm.ChatContext()
    ctx.add_message(role="system", content=DEFAULT_SYSTEM_PROMPT)
    ctx.add_message(role="user", content=text)
    start = time.monotonic()
    first: float | None = None
    out, tokens = "", 0
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                first = first if first is not None else time.monotonic() - start
                out += chunk.delta.content
                tokens += 1
    return out, first, time.monotonic() - start, tokens


def score_llama(
    name: str,
    path: str,
    sentences: list[dict[str, Any]],
    table: Mapping[str, Sequence[str]],
    threads: int,
) -> dict[str, float]:
    from voicepool_worker.config import DEFAULT_SYSTEM_PROMPT
    from voicepool_worker.providers.llama_llm import LlamaLLM

    model = LlamaLLM(model_path=path, threads=threads)
    model.warm(DEFAULT_SYSTEM_PROMPT)
    ttft: list[float] = []
    speed: list[float] = []
    good = 0
    for s in sentences:
        reply, first, total, tokens = asyncio.run(_ask(model, s["say"]))
        ok = fits(reply, s["expect"], table)
        good += ok
        if first is not None:
            ttft.append(first * 1000)
            if tokens > 1 and total > first:
                speed.append((tokens - 1) / (total - first))
        print(f"    {'fit ' if ok else 'MISS'} {s['say']!r} -> {' '.join(reply.split())[:80]!r}")
    return {
        "score": good / len(sentences),
        "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
        "tps_p50": statistics.median(speed) if speed else float("nan"),
    }


def contention(path: str) -> None:
    """Piper clause render time alone vs. beside two llama generations (two calls)."""
    from llama_cpp import Llama
    from voicepool_worker.providers.piper_tts import PiperTTS

    piper = PiperTTS()
    piper.prewarm()
    clause = "We are open Monday to Friday from 9 AM to 6 PM."

    def render_ms(n: int = 5) -> float:
        times = []
        for _ in range(n):
            t = time.monotonic()
            piper.render(clause)
            times.append((time.monotonic() - t) * 1000)
        return statistics.median(times)

    print(f"  piper render of one clause, alone           : {render_ms():6.0f} ms")
    for threads in (1, 2):
        models = [
            Llama(model_path=path, n_ctx=1024, n_threads=threads, verbose=False) for _ in (0, 1)
        ]
        stop = threading.Event()
        rates: list[float] = []

        def generate(m: Any, stop: threading.Event = stop, rates: list[float] = rates) -> None:
            while not stop.is_set():
                t = time.monotonic()
                out = m.create_completion("The receptionist said:", max_tokens=32)
                n = out["usage"]["completion_tokens"]
                rates.append(n / (time.monotonic() - t))

        workers = [threading.Thread(target=generate, args=(m,), daemon=True) for m in models]
        for w in workers:
            w.start()
        time.sleep(1.0)
        busy = render_ms()
        stop.set()
        for w in workers:
            w.join(timeout=60)
        rate = statistics.median(rates) if rates else float("nan")
        print(
            f"  ... beside 2 llama calls at {threads} thread(s) each: {busy:6.0f} ms"
            f"   (llama {rate:.1f} tok/s per call)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm-sentences", type=int, default=16, help="sentences per LLM")
    parser.add_argument("--threads", type=int, default=1, help="llama threads (worker default)")
    parser.add_argument("--contention", action="store_true")
    parser.add_argument("--no-llm", action="store_true")
    args = parser.parse_args()
    sentences, table = load_heldout()
    print(f"held-out caller sentences: {len(sentences)} ({HELDOUT.name})")
    print("\n== rules (scripted receptionist, dialog_default.yaml) ==")
    rules = score_rules(sentences, table)
    print(f"  dialog score: {rules:.0%} of {len(sentences)} replies fit")
    results: dict[str, dict[str, float]] = {}
    if not args.no_llm:
        import importlib.util

        from voicepool_worker.providers.llama_llm import known_models

        if importlib.util.find_spec("llama_cpp") is None:
            print("\nllama-cpp-python not installed (make build): no LLM figures")
        else:
            subset = sentences[:: max(1, len(sentences) // max(1, args.llm_sentences))]
            subset = subset[: args.llm_sentences]
            for name, path in known_models().items():
                print(f"\n== llama:{name} ({Path(path).name}), {args.threads} thread(s) ==")
                results[name] = score_llama(name, path, subset, table, args.threads)
            if results:
                print(f"\nside by side ({len(subset)} of the sentences for the LLMs)")
                print(f"{'brain':>16} {'score':>6} {'ttft p50':>9} {'tok/s p50':>10}")
                print(f"{'rules':>16} {rules:6.0%} {'~0 ms':>9} {'-':>10}")
                for name, r in results.items():
                    print(
                        f"{'llama:' + name:>16} {r['score']:6.0%} {r['ttft_p50']:7.0f} ms"
                        f" {r['tps_p50']:10.1f}"
                    )
            if args.contention and known_models():
                path = next(iter(known_models().values()))
                print(f"\n== CPU contention: two llama calls and the TTS ({Path(path).name}) ==")
                contention(path)
    return 0 if rules >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
