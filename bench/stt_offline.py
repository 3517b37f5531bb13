"""The embedded STTs side by side, offline: the same caller audio to pocketsphinx and whisper.

No LiveKit: each sentence of the eval set is spoken by the caller's voice (espeak-ng by
default, not the agent's piper voice), put through a line condition, and handed to each
engine the way the worker does (16 kHz int16; pocketsphinx streamed in 20 ms pieces, whisper
in one decode). Printed per engine and condition: word error rate over all sentences, and the
CPU time the engine still needs after the end of speech (pocketsphinx: closing the utterance;
whisper: the whole decode, which the worker starts speculatively at the first silence).

Conditions: ``clean`` (16 kHz), ``g711`` (8 kHz mu-law, as a phone carrier sends it,
upsampled again to 16 kHz like livekit-sip's audio reaching the agent), ``street`` (street
noise at 10 dB SNR, see line_noise.py).

    python bench/stt_offline.py [--turns 32] [--voice espeak]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from line_noise import frames as noise_frames
from line_noise import speech_level
from voicepool_worker.caller import speech_frames
from voicepool_worker.latency import percentile
from voicepool_worker.measure import mix, wer

CONDITIONS = ("clean", "g711", "street")
ENGINES = ("pocketsphinx", "whisper")


def to_rate(pcm48: np.ndarray, rate: int) -> np.ndarray:
    """48 kHz int16 -> ``rate`` (livekit's resampler, as the worker's input path uses)."""
    from livekit import rtc

    r = rtc.AudioResampler(48000, rate, num_channels=1)
    out = [*r.push(rtc.AudioFrame(pcm48.tobytes(), 48000, 1, len(pcm48))), *r.flush()]
    return np.frombuffer(b"".join(bytes(f.data) for f in out), dtype="<i2").copy()


def mulaw_roundtrip(pcm: np.ndarray) -> np.ndarray:
    """G.711 mu-law encode and decode (8-bit logarithmic samples), int16 in and out."""
    x = np.clip(pcm.astype(np.float64) / 32768.0, -1, 1)
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round((y + 1) / 2 * 255) / 255 * 2 - 1  # 8 bits
    z = np.sign(q) * (np.power(1 + mu, np.abs(q)) - 1) / mu
    return np.clip(z * 32768.0, -32768, 32767).astype("<i2")


def condition(frames: tuple[bytes, ...], kind: str, noise: object = None) -> np.ndarray:
    """One utterance (10 ms 48 kHz frames) through a line condition, as 16 kHz int16."""
    if kind == "street" and noise is not None:
        frames = tuple(mix(f, next(noise)) for f in frames)  # type: ignore[call-overload]
    pcm48 = np.frombuffer(b"".join(frames), dtype="<i2")
    if kind == "g711":
        return to_rate(to_rate_8k_to_48k(mulaw_roundtrip(to_rate(pcm48, 8000))), 16000)
    return to_rate(pcm48, 16000)


def to_rate_8k_to_48k(pcm8: np.ndarray) -> np.ndarray:
    from livekit import rtc

    r = rtc.AudioResampler(8000, 48000, num_channels=1)
    out = [*r.push(rtc.AudioFrame(pcm8.tobytes(), 8000, 1, len(pcm8))), *r.flush()]
    return np.frombuffer(b"".join(bytes(f.data) for f in out), dtype="<i2").copy()


class Pocketsphinx:
    def __init__(self) -> None:
        from voicepool_worker.providers.pocketsphinx_stt import PocketsphinxSTT

        self.decoder = PocketsphinxSTT()._acquire()

    def __call__(self, pcm16: np.ndarray) -> tuple[str, float]:
        d = self.decoder
        d.start_utt()
        data = pcm16.tobytes()
        for i in range(0, len(data), 640):  # 20 ms pieces while the caller speaks
            d.process_raw(data[i : i + 640], False, False)
        t = time.perf_counter()
        d.end_utt()
        hyp = d.hyp()
        return (str(hyp.hypstr) if hyp is not None else ""), time.perf_counter() - t


class Whisper:
    def __init__(self, threads: int) -> None:
        from voicepool_worker.providers.whisper_stt import WhisperSTT

        self.stt = WhisperSTT(threads=threads)
        self.stt.prewarm()

    def __call__(self, pcm16: np.ndarray) -> tuple[str, float]:
        from voicepool_worker.providers.whisper_stt import transcribe

        t = time.perf_counter()
        text = transcribe(self.stt.engine(), pcm16.astype(np.float32) / 32768)
        return text, time.perf_counter() - t


def compare(
    texts: list[str], voice: str, threads: int = 1
) -> dict[tuple[str, str], dict[str, float]]:
    """WER and after-speech decode time per (engine, condition)."""
    utter = [speech_frames(t, voice) for t in texts]
    level = speech_level(utter)
    audio = {}
    for kind in CONDITIONS:
        noise = noise_frames("street", level, 10.0) if kind == "street" else None
        audio[kind] = [condition(u, kind, noise) for u in utter]
    out: dict[tuple[str, str], dict[str, float]] = {}
    engines = {"pocketsphinx": Pocketsphinx(), "whisper": Whisper(threads)}
    for name, engine in engines.items():
        for kind in CONDITIONS:
            heard, took = [], []
            for pcm in audio[kind]:
                text, seconds = engine(pcm)
                heard.append(text)
                took.append(seconds * 1000)
            out[name, kind] = {
                "wer": wer(zip(texts, heard, strict=True)),
                "p50_ms": percentile(took, 50),
                "p90_ms": percentile(took, 90),
                "examples": heard[:3],  # type: ignore[dict-item]
            }
    return out


def report(rows: dict[tuple[str, str], dict[str, float]], n: int, voice: str) -> list[str]:
    lines = [
        f"STT offline, {n} eval sentences spoken by {voice} (not the agent's voice): word error"
        " rate; CPU after the end of speech (pocketsphinx: closing the utterance it decoded"
        " while the caller spoke; whisper: one whole decode, started speculatively in the worker)",
        f"  {'engine':13} {'condition':9} {'WER':>6} {'after speech p50':>17} {'p90':>7}",
    ]
    for (engine, kind), r in rows.items():
        lines.append(
            f"  {engine:13} {kind:9} {r['wer']:6.1%} {r['p50_ms']:14.0f} ms {r['p90_ms']:4.0f} ms"
        )
    return lines


def main() -> int:
    from worker_latency import load_eval

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--turns", type=int, default=0)
    parser.add_argument("--voice", default="espeak")
    parser.add_argument("--threads", type=int, default=1, help="whisper's CTranslate2 threads")
    parser.add_argument("--no-results", action="store_true", help="leave docs/results.md")
    args = parser.parse_args()
    texts = [x.text for x in load_eval()]
    texts = texts[: args.turns] if args.turns else texts
    if args.voice == "espeak":
        from voicepool_devstack.apt import ensure_packages

        ensure_packages(["espeak-ng"], "the caller's voice (--voice espeak)", print)
    rows = compare(texts, args.voice, args.threads)
    lines = report(rows, len(texts), args.voice)
    for line in lines:
        print(line)
    if not args.no_results:
        from results import rewrite

        table = [
            "| engine | line | WER | CPU after the end of speech p50 / p90 |",
            "|---|---|---|---|",
        ]
        table += [
            f"| {e} | {k} | {r['wer']:.1%} | {r['p50_ms']:.0f} / {r['p90_ms']:.0f} ms |"
            for (e, k), r in rows.items()
        ]
        print(f"results: {rewrite('stt_offline', [lines[0], '', *table, ''])}")
    for (engine, kind), r in rows.items():
        print(f"    {engine}/{kind} heard: {r['examples']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
