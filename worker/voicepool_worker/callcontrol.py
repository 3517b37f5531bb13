"""The phone side of one call -- hang-up, transfer, dial-out, keypad, limits: thin LiveKit glue.

Every trigger goes through this one class: the keypad (``callflow.Keypad`` effects), the dialog
(``dialog_actions``: the scripted receptionist's reply actions, or an LLM's ``end_call`` and
``transfer_call`` tools) and, later, the session control API. What a key
or a sentence means is decided in ``callflow`` (pure); this module speaks, asks the dialog, or
asks LiveKit to REFER, to place a call or to delete the room. Deleting the room is how a call
ends: livekit-sip then sends the phone its BYE, and the job's session closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from livekit import api, rtc
from livekit.agents import AgentSession, JobContext

from . import callflow, config, telephony

log = logging.getLogger("voicepool.worker.call")

HOLD_TEXT = "Please hold, I am transferring your call."
TRANSFER_FAILED_TEXT = "Sorry, I could not transfer your call right now. How else can I help?"
GOODBYE_TEXT = "Thank you for calling. Goodbye."
IDLE_PROMPT_TEXT = "Are you still there?"
MAX_LENGTH_TEXT = "I am sorry, we have reached the time limit for this call. Goodbye."
TRANSFER_TIMEOUT_S = 30.0
DIAL_MARGIN_S = 10.0  # beyond the ringing timeout: the request returns once answered
_SIP_ERRORS = (api.TwirpError, aiohttp.ClientError, TimeoutError)


#: How a key press is counted (``voicepool_worker_dtmf_total{action}``): "say" is a key that
#: speaks for the caller, "prompt" one the agent answers itself (submenu, read-back).
_KEY_ACTION: dict[type, str] = {
    callflow.Ask: "say",
    callflow.Say: "prompt",
    callflow.Transfer: "transfer",
    callflow.Hangup: "hangup",
}


class CallControl:
    """One call's controls; ``start()`` arms the keypad and the idle/length limits."""

    def __init__(
        self, ctx: JobContext, session: AgentSession[None], cfg: config.WorkerConfig
    ) -> None:
        self._ctx, self._session, self._cfg = ctx, session, cfg
        self._tasks: set[asyncio.Task[Any]] = set()
        self._transferring = False
        self._ended = False
        self.keypad = callflow.Keypad(
            dict(cfg.dtmf_menu),
            inter_digit_timeout_s=cfg.dtmf_inter_digit_timeout_s,
            transfer_available=cfg.transfer_to is not None,
        )
        self.limits = callflow.CallLimits(cfg.idle_timeout_s, cfg.max_call_s)
        self._last_caller_activity = time.monotonic()
        self._caller: str | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def _api(self, timeout_s: float) -> api.LiveKitAPI:
        cfg = self._cfg
        return api.LiveKitAPI(
            cfg.livekit_url,
            cfg.livekit_api_key,
            cfg.livekit_api_secret,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _number(self, value: str) -> str:
        return callflow.mask_numbers_in(value) if self._cfg.mask_phone_numbers else value

    @staticmethod
    def _refused(what: str, to: str, e: BaseException) -> str:
        """Log LiveKit's refusal (or the network's) once, and return the reason."""
        why = getattr(e, "message", None) or str(e) or type(e).__name__
        log.warning(what, extra={"to": to, "error": why, "code": getattr(e, "code", None)})
        return why

    def start(self, caller: rtc.RemoteParticipant) -> None:
        """The caller is here: listen to its keys, and watch the call's idle/length limits."""
        self._caller = caller.identity
        self._last_caller_activity = time.monotonic()
        if self._cfg.dtmf_menu:
            self._ctx.room.on("sip_dtmf_received", self.on_dtmf)
        if self.limits.idle_timeout_s > 0 or self.limits.max_call_s > 0:
            self._spawn(self._watch_limits())
        self._ctx.room.on("participant_disconnected", self._on_left)

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        """The caller hung up: end the call now (delete the room) rather than wait it out."""
        if participant.identity == self._caller and not self._ended:
            self._ended = True
            self._spawn(self.end_room("caller left"))

    def caller_spoke(self) -> None:
        """Any caller speech (or key) resets the idle clock."""
        self._last_caller_activity = time.monotonic()

    # -- keypad --------------------------------------------------------------------------------

    def on_dtmf(self, ev: rtc.SipDTMF) -> None:
        from . import metrics

        self.caller_spoke()
        effects = self.keypad.press(ev.digit, time.monotonic())
        kind = _KEY_ACTION.get(type(effects[-1]), "unused") if effects else "unused"
        if self.keypad.collecting is not None and not effects:
            kind = "digit"
        if ev.digit not in callflow.DTMF_KEYS:
            kind = "invalid"
        metrics.DTMF.labels(kind).inc()
        who = ev.participant.identity if ev.participant is not None else None
        extra = {"action": kind, "menu": self.keypad.path or "top", "from": self._number(who or "")}
        if self._cfg.log_transcripts:  # keys can be an account number: logged like words
            extra["digit"] = ev.digit
        log.info("dtmf received", extra=extra)
        self._run(effects)
        if (deadline := self.keypad.deadline()) is not None:
            self._spawn(self._digit_timeout(deadline))

    async def _digit_timeout(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
        if self.keypad.deadline() == deadline:  # no key since: the entry is complete
            self._run(self.keypad.tick(time.monotonic()))

    def _run(self, effects: list[callflow.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, callflow.Say):
                self._session.interrupt()
                self._session.say(effect.text)
            elif isinstance(effect, callflow.Ask):
                self._session.generate_reply(user_input=effect.text)
            elif isinstance(effect, callflow.Transfer):
                self._spawn(self.transfer_then_report())
            elif isinstance(effect, callflow.Hangup):
                self._spawn(self.hangup(effect.reason))

    # -- the dialog's actions (dialog_actions.CallActions: scripted replies and LLM tools) ------

    async def _speech_heard(self) -> None:
        """Let the reply that carried the action finish playing before the call changes."""
        speech = self._session.current_speech
        if speech is not None:
            try:
                await asyncio.wait_for(speech.wait_for_playout(), 15)
            except (RuntimeError, TimeoutError) as e:  # e.g. awaited from its own tool
                log.warning("not waiting for the reply", extra={"error": str(e)})

    async def hang_up(self, reason: str) -> None:
        """The dialog said goodbye: once it is heard, end the call."""
        from . import metrics

        await self._speech_heard()
        metrics.DIALOG_ACTIONS.labels("hangup").inc()
        await self.hangup(f"dialog {reason}")

    async def transfer_caller(self, reason: str) -> None:
        """The dialog promised a person: once that is heard, REFER the caller."""
        from . import metrics

        await self._speech_heard()
        metrics.DIALOG_ACTIONS.labels("transfer").inc()
        log.info("dialog asked for a transfer", extra={"reason": reason})
        if self._caller is None or self._cfg.transfer_to is None:
            self._session.say(TRANSFER_FAILED_TEXT)
            return
        await self.transfer_then_report()

    # -- actions (every trigger lands here) ----------------------------------------------------

    async def hangup(self, reason: str, say: str | None = None) -> None:
        """End the call: optionally say ``say``, then delete the room (the phone gets a BYE)."""
        from . import metrics

        if self._ended:
            return
        self._ended = True
        if say:
            try:
                handle = self._session.say(say, allow_interruptions=False)
                await asyncio.wait_for(handle.wait_for_playout(), 15)
            except (RuntimeError, TimeoutError) as e:
                log.warning("goodbye not spoken", extra={"error": str(e)})
        metrics.HANGUPS.labels(reason.split(" ")[0]).inc()
        log.info("hanging up", extra={"reason": reason})
        await self.end_room(reason)

    async def end_room(self, reason: str) -> None:
        """Delete the call's room: every participant leaves, a SIP leg gets its BYE."""
        try:
            async with self._api(10.0) as lk:
                await lk.room.delete_room(api.DeleteRoomRequest(room=self._ctx.room.name))
        except _SIP_ERRORS as e:
            self._refused("room not deleted", self._ctx.room.name, e)
        self._ctx.shutdown(reason=reason)

    async def transfer_then_report(self) -> None:
        if self._caller is None:
            return
        why = await self.transfer(self._caller)
        if why is not None and not self._ended:
            self._session.say(TRANSFER_FAILED_TEXT)

    async def transfer(self, identity: str, target: str | None = None) -> str | None:
        """Hand the caller over by SIP REFER; None once the far end accepted, else why not.

        LiveKit reports the NOTIFY the phone sends: ``200`` is success (livekit-sip then ends
        our leg), ``403`` or another failure comes back as an error and the call goes on, and
        no NOTIFY at all times out after ``TRANSFER_TIMEOUT_S``.
        """
        from . import metrics

        if self._transferring:
            return "a transfer is already under way"
        to = target or self._cfg.transfer_to
        if to is None:
            return "no transfer target is configured"
        try:
            to = telephony.parse_transfer_target(to, setting="transfer target") or ""
        except telephony.TelephonyError as e:
            metrics.TRANSFERS.labels("invalid").inc()
            return self._refused("transfer refused", to, e)
        self._transferring = True
        try:
            await self._session.say(HOLD_TEXT, allow_interruptions=False)
            async with self._api(TRANSFER_TIMEOUT_S + 5) as lk:
                await lk.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        room_name=self._ctx.room.name,
                        participant_identity=identity,
                        transfer_to=to,
                        play_dialtone=False,
                        ringing_timeout=_duration(TRANSFER_TIMEOUT_S),
                    )
                )
        except _SIP_ERRORS as e:
            metrics.TRANSFERS.labels("failed").inc()
            return self._refused("transfer failed", to, e)
        finally:
            self._transferring = False
        metrics.TRANSFERS.labels("ok").inc()
        log.info("call transferred", extra={"to": to})
        self._ended = True
        await self.end_room("call transferred")  # the caller is elsewhere: free the room now
        return None

    async def dial(self, number: str, identity: str | None = None) -> str | None:
        """Place the outbound call this job was dispatched for; None once the callee answered."""
        from . import metrics

        shown = self._number(number)
        trunk = self._cfg.sip_outbound_trunk
        if trunk is None:
            metrics.OUTBOUND.labels("failed").inc()
            missing = ValueError("an outbound call needs VOICEPOOL_SIP_OUTBOUND_TRUNK")
            return self._refused("outbound call failed", shown, missing)
        log.info("dialling", extra={"to": shown, "trunk": trunk})
        try:
            async with self._api(self._cfg.ringing_timeout_s + DIAL_MARGIN_S) as lk:
                if not trunk.startswith("ST_"):  # the operator passes the trunk's name
                    trunk = await _trunk_id(lk, trunk)
                await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        room_name=self._ctx.room.name,
                        sip_trunk_id=trunk,
                        sip_call_to=number,
                        participant_identity=identity or f"phone-{number}",
                        wait_until_answered=True,
                        ringing_timeout=_duration(self._cfg.ringing_timeout_s),
                    )
                )
        except _SIP_ERRORS as e:
            status = getattr(e, "metadata", None) or {}
            result = outbound_result(getattr(e, "code", None), status.get("sip_status_code"))
            metrics.OUTBOUND.labels(result).inc()
            return self._refused(f"outbound call failed: {result}", shown, e)
        metrics.OUTBOUND.labels("answered").inc()
        log.info("outbound call answered", extra={"to": shown})
        return None

    # -- limits --------------------------------------------------------------------------------

    async def _watch_limits(self) -> None:
        started = time.monotonic()
        prompted = False
        while not self._ended:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if self.limits.max_call_s > 0 and now - started >= self.limits.max_call_s:
                await self.hangup("maximum call length reached", MAX_LENGTH_TEXT)
                return
            quiet = now - self._last_caller_activity
            if prompted and quiet < self.limits.idle_timeout_s:
                prompted = False  # the caller spoke after the prompt
            step = callflow.idle_step(self.limits, quiet, prompted)
            if step == "prompt":
                prompted = True
                log.info("caller idle: prompting", extra={"quiet_s": round(quiet, 1)})
                self._session.say(IDLE_PROMPT_TEXT)
            elif step == "hangup":
                await self.hangup("idle timeout", GOODBYE_TEXT)
                return


def outbound_result(code: str | None, sip_status: str | None) -> str:
    """A metric label for a failed dial: busy, no-answer, trunk-error or failed."""
    if sip_status in ("486", "600"):
        return "busy"
    if code in ("canceled", "deadline_exceeded") or sip_status in ("408", "480", "487"):
        return "no-answer"
    if sip_status or code in ("unavailable", "not_found", "invalid_argument"):
        return "trunk-error"
    return "failed"


async def _trunk_id(lk: api.LiveKitAPI, name: str) -> str:
    """LiveKit's id of the outbound trunk called ``name`` (the operator's naming)."""
    trunks = await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
    for trunk in trunks.items:
        if trunk.name == name:
            return str(trunk.sip_trunk_id)
    raise api.TwirpError("not_found", f"no outbound trunk named {name!r}", status=404)


def _duration(seconds: float) -> Any:
    from google.protobuf.duration_pb2 import Duration

    return Duration(seconds=int(seconds))
