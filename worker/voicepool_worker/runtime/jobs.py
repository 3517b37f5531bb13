"""What the runtime does inside each call's job process, whatever agent it hosts.

livekit-agents runs the hosted agent's entrypoint in a warm process per call. These module-level
functions (the process executor imports them by name) wrap it:

- every log line of the call carries its room, session (job id) and participant;
- the agent's ``AgentSession`` (the job's primary session, once the agent starts it) is
  watched: each turn is a log line, and its latency record (time to first word and its
  stages) feeds ``/metrics``; the session's close ends the job. No agent code is involved;
- the call is published for, and steered by, the control service (``control.CallEndpoint``);
- an entrypoint that raises, or an agent that has not joined the room
  ``VOICEPOOL_AGENT_JOIN_TIMEOUT`` (30 s) after the call was dispatched, ends its job with one
  log line and ``voicepool_worker_agent_errors_total{kind}``; the main process reports the
  session ended, and the next caller gets a fresh warm process.

``voicepool_worker.metrics`` is imported inside the functions, never at the top: the main
process imports this module before livekit-agents empties the Prometheus multiprocess directory,
and metric files it opened then would be deleted under it (its own counters lost from /metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, JobContext, JobProcess

from ..config import WorkerConfig

# ``metrics`` is imported where it is used, never at import time: this module is imported by
# the main process before livekit-agents resets PROMETHEUS_MULTIPROC_DIR, which would lose it.
from ..latency import TurnTracker
from ..sdk import settings
from .control import CallEndpoint
from .loader import agent_spec, load_app

log = logging.getLogger("voicepool.worker.agent")

#: How long to look for the agent's session (it starts it when it is ready to talk).
SESSION_WAIT_S = 120.0
_POLL_S = 0.05
#: Tasks of this job process (kept referenced until they end).
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def prewarm(proc: JobProcess) -> None:
    """Every warm process: the pool's settings, then the hosted agent's own prewarm."""
    cfg = settings()
    proc.userdata["cfg"] = cfg
    app = load_app(agent_spec())
    if app.prewarm is not None:
        hint = proc.user_arguments if isinstance(proc.user_arguments, dict) else {}
        backoff = float(hint.get("start_backoff_s", 0.0))
        if backoff > 0:  # the last starts failed (the main process's ``start_backoff_s``)
            log.info(
                "waiting before the agent's prewarm: the last call processes failed to start",
                extra={"wait_s": backoff, "failed_in_a_row": hint.get("failed_starts")},
            )
            time.sleep(backoff)
        app.prewarm(proc)


async def entrypoint(ctx: JobContext) -> None:
    """One call: the hosted agent's entrypoint, observed."""
    cfg = settings()
    fields: dict[str, Any] = {"room": ctx.job.room.name, "session": ctx.job.id, "participant": None}
    ctx.log_context_fields = fields
    ctx.add_participant_entrypoint(_caller_joined)
    _spawn(_watch_session(ctx, cfg, CallEndpoint(ctx, cfg)))
    _spawn(_watch_join(ctx, cfg.agent_join_timeout_s))
    app = load_app(agent_spec())
    try:
        await app.entrypoint(ctx)
    except Exception as e:  # the agent's bug ends this call, never the pod
        from .. import metrics  # job process only (module docstring)

        metrics.AGENT_ERRORS.labels("crash").inc()
        # the traceback as a field: with exc_info, livekit-agents' log shipping from the job
        # process glues it to the message as well
        trace = "".join(traceback.format_exception(e))
        log.error("agent crashed", extra={"error": f"{type(e).__name__}: {e}", "traceback": trace})
        ctx.shutdown(reason=f"agent crashed: {type(e).__name__}")


async def _caller_joined(ctx: JobContext, participant: rtc.RemoteParticipant) -> None:
    """Each caller (SIP or WebRTC, not an agent) once the agent is in the room: the first one
    names every later log line of the call."""
    fields = ctx.log_context_fields
    if fields.get("participant") is None:
        fields["participant"] = participant.identity
        log.info("caller joined", extra={"kind": int(participant.kind)})


async def _watch_join(ctx: JobContext, timeout_s: float) -> None:
    await asyncio.sleep(timeout_s)
    if not ctx.room.isconnected():
        from .. import metrics  # job process only (module docstring)

        metrics.AGENT_ERRORS.labels("never-joined").inc()
        log.error("agent never joined the room", extra={"timeout_s": timeout_s})
        ctx.shutdown(reason="agent never joined the room")


async def _watch_session(ctx: JobContext, cfg: WorkerConfig, endpoint: CallEndpoint) -> None:
    """Find the agent's session when it starts it, and observe it."""
    deadline = time.monotonic() + SESSION_WAIT_S
    while time.monotonic() < deadline:
        try:
            session = ctx.primary_session
        except RuntimeError:  # not started yet
            await asyncio.sleep(_POLL_S)
            continue
        observe(session, ctx, cfg)
        await endpoint.attach(session)
        return


def wall_marks(metrics_: dict[str, Any]) -> dict[str, float]:
    """The turn's wall-clock marks (VAD's end of the caller's speech, the agent's first frame
    handed to the room's audio source), so a bench can split the caller's time to first word
    into uplink, agent and downlink on one machine's clock."""
    out: dict[str, float] = {}
    for key, name in (("stopped_speaking_at", "stopped_at"), ("started_speaking_at", "started_at")):
        value = metrics_.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = round(float(value), 4)
    return out


def observe(session: AgentSession[Any], ctx: JobContext, cfg: WorkerConfig) -> None:
    """Turn log lines, the latency record on /metrics, and the job's end with the session."""

    turns = TurnTracker()

    @session.on("user_state_changed")
    def _on_user_state(ev: Any) -> None:
        # wall-clock marks that split a barge-in's stop time (bench/worker_latency.py)
        if ev.new_state == "speaking":
            log.info("caller speaking", extra={"at": time.time()})

    @session.on("agent_state_changed")
    def _on_agent_state(ev: Any) -> None:
        if ev.old_state == "speaking":
            log.info("agent silent", extra={"at": time.time(), "now": str(ev.new_state)})

    @session.on("conversation_item_added")
    def _on_item(ev: Any) -> None:
        msg = ev.item
        role = getattr(msg, "role", None)
        if role == "user":
            user_metrics = dict(msg.metrics or {})
            turns.user_turn(user_metrics)
            said: dict[str, Any] = {"t": time.time(), **wall_marks(user_metrics)}
            if cfg.log_transcripts:
                said["transcript"] = msg.text_content or ""
            log.info("user turn", extra=said)
        elif role == "assistant":
            reply_metrics = dict(msg.metrics or {})
            latency = turns.agent_reply(reply_metrics)
            extra: dict[str, Any] = {
                "interrupted": msg.interrupted,
                "t": time.time(),
                **wall_marks(reply_metrics),
            }
            if cfg.log_transcripts:
                extra["reply"] = msg.text_content or ""
            if latency is not None:
                from .. import metrics  # job process: files land in PROMETHEUS_MULTIPROC_DIR

                stages = latency.as_dict()
                for name, seconds in stages.items():
                    metrics.STAGE_HISTOGRAMS[name].observe(seconds)
                metrics.TURNS.inc()
                extra["latency"] = {k: round(v, 4) for k, v in stages.items()}
            log.info("agent turn", extra=extra)

    @session.on("close")
    def _on_close(ev: Any) -> None:
        log.info("session closed", extra={"reason": str(ev.reason), "error": str(ev.error or "")})
        ctx.shutdown(reason=f"session closed: {ev.reason}")
