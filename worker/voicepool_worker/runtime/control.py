"""The call's control endpoint, in its job process: the call made visible and steerable.

Whatever agent the runtime hosts, each call is published for the control service
(``voicepool-control``, docs/control.md) and takes its verbs:

* **published**: the agent participant's attributes (pool, pod, state, start, direction, the
  other party's number masked) and a ``voicepool.dev/call`` entry in the room's metadata (one
  ListRooms lists every live call), both rewritten at most once a second as the call changes;
  the call's events (turns with their latency stages, keys, transfers, state changes, actions)
  in a bounded ring the service follows; at the end the metadata once more (state ended), one
  ``call ended`` JSON log line with the whole record (the durable record) and a file the main
  process turns into a ``CallEnded`` Event on the pod (``runtime/records.py``: the retention
  window).
* **steered**: an RPC ``voicepool.control`` on the agent participant. A message counts only if it
  carries a LiveKit access token for the identity ``voicepool-control``, signed with this pool's
  API secret, granting admin of this room, unexpired and bound to the message body by its
  sha256. Anything else -- the caller's own RPC, a token of another identity, room or body -- is
  refused and logged (``control message refused``). A message delivered again (livekit-server
  redelivers a server RPC that took over 3 s) gets the first delivery's answer and acts once.
  Every answer comes within that time: acts that take longer (a hang-up after the reply, a
  transfer) answer 202 and go on; a follower's wait for news is 2.5 s at most. Verbs go through
  the job's one ``CallControl`` (the keypad's and the dialog's): hangup (now, or after the reply),
  transfer (cold REFER to a SIP URI or tel: number, warm where the pool has an outbound trunk
  and allows the number), say, instruct, mute/unmute, takeover/release; show and events read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentSession, JobContext
from voicepool_contract import control as names
from voicepool_contract.phone import mask_number, mask_numbers_in

from ..config import WorkerConfig
from ..latency import TurnTracker
from ..phone import control as phone_control
from ..phone.dispatch import TelephonyError, dial_request
from . import records
from .calls import CallRecord, ControlError, ControlRequest, parse_request, transfer_target

log = logging.getLogger("voicepool.worker.control")


def _metrics() -> Any:
    """The metrics module, imported in the job process only (see runtime/jobs.py's docstring)."""
    from .. import metrics

    return metrics


#: The call is republished at most this often (attributes + room metadata).
PUBLISH_INTERVAL_S = 1.0
#: Hang-ups and transfers start this long after their answer left, so the answer is not lost
#: with the room.
ACT_DELAY_S = 0.2
#: How long the endpoint waits for the agent to be in the room once its session started.
JOIN_WAIT_S = 60.0
#: A control message's nonce is remembered this long (its token lives 60 s at most).
NONCE_TTL_S = 180.0
#: The call's end is written to the room's metadata within this, or not at all.
END_PUBLISH_S = 3.0


class Refused(Exception):
    """A control message that is not the control service's: refused, logged, not answered."""


def body_digest(body: str) -> str:
    """The sha256 a control token carries for its message body (base64, as LiveKit's)."""
    return base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()


class CallEndpoint:
    """One call's record, publisher and control-message handler (one per job)."""

    def __init__(self, ctx: JobContext, cfg: WorkerConfig) -> None:
        self._ctx, self._cfg = ctx, cfg
        try:
            number = dial_request(ctx.job.metadata or "")
        except TelephonyError:
            number = None
        pool = f"{cfg.pod_namespace or 'default'}/{cfg.pool}" if cfg.pool else ""
        self.record = CallRecord(
            room=mask_numbers_in(ctx.job.room.name),
            pool=pool,
            pod=cfg.pod_name or "",
            agent="",
            direction="outbound" if number else "inbound",
            started=time.time(),
            caller=mask_number(number) if number else "",
            transcripts=cfg.log_transcripts,
        )
        self.sid = ctx.job.room.sid
        self._session: AgentSession[Any] | None = None
        self._caller: str | None = None
        self._heard: set[int] = set()  # CallControls we listen to (by id)
        self._verifier = api.TokenVerifier(cfg.livekit_api_key, cfg.livekit_api_secret)
        self._answers: dict[str, tuple[float, asyncio.Future[str]]] = {}  # by nonce
        self._end_reason = ""  # what ended the call, as the call control said it
        self._news = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lk: api.LiveKitAPI | None = None
        self._metadata_ours = True  # False once the room's metadata proved the app's own text
        self._turns = TurnTracker()
        ctx.add_shutdown_callback(self._on_shutdown)
        ctx.room.on("participant_connected", self._on_participant)
        ctx.room.on("participant_disconnected", self._on_left)
        ctx.room.on("sip_dtmf_received", self._on_dtmf)

    # -- plumbing ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _changed(self) -> None:
        """Something changed: wake the followers, republish soon."""
        self._news.set()
        self._news = asyncio.Event()
        self._dirty.set()

    async def attach(self, session: AgentSession[Any]) -> None:
        """The agent started its session: once it is in the room, publish and take messages."""
        self._session = session
        room = self._ctx.room
        deadline = time.monotonic() + JOIN_WAIT_S
        while not room.isconnected():
            if time.monotonic() > deadline:
                log.warning("the agent never joined: this call is not published for control")
                return
            await asyncio.sleep(0.05)
        self.record.agent = room.local_participant.identity
        room.local_participant.register_rpc_method(names.RPC_METHOD, self._on_rpc)
        session.on("conversation_item_added", self._on_item)
        for participant in room.remote_participants.values():
            self._on_participant(participant)
        existing = phone_control.existing(self._ctx.job.id)
        if existing is not None:
            self._listen_to(existing)
        self._lk = api.LiveKitAPI(
            self._cfg.livekit_url, self._cfg.livekit_api_key, self._cfg.livekit_api_secret
        )
        self._spawn(self._publisher())
        self._changed()

    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        if self._caller is None:
            self._caller = participant.identity
            number = participant.attributes.get("sip.phoneNumber", "")
            if number and not self.record.caller:
                self.record.caller = mask_number(number)
            self.record.set_state(names.ACTIVE, time.time())
            self._changed()

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self.record.takeover:  # the person left: the agent is back
            self._release(time.time(), "the person who took over left")
        elif participant.identity == self._caller:
            self.record.note("left", time.time(), who="caller")
            self._end_reason = self._end_reason or "the caller hung up"
            self._changed()

    def _on_dtmf(self, ev: rtc.SipDTMF) -> None:
        control = phone_control.existing(self._ctx.job.id)
        if control is not None and self._cfg.dtmf_menu and id(control) in self._heard:
            return  # the keypad menu reports the key with what it did
        self.record.key(time.time(), "pressed", "", ev.digit)
        self._changed()

    def _on_item(self, ev: Any) -> None:
        msg = ev.item
        role = getattr(msg, "role", None)
        now = time.time()
        if role == "user":
            self._turns.user_turn(dict(msg.metrics or {}))
            self.record.caller_turn(now, msg.text_content or "")
        elif role == "assistant":
            latency = self._turns.agent_reply(dict(msg.metrics or {}))
            stages = latency.as_dict() if latency is not None else None
            self.record.agent_turn(now, stages, msg.text_content or "", bool(msg.interrupted))
        else:
            return
        self._changed()

    def _listen_to(self, control: phone_control.CallControl) -> None:
        if id(control) not in self._heard:
            self._heard.add(id(control))
            control.listeners.append(self._on_control)

    def _on_control(self, kind: str, fields: dict[str, Any]) -> None:
        """What the call control did, whoever asked (keypad, dialog, this endpoint)."""
        now = time.time()
        if kind == "keypad":
            digit = fields.get("digit")
            self.record.key(now, str(fields.get("action")), str(fields.get("menu")), digit)
        elif kind == "transfer":
            stage = str(fields.get("stage"))
            self.record.note("transfer", now, **fields)
            if stage == "done":
                self._end_reason = self._end_reason or "transferred"
            if stage == "started":
                self.record.set_state(names.TRANSFERRING, now)
            elif stage == "failed":
                self.record.set_state(names.ACTIVE, now, why="transfer failed")
            elif stage == "handed-over":
                self.record.set_state(names.HANDED_OVER, now)
        elif kind == "hangup":
            reason = str(fields.get("reason", ""))
            self._end_reason = self._end_reason or reason
            self.record.note("hangup", now, reason=reason)
        self._changed()

    # -- publishing ------------------------------------------------------------------------

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._publish()
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def _publish(self) -> None:
        room = self._ctx.room
        if not room.isconnected():
            return
        try:
            await room.local_participant.set_attributes(self.record.attributes())
        except Exception as e:  # a refused update costs the attributes, never the call
            log.warning("call attributes not published", extra={"error": str(e)})
        if not self._metadata_ours or self._lk is None:
            return
        from .calls import merged_metadata

        merged = merged_metadata(room.metadata or "", self.record.summary())
        if merged is None:
            self._metadata_ours = False
            log.warning(
                "the room's metadata is the application's own text (not a JSON object): this "
                "call is not in the control service's list (it can still be addressed by room)"
            )
            return
        try:
            await self._lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room.name, metadata=merged)
            )
        except Exception as e:  # e.g. the room is being deleted
            log.info("call not published in the room's metadata", extra={"error": str(e)})

    # -- control messages ----------------------------------------------------------------

    def _authorize(self, data: rtc.RpcInvocationData) -> ControlRequest:
        """The request if the control service sent it; Refused otherwise."""
        try:
            envelope = json.loads(data.payload)
            token, body = envelope["token"], envelope["body"]
            assert isinstance(token, str) and isinstance(body, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise Refused("not a control message (token and body)") from None
        try:
            claims = self._verifier.verify(token)
        except Exception as e:
            raise Refused(f"token does not verify with this pool's key: {e}") from None
        if claims.identity != names.CONTROL_IDENTITY:
            raise Refused(f"token of {claims.identity!r}, not of {names.CONTROL_IDENTITY!r}")
        video = claims.video
        if video is None or not video.room_admin or video.room != self._ctx.room.name:
            raise Refused("token is not for this room")
        if claims.sha256 != body_digest(body):
            raise Refused("token is not for this message")
        return parse_request(body)  # ControlError: answered with its status

    async def _on_rpc(self, data: rtc.RpcInvocationData) -> str:
        try:
            request = self._authorize(data)
        except Refused as e:
            _metrics().CONTROL_MESSAGES.labels("-", "refused").inc()
            log.warning(
                "control message refused", extra={"from": data.caller_identity, "why": str(e)}
            )
            raise rtc.RpcError(403, f"refused: {e}") from None
        except ControlError as e:
            _metrics().CONTROL_MESSAGES.labels("-", str(e.status)).inc()
            return json.dumps({"status": e.status, "error": e.message})
        now = time.monotonic()
        self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        if request.nonce in self._answers:  # delivered again: the same answer, no second act
            log.info("control message delivered again", extra={"verb": request.verb})
            return await asyncio.shield(self._answers[request.nonce][1])
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._answers[request.nonce] = (now + NONCE_TTL_S, answer)
        try:
            result = await self._answer(request)
        except BaseException:
            self._answers.pop(request.nonce, None)
            answer.cancel()
            raise
        answer.set_result(result)
        return result

    async def _answer(self, request: ControlRequest) -> str:
        try:
            answer = await self._execute(request)
        except ControlError as e:
            answer = {"status": e.status, "error": e.message}
        status = int(answer.get("status", 200))
        result = {200: "ok", 202: "accepted"}.get(status, str(status))
        _metrics().CONTROL_MESSAGES.labels(request.verb, result).inc()
        if request.verb not in names.READ_VERBS:
            log.info(
                "control message",
                extra={"verb": request.verb, "status": status, "error": answer.get("error")},
            )
        return json.dumps(answer, separators=(",", ":"))

    def _control(self) -> phone_control.CallControl:
        if self._session is None:
            raise ControlError(409, "the agent has not started its session yet")
        control = phone_control.for_job(self._ctx, self._session, self._cfg)
        self._listen_to(control)
        return control

    async def _execute(self, request: ControlRequest) -> dict[str, Any]:
        verb, args, record = request.verb, request.args, self.record
        if verb == "show":
            return {"status": 200, "call": {**record.detail(), "sid": self.sid}}
        if verb == "events":
            return await self._events(int(args.get("since", 0)), float(args.get("wait", 0)))
        control = self._control()
        if record.state == names.ENDED or control.ended:
            raise ControlError(404, "the call has ended")
        if control.transferring or record.state == names.TRANSFERRING:
            raise ControlError(409, "a transfer is in progress; try again when it is over")
        now = time.time()
        if verb == "hangup":
            after = bool(args.get("after_reply"))
            record.action(now, "hangup", after_reply=after)
            self._changed()
            self._spawn(self._later(self._hangup(control, after)))
            return {"status": 202, "accepted": "hangup"}
        if verb == "transfer":
            return self._transfer(control, args, now)
        if control.handed_over:
            raise ControlError(409, "the call was handed over to a colleague")
        if verb == "say":
            if control.muted:
                raise ControlError(409, "the agent is muted; unmute it first")
            control.say(str(args["text"]))
            record.action(now, "say", chars=len(str(args["text"])))
        elif verb == "instruct":
            await control.instruct(str(args["text"]), respond=bool(args.get("respond")))
            record.action(now, "instruct", chars=len(str(args["text"])))
        elif verb in ("mute", "unmute"):
            control.set_muted(verb == "mute")
            record.muted = control.muted
            record.action(now, verb)
        elif verb == "takeover":
            who = str(args.get("identity") or "")
            if not who:
                raise ControlError(400, "'identity' (the person's participant) is required")
            control.set_muted(True)
            record.muted, record.takeover = True, who
            record.action(now, "takeover", identity=who)
        elif verb == "release":
            self._release(now, "released")
        self._changed()
        return {"status": 200, "call": record.summary()}

    def _release(self, now: float, why: str) -> None:
        control = phone_control.existing(self._ctx.job.id)
        if control is not None and not control.ended:
            control.set_muted(False)
        self.record.muted, self.record.takeover = False, None
        self.record.action(now, "release", why=why)
        self._changed()

    def _transfer(
        self, control: phone_control.CallControl, args: Any, now: float
    ) -> dict[str, Any]:
        cfg = self._cfg
        target = transfer_target(
            str(args["to"]),
            warm=bool(args.get("warm")),
            allowed=cfg.allowed_destinations,
            outbound_trunk=cfg.sip_outbound_trunk is not None,
        )
        if control.handed_over:
            raise ControlError(409, "the call was handed over to a colleague")
        if self._caller is None:
            raise ControlError(409, "nobody is on the call to transfer yet")
        shown = mask_numbers_in(target.number or target.uri)
        self.record.action(now, "transfer", to=shown, warm=target.warm)
        self.record.set_state(names.TRANSFERRING, now)  # at once: the next verb gets 409
        self._changed()
        caller, to = self._caller, target.number or target.uri
        self._spawn(self._later(control.transfer_caller_to(caller, to, warm=target.warm)))
        return {"status": 202, "accepted": "transfer", "to": shown, "warm": target.warm}

    async def _later(self, coro: Any) -> None:
        await asyncio.sleep(ACT_DELAY_S)
        try:
            await coro
        finally:
            control = phone_control.existing(self._ctx.job.id)
            if (
                self.record.state == names.TRANSFERRING
                and control is not None
                and not control.transferring
                and not control.ended
            ):
                self.record.set_state(names.ACTIVE, time.time())
                self._changed()

    async def _hangup(self, control: phone_control.CallControl, after_reply: bool) -> None:
        if after_reply:
            await control.end_after_reply("control service: after the reply")
        else:
            await control.hangup("control service")

    async def _events(self, since: int, wait: float) -> dict[str, Any]:
        news = self._news
        events, last, missed = self.record.events_since(since)
        if not events and wait > 0 and self.record.state != names.ENDED:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), wait)
            events, last, missed = self.record.events_since(since)
        return {
            "status": 200,
            "events": events,
            "next": last,
            "missed": missed,
            "state": self.record.state,
        }

    # -- the end ---------------------------------------------------------------------------

    async def _on_shutdown(self, reason: str) -> None:
        self.record.end(time.time(), mask_numbers_in(self._end_reason or reason))
        self._changed()
        final = {**self.record.final(), "sid": self.sid}
        log.info("call ended", extra={"call": final})
        records.write(self._ctx.job.id, final, self._ctx.job.room.name)
        for task in list(self._tasks):
            task.cancel()
        await self._publish_end()
        if self._lk is not None:
            with contextlib.suppress(Exception):
                await self._lk.aclose()

    async def _publish_end(self) -> None:
        """The end in the room's metadata (through the server API: the agent may have left):
        a room that outlives its call -- a caller's leg still up, LiveKit's departure timeout --
        must not stay in the control service's list as a live call."""
        if self._lk is None or not self._metadata_ours:
            return
        from .calls import merged_metadata

        merged = merged_metadata(self._ctx.room.metadata or "", self.record.summary())
        if merged is None:
            return
        request = api.UpdateRoomMetadataRequest(room=self._ctx.job.room.name, metadata=merged)
        try:
            await asyncio.wait_for(self._lk.room.update_room_metadata(request), END_PUBLISH_S)
        except Exception as e:
            if getattr(e, "code", None) == "not_found":
                return  # the room is gone (a hang-up deletes it): nothing left to list
            log.info("call end not published in the room's metadata", extra={"error": str(e)})
