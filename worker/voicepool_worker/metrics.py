"""Prometheus metrics, shared between the main process and the job processes.

Calls run in separate job processes (livekit-agents), so the histograms are observed there
and read here through prometheus-client's multiprocess mode: ``main()`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before anything imports prometheus_client.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

TRANSCRIPT = Histogram(
    "voicepool_worker_transcript_delay_seconds",
    "End of user speech -> final transcript",
    buckets=_BUCKETS,
)
END_OF_TURN = Histogram(
    "voicepool_worker_end_of_turn_delay_seconds",
    "End of user speech -> turn committed (endpointing)",
    buckets=_BUCKETS,
)
LLM_TTFT = Histogram(
    "voicepool_worker_llm_ttft_seconds", "LLM time to first token", buckets=_BUCKETS
)
TTS_TTFB = Histogram(
    "voicepool_worker_tts_ttfb_seconds", "TTS time to first audio byte", buckets=_BUCKETS
)
TTFW = Histogram(
    "voicepool_worker_time_to_first_word_seconds",
    "End of user speech -> first agent audio frame published",
    buckets=_BUCKETS,
)
STAGE_HISTOGRAMS = {
    "transcript": TRANSCRIPT,
    "end_of_turn": END_OF_TURN,
    "llm_ttft": LLM_TTFT,
    "tts_ttfb": TTS_TTFB,
    "ttfw": TTFW,
}

SESSIONS_STARTED = Counter("voicepool_worker_sessions_started", "Calls started")
SESSIONS_ENDED = Counter("voicepool_worker_sessions_ended", "Calls ended (failed included)")
SESSIONS_FAILED = Counter("voicepool_worker_sessions_failed", "Calls whose job failed")
ACTIVE_SESSIONS = Gauge(
    "voicepool_worker_active_sessions", "Calls in progress", multiprocess_mode="livesum"
)
CAPACITY = Gauge(
    "voicepool_worker_capacity", "Calls this worker takes", multiprocess_mode="livemax"
)
POD_PATCHES = Counter(
    "voicepool_worker_pod_patches", "Merge-patches written to this worker's pod", ["result"]
)
TURNS = Counter("voicepool_worker_turns", "Answered user turns")
AGENT_ERRORS = Counter(
    "voicepool_worker_agent_errors",
    "Calls the hosted agent failed: its entrypoint raised (crash) or it never joined the room",
    ["kind"],
)  # kind: crash | never-joined
PROCESS_START_FAILURES = Counter(
    "voicepool_worker_process_start_failures",
    "Job processes that failed to start (the agent's prewarm raised or timed out); "
    "3 in a row make the worker unready until one starts",
)
TTS_CACHE = Counter(
    "voicepool_worker_tts_cache", "Clauses the embedded TTS found in its cache", ["result"]
)  # result: hit | miss
DTMF = Counter(
    "voicepool_worker_dtmf", "Keypad presses by what they did", ["action"]
)  # action: say | prompt | digit | transfer | hangup | unused | invalid
TRANSFERS = Counter("voicepool_worker_transfers", "SIP transfers of a caller", ["result"])
OUTBOUND = Counter(
    "voicepool_worker_outbound_calls", "Calls the agent placed over SIP", ["result"]
)  # result: answered | busy | no-answer | trunk-error | failed


HANGUPS = Counter(
    "voicepool_worker_hangups", "Calls the agent ended, by what ended them", ["reason"]
)  # reason: caller | idle | maximum | ... (first word of callcontrol's reason)
PROVIDER_FAILOVERS = Counter(
    "voicepool_worker_provider_failovers",
    "A stage's provider failed or missed its deadline and the next one in its chain took over",
    ["stage", "from", "to"],
)  # to: the next available provider, or "none" when the whole chain is down
PROVIDER_LATENCY = Histogram(
    "voicepool_worker_provider_latency_seconds",
    "Per provider: LLM time to first token, TTS time to first byte, STT request time",
    ["stage", "provider"],
    buckets=_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "voicepool_worker_provider_errors",
    "Turns a stage could not serve (every provider failed): the caller heard the apology",
    ["stage", "provider"],
)
DIALOG_ACTIONS = Counter(
    "voicepool_worker_dialog_actions", "Hang-ups and transfers the dialog asked for", ["action"]
)
CONTROL_MESSAGES = Counter(
    "voicepool_worker_control_messages",
    "Control messages from the control service, by verb and result",
    ["verb", "result"],
)  # result: ok | accepted | refused (not the control service) | 400 | 404 | 409 | 413
TURN_VERDICTS = Counter(
    "voicepool_worker_turn_verdicts",
    "End-of-turn model verdicts at a caller's pause: complete (short wait) or unfinished",
    ["verdict"],
)


def render() -> bytes:
    """Text exposition: every process's samples when multiprocess mode is on."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
