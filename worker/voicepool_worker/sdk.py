"""voicepool's public API for agent authors: run your livekit-agents agent on a voicepool pool.

The runtime (``voicepool-worker``) does the pool's side for any agent it hosts: capacity and
load to LiveKit, one pod report per session start and end, drain on the operator's annotation or
SIGTERM without cutting a call, readiness, ``/metrics`` and masked JSON logs. It also watches
your ``AgentSession`` (the job's primary session) and turns its events into the per-turn
latency record (time to first word and its stages) on ``/metrics`` and the turn log lines,
without your code doing anything. What your agent may use from here:

- ``AgentApp``: what ``VOICEPOOL_AGENT=package.module:name`` points at: the entrypoint, a
  prewarm hook (models load before the pod reports ready), modules to import before the call
  processes fork, and a start-up check (one clear line instead of a crash loop);
- ``settings()``: the pool's validated settings (``VOICEPOOL_*`` from the pod template);
- ``CallerAudio``: the caller-audio chain (echo cancellation on the playout reference, noise
  suppression, residual-echo gate, early barge-in) as one object for your session;
- ``vad()``: the pool's silero VAD, loaded once before the fork;
- ``call_control(ctx, session)``: the call's one ``CallControl``: hang up, cold and warm
  transfer, keypad menu events, dial out, the call's idle and length limits (LiveKit SIP);
- ``dial_request``/``dial_opening``: what an outbound dispatch asks (its ``phone_number``);
- ``turn_detector()``: the end-of-turn model (Smart Turn) when the pool asks for it;
- ``TurnLatency``: the per-turn record's type, for agents that want to read it.

``voicepool_worker.providers`` (the embedded and OpenAI-compatible STT, LLM and TTS by
settings) and ``voicepool_worker.metrics`` are public too.

Everything else in ``voicepool_worker`` is the runtime's or the built-in receptionist's, and
may change. docs/agents.md shows a team agent end to end.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from livekit.agents import JobContext, JobProcess

from .audio.chain import CallerAudio
from .config import ConfigError, WorkerConfig
from .config import load as load_settings
from .latency import TurnLatency
from .phone.control import SPOKEN as CALL_CONTROL_PHRASES
from .phone.control import CallControl
from .phone.control import for_job as _control_for_job
from .phone.dispatch import TelephonyError as DialError
from .phone.dispatch import dial_opening, dial_request

__all__ = [
    "CALL_CONTROL_PHRASES",
    "AgentApp",
    "CallControl",
    "CallerAudio",
    "ConfigError",
    "DialError",
    "JobContext",
    "JobProcess",
    "Settings",
    "TurnLatency",
    "call_control",
    "dial_opening",
    "dial_request",
    "load_settings",
    "preload_turn_model",
    "preload_vad",
    "settings",
    "turn_detector",
    "vad",
]

#: The pool's settings, validated at start (docs/worker.md lists every ``VOICEPOOL_*``).
Settings = WorkerConfig


@dataclass(frozen=True)
class AgentApp:
    """An agent the voicepool runtime can host.

    ``entrypoint`` runs once per call in its own process, like a livekit-agents entrypoint:
    join the room (``ctx.connect()`` or ``AgentSession.start(room=ctx.room)``) and talk.
    ``prewarm`` runs in every warm process before it is offered a call (load models there).
    ``preload`` lists modules imported once before call processes fork (shared copy-on-write),
    or a function of the settings that returns them. ``check`` runs in the main process at
    start: raise ``ConfigError`` to refuse bad settings with one line (exit 2).
    """

    entrypoint: Callable[[JobContext], Awaitable[None]]
    prewarm: Callable[[JobProcess], None] | None = None
    preload: Sequence[str] | Callable[[Settings], Sequence[str]] = ()
    check: Callable[[Settings], None] | None = None

    def preload_modules(self, cfg: Settings) -> list[str]:
        return list(self.preload(cfg) if callable(self.preload) else self.preload)


@functools.cache
def settings() -> Settings:
    """The pool's settings from this process's environment (validated once, then cached)."""
    return load_settings(os.environ)


def vad(cfg: Settings | None = None) -> Any:
    """The pool's silero VAD (``VOICEPOOL_VAD_*``), the instance loaded before the fork."""
    from .audio.vad import vad as shared

    cfg = cfg or settings()
    return shared(cfg.vad_min_silence_s, cfg.vad_activation, cfg.vad_min_speech_s)


def call_control(ctx: JobContext, session: Any, cfg: Settings | None = None) -> CallControl:
    """The call's one ``CallControl`` (hang up, transfers, keypad, dial out, limits): the same
    object your dialog, the keypad and the control service act through."""
    return _control_for_job(ctx, session, cfg or settings())


def preload_vad(cfg: Settings | None = None) -> Any:
    """Load the pool's VAD now (call it from a module in ``AgentApp.preload``: before the fork)."""
    from .audio.vad import preload_vad as load

    return load(cfg or settings())


def turn_detector(cfg: Settings | None = None) -> Any:
    """The end-of-turn model for ``AgentSession(turn_handling={"turn_detection": ...})`` when
    the pool asks for it (``VOICEPOOL_TURN_DETECTION=smart-turn``); None: silence alone ends a
    turn. A missing or broken model also gives None (the runtime said why at start)."""
    cfg = cfg or settings()
    if cfg.turn_detection != "smart-turn":
        return None
    from .audio import smart_turn
    from .audio.end_of_turn import EndOfTurnPolicy

    policy = EndOfTurnPolicy(
        threshold=cfg.eot_threshold,
        complete_delay_s=cfg.endpointing_min_delay_s,
        ceiling_s=cfg.endpointing_max_delay_s,
    )
    return smart_turn.detector(policy)


def preload_turn_model() -> bool:
    """Load the end-of-turn model before the fork; False when it is unavailable."""
    from .audio import smart_turn

    try:
        smart_turn.preload()
    except smart_turn.ModelUnavailable:
        return False
    return True
