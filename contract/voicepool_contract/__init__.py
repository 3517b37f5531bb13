"""Names the operator, the worker, the devstack and the tests share: one place, no copies.

The worker writes its reports into its own pod's annotations and the operator reads them;
the operator writes drain requests and labels the worker obeys. A name changed here changes
everywhere at once. Kept free of imports so both images carry it for nothing (it lives
under worker/ and is copied into the operator image as well).
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "voicepool.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "voiceagentpools"
KIND: Final = "VoiceAgentPool"
#: Routing of new calls across regions (docs/routing.md): operator, router and tests.
ROUTE_PLURAL: Final = "voiceroutes"
ROUTE_KIND: Final = "VoiceRoute"

# -- labels the operator sets on worker pods -------------------------------------------------
LABEL_POOL: Final = f"{GROUP}/pool"
LABEL_TEMPLATE_HASH: Final = f"{GROUP}/template-hash"
#: "true" while the pod may hold calls; the pool's PodDisruptionBudget selects it.
LABEL_BUSY: Final = f"{GROUP}/busy"

# -- reported by the worker on its own pod (one patch per session start/end) ---------------
ANN_SESSIONS: Final = f"{GROUP}/sessions"
ANN_CAPACITY: Final = f"{GROUP}/capacity"
ANN_STATE: Final = f"{GROUP}/state"
ANN_REPORTED_AT: Final = f"{GROUP}/reported-at"
# Hints for the cluster autoscaler and ReplicaSet-style deleters: written by the operator only
# (from the worker's reports), so the PodDisruptionBudget label and the hints never disagree.
ANN_SAFE_TO_EVICT: Final = "cluster-autoscaler.kubernetes.io/safe-to-evict"
ANN_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
BUSY_DELETION_COST: Final = "10000"
IDLE_DELETION_COST: Final = "-10000"

#: Every annotation a worker may change on its pod (the chart's admission policy allows
#: exactly these; tests/unit/test_contract.py checks that the two agree).
REPORTED_KEYS: Final = (ANN_SESSIONS, ANN_CAPACITY, ANN_STATE, ANN_REPORTED_AT)

# -- written by the operator: the drain request the worker obeys like SIGTERM --------------
ANN_DRAIN: Final = f"{GROUP}/drain"
ANN_DRAIN_REQUESTED_AT: Final = f"{GROUP}/drain-requested-at"
ANN_DRAIN_REASON: Final = f"{GROUP}/drain-reason"

# -- the local stack's kwok plays a worker's reports unless a pod's template says otherwise --
#: "starting": kwok reports only "starting" (a real worker process reports the rest);
#: "none": no report at all. Unset: kwok reports "starting", then "idle" once Ready.
ANN_KWOK_REPORT: Final = "kwok.voicepool.dev/report"
KWOK_REPORT_STARTING_ONLY: Final = "starting"
KWOK_REPORT_NONE: Final = "none"

# -- a LiveKit room that waits for a pool's agent (scale from zero) ------------------------
#: Key in a room's metadata (a JSON object) naming the agent the room waits for; the
#: operator learns of the room from livekit-server's webhook and starts a pod at once.
ROOM_AGENT_KEY: Final = f"{GROUP}/agent"
#: Prefix of the pool annotations that record a room waiting for the pool's agent, one per
#: room (`waiting.voicepool.dev/<hash of the room name>`: {"room": ..., "since": unix s}),
#: written by whichever operator replica receives the webhook, read by the active one.
WAITING_ROOM_PREFIX: Final = f"waiting.{GROUP}/"

# -- the worker's environment, as the operator sets it on every worker pod ------------------
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
ENV_LIVEKIT_URL: Final = "LIVEKIT_URL"
ENV_LIVEKIT_API_KEY: Final = "LIVEKIT_API_KEY"
ENV_LIVEKIT_API_SECRET: Final = "LIVEKIT_API_SECRET"
ENV_AGENT_NAME: Final = "VOICEPOOL_AGENT_NAME"
#: The agent a worker hosts: ``package.module:name`` (default: the built-in receptionist).
ENV_AGENT: Final = "VOICEPOOL_AGENT"
ENV_POOL: Final = "VOICEPOOL_POOL"
ENV_SESSIONS_PER_POD: Final = "VOICEPOOL_SESSIONS_PER_POD"
ENV_DRAIN_TIMEOUT: Final = "VOICEPOOL_DRAIN_TIMEOUT_SECONDS"
ENV_HTTP_PORT: Final = "VOICEPOOL_HTTP_PORT"
ENV_CPUS: Final = "VOICEPOOL_CPUS"
ENV_SYSTEM_PROMPT: Final = "VOICEPOOL_SYSTEM_PROMPT"
ENV_GREETING: Final = "VOICEPOOL_GREETING"

# -- telephony: environment variables the operator sets on worker pods from spec.telephony
# (and spec.privacy), the worker reads and the tests set directly --------------------------
ENV_SIP_OUTBOUND_TRUNK: Final = "VOICEPOOL_SIP_OUTBOUND_TRUNK"
#: Comma-separated E.164 prefixes outbound calls may go to (spec.telephony.outbound.
#: allowedDestinations); unset or empty: the worker places no outbound call at all.
ENV_SIP_ALLOWED_DESTINATIONS: Final = "VOICEPOOL_SIP_ALLOWED_DESTINATIONS"
ENV_SIP_RINGING_TIMEOUT: Final = "VOICEPOOL_SIP_RINGING_TIMEOUT"
ENV_IDLE_TIMEOUT: Final = "VOICEPOOL_IDLE_TIMEOUT_SECONDS"
ENV_MAX_CALL: Final = "VOICEPOOL_MAX_CALL_SECONDS"
ENV_TRANSFER_TO: Final = "VOICEPOOL_TRANSFER_TO"
#: E.164 number of the colleague a warm transfer dials over the outbound trunk.
ENV_WARM_TRANSFER_TO: Final = "VOICEPOOL_WARM_TRANSFER_TO"
ENV_DTMF_MENU: Final = "VOICEPOOL_DTMF_MENU"
ENV_DTMF_INTER_DIGIT_TIMEOUT: Final = "VOICEPOOL_DTMF_INTER_DIGIT_TIMEOUT"
ENV_OUTBOUND_GREETING: Final = "VOICEPOOL_OUTBOUND_GREETING"
ENV_MASK_PHONE_NUMBERS: Final = "VOICEPOOL_MASK_PHONE_NUMBERS"
ENV_LOG_TRANSCRIPTS: Final = "VOICEPOOL_LOG_TRANSCRIPTS"

#: spec.telephony.calls field -> worker variable (the operator copies each one that is set).
CALLS_ENV: Final = (
    ("idleTimeoutSeconds", ENV_IDLE_TIMEOUT),
    ("maxCallSeconds", ENV_MAX_CALL),
    ("transferTo", ENV_TRANSFER_TO),
    ("warmTransferTo", ENV_WARM_TRANSFER_TO),
    ("keypadMenu", ENV_DTMF_MENU),
    ("outboundGreeting", ENV_OUTBOUND_GREETING),
)
#: spec.privacy field -> worker variable.
PRIVACY_ENV: Final = (
    ("maskPhoneNumbers", ENV_MASK_PHONE_NUMBERS),
    ("logTranscripts", ENV_LOG_TRANSCRIPTS),
)
