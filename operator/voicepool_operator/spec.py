"""The pool spec as typed, validated data.

The CRD schema refuses bad pools at the apiserver; this module re-checks what the planner relies
on, so a pool stored before a schema change (or applied with validation off) yields one clear
`SpecError` instead of a crash deep in the planner.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from voicepool_contract.phone import MenuError, parse_menu_tree

from .demand import Measured
from .livekit import LiveKitSpec, parse_livekit
from .telephony.spec import PoolPhones, TelephonyError, TelephonySpec, calls_env, parse_telephony
from .validate import SpecError, local_object_name

__all__ = [
    "DAYS",
    "ConversationSpec",
    "LiveKitSpec",
    "PoolSpec",
    "PrivacySpec",
    "SpecError",
    "WarmWindow",
    "deletion_spec",
    "parse_quantity",
    "parse_spec",
]

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def parse_quantity(value: Any, what: str) -> Decimal:
    """A Kubernetes resource quantity (the subset people write for CPU and memory)."""
    if isinstance(value, bool):
        raise SpecError(f"{what}: {value!r} is not a quantity")
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise SpecError(f"{what}: {value!r} is not a quantity (e.g. 2, 1500m, 512Mi)")
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation as e:  # pragma: no cover - the regex admits only numbers
        raise SpecError(f"{what}: {value!r} is not a quantity") from e


@dataclass(frozen=True)
class WarmWindow:
    """A daily time window with its own warm size (e.g. office hours)."""

    start: dt.time
    end: dt.time
    days: tuple[str, ...]
    idle_sessions: int

    def contains(self, local: dt.datetime) -> bool:
        t = local.time().replace(second=0, microsecond=0)
        day = DAYS[local.weekday()]
        if self.start <= self.end:
            return day in self.days and self.start <= t < self.end
        # Wraps past midnight: the part after midnight belongs to the previous day's window.
        if t >= self.start:
            return day in self.days
        yesterday = DAYS[(local.weekday() - 1) % 7]
        return t < self.end and yesterday in self.days


@dataclass(frozen=True)
class ConversationSpec:
    system_prompt: str | None = None
    greeting: str | None = None  # "" is a choice: the agent waits for the caller


@dataclass(frozen=True)
class PrivacySpec:
    mask_phone_numbers: bool | None = None  # None: the worker's default (masked)
    log_transcripts: bool | None = None


@dataclass(frozen=True)
class PoolSpec:
    agent_name: str
    livekit: LiveKitSpec
    sessions_per_pod: int
    min_replicas: int
    max_replicas: int
    warm_idle_sessions: int
    warm_windows: tuple[WarmWindow, ...]
    time_zone: str
    cpu_pinning: bool
    template: Mapping[str, Any]
    cpu: str
    memory: str
    drain_timeout_seconds: int
    stabilization_window_seconds: int
    max_surge: int
    unready_grace_seconds: int
    warm_mode: str = "static"  # static | adaptive
    safety_factor: float = 1.0  # adaptive: plan for safety x the measured cold start
    cold_start_seconds: int = 30  # adaptive: the cold start until one has been measured
    service_account: str | None = None  # None: the operator's default worker ServiceAccount
    host_network: bool = False
    conversation: ConversationSpec = ConversationSpec()
    privacy: PrivacySpec = PrivacySpec()
    #: spec.telephony's trunks and numbers; None when it declares none, or does not parse
    #: (then ``telephony_problem`` says why: Degraded, while the pool keeps scaling).
    telephony: TelephonySpec | None = None
    telephony_problem: str | None = None
    #: spec.telephony.calls as worker environment (name, value); parsed apart from the trunks,
    #: so a trunk problem never changes what the workers are told.
    calls: tuple[tuple[str, str], ...] = ()

    @property
    def phones(self) -> PoolPhones:
        """What the SIP sync needs of this pool (telephony/sync.py)."""
        return PoolPhones(self.agent_name, self.livekit, self.telephony, self.telephony_problem)

    def scheduled_warm_sessions(self, now: dt.datetime) -> int:
        """The warm size the spec names for `now`: idleSessions or the matching window."""
        if not self.warm_windows:
            return self.warm_idle_sessions
        local = now.astimezone(ZoneInfo(self.time_zone))
        for window in self.warm_windows:
            if window.contains(local):
                return window.idle_sessions
        return self.warm_idle_sessions

    def warm_sessions(self, now: dt.datetime, measured: Measured | None = None) -> int:
        """The idle capacity (in sessions) to keep ready at `now`.

        Adaptive pools keep what the measured arrivals, departures and cold start need
        (`demand.base_stock`); the schedule (or idleSessions) stays a floor.
        """
        floor = self.scheduled_warm_sessions(now)
        if self.warm_mode != "adaptive" or measured is None:
            return floor
        warm = measured.warm_sessions(
            self.safety_factor, self.cold_start_seconds, self.stabilization_window_seconds
        )
        return max(floor, warm)

    def desired_for(
        self, active_sessions: int, now: dt.datetime, measured: Measured | None = None
    ) -> tuple[int, int]:
        """(clamped, unclamped) pods for the active calls plus the warm capacity."""
        need = active_sessions + self.warm_sessions(now, measured)
        raw = math.ceil(need / self.sessions_per_pod)
        return max(self.min_replicas, min(self.max_replicas, raw)), raw


def _int(obj: Mapping[str, Any], key: str, default: int, minimum: int, where: str) -> int:
    value = obj.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}{key}: must be an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{where}{key}: must be >= {minimum}, got {value}")
    return value


def _warm_size(obj: Mapping[str, Any], spp: int, where: str) -> int:
    if obj.get("idleSessions") is not None and obj.get("idlePods") is not None:
        raise SpecError(f"{where}: set idleSessions or idlePods, not both")
    if obj.get("idlePods") is not None:
        return _int(obj, "idlePods", 0, 0, f"{where}.") * spp
    return _int(obj, "idleSessions", 0, 0, f"{where}.")


def _hhmm(value: Any, where: str) -> dt.time:
    m = _HHMM.match(str(value))
    if not m:
        raise SpecError(f"{where}: {value!r} is not a time of day HH:MM")
    return dt.time(int(m.group(1)), int(m.group(2)))


def _windows(items: Sequence[Mapping[str, Any]], spp: int) -> tuple[WarmWindow, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"spec.warmPool.schedule[{i}]"
        days = tuple(item.get("days") or DAYS)
        bad = [d for d in days if d not in DAYS]
        if bad:
            raise SpecError(f"{where}.days: unknown day(s) {bad}; use {', '.join(DAYS)}")
        start, end = (
            _hhmm(item.get("start"), f"{where}.start"),
            _hhmm(item.get("end"), f"{where}.end"),
        )
        if start == end:
            raise SpecError(f"{where}: start and end are equal; the window would be empty")
        out.append(WarmWindow(start, end, days, _warm_size(item, spp, where)))
    return tuple(out)


def parse_spec(spec: Mapping[str, Any]) -> PoolSpec:
    """Validate and type a pool's spec (CRD defaults applied where the apiserver did not)."""
    agent = str(spec.get("agentName") or "").strip()
    if not agent:
        raise SpecError("spec.agentName: required (the LiveKit agent name workers register as)")
    livekit_spec = parse_livekit(spec.get("livekit") or {})

    spp = _int(spec, "sessionsPerPod", 1, 1, "spec.")
    lo = _int(spec, "minReplicas", 1, 0, "spec.")
    hi = _int(spec, "maxReplicas", 10, 1, "spec.")
    if hi < lo:
        raise SpecError(f"spec.maxReplicas ({hi}) must be >= spec.minReplicas ({lo})")

    warm = spec.get("warmPool") or {}
    tz = str(warm.get("timeZone") or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise SpecError(f"spec.warmPool.timeZone: unknown time zone {tz!r}") from e

    template = spec.get("template") or {}
    if not template.get("image"):
        raise SpecError("spec.template.image: required")
    service_account = None
    if template.get("serviceAccountName"):
        service_account = local_object_name(
            template["serviceAccountName"], "spec.template.serviceAccountName", "a ServiceAccount"
        )
    if template.get("priorityClassName"):
        local_object_name(
            template["priorityClassName"], "spec.template.priorityClassName", "a PriorityClass"
        )
    _check_calls(spec.get("telephony") or {})
    telephony: TelephonySpec | None = None
    telephony_problem: str | None = None
    try:
        telephony = parse_telephony(spec.get("telephony"))
    except TelephonyError as e:
        telephony_problem = str(e)
    resources = template.get("resources") or {}
    pinning = bool((spec.get("cpuPinning") or {}).get("enabled", True))
    cpu_raw = resources.get("cpu", 1)
    cpu = parse_quantity(cpu_raw, "spec.template.resources.cpu")
    if cpu <= 0:
        raise SpecError("spec.template.resources.cpu: must be > 0")
    if pinning and cpu != cpu.to_integral_value():
        raise SpecError(
            f"spec.template.resources.cpu: {cpu_raw!r} is not a whole number of CPUs; "
            "cpuPinning needs integer CPUs (or set cpuPinning.enabled: false)"
        )
    memory = str(resources.get("memory") or "2Gi")
    parse_quantity(memory, "spec.template.resources.memory")

    mode = str(warm.get("mode") or "static")
    if mode not in ("static", "adaptive"):
        raise SpecError(f"spec.warmPool.mode: {mode!r} must be static or adaptive")
    adaptive = warm.get("adaptive") or {}
    safety = adaptive.get("safetyFactor", 1.0)
    if isinstance(safety, bool) or not isinstance(safety, int | float) or not 0.1 <= safety <= 10:
        raise SpecError(f"spec.warmPool.adaptive.safetyFactor: {safety!r} must be in [0.1, 10]")

    drain = spec.get("drain") or {}
    scale_down = spec.get("scaleDown") or {}
    update = spec.get("updateStrategy") or {}
    return PoolSpec(
        agent_name=agent,
        livekit=livekit_spec,
        sessions_per_pod=spp,
        min_replicas=lo,
        max_replicas=hi,
        warm_idle_sessions=_warm_size(warm, spp, "spec.warmPool"),
        warm_windows=_windows(warm.get("schedule") or [], spp),
        time_zone=tz,
        cpu_pinning=pinning,
        template=template,
        cpu=str(int(cpu)) if cpu == cpu.to_integral_value() else f"{int(cpu * 1000)}m",
        memory=memory,
        drain_timeout_seconds=_int(drain, "timeoutSeconds", 3600, 1, "spec.drain."),
        stabilization_window_seconds=_int(
            scale_down, "stabilizationWindowSeconds", 60, 0, "spec.scaleDown."
        ),
        max_surge=_int(update, "maxSurge", 1, 1, "spec.updateStrategy."),
        unready_grace_seconds=_int(spec, "unreadyGraceSeconds", 60, 0, "spec."),
        warm_mode=mode,
        safety_factor=float(safety),
        cold_start_seconds=_int(adaptive, "coldStartSeconds", 30, 1, "spec.warmPool.adaptive."),
        service_account=service_account,
        host_network=bool(template.get("hostNetwork", False)),
        conversation=_conversation(spec.get("conversation") or {}),
        privacy=_privacy(spec.get("privacy") or {}),
        telephony=telephony,
        telephony_problem=telephony_problem,
        calls=calls_env(spec.get("telephony")),
    )


def _conversation(raw: Mapping[str, Any]) -> ConversationSpec:
    prompt, greeting = raw.get("systemPrompt"), raw.get("greeting")
    return ConversationSpec(
        system_prompt=str(prompt) if prompt else None,
        greeting=str(greeting) if greeting is not None else None,
    )


def _privacy(raw: Mapping[str, Any]) -> PrivacySpec:
    def flag(key: str) -> bool | None:
        value = raw.get(key)
        return None if value is None else bool(value)

    return PrivacySpec(flag("maskPhoneNumbers"), flag("logTranscripts"))


def _check_calls(telephony: Mapping[str, Any]) -> None:
    """Settings the worker would refuse at start (a crash loop): refused at the pool instead."""
    calls = telephony.get("calls") or {}
    try:
        parse_menu_tree(
            str(calls.get("keypadMenu") or ""), setting="spec.telephony.calls.keypadMenu"
        )
    except MenuError as e:
        raise SpecError(str(e)) from None


def deletion_spec(spec: Mapping[str, Any]) -> PoolSpec:
    """The spec to drain a deleted pool with, even when its spec no longer parses.

    Deleting a pool only needs to drain its pods; an unknown time zone or a bad schedule must
    not hold the finalizer forever. Keeps what still reads (sessionsPerPod, the drain timeout)
    and defaults the rest.
    """
    try:
        return parse_spec(spec)
    except SpecError:
        pass
    usable: dict[str, Any] = {
        "agentName": "deleting",
        "livekit": {"url": "ws://deleting.invalid", "credentialsSecretRef": {"name": "deleting"}},
        "template": {"image": "deleting.invalid/worker"},
        "minReplicas": 0,
        "cpuPinning": {"enabled": False},
    }
    for key, default, minimum in (("sessionsPerPod", 1, 1), ("unreadyGraceSeconds", 60, 0)):
        try:
            usable[key] = _int(spec, key, default, minimum, "")
        except SpecError:
            continue
    drain = spec.get("drain") if isinstance(spec.get("drain"), Mapping) else {}
    with contextlib.suppress(SpecError):
        usable["drain"] = {"timeoutSeconds": _int(drain or {}, "timeoutSeconds", 3600, 1, "")}
    return parse_spec(usable)
