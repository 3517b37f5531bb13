"""A call never goes silent: provider errors become a log line and a spoken apology.

When every provider of a stage fails a turn (a wrong base URL, a bad key, an endpoint that
hangs past its deadline, a model the server does not know), livekit-agents reports an error
event and says nothing. Here that event logs one line naming the stage, the provider and the
reason, counts it, and says ``SORRY_TEXT`` within the turn budget. The apology is rendered
ahead of time by the embedded voice when one is in the chain, so it plays even when the TTS
itself is what failed. Deadlines are explicit (``session_options``) so a hanging endpoint
costs seconds, not the framework's default retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ... import sdk

log = logging.getLogger("voicepool.worker.resilience")

SORRY_TEXT = "Sorry, one moment please."
#: At most one apology per this many seconds (a burst of errors in one turn says it once).
APOLOGY_INTERVAL_S = 4.0
#: Consecutive failed turns before livekit-agents gives up on the call (its default is 3).
MAX_UNRECOVERABLE_ERRORS = 20

_STAGES = {"llm_error": "llm", "stt_error": "stt", "tts_error": "tts"}


def session_options(cfg: sdk.Settings) -> Any:
    """Per-stage deadlines and no same-provider retries: a failed turn fails fast."""
    from livekit.agents import APIConnectOptions
    from livekit.agents.voice.agent_session import SessionConnectOptions

    return SessionConnectOptions(
        stt_conn_options=APIConnectOptions(max_retry=0, timeout=cfg.provider_timeout_s),
        llm_conn_options=APIConnectOptions(max_retry=0, timeout=cfg.llm_first_token_timeout_s),
        tts_conn_options=APIConnectOptions(max_retry=0, timeout=cfg.provider_timeout_s),
        max_unrecoverable_errors=MAX_UNRECOVERABLE_ERRORS,
    )


def reason_of(error: BaseException) -> str:
    """A short human reason: the HTTP status and message when there is one."""
    status = getattr(error, "status_code", None)
    text = str(error).strip() or type(error).__name__
    text = " ".join(text.split())[:300]
    return f"HTTP {status}: {text}" if status else text


@dataclass
class Apology:
    """Decides when to apologise (pure; the clock is passed in)."""

    interval_s: float = APOLOGY_INTERVAL_S
    _last: float = field(default=-1e9)

    def due(self, now: float) -> bool:
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True


def prerender(tts: Any) -> tuple[bytes, int] | None:
    """The apology as PCM from the embedded piper voice, if the TTS chain has one."""
    from ... import providers

    for instance in providers.instances_of(tts):
        render = getattr(instance, "render", None)
        if callable(render):
            try:
                return bytes(render(SORRY_TEXT)), int(instance.sample_rate)
            except Exception as e:  # the text path still works without it
                log.warning(f"could not pre-render the apology: {e}")
    return None


async def _frames(pcm: bytes, rate: int) -> AsyncIterator[Any]:
    from livekit import rtc

    step = rate // 50 * 2  # 20 ms of 16-bit mono
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        yield rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2)


def attach(session: Any, audio: tuple[bytes, int] | None) -> None:
    """Log, count and apologise for every turn a stage could not serve."""
    from ... import metrics, providers

    apology = Apology()

    def on_error(ev: Any) -> None:
        err = ev.error
        stage = _STAGES.get(getattr(err, "type", ""), "unknown")
        provider = providers.name_of(ev.source)
        inner = getattr(err, "error", err)
        log.error(
            f"{stage} provider {provider!r} failed this turn: {reason_of(inner)}",
            extra={"stage": stage, "provider": provider, "recoverable": err.recoverable},
        )
        metrics.PROVIDER_ERRORS.labels(stage, provider).inc()
        if not apology.due(time.monotonic()):
            return
        try:
            if audio is not None:
                session.say(SORRY_TEXT, audio=_frames(*audio), add_to_chat_ctx=False)
            elif stage != "tts":
                session.say(SORRY_TEXT, add_to_chat_ctx=False)
            else:
                log.warning("no apology: the TTS failed and no embedded voice is in its chain")
                return
        except RuntimeError as e:  # the session is closing
            log.info(f"no apology: {e}")
            return
        log.info("apology said", extra={"stage": stage, "provider": provider})

    session.on("error", on_error)
