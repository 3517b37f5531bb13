"""Early barge-in: an energy onset of the caller's voice pauses the agent before the VAD does.

silero's probability needs ~150-200 ms of a voice to cross its activation threshold, and the
framework then waits ``VOICEPOOL_INTERRUPTION_MIN_DURATION`` more: most of a barge-in's stop
time. The caller's audio is already echo-cancelled and gated (``apm.py``) when it gets here,
so while the agent talks, a few 10 ms pieces in a row well above the line's own noise are
almost always the caller. ``SpeechOnset`` (pure) says when; ``EarlyBargeIn`` (thin glue on an
``AgentSession``) pauses the agent's audio at once and hands over to the framework: if the VAD
then hears speech, the framework's own interruption takes the paused reply from there (and
resumes it if no words follow); if it does not within ``hold_s`` (longer while the sound goes
on, up to ``MAX_HOLD_S``), the reply resumes where it paused -- a cough or a door costs the
caller a short gap, not the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("voicepool.worker.onset")

#: A caller's voice is at least this loud (RMS of 16-bit PCM, about -38 dBFS) ...
ONSET_FLOOR_RMS = 400.0
#: ... and this far above the line's noise (a low quantile of the last seconds' pieces).
ONSET_OVER_NOISE_DB = 12.0
ONSET_PIECES = 3  # 10 ms pieces in a row: a lone click or residual-echo spike is not a voice
NOISE_WINDOW = 200  # pieces (2 s) the noise level is taken over
NOISE_QUANTILE = 0.2
REARM_QUIET = 20  # pieces (200 ms) below the threshold before a new onset can fire
#: The longest a pause waits for the VAD while the sound that paused it goes on (a voice
#: the VAD hears 0.1-0.2 s after the onset, now and then just past the hold).
MAX_HOLD_S = 1.0


class SpeechOnset:
    """Pure: one ``push`` per 10 ms piece of processed caller audio; True on a voice's onset.

    After an onset it stays quiet until the audio has been below the threshold for
    ``rearm_quiet`` pieces, so one utterance gives one onset.
    """

    def __init__(
        self,
        *,
        floor_rms: float = ONSET_FLOOR_RMS,
        over_noise_db: float = ONSET_OVER_NOISE_DB,
        pieces: int = ONSET_PIECES,
        noise_window: int = NOISE_WINDOW,
        rearm_quiet: int = REARM_QUIET,
    ) -> None:
        self.floor_rms = floor_rms
        self.over_noise = 10 ** (over_noise_db / 20)
        self.pieces = pieces
        self.rearm_quiet = rearm_quiet
        self._levels: deque[float] = deque(maxlen=noise_window)
        self._noise = 0.0
        self._loud = 0
        self._quiet = rearm_quiet  # armed from the start
        self._count = 0

    @property
    def threshold(self) -> float:
        return max(self.floor_rms, self._noise * self.over_noise)

    def push(self, level: float) -> bool:
        loud = level >= self.threshold
        self._levels.append(level)
        self._count += 1
        if self._count % 10 == 0:  # the noise level moves slowly: every 100 ms is enough
            self._noise = float(np.quantile(np.fromiter(self._levels, float), NOISE_QUANTILE))
        if not loud:
            self._loud = 0
            self._quiet += 1
            return False
        self._loud += 1
        if self._loud == self.pieces and self._quiet >= self.rearm_quiet:
            self._quiet = 0
            return True
        if self._loud >= self.pieces:
            self._quiet = 0
        return False

    @property
    def sounding(self) -> bool:
        """The utterance of the last onset still goes on (not yet ``rearm_quiet`` below)."""
        return self._quiet < self.rearm_quiet


class EarlyBargeIn:
    """Pauses a talking agent on a ``SpeechOnset``; resumes it if the VAD hears no speech.

    ``flush`` (the room's ``AudioSource.clear_queue``) drops the audio already queued for
    WebRTC at the pause, as the framework's own pause does one frame later.

    The pause is the same ``AudioOutput.pause`` the framework uses for its own interruption,
    so once the VAD hears the caller the framework owns the paused reply (its agent state
    leaves "speaking"); this only ever resumes a pause that the framework did not take over.
    """

    def __init__(
        self,
        session: Any,
        *,
        hold_s: float = 0.3,
        max_hold_s: float = MAX_HOLD_S,
        onset: SpeechOnset | None = None,
        flush: Callable[[], None] | None = None,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        self._session = session
        self._flush = flush
        self.hold_s = hold_s
        self.max_hold_s = max_hold_s
        self._held = 0.0  # how long the current pause has waited
        self.onset = onset or SpeechOnset()
        self._call_later = call_later
        self._timer: Any = None
        self.paused = 0  # onsets that paused the agent
        self.resumed = 0  # of those, resumed because the VAD heard no speech

    def piece(self, level: float) -> None:
        """One 10 ms piece of processed caller audio (its RMS); called from the frame path."""
        if self.onset.push(level):
            try:
                self._pause()
            except Exception:  # never break the caller's audio path
                log.exception("early barge-in failed")

    def _pause(self) -> None:
        s = self._session
        speech = s.current_speech
        audio = s.output.audio
        if (
            self._timer is not None
            or s.agent_state != "speaking"
            or speech is None
            or not speech.allow_interruptions
            or audio is None
            or not audio.can_pause
        ):
            return
        audio.pause()
        if self._flush is not None:
            # the room output drops its queue only when it forwards its next frame (up to
            # 50 ms later); a paused reply loses that queued audio either way
            self._flush()
        self.paused += 1
        log.info("onset pause", extra={"at": time.time()})
        self._held = 0.0
        self._arm()

    def _arm(self) -> None:
        later = self._call_later or asyncio.get_running_loop().call_later
        self._held += self.hold_s
        self._timer = later(self.hold_s, self._check)

    def _check(self) -> None:
        self._timer = None
        s = self._session
        if s.agent_state != "speaking":
            return  # the framework interrupted (it owns the pause) or the reply ended
        if s.user_state == "speaking":
            self._arm()  # the VAD hears the caller; the framework's interruption is due
            return
        if self.onset.sounding and self._held + self.hold_s <= self.max_hold_s + 1e-9:
            # the sound goes on: a voice the VAD has not heard yet (resuming here sent
            # ~100 ms of the reply over a caller the VAD heard 3 ms later)
            self._arm()
            return
        audio = s.output.audio
        if audio is not None:
            audio.resume()
        self.resumed += 1
        log.info("onset resumed", extra={"at": time.time()})

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
