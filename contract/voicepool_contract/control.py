"""Session control: the names the worker runtime and the control service (``voicepool-control``)
agree on. Standard library only: both images carry it.

A call's runtime publishes the call in three places: attributes on the agent participant
(``ATTR_*``), a ``ROOM_CALL_KEY`` entry in the room's metadata (one ListRooms finds every live
call of a LiveKit server) and, once it has ended, a Kubernetes Event ``CALL_ENDED_REASON`` on its
own pod (the retention window; labelled with ``room_label(room)``). Control messages reach the
agent as an RPC (``RPC_METHOD``) that carries a LiveKit access token of ``CONTROL_IDENTITY``,
signed with the pool's LiveKit API secret and bound to the room and to the message body.
"""

from __future__ import annotations

import hashlib
from typing import Final

#: The LiveKit identity of the control service: the only one whose control messages count.
CONTROL_IDENTITY: Final = "voicepool-control"
#: The RPC method on the agent participant that carries control messages.
RPC_METHOD: Final = "voicepool.control"
#: The key of a room's metadata (a JSON object) under which the runtime keeps the call record.
ROOM_CALL_KEY: Final = "voicepool.dev/call"
#: The shape of that record; a reader skips records of another version.
RECORD_VERSION: Final = 1

# -- attributes on the agent participant --------------------------------------------------
ATTR_POOL: Final = "voicepool.pool"  # "<namespace>/<pool>"
ATTR_POD: Final = "voicepool.pod"
ATTR_STATE: Final = "voicepool.state"
ATTR_STARTED: Final = "voicepool.started"  # unix seconds
ATTR_DIRECTION: Final = "voicepool.direction"  # inbound | outbound
ATTR_CALLER: Final = "voicepool.caller"  # the other party's number, masked ("" on WebRTC)
ATTR_MUTED: Final = "voicepool.muted"  # "true" while the agent is muted

# -- call states ---------------------------------------------------------------------------
CONNECTING: Final = "connecting"  # the agent is here, the other party not yet
ACTIVE: Final = "active"
TRANSFERRING: Final = "transferring"  # a REFER or a warm transfer is under way
HANDED_OVER: Final = "handed-over"  # warm transfer done: caller and colleague talk
ENDED: Final = "ended"
STATES: Final = (CONNECTING, ACTIVE, TRANSFERRING, HANDED_OVER, ENDED)

# -- verbs ---------------------------------------------------------------------------------
#: Verbs that only read (a read token may use them through the service).
READ_VERBS: Final = ("show", "events")
#: Verbs that change the call (a control token).
ACT_VERBS: Final = (
    "hangup",
    "transfer",
    "say",
    "instruct",
    "mute",
    "unmute",
    "takeover",
    "release",
)
VERBS: Final = READ_VERBS + ACT_VERBS
#: Longest ``say``/``instruct`` text, in characters (413 beyond it).
MAX_TEXT_CHARS: Final = 1000

# -- the ended-call Event --------------------------------------------------------------------
CALL_ENDED_REASON: Final = "CallEnded"
#: Label on that Event: ``room_label(room)``, so one label-selected list finds a room's record.
LABEL_ROOM: Final = "voicepool.dev/room"
#: Label on that Event: the room's LiveKit SID (``RM_...``), the other way to name a call.
LABEL_ROOM_SID: Final = "voicepool.dev/room-sid"
#: Label on that Event: the pool the call belonged to (as its worker knows it).
LABEL_POOL: Final = "voicepool.dev/pool"
#: Annotation on that Event: the ended call's record (JSON).
ANN_CALL_RECORD: Final = "voicepool.dev/call"
#: Largest record the runtime writes there (the chart's admission policy holds it to this).
MAX_RECORD_BYTES: Final = 16384


def room_label(room: str) -> str:
    """A label value for any room name (room names are free text, label values are not)."""
    return hashlib.sha256(room.encode()).hexdigest()[:40]
