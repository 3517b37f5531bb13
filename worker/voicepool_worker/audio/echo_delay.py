"""Pure estimate of the echo path's delay: how long after the agent's playout its voice comes
back in the caller's audio.

WebRTC's echo canceller (AEC3) lines the two signals up by itself only within a few hundred
milliseconds; a WebRTC caller's round trip (two jitter buffers, the phone's own delay) is often
longer (~500-650 ms measured here on a loaded 2-core machine). So the delay is estimated from
the signals themselves -- the normalised cross-correlation of the 10 ms log-energy envelopes of
what was played and what was heard -- and the reference is shifted by it before the canceller
sees it. Double talk or no echo at all (a headset) gives no clear peak: the estimate is kept.
The delay does move during a call (0.15 -> 0.33 s between two replies in a live test), but a
jump is taken only when two estimates in a row agree: a lone one was a chance match that moved
the residual-echo gate's window off the echo, and the agent answered itself.
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
        jump_s: float = 0.05,
    ) -> None:
        self.delay_s = initial_s
        self.jump_s = jump_s
        #: a lag far from the delay, seen once: taken only if the next estimate agrees
        self.candidate_s: float | None = None
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
        self._near_rms: deque[float] = deque(maxlen=size)
        self.best_lag_s: float | None = None  # the best lag of the last estimate, even unsure
        self.echo_gain: float | None = None  # None: not measured yet (the gate then assumes echo)

    def push(self, far_rms: float, near_rms: float) -> None:
        self._far.append(math.log10(far_rms + 10.0))
        self._near.append(math.log10(near_rms + 10.0))
        self._far_rms.append(far_rms)
        self._near_rms.append(near_rms)

    def measure_echo_gain(
        self,
        *,
        far_floor: float = 500.0,
        min_blocks: int = 8,
        quantile: float = 0.25,
        spread_s: float = 0.25,
    ) -> float | None:
        """How loud the agent comes back in the caller's raw audio, relative to what played
        one echo delay earlier (amplitude ratio); None until a first estimate has run, and
        None while too little of the agent's talk is in the history to tell.

        Taken over 100 ms blocks where that far end is loud, as a low quantile: a caller who
        talks over the agent only raises some blocks, so the quantile is the echo's own level
        -- about 0.3 for a speakerphone at -10 dB, about 0 for a headset or a phone with its
        own canceller (whose estimate, if any, is a chance match of two voices' rhythms).
        Blocks count only while the agent is still talking: a caller who answers after the
        agent stops lines up with its earlier speech at the gap's lag (turn-taking's rhythm).
        The gain is the highest at any lag within ``spread_s`` of the delay: an estimate that
        is off by a syllable (a chance peak during double talk, once 0 ms for a 190 ms echo)
        must not read a real echo as none -- that turns the canceller off mid-call.
        """
        # before an estimate is sure, the best-matching lag: with no echo at all (a headset
        # never gives a clear peak) the caller is silent there too, and the gain reads ~0
        best = self.delay_s if self.converged else self.best_lag_s
        if best is None:
            return None
        centre = round(best / TICK_S)
        w = round(spread_s / TICK_S)
        near, far = np.asarray(self._near_rms), np.asarray(self._far_rms)
        gains = [
            g
            for lag in range(max(0, centre - w), centre + w + 1, 2)
            if (g := gain_at(near, far, lag, far_floor, min_blocks, quantile)) is not None
        ]
        if not gains:
            # too little of the agent's talk to judge (replies cut short): no news, not the
            # last value again -- repeating a stale "no echo" counted as fresh evidence and
            # turned the canceller off in the middle of a speakerphone call
            return None
        self.echo_gain = max(gains)
        return self.echo_gain

    def far_around_echo(self, spread_s: float) -> float:
        """The loudest far end that can be echoing in the newest capture piece: played one
        delay ago, give or take ``spread_s`` (the delay wanders with the jitter buffers)."""
        n = len(self._far_rms)
        if not self.converged:  # the delay is only a guess: anything played lately may echo
            return max(itertools.islice(self._far_rms, max(0, n - self.max_lag), n), default=0.0)
        # a delay the next estimate may confirm widens the window until it is decided
        lags = [self.delay_s] if self.candidate_s is None else [self.delay_s, self.candidate_s]
        w = round(spread_s / TICK_S)
        lo = max(0, n - 1 - round(max(lags) / TICK_S) - w)
        hi = min(n, n - round(min(lags) / TICK_S) + w)
        if lo >= hi:
            return 0.0
        return max(itertools.islice(self._far_rms, lo, hi))

    def estimate(self) -> float | None:
        """Update ``delay_s`` from the history when it shows a clear echo; the new value."""
        pending, self.candidate_s = self.candidate_s, None  # kept only if this one agrees
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
        self.best_lag_s = found = lag * TICK_S
        if ncc[lag] < self.min_peak:
            return None
        # a jump: the echo path does change (the jitter buffers adapt), but a single peak far
        # away is as often the rhythm of the caller answering the agent just after it stopped
        # (a broad peak near lag 0); it must be seen twice in a row
        jump = self.converged and abs(found - self.delay_s) > self.jump_s
        if jump and (pending is None or abs(found - pending) > self.jump_s):
            self.candidate_s = found
            return None
        self.peak = float(ncc[lag])
        self.delay_s = found
        self.converged = True
        return self.delay_s


def gain_at(
    near: np.ndarray, far: np.ndarray, lag: int, far_floor: float, min_blocks: int, quantile: float
) -> float | None:
    """The echo gain at one lag (ticks) of two 10 ms RMS histories; None when too few
    100 ms blocks are loud there."""
    if len(near) <= lag + 10:
        return None
    # near[i] may echo played[i]; now[i] is what plays while near[i] is captured
    near, played, now = near[lag:], far[: len(far) - lag], far[lag:]
    blocks = len(near) // 10

    def energy(x: np.ndarray) -> np.ndarray:
        return np.asarray((x[: blocks * 10] ** 2).reshape(blocks, 10).sum(axis=1))

    near_e, far_e = energy(near), energy(played)
    loud = (far_e >= 10 * far_floor**2) & (energy(now) >= 10 * far_floor**2)
    if int(loud.sum()) < min_blocks:
        return None
    return float(np.quantile(np.sqrt(near_e[loud] / far_e[loud]), quantile))


def echo_only(near_rms: float, far_rms: float, gate_db: float) -> bool:
    """Residual-echo gate: caller audio quieter than the far end that may be echoing in it,
    by more than ``gate_db``, is taken for echo the canceller left over (a caller talking
    over the agent is louder than the agent's echo at their own microphone)."""
    return far_rms > 0.0 and near_rms < far_rms * 10 ** (gate_db / 20)


class ResidualEchoGate:
    """Mutes 10 ms pieces that are residual echo, but not a caller talking over the agent.

    A bare level test (``echo_only``) mutes the quieter syllables of a caller's speech too,
    because the far end stays loud during double talk: the voice activity detector then sees
    the caller in fragments, and barge-in is late or lost (offline, only 28-34 % of the
    caller's frames passed while the agent talked). Echo suppressors hold a double-talk
    decision open instead: ``open_after`` pieces in a row louder than any echo should be open
    the gate for ``hold_s`` (a lone loud piece is a residual-echo spike, not a voice).
    """

    def __init__(self, gate_db: float, *, hold_s: float = 0.3, open_after: int = 2) -> None:
        self.gate_db = gate_db
        self.hold_s = hold_s
        self.open_after = open_after
        self._open_until = float("-inf")
        self._loud = 0

    def mute(self, t: float, near_rms: float, far_rms: float, *, hold: bool = True) -> bool:
        """Whether the piece captured at ``t`` (seconds, any monotonic clock) is muted.

        ``hold=False``: the bare level test (before the echo path is known, an echo that the
        canceller has not learnt yet is as loud as a voice, and a hold would let it through).
        """
        if far_rms <= 0.0:
            # nothing played that could echo: nothing to mute, and no double talk to hold
            # open -- a hold armed by the silence before a reply left the gate open for the
            # first 0.3 s of every reply, just when its echo came back (~0.2 s later)
            self._loud = 0
            return False
        if not echo_only(near_rms, far_rms, self.gate_db):  # louder than any echo should be
            self._loud += 1
            if hold and self._loud >= self.open_after:
                self._open_until = t + self.hold_s
            return False
        self._loud = 0
        return t >= self._open_until


#: Below this echo gain (agent's voice back in the caller's raw audio / what played, ~-30 dB)
#: nothing echoes (a headset, a phone's own canceller): the residual-echo gate stands aside.
MIN_ECHO_GAIN = 0.03
ECHO_ON_AFTER = 4  # estimates (0.5 s apart) that must all hear an echo to turn the gate back on
ECHO_OFF_AFTER = 3  # quiet estimates in a row that turn it off, once an echo has been heard


class EchoPresence:
    """Whether the caller's audio holds the agent's echo, from successive echo-gain estimates.

    On again only after ``on_after`` estimates in a row hear an echo: double talk at a chance
    lag looks like an echo for a second or two, a real one stays. Off at once while no
    estimate has heard an echo yet (a headset: early in a call, AEC3 still learning
    suppressed a caller who talked over the agent); once one has, only after ``off_after``
    quiet ones in a row: a single quiet reading on a speakerphone (replies cut short, an
    estimate a syllable off) turned the canceller off mid-call and the agent answered its own
    echo until it came back. Until measured the audio may hold an echo (on). An estimate of
    None (the agent did not talk) keeps it.
    """

    def __init__(
        self,
        *,
        min_gain: float = MIN_ECHO_GAIN,
        on_after: int = ECHO_ON_AFTER,
        off_after: int = ECHO_OFF_AFTER,
    ) -> None:
        self.min_gain = min_gain
        self.on_after = on_after
        self.off_after = off_after
        self.heard = True
        self._seen = 0  # estimates in a row that heard an echo
        self._quiet = 0  # estimates in a row that heard none
        self._confirmed = False  # an estimate has heard an echo on this call

    def update(self, gain: float | None) -> bool:
        """Take one estimate; returns whether the echo state changed."""
        heard = gain is None or gain >= self.min_gain
        self._seen = self._seen + 1 if heard else 0
        if gain is None:
            return False
        self._quiet = 0 if heard else self._quiet + 1
        if self.heard:
            now = self._quiet < (self.off_after if self._confirmed else 1)
        else:
            now = self._seen >= self.on_after
        self._confirmed = self._confirmed or heard
        changed, self.heard = now != self.heard, now
        return changed
