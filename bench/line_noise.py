"""Background noise for the caller's line, made at run time (nothing recorded is shipped).

* ``street``: traffic rumble (brown-ish noise, low-passed) with passing-car swells and short
  horn/brake bursts -- the kind of background a caller on a pavement has;
* ``babble``: several quiet piper voices saying other sentences over each other (a café).

Both come back as 10 ms 48 kHz int16 frames, scaled so the speech-to-noise ratio against the
caller's own voiced frames is ``snr_db``, and loop forever.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from voicepool_worker.caller import FRAME_BYTES, SAMPLE_RATE, speech_frames
from voicepool_worker.measure import SPEECH_FLOOR_RMS, rms

BABBLE_LINES = (
    "did you see the match last night, it went to penalties again",
    "i told her the train would be late but she would not listen",
    "we are thinking of painting the kitchen a lighter shade of green",
    "the new bakery on the corner sells bread until noon on sundays",
    "my brother moved to the coast and now he only talks about boats",
    "can you pass me the menu, i cannot decide between soup and salad",
)


def speech_level(utterances: Sequence[Sequence[bytes]]) -> float:
    """Mean RMS of the voiced frames of the caller's utterances (the 'signal' of the SNR)."""
    levels = [rms(f) for u in utterances for f in u]
    voiced = [x for x in levels if x >= SPEECH_FLOOR_RMS]
    return float(np.mean(voiced)) if voiced else 3000.0


def street(seconds: float = 20.0, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    white = rng.standard_normal(n)
    rumble = np.cumsum(white)  # brown noise: energy falls 6 dB per octave
    rumble -= np.convolve(rumble, np.ones(4800) / 4800, mode="same")  # drop DC drift (<10 Hz)
    k = 24  # a gentle low-pass: moving average over 0.5 ms
    rumble = np.convolve(rumble, np.ones(k) / k, mode="same")
    t = np.arange(n) / SAMPLE_RATE
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * t / 6.0) ** 2  # cars passing every few seconds
    out = rumble / (np.std(rumble) + 1e-9) * swell
    for start in rng.uniform(0, seconds - 1.0, size=int(seconds / 4)):  # bursts
        i = int(start * SAMPLE_RATE)
        length = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
        burst_t = np.arange(length) / SAMPLE_RATE
        tone = np.sin(2 * np.pi * rng.uniform(300, 700) * burst_t)  # a horn, a brake squeal
        hiss = rng.standard_normal(length) * 0.5
        env = np.hanning(length)
        out[i : i + length] += 2.5 * env * (tone + hiss)
    return out


def babble(seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    voices = []
    for line in BABBLE_LINES:
        pcm = b"".join(speech_frames(line))
        voices.append(np.frombuffer(pcm, dtype="<i2").astype(np.float64))
    n = max(len(v) for v in voices) + SAMPLE_RATE
    out = np.zeros(n)
    for v in voices:
        offset = int(rng.uniform(0, SAMPLE_RATE))
        out[offset : offset + len(v)] += v[: n - offset]
    return out


def frames(kind: str, signal_rms: float, snr_db: float = 10.0) -> Iterator[bytes]:
    """An endless line background of ``kind`` at ``snr_db`` below ``signal_rms``."""
    noise = street() if kind == "street" else babble()
    noise = noise / (np.sqrt(np.mean(noise**2)) + 1e-9) * signal_rms / 10 ** (snr_db / 20)
    pcm = np.clip(noise, -32768, 32767).astype("<i2").tobytes()
    pcm = pcm[: len(pcm) - len(pcm) % FRAME_BYTES]
    chunks = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    return itertools.cycle(chunks)
