"""The phone side of one call -- hang-up, transfer, dial-out, keypad, limits: thin LiveKit glue.

Every trigger goes through this one class: the keypad (``callflow.Keypad`` effects), the dialog
(``dialog_actions``: the scripted receptionist's reply actions, or an LLM's ``end_call`` and
``transfer_call`` tools) and the session control service. What a key
or a sentence means is decided in ``callflow`` (pure); this module speaks, asks the dialog, or
asks LiveKit to REFER, to place a call or to delete the room. Deleting the room is how a call
ends: livekit-sip then sends the phone its BYE, and the job's session closes.

The control service's verbs (``runtime/control.py``: say, instruct, mute, transfer to a given
target, end after the reply) are methods here too, and ``listeners`` hear what happens (keys,
transfers, hang-ups) so the runtime can publish it, whichever trigger caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import voicepool_contract as contract
from livekit import api, rtc
from livekit.agents import AgentSession, JobContext
from voicepool_contract import phone

from .. import config
from . import dispatch
from . import keypad as callflow

log = logging.getLogger("voicepool.worker.call")

HOLD_TEXT = "Please hold, I am transferring your call."
TRANSFER_FAILED_TEXT = "Sorry, I could not transfer your call right now. How else can I help?"
GOODBYE_TEXT = "Thank you for calling. Goodbye."
IDLE_PROMPT_TEXT = "Are you still there?"
MAX_LENGTH_TEXT = "I am sorry, we have reached the time limit for this call. Goodbye."
WARM_HOLD_TEXT = "Please hold while I bring in a colleague."
NO_COLLEAGUE_TEXT = "Sorry, no colleague is free to take your call right now. How else can I help?"
#: Everything call control says word for word (an embedded TTS can cache it ahead of calls).
SPOKEN = (
    HOLD_TEXT,
    TRANSFER_FAILED_TEXT,
    GOODBYE_TEXT,
    IDLE_PROMPT_TEXT,
    MAX_LENGTH_TEXT,
    WARM_HOLD_TEXT,
    NO_COLLEAGUE_TEXT,
)
TRANSFER_TIMEOUT_S = 30.0
#: The colleague's audio track must show up (and be muted) this soon after the answer.
COLLEAGUE_TRACK_S = 10.0
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


@dataclass(frozen=True)
class Dispatched:
    """What the job's dispatch asked, once acted on (``CallControl.place_dispatched_call``)."""

    number: str | None = None  # an outbound call: the callee (who answered unless ``ended``)
    opening: str | None = None  # the line the dial request asked the agent to open with
    ended: bool = False  # the dial was refused or failed: the job is ending, the agent returns


#: The call control of each job in this process (one call per process, by job id): the agent's
#: dialog, the keypad and the runtime's control service all act through the same one.
_of_job: dict[str, CallControl] = {}


def for_job(ctx: JobContext, session: AgentSession[Any], cfg: config.WorkerConfig) -> CallControl:
    """The job's one ``CallControl``, made on first use."""
    control = _of_job.get(ctx.job.id)
    if control is None:
        control = _of_job[ctx.job.id] = CallControl(ctx, session, cfg)
        ctx.add_shutdown_callback(lambda: _forget(ctx.job.id))
    return control


def existing(job_id: str) -> CallControl | None:
    """The job's call control if its agent made one (the runtime's control service asks)."""
    return _of_job.get(job_id)


async def _forget(job_id: str) -> None:
    _of_job.pop(job_id, None)


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
            transfer_available=cfg.transfer_to is not None or cfg.warm_transfer_to is not None,
        )
        self.limits = callflow.CallLimits(cfg.idle_timeout_s, cfg.max_call_s)
        self._last_caller_activity = time.monotonic()
        self._caller: str | None = None
        self._colleague: str | None = None  # a warm transfer's second party, once dialled
        self._handed_over = False  # caller and colleague talk; the agent only watches
        self.muted = False  # the control service muted the agent (or a person took over)
        #: Called with (kind, fields) for every key, transfer step and hang-up.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def _tell(self, kind: str, **fields: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, fields)
            except Exception as e:  # a listener's bug never breaks the call
                log.warning("call listener failed", extra={"error": f"{type(e).__name__}: {e}"})

    @property
    def transferring(self) -> bool:
        return self._transferring

    @property
    def handed_over(self) -> bool:
        return self._handed_over

    @property
    def ended(self) -> bool:
        return self._ended

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

    def _destination_refused(self, number: str) -> ValueError | None:
        """Outbound calls go only where the pool allows (``outbound.allowedDestinations``)."""
        if phone.destination_allowed(number, self._cfg.allowed_destinations):
            return None
        return ValueError(
            f"{number} is not in the pool's outbound allowedDestinations "
            f"({', '.join(self._cfg.allowed_destinations) or 'none'})"
        )

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
        self._session.on("conversation_item_added", self._on_item)

    def _on_item(self, ev: Any) -> None:
        """A caller's turn (words) is activity: the idle clock starts again."""
        if getattr(ev.item, "role", None) == "user":
            self.caller_spoke()

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        """The caller hung up: end the call now (delete the room) rather than wait it out.

        After a warm transfer either party hanging up ends the call: the other gets its BYE.
        """
        if self._ended:
            return
        if participant.identity == self._caller:
            self._ended = True
            self._spawn(self.end_room("caller left"))
        elif self._handed_over and participant.identity == self._colleague:
            self._ended = True
            self._spawn(self.end_room("colleague left"))

    def caller_spoke(self) -> None:
        """Any caller speech (or key) resets the idle clock."""
        self._last_caller_activity = time.monotonic()

    # -- keypad --------------------------------------------------------------------------------

    def on_dtmf(self, ev: rtc.SipDTMF) -> None:
        from .. import metrics

        if self._handed_over:  # the caller talks to a colleague now: keys are theirs
            return
        self.caller_spoke()
        effects = self.keypad.press(ev.digit, time.monotonic())
        kind = _KEY_ACTION.get(type(effects[-1]), "unused") if effects else "unused"
        if self.keypad.collecting is not None and not effects:
            kind = "digit"
        if ev.digit not in callflow.DTMF_KEYS:
            kind = "invalid"
        metrics.DTMF.labels(kind).inc()
        who = ev.participant.identity if ev.participant is not None else None
        extra = {"action": kind, "menu": self.keypad.path or "top", "from": who or ""}
        if self._cfg.log_transcripts:  # keys can be an account number: logged like words
            extra["digit"] = ev.digit
        log.info("dtmf received", extra=extra)
        self._tell("keypad", action=kind, menu=extra["menu"], digit=ev.digit)
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
        from .. import metrics

        await self._speech_heard()
        metrics.DIALOG_ACTIONS.labels("hangup").inc()
        await self.hangup(f"dialog {reason}")

    async def transfer_caller(self, reason: str) -> None:
        """The dialog promised a person: once that is heard, REFER the caller."""
        from .. import metrics

        await self._speech_heard()
        metrics.DIALOG_ACTIONS.labels("transfer").inc()
        log.info("dialog asked for a transfer", extra={"reason": reason})
        cfg = self._cfg
        if self._caller is None or (cfg.transfer_to is None and cfg.warm_transfer_to is None):
            self._session.say(TRANSFER_FAILED_TEXT)
            return
        await self.transfer_then_report(reason)

    # -- actions (every trigger lands here) ----------------------------------------------------

    async def hangup(self, reason: str, say: str | None = None) -> None:
        """End the call: optionally say ``say``, then delete the room (the phone gets a BYE)."""
        from .. import metrics

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
        self._tell("hangup", reason=reason)
        await self.end_room(reason)

    async def end_room(self, reason: str) -> None:
        """Delete the call's room: every participant leaves, a SIP leg gets its BYE."""
        try:
            async with self._api(10.0) as lk:
                await lk.room.delete_room(api.DeleteRoomRequest(room=self._ctx.room.name))
        except _SIP_ERRORS as e:
            self._refused("room not deleted", self._ctx.room.name, e)
        self._ctx.shutdown(reason=reason)

    async def transfer_then_report(self, reason: str = "") -> None:
        """A transfer of the caller, warm when a colleague's number is configured, else cold."""
        if self._caller is None:
            return
        if self._cfg.warm_transfer_to is not None:
            why = await self.warm_transfer(self._caller, self._cfg.warm_transfer_to, reason)
            if why is not None and not self._ended:
                self._session.say(NO_COLLEAGUE_TEXT)
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
        from .. import metrics

        if self._transferring:
            return "a transfer is already under way"
        to = target or self._cfg.transfer_to
        if to is None:
            return "no transfer target is configured"
        try:
            to = phone.parse_transfer_target(to, setting="transfer target") or ""
        except phone.PhoneSettingError as e:
            metrics.TRANSFERS.labels("invalid").inc()
            return self._refused("transfer refused", to, e)
        self._transferring = True
        self._tell("transfer", stage="started", warm=False, to=phone.mask_numbers_in(to))
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
            why = self._refused("transfer failed", to, e)
            self._transferring = False
            self._tell("transfer", stage="failed", warm=False, error=why)
            return why
        finally:
            self._transferring = False
        metrics.TRANSFERS.labels("ok").inc()
        log.info("call transferred", extra={"to": to})
        self._tell("transfer", stage="done", warm=False)
        self._ended = True
        await self.end_room("call transferred")  # the caller is elsewhere: free the room now
        return None

    async def dial(self, number: str, identity: str | None = None) -> str | None:
        """Place the outbound call this job was dispatched for; None once the callee answered."""
        from .. import metrics

        trunk = self._cfg.sip_outbound_trunk
        if trunk is None:
            metrics.OUTBOUND.labels("failed").inc()
            missing = ValueError(f"an outbound call needs {contract.ENV_SIP_OUTBOUND_TRUNK}")
            return self._refused("outbound call failed", number, missing)
        if (refused := self._destination_refused(number)) is not None:
            metrics.OUTBOUND.labels("refused").inc()
            return self._refused("outbound call refused", number, refused)
        log.info("dialling", extra={"to": number, "trunk": trunk})
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
            return self._refused(f"outbound call failed: {result}", number, e)
        metrics.OUTBOUND.labels("answered").inc()
        log.info("outbound call answered", extra={"to": number})
        return None

    async def place_dispatched_call(self) -> Dispatched:
        """An outbound dispatch (the control service's dial): place the call and wait for the
        answer. One the worker refuses or that fails ends the job (the room, or just the job
        when nothing was dialled); a dispatch without a number is an inbound call."""
        metadata = self._ctx.job.metadata or ""
        try:
            number = dispatch.dial_request(metadata)
        except dispatch.TelephonyError as e:
            log.error("outbound call refused", extra={"error": str(e)})
            self._ctx.shutdown(reason=str(e))
            return Dispatched(ended=True)
        if number is None:
            return Dispatched()
        if (why := await self.dial(number)) is not None:
            await self.end_room(f"outbound call failed: {why}")
            return Dispatched(number, ended=True)
        return Dispatched(number, dispatch.dial_opening(metadata))

    # -- warm transfer -------------------------------------------------------------------------

    async def warm_transfer(self, caller: str, number: str, reason: str = "") -> str | None:
        """Dial a colleague into this room, brief them privately, then hand the caller over.

        LiveKit SIP has no bridge and OSS livekit-server no MoveParticipant, so both legs meet
        in the caller's room: while the colleague is dialled and briefed, the caller's track is
        muted by the server (the colleague cannot hear them), the colleague's track is muted as
        soon as it appears (the caller cannot hear them) and the briefing plays on a track only
        the colleague may subscribe to. Hand-over unmutes both; the agent stops listening and
        speaking and stays only to end the call for both when either hangs up. None once
        handed over, else why not (the caller is then back with the agent).
        """
        from .. import metrics

        trunk = self._cfg.sip_outbound_trunk
        if self._transferring:
            return "a transfer is already under way"
        if trunk is None:
            metrics.TRANSFERS.labels("invalid").inc()
            missing = ValueError(f"a warm transfer needs {contract.ENV_SIP_OUTBOUND_TRUNK}")
            return self._refused("warm transfer refused", number, missing)
        if (refused := self._destination_refused(number)) is not None:
            metrics.TRANSFERS.labels("invalid").inc()
            return self._refused("warm transfer refused", number, refused)
        room = self._ctx.room
        caller_track = _audio_track_sid(room.remote_participants.get(caller))
        if caller_track is None:
            return self._refused("warm transfer refused", caller, ValueError("caller has no audio"))
        self._transferring = True
        self._tell("transfer", stage="started", warm=True, to=phone.mask_number(number))
        self._colleague = colleague = f"colleague-{uuid.uuid4().hex[:8]}"
        said = [_text(m) for m in self._session.history.items if _said_by_caller(m)]
        briefing = _Briefing(room, caller, colleague)
        muted = _MuteColleague(self, room, colleague)
        try:
            await self._say_and_wait(WARM_HOLD_TEXT)
            self._session.input.set_audio_enabled(False)  # on hold: the agent does not answer
            async with self._api(self._cfg.ringing_timeout_s + DIAL_MARGIN_S) as lk:
                # without remote unmute (livekit room.enable_remote_unmute) the caller could
                # never be heard again after the hold: find out before muting anything
                await _mute(lk, room.name, caller, caller_track, muted=False)
                await _mute(lk, room.name, caller, caller_track, muted=True)
                await briefing.start()
                muted.lk = lk
                log.info("warm transfer: dialling a colleague", extra={"to": number})
                if not trunk.startswith("ST_"):
                    trunk = await _trunk_id(lk, trunk)
                await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        room_name=room.name,
                        sip_trunk_id=trunk,
                        sip_call_to=number,
                        participant_identity=colleague,
                        participant_name="Colleague",
                        wait_until_answered=True,
                        ringing_timeout=_duration(self._cfg.ringing_timeout_s),
                    )
                )
                colleague_track = await muted.wait(COLLEAGUE_TRACK_S)
                text = callflow.briefing(self._caller_number(caller), said, reason)
                began = time.time()
                seconds = await asyncio.wait_for(briefing.play(self._session.tts, text), 60)
                log.info(
                    "warm transfer: colleague briefed",
                    extra={"seconds": round(seconds, 2), "began": began, "ended": time.time()},
                )
                await _mute(lk, room.name, colleague, colleague_track, muted=False)
                await _mute(lk, room.name, caller, caller_track, muted=False)
        except (*_SIP_ERRORS, RuntimeError) as e:
            metrics.TRANSFERS.labels("warm-failed").inc()
            why = self._refused("warm transfer failed", number, e)
            await self._back_from_hold(caller, caller_track, colleague)
            self._transferring = False
            self._tell("transfer", stage="failed", warm=True, error=why)
            return why
        finally:
            muted.close()
            await briefing.stop()
            self._transferring = False
        self._handed_over = True
        self._session.output.set_audio_enabled(False)  # the agent is out of the conversation
        metrics.TRANSFERS.labels("warm").inc()
        log.info("warm transfer: handed over", extra={"to": number})
        self._tell("transfer", stage="handed-over", warm=True)
        return None

    # -- the control service's verbs (runtime/control.py) ---------------------------------------

    async def transfer_caller_to(self, caller: str, target: str, *, warm: bool) -> str | None:
        """A transfer the control service asked for, to ``target`` (already checked): a REFER,
        or a warm transfer dialling that number; the caller hears why if it fails."""
        if warm:
            why = await self.warm_transfer(caller, target, "asked by the control service")
            if why is not None and not self._ended:
                self._session.say(NO_COLLEAGUE_TEXT)
            return why
        why = await self.transfer(caller, target)
        if why is not None and not self._ended:
            self._session.say(TRANSFER_FAILED_TEXT)
        return why

    def say(self, text: str) -> None:
        """Say a sentence now (after what the agent is saying; the caller may interrupt it)."""
        self._session.say(text, allow_interruptions=True)

    async def instruct(self, text: str, *, respond: bool = False) -> None:
        """Add an instruction for the LLM for the rest of the call; ``respond``: reply now."""
        agent = self._session.current_agent
        await agent.update_instructions(f"{agent.instructions}\n{text}")
        if respond:
            self._session.generate_reply()

    def set_muted(self, muted: bool) -> None:
        """Muted, the agent neither speaks nor listens (so it does not answer either)."""
        if muted:
            with contextlib.suppress(RuntimeError):  # a reply that may not be interrupted
                self._session.interrupt()
        self._session.output.set_audio_enabled(not muted)
        self._session.input.set_audio_enabled(not muted)
        self.muted = muted
        if not muted:
            self.caller_spoke()  # the idle clock starts again

    async def end_after_reply(self, reason: str) -> None:
        """Let the agent finish what it is saying, then end the call."""
        await self._speech_heard()
        await self.hangup(reason)

    async def _say_and_wait(self, text: str) -> None:
        handle = self._session.say(text, allow_interruptions=False)
        await asyncio.wait_for(handle.wait_for_playout(), 20)

    async def _back_from_hold(self, caller: str, track: str, colleague: str) -> None:
        """A warm transfer failed: the colleague's leg goes, the caller is heard again."""
        room = self._ctx.room.name
        async with self._api(10.0) as lk:
            try:  # first and on its own: the caller must be heard again whatever else fails
                await _mute(lk, room, caller, track, muted=False)
            except _SIP_ERRORS as e:
                self._refused("caller not taken off hold", room, e)
            if colleague in self._ctx.room.remote_participants:
                try:  # it may be leaving already (a 486 ends its leg by itself)
                    await lk.room.remove_participant(
                        api.RoomParticipantIdentity(room=room, identity=colleague)
                    )
                except _SIP_ERRORS as e:
                    log.info("colleague leg already gone", extra={"error": str(e)})
        self._colleague = None
        self._session.input.set_audio_enabled(True)
        self.caller_spoke()

    def _caller_number(self, caller: str) -> str:
        p = self._ctx.room.remote_participants.get(caller)
        return (p.attributes.get("sip.phoneNumber", "") if p is not None else "") or ""

    # -- limits --------------------------------------------------------------------------------

    async def _watch_limits(self) -> None:
        started = time.monotonic()
        prompted = False
        while not self._ended:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if self.limits.max_call_s > 0 and now - started >= self.limits.max_call_s:
                say = None if self._handed_over else MAX_LENGTH_TEXT
                await self.hangup("maximum call length reached", say)
                return
            if self._handed_over or self._transferring or self.muted:  # not in the talk
                self.caller_spoke()
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


def _text(item: Any) -> str:
    return str(getattr(item, "text_content", None) or "")


def _said_by_caller(item: Any) -> bool:
    return getattr(item, "type", None) == "message" and getattr(item, "role", None) == "user"


def _audio_track_sid(participant: rtc.RemoteParticipant | None) -> str | None:
    if participant is None:
        return None
    for sid, pub in participant.track_publications.items():
        if pub.kind == rtc.TrackKind.KIND_AUDIO:
            return str(sid)
    return None


async def _mute(lk: api.LiveKitAPI, room: str, identity: str, track: str, *, muted: bool) -> None:
    await lk.room.mute_published_track(
        api.MuteRoomTrackRequest(room=room, identity=identity, track_sid=track, muted=muted)
    )


class _MuteColleague:
    """Mutes the colleague's audio track the moment it is published (the caller is on hold)."""

    def __init__(self, control: CallControl, room: rtc.Room, identity: str) -> None:
        self._control, self._room, self._identity = control, room, identity
        self.lk: api.LiveKitAPI | None = None
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        room.on("track_published", self._on_published)

    def _on_published(self, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        if p.identity == self._identity and pub.kind == rtc.TrackKind.KIND_AUDIO:
            self._control._spawn(self._mute(pub.sid))

    async def _mute(self, sid: str) -> None:
        try:
            assert self.lk is not None
            await _mute(self.lk, self._room.name, self._identity, sid, muted=True)
        except (*_SIP_ERRORS, AssertionError, RuntimeError) as e:  # e.g. after the dial ended
            if not self._done.done():
                self._done.set_exception(RuntimeError(f"colleague not muted: {e}"))
            return
        if not self._done.done():
            self._done.set_result(sid)

    async def wait(self, within: float) -> str:
        """The colleague's (muted) track; also catches one published before we listened."""
        p = self._room.remote_participants.get(self._identity)
        sid = _audio_track_sid(p)
        if sid is not None and not self._done.done():
            await self._mute(sid)
        try:
            return await asyncio.wait_for(asyncio.shield(self._done), within)
        except TimeoutError:
            raise RuntimeError("the colleague published no audio") from None

    def close(self) -> None:
        self._room.off("track_published", self._on_published)


class _Briefing:
    """A second agent track that only the colleague may hear: the briefing plays on it."""

    NAME = "voicepool-briefing"

    def __init__(self, room: rtc.Room, caller: str, colleague: str) -> None:
        self._room, self._caller, self._colleague = room, caller, colleague
        self._pub: rtc.LocalTrackPublication | None = None
        self._source: rtc.AudioSource | None = None

    async def start(self) -> None:
        """Before the colleague joins: the caller keeps the agent's own track, nothing else."""
        me = self._room.local_participant
        own = [sid for sid, pub in me.track_publications.items() if pub.name != self.NAME]
        me.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(
                    participant_identity=self._caller, allowed_track_sids=own
                ),
                rtc.ParticipantTrackPermission(
                    participant_identity=self._colleague, allow_all=True
                ),
            ],
        )

    async def play(self, tts: Any, text: str) -> float:
        """Synthesise ``text`` onto the briefing track; returns the seconds of audio played."""
        if tts is None:
            raise RuntimeError("no TTS to brief the colleague with")
        self._source = rtc.AudioSource(tts.sample_rate, tts.num_channels)
        track = rtc.LocalAudioTrack.create_audio_track(self.NAME, self._source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_UNKNOWN)
        self._pub = await self._room.local_participant.publish_track(track, opts)
        samples = 0
        async with tts.synthesize(text) as stream:
            async for ev in stream:
                samples += ev.frame.samples_per_channel
                await self._source.capture_frame(ev.frame)
        await self._source.wait_for_playout()
        return float(samples / tts.sample_rate)

    async def stop(self) -> None:
        me = self._room.local_participant
        if self._pub is not None:
            try:
                await me.unpublish_track(self._pub.sid)
            except Exception as e:  # the room may be gone already
                log.warning("briefing track not unpublished", extra={"error": str(e)})
            self._pub = None
        me.set_track_subscription_permissions(allow_all_participants=True)
        if self._source is not None:
            await self._source.aclose()
            self._source = None


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
