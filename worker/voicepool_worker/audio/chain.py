"""The caller's audio chain, in one declared order, as one object an agent hands its session.

What a phone or WebRTC caller's microphone brings in passes, every 10 ms:

1. **echo cancellation** (WebRTC AEC3) against the *playout reference*: what the room output
   actually played, when it played it (``playout_tap``), delayed by the measured echo path;
2. **noise suppression** (the same APM);
3. the **residual-echo gate**: pieces that are only the agent's own echo, still loud after the
   canceller, are muted while the agent talks (``echo_delay``);
4. **early barge-in**: a caller's voice onset pauses the agent on its first 30 ms, before the
   VAD hears it (``onset``); the framework's own interruption then takes over.

An agent builds one ``CallerAudio`` per call, passes ``input_options()`` to its
``AgentSession.start(room_options=...)``, and calls ``attach(session)`` once started (the
reference and the barge-in need the room output). Settings come from the pool
(``VOICEPOOL_NOISE_SUPPRESSION``, ``VOICEPOOL_ECHO_CANCELLATION``, ``VOICEPOOL_EARLY_BARGE_IN``,
...): docs/agents.md.
"""

from __future__ import annotations

import logging
from typing import Any

from livekit.agents import AgentSession, room_io

from ..config import WorkerConfig
from .apm import CallerAudioProcessor
from .onset import EarlyBargeIn
from .playout_tap import attach_echo_reference, room_audio_source

log = logging.getLogger("voicepool.worker.audio")


class CallerAudio:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.processor: CallerAudioProcessor | None = None
        if cfg.noise_suppression or cfg.echo_cancellation:
            self.processor = CallerAudioProcessor(
                echo_cancellation=cfg.echo_cancellation,
                noise_suppression=cfg.noise_suppression,
                stream_delay_ms=cfg.echo_delay_ms,
                auto_gain_control=cfg.auto_gain_control,
                echo_gate_db=-cfg.echo_gate_db if cfg.echo_gate_db > 0 else None,
                echo_gate_hold_s=cfg.echo_gate_hold_s,
            )
        self.early: EarlyBargeIn | None = None

    def input_options(self) -> room_io.AudioInputOptions:
        """The room input for ``AgentSession.start(room_options=RoomOptions(audio_input=...))``."""
        return room_io.AudioInputOptions(
            noise_cancellation=self.processor, frame_size_ms=self.cfg.input_frame_ms
        )

    def attach(self, session: AgentSession[Any]) -> None:
        """Once the session started: the echo reference from the room output, and the early
        barge-in on the processed caller audio."""
        processor, cfg = self.processor, self.cfg
        if processor is None:
            return
        if cfg.echo_cancellation:
            # the reference is what the room output plays, when it plays (see playout_tap)
            processor.reference = attach_echo_reference(session.output.audio)
        if cfg.early_barge_in:
            source = room_audio_source(session.output.audio)
            self.early = EarlyBargeIn(
                session,
                hold_s=cfg.early_barge_in_hold_s,
                flush=source.clear_queue if source is not None else None,
            )
            processor.on_piece = self.early.piece
        session.on("close", self._on_close)

    def _on_close(self, _ev: Any) -> None:
        if self.early is not None:
            self.early.close()
            log.info(
                "early barge-in",
                extra={"onset_pauses": self.early.paused, "onset_resumed": self.early.resumed},
            )
