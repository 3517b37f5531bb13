"""Pure estimate of the echo path's delay: how long after the agent's playout its voice comes
back in the caller's audio.

WebRTC's echo canceller (AEC3) lines the two signals up by itself only within a few hundred
milliseconds; a WebRTC caller's round trip (two jitter buffers, the phone's own delay) is often
longer (~500-650 ms measured here on a loaded 2-core machine). So the delay is estimated from
the signals themselves -- the normalised cross-correlation of the 10 ms log-energy envelopes of
what was played and what was heard -- and the reference is shifted by it before the canceller
sees it. Double talk or no echo at all (a headset) gives no clear peak: the estimate is kept.
"""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np

TICK_S = 0.01


class EchoDelayEstimator:
    """Envelopes in, delay out; one ``push`` per 10 ms of capture."""

    def __init__(
        self,
        *,
        initial_s: float,
        max_lag_s: float = 1.6,
        window_s: float = 3.0,
        min_peak: float = 0.5,
        min_far_active: float = 0.2,
    ) -> None:
        self.delay_s = initial_s
        self.max_lag = int(max_lag_s / TICK_S)
        self.window = int(window_s / TICK_S)
        self.min_peak = min_peak
        self.min_far_active = min_far_active
        size = self.window + self.max_lag
        self._far: deque[float] = deque(maxlen=size)
        self._near: deque[float] = deque(maxlen=size)
        self.peak = 0.0  # correlation of the last accepted estimate
        self.converged = False  # an estimate from the signals exists (else: the guess)
        self._far_rms: deque[float] = deque(maxlen=size)

    def push(self, far_rms: float, near_rms: float) -> None:
        self._far.append(math.log10(far_rms + 10.0))
        self._near.append(math.log10(near_rms + 10.0))
        self._far_rms.append(far_rms)

    def far_around_echo(self, spread_s: float) -> float:
        """The loudest far end that can be echoing in the newest capture piece: played one
        delay ago, give or take ``spread_s`` (the delay wanders with the jitter buffers)."""
        n = len(self._far_rms)
        if not self.converged:  # the delay is only a guess: anything played lately may echo
            return max(itertools.islice(self._far_rms, max(0, n - self.max_lag), n), default=0.0)
        lag = round(self.delay_s / TICK_S)
        w = round(spread_s / TICK_S)
        lo, hi = max(0, n - 1 - lag - w), min(n, n - lag + w)
        if lo >= hi:
            return 0.0
        return max(itertools.islice(self._far_rms, lo, hi))

    def estimate(self) -> float | None:
        """Update ``delay_s`` from the history when it shows a clear echo; the new value."""
        if len(self._far) < self._far.maxlen:  # type: ignore[operator]
            return None
        far = np.asarray(self._far)[: self.window]  # played earliest ... window
        near = np.asarray(self._near)
        if np.mean(far > 2.4) < self.min_far_active:  # ~250 RMS: the agent barely spoke
            return None
        f = far - far.mean()
        fn = float(np.sqrt((f * f).sum()))
        if fn == 0.0:
            return None
        # near[lag : lag + window] for every lag, as rows
        idx = np.arange(self.max_lag)[:, None] + np.arange(self.window)[None, :]
        seg = near[idx]
        seg = seg - seg.mean(axis=1, keepdims=True)
        norms = np.sqrt((seg * seg).sum(axis=1)) * fn
        with np.errstate(invalid="ignore", divide="ignore"):
            ncc = np.where(norms > 0, (seg @ f) / norms, 0.0)
        lag = int(np.argmax(ncc))
        if ncc[lag] < self.min_peak:
            return None
        self.peak = float(ncc[lag])
        self.delay_s = lag * TICK_S
        self.converged = True
        return self.delay_s


def echo_only(near_rms: float, far_rms: float, gate_db: float) -> bool:
    """Residual-echo gate: caller audio quieter than the far end that may be echoing in it,
    by more than ``gate_db``, is taken for echo the canceller left over (a caller talking
    over the agent is louder than the agent's echo at their own microphone)."""
    return far_rms > 0.0 and near_rms < far_rms * 10 ** (gate_db / 20)
