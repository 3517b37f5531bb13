"""End of turn by an audio model, pure: what the model is shown and what its verdict means.

Smart Turn v3.2 (``smart_turn.py`` runs it) reads the caller's voice -- intonation, a
trailing "and", a drawn-out "so..." -- and gives the probability that the turn is complete.
It was trained on turns that end about 0.2 s into the silence after them, and its verdict
drifts towards "complete" as more silence follows (measured on the eval voices: a fragment
at 0.01 with 0.2 s of silence read 0.9+ with 0.5 s), so it is shown exactly that: the last
8 s of audio up to ``MODEL_TAIL_S`` after the last voiced 10 ms, normalised.

The verdict sets the endpointing wait (livekit-agents' ``min_delay``/``max_delay``): a turn
the model calls complete ends as soon as the VAD's silence has run out; one it calls
unfinished waits up to the ceiling for the caller to go on. No prediction in time (a busy
core) means silence alone decides, as with ``VOICEPOOL_TURN_DETECTION=vad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
WINDOW_S = 8.0  # the model's input: 8 s of log-mel features (80 x 800)
FEATURE_FRAMES = 800
MODEL_TAIL_S = 0.2  # silence after the last voiced audio the model expects to see
FRAME_S = 0.01
#: RMS of float audio in [-1, 1] above which a 10 ms frame is voiced (about -44 dBFS, the
#: speech floor of the voice-loop measurements).
VOICED_RMS = 200.0 / 32768


@dataclass(frozen=True)
class EndOfTurnPolicy:
    """How the model's verdict turns into a wait (seconds of the caller's silence)."""

    threshold: float = 0.5  # below it the model thinks the caller is not done
    complete_delay_s: float = 0.2  # endpointing min_delay: the turn the model calls complete
    ceiling_s: float = 1.2  # endpointing max_delay: the longest wait for an unfinished one

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold {self.threshold} must be between 0 and 1")
        if not 0 <= self.complete_delay_s <= self.ceiling_s:
            raise ValueError("the complete-turn delay must be between 0 and the ceiling")

    def complete(self, probability: float) -> bool:
        return probability >= self.threshold

    def wait_s(self, probability: float | None) -> float:
        """The silence after which the turn ends (no verdict: the short wait, silence rules)."""
        if probability is None or self.complete(probability):
            return self.complete_delay_s
        return self.ceiling_s


def last_voiced_end(samples: np.ndarray, floor: float = VOICED_RMS) -> int | None:
    """The sample index just after the last voiced 10 ms frame (None: nothing voiced)."""
    frame = int(FRAME_S * SAMPLE_RATE)
    n = len(samples) // frame
    if n == 0:
        return None
    frames = samples[: n * frame].reshape(n, frame).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((frames * frames).mean(axis=1)) >= floor)
    return None if loud.size == 0 else int(loud[-1] + 1) * frame


def model_window(samples: np.ndarray, tail_s: float = MODEL_TAIL_S) -> np.ndarray | None:
    """The audio the model judges, as it was trained: up to ``tail_s`` after the last voiced
    frame, the last 8 s of it, left-padded with zeros to exactly 8 s, then the whole buffer
    (padding included) set to zero mean and unit variance (float32). None: nothing voiced.

    The order matters: padding the features instead of the audio (log-mel of silence is not
    zero), or normalising before padding, gives the model an input it never saw."""
    end = last_voiced_end(samples)
    if end is None:
        return None
    n = int(WINDOW_S * SAMPLE_RATE)
    end = min(len(samples), end + int(tail_s * SAMPLE_RATE))
    clip = samples[max(0, end - n) : end].astype(np.float32)
    clip = np.pad(clip, (n - len(clip), 0))
    out: np.ndarray = ((clip - clip.mean()) / np.sqrt(clip.var() + 1e-7)).astype(np.float32)
    return out


def fit_features(features: np.ndarray, frames: int = FEATURE_FRAMES) -> np.ndarray:
    """Log-mel features (80 x n) of the 8 s window as the model takes them: shape
    (1, 80, frames), float32 (a short input is left-padded, a long one keeps its end)."""
    if features.shape[1] < frames:
        features = np.pad(features, ((0, 0), (frames - features.shape[1], 0)))
    return features[None, :, -frames:].astype(np.float32)


def int16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
