"""Worker configuration from the environment (the operator's pod template sets it).

``load(env)`` is pure: it validates everything up front and raises ``ConfigError`` with one
human-readable line, so a misconfigured pod fails fast instead of half-starting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import voicepool_contract as contract
from voicepool_contract import phone

STT_PROVIDERS = ("pocketsphinx", "whisper", "openai")
LLM_PROVIDERS = ("rules", "llama", "openai")
TTS_PROVIDERS = ("piper", "espeak", "openai")
TURN_DETECTION = ("vad", "model", "smart-turn")
SMART_TURN_MIN_SILENCE_S = 0.25
TTS_FORMATS = ("mp3", "wav", "opus", "aac", "flac", "pcm")
EXECUTORS = ("process", "thread")
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")  # livekit-agents' spelling

#: The keypad menu of the default receptionist: each key says what a caller would have said.
DEFAULT_MENU = (
    "1=what are your opening hours;2=where are you located;3=how much does a cleaning cost;"
    "4=i would like to book an appointment;0=transfer"
)
DEFAULT_SYSTEM_PROMPT = (
    "You are the friendly phone receptionist of Voicepool Dental. Answer in one or two short "
    "spoken sentences, without lists or markdown. Opening hours: Monday to Friday 9 AM to "
    "6 PM, Saturday 10 AM to 2 PM, closed on Sunday. Address: 12 Harbour Street, next to the "
    "central station. Prices: check-up 60 euros, cleaning 80 euros, filling from 120 euros. "
    "To book an appointment, ask for the day, the time and the caller's name. If the caller "
    "wants a person, use transfer_call; when they say goodbye, say goodbye and use end_call."
)
DEFAULT_GREETING = "Hello, you have reached Voicepool Dental. How can I help you?"
DEFAULT_OUTBOUND_GREETING = "Hello, this is Voicepool Dental calling. Do you have a moment?"


class ConfigError(Exception):
    """Bad configuration: main() prints this one line and exits non-zero."""


@dataclass(frozen=True)
class OpenAIEndpoint:
    """An OpenAI-compatible endpoint for one stage (key comes from a Secret via env)."""

    base_url: str | None
    api_key: str
    model: str


@dataclass(frozen=True)
class WorkerConfig:
    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str
    agent_name: str
    pool: str
    capacity: int
    drain_timeout_s: int
    pod_name: str | None
    pod_namespace: str | None
    http_port: int
    agent_http_port: int
    stt: str
    llm: str
    tts: str
    stt_openai: OpenAIEndpoint | None
    llm_openai: OpenAIEndpoint | None
    tts_openai: OpenAIEndpoint | None
    tts_voice: str
    system_prompt: str
    greeting: str
    turn_detection: str
    vad_min_silence_s: float
    endpointing_min_delay_s: float
    endpointing_max_delay_s: float
    noise_suppression: bool
    echo_cancellation: bool
    executor: str
    log_level: str
    stt_grammar: str | None
    stt_second_pass: bool
    llama_model_path: str | None
    dtmf_menu: Mapping[str, str] = field(default_factory=dict)  # key -> what it "says"
    transfer_to: str | None = None  # SIP REFER target for the keypad's transfer key
    sip_outbound_trunk: str | None = None  # LiveKit outbound trunk id for dialled-out calls
    #: E.164 prefixes an outbound call (dial-out, warm transfer) may go to; empty: none.
    allowed_destinations: tuple[str, ...] = ()
    warm_transfer_to: str | None = None  # a colleague's number: transfers become warm
    tts_cache: int = 64  # clauses of synthesised audio the embedded TTS keeps (0: off)
    #: Where the embedded TTS keeps its known phrases' audio across starts (None: the
    #: default folder, "": not kept); see ``providers.clause_store``.
    tts_cache_dir: str | None = None
    dtmf_inter_digit_timeout_s: float = 5.0  # a pause this long ends a multi-digit entry
    idle_timeout_s: float = 0.0  # caller silence before "are you still there?" (0: off)
    max_call_s: float = 0.0  # longest call before the agent says goodbye (0: no limit)
    #: How long after a call is dispatched the hosted agent must have joined its room; a
    #: later one ends that call (the caller is not left ringing an agent that hangs).
    agent_join_timeout_s: float = 30.0
    #: how long a call process may take to start (the agent's prewarm: loading its models)
    process_start_timeout_s: float = 60.0
    mask_phone_numbers: bool = True  # +1555…0001 in logs
    log_transcripts: bool = False  # what callers and the agent say, in the log lines
    outbound_greeting: str = DEFAULT_OUTBOUND_GREETING  # when the dispatch sets no opening
    ringing_timeout_s: float = 30.0  # an outbound call not answered by then is "no-answer"
    # Ordered fallback chains per stage (the first is the primary, == stt/llm/tts above).
    stt_chain: tuple[str, ...] = ("whisper",)
    llm_chain: tuple[str, ...] = ("rules",)
    tts_chain: tuple[str, ...] = ("piper",)
    llm_first_token_timeout_s: float = 2.5  # an LLM silent this long is skipped for the turn
    provider_timeout_s: float = 5.0  # per-attempt deadline of remote STT/TTS requests
    llama_threads: int = 1  # llama.cpp threads per call: leaves a core to STT/TTS
    dialog_path: str | None = None  # the scripted receptionist's YAML (None: the default)
    dialog_yaml: str | None = None  # the same YAML inline (from a ConfigMap key via env)
    tts_format: str = "mp3"  # what the OpenAI TTS endpoint is asked for (wav: no decoder needed)
    echo_delay_ms: int = 120  # agent playout -> its echo in the caller's audio (APM hint)
    auto_gain_control: bool = False
    echo_gate_db: float = 8.0  # caller audio this far below the echoing far end is muted (0: off)
    echo_gate_hold_s: float = 0.3  # a caller louder than any echo keeps the gate open this long
    interruption_min_duration_s: float = 0.05  # caller speech that stops the agent (barge-in)
    vad_activation: float = 0.5  # silero probability that starts speech (barge-in onset)
    vad_min_speech_s: float = 0.05  # speech that long above it is a start of speech
    early_barge_in: bool = True  # an energy onset pauses the agent before the VAD hears speech
    early_barge_in_hold_s: float = 0.3  # an onset the VAD does not confirm resumes after this
    preemptive_tts: bool = True  # synthesise the reply while the endpointing delay runs
    tts_threads: int = 1  # onnxruntime threads of the embedded piper voice (0: its default)
    input_frame_ms: int = 20  # caller audio is handed to APM/VAD/STT in frames this long
    sync_transcription: bool = False  # word-timed transcript (an STFT on the agent's audio)
    eot_threshold: float = 0.5  # end-of-turn model: below this the caller is not done
    stt_threads: int = 1  # CTranslate2 threads of the embedded whisper STT
    hang_up_after_greeting: bool = False  # an announcement line: say the greeting, hang up

    @property
    def pod_reporting(self) -> bool:
        return bool(self.pod_name)


def _chain(
    env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]
) -> tuple[str, ...]:
    """An ordered fallback list (``openai,llama``): the first is the primary, each at most once."""
    raw = (env.get(key) or default).strip().lower()
    names = tuple(n.strip() for n in raw.split(","))
    if not all(names):
        raise ConfigError(f"{key}={raw!r} has an empty entry (use e.g. 'openai,llama')")
    for name in names:
        if name not in allowed:
            raise ConfigError(f"{key}={name!r} is not one of: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}={raw!r} names a provider twice")
    return names


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(key) or default).strip().lower()
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    return value


def _frame_ms(env: Mapping[str, str], key: str, default: int) -> int:
    """A frame length the APM can cut into exact 10 ms slices: 10, 20, ... 100 ms."""
    value = _int(env, key, default, 10)
    if value % 10 or value > 100:
        raise ConfigError(f"{key}={value} must be a multiple of 10 ms between 10 and 100")
    return value


def _int(env: Mapping[str, str], key: str, default: int, minimum: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return value


def _fraction(env: Mapping[str, str], key: str, default: float) -> float:
    value = _float(env, key, default)
    if not 0 < value < 1:
        raise ConfigError(f"{key}={value} must be between 0 and 1")
    return value


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{key}={value} must be >= 0")
    return value


def _positive(env: Mapping[str, str], key: str, default: float) -> float:
    value = _float(env, key, default)
    if value <= 0:
        raise ConfigError(f"{key}={value} must be > 0")
    return value


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={raw!r} is not a boolean (true/false)")


def _openai(env: Mapping[str, str], stage: str, default_model: str) -> OpenAIEndpoint:
    """Per-stage settings fall back to the shared VOICEPOOL_OPENAI_* ones."""
    key = (
        env.get(f"VOICEPOOL_{stage}_API_KEY")
        or env.get("VOICEPOOL_OPENAI_API_KEY")
        or env.get("OPENAI_API_KEY")
        or ""
    ).strip()
    if not key:
        raise ConfigError(
            f"VOICEPOOL_{stage}=openai needs an API key: set VOICEPOOL_OPENAI_API_KEY "
            f"(or VOICEPOOL_{stage}_API_KEY / OPENAI_API_KEY), e.g. from a Secret"
        )
    base = (
        env.get(f"VOICEPOOL_{stage}_BASE_URL") or env.get("VOICEPOOL_OPENAI_BASE_URL") or ""
    ).strip()
    model = (env.get(f"VOICEPOOL_{stage}_MODEL") or default_model).strip()
    return OpenAIEndpoint(base_url=base or None, api_key=key, model=model)


def _log_level(env: Mapping[str, str]) -> str:
    raw = (env.get("VOICEPOOL_LOG_LEVEL") or "INFO").strip().upper()
    level = "WARN" if raw == "WARNING" else raw
    if level not in LOG_LEVELS:
        raise ConfigError(f"VOICEPOOL_LOG_LEVEL={raw!r} is not one of: {', '.join(LOG_LEVELS)}")
    return level


def load(env: Mapping[str, str]) -> WorkerConfig:
    """Validate the whole environment; the first problem found is raised as ConfigError."""
    missing = [
        k for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not env.get(k)
    ]
    if missing:
        raise ConfigError(f"missing required environment variable(s): {', '.join(missing)}")
    url = env["LIVEKIT_URL"].strip()
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError(f"LIVEKIT_URL={url!r} must start with ws://, wss://, http:// or https://")

    # whisper: far fewer word errors than pocketsphinx at no cost in time to first word
    # (bench/worker_latency.py --sections ab --lever VOICEPOOL_STT=whisper; docs/results.md)
    stt_chain = _chain(env, "VOICEPOOL_STT", "whisper", STT_PROVIDERS)
    llm_chain = _chain(env, "VOICEPOOL_LLM", "rules", LLM_PROVIDERS)
    tts_chain = _chain(env, "VOICEPOOL_TTS", "piper", TTS_PROVIDERS)
    llama_path = (env.get("VOICEPOOL_LLAMA_MODEL_PATH") or "").strip() or None

    try:
        menu = phone.parse_menu_tree(env.get(contract.ENV_DTMF_MENU, DEFAULT_MENU))
        destinations = phone.parse_destinations(
            env.get(contract.ENV_SIP_ALLOWED_DESTINATIONS, ""),
            setting=contract.ENV_SIP_ALLOWED_DESTINATIONS,
        )
        transfer_to = phone.parse_transfer_target(
            env.get(contract.ENV_TRANSFER_TO, ""), setting=contract.ENV_TRANSFER_TO
        )
        warm_transfer_to = phone.parse_phone_number(
            env.get(contract.ENV_WARM_TRANSFER_TO, ""), setting=contract.ENV_WARM_TRANSFER_TO
        )
    except phone.PhoneSettingError as e:
        raise ConfigError(str(e)) from None

    min_delay = _float(env, "VOICEPOOL_ENDPOINTING_MIN_DELAY", 0.2)
    max_delay = _float(env, "VOICEPOOL_ENDPOINTING_MAX_DELAY", 1.2)
    if max_delay < min_delay:
        raise ConfigError(
            "VOICEPOOL_ENDPOINTING_MAX_DELAY must be >= VOICEPOOL_ENDPOINTING_MIN_DELAY"
        )
    turn_detection = _choice(env, "VOICEPOOL_TURN_DETECTION", "vad", TURN_DETECTION)
    vad_min_silence = _float(env, "VOICEPOOL_VAD_MIN_SILENCE", 0.25)
    if turn_detection == "smart-turn" and vad_min_silence < SMART_TURN_MIN_SILENCE_S:
        # livekit-agents asks its streaming turn detectors for a verdict at 0.2 s of silence
        # and refuses a VAD that ends speech before that verdict can arrive
        raise ConfigError(
            f"VOICEPOOL_TURN_DETECTION=smart-turn needs VOICEPOOL_VAD_MIN_SILENCE >= "
            f"{SMART_TURN_MIN_SILENCE_S} (got {vad_min_silence})"
        )

    announce = _bool(env, "VOICEPOOL_HANG_UP_AFTER_GREETING", False)
    if announce and not env.get("VOICEPOOL_GREETING", DEFAULT_GREETING).strip():
        raise ConfigError("VOICEPOOL_HANG_UP_AFTER_GREETING needs a VOICEPOOL_GREETING to say")

    return WorkerConfig(
        livekit_url=url,
        livekit_api_key=env["LIVEKIT_API_KEY"].strip(),
        livekit_api_secret=env["LIVEKIT_API_SECRET"].strip(),
        agent_name=(env.get("VOICEPOOL_AGENT_NAME") or "voicepool-agent").strip(),
        pool=(env.get("VOICEPOOL_POOL") or "").strip(),
        capacity=_int(env, "VOICEPOOL_SESSIONS_PER_POD", 1, 1),
        drain_timeout_s=_int(env, "VOICEPOOL_DRAIN_TIMEOUT_SECONDS", 600, 1),
        pod_name=(env.get("POD_NAME") or "").strip() or None,
        pod_namespace=(env.get("POD_NAMESPACE") or "").strip() or None,
        http_port=_int(env, "VOICEPOOL_HTTP_PORT", 8081, 0),
        agent_http_port=_int(env, "VOICEPOOL_AGENT_HTTP_PORT", 0, 0),
        stt=stt_chain[0],
        llm=llm_chain[0],
        tts=tts_chain[0],
        stt_openai=(
            _openai(env, "STT", "gpt-4o-mini-transcribe") if "openai" in stt_chain else None
        ),
        llm_openai=_openai(env, "LLM", "gpt-4.1-mini") if "openai" in llm_chain else None,
        tts_openai=_openai(env, "TTS", "gpt-4o-mini-tts") if "openai" in tts_chain else None,
        tts_voice=(env.get("VOICEPOOL_TTS_VOICE") or "").strip(),
        system_prompt=env.get("VOICEPOOL_SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT,
        greeting=env.get("VOICEPOOL_GREETING", DEFAULT_GREETING),
        turn_detection=turn_detection,
        vad_min_silence_s=vad_min_silence,
        endpointing_min_delay_s=min_delay,
        endpointing_max_delay_s=max_delay,
        noise_suppression=_bool(env, "VOICEPOOL_NOISE_SUPPRESSION", True),
        echo_cancellation=_bool(env, "VOICEPOOL_ECHO_CANCELLATION", True),
        executor=_choice(env, "VOICEPOOL_JOB_EXECUTOR", "process", EXECUTORS),
        log_level=_log_level(env),
        stt_grammar=(env.get("VOICEPOOL_STT_GRAMMAR") or "").strip() or None,
        stt_second_pass=_bool(env, "VOICEPOOL_STT_SECOND_PASS", True),
        llama_model_path=llama_path,
        dtmf_menu=menu,
        transfer_to=transfer_to,
        warm_transfer_to=warm_transfer_to,
        sip_outbound_trunk=(env.get(contract.ENV_SIP_OUTBOUND_TRUNK) or "").strip() or None,
        allowed_destinations=destinations,
        tts_cache=_int(env, "VOICEPOOL_TTS_CACHE", 64, 0),
        tts_cache_dir=env.get("VOICEPOOL_TTS_CACHE_DIR"),
        dtmf_inter_digit_timeout_s=_float(env, contract.ENV_DTMF_INTER_DIGIT_TIMEOUT, 5.0),
        idle_timeout_s=_float(env, contract.ENV_IDLE_TIMEOUT, 0.0),
        max_call_s=_float(env, contract.ENV_MAX_CALL, 0.0),
        agent_join_timeout_s=max(1.0, _float(env, "VOICEPOOL_AGENT_JOIN_TIMEOUT", 30.0)),
        process_start_timeout_s=max(1.0, _float(env, "VOICEPOOL_PROCESS_START_TIMEOUT", 60.0)),
        mask_phone_numbers=_bool(env, contract.ENV_MASK_PHONE_NUMBERS, True),
        log_transcripts=_bool(env, contract.ENV_LOG_TRANSCRIPTS, False),
        outbound_greeting=env.get(contract.ENV_OUTBOUND_GREETING, DEFAULT_OUTBOUND_GREETING),
        ringing_timeout_s=max(1.0, _float(env, contract.ENV_SIP_RINGING_TIMEOUT, 30.0)),
        stt_chain=stt_chain,
        llm_chain=llm_chain,
        tts_chain=tts_chain,
        llm_first_token_timeout_s=_positive(env, "VOICEPOOL_LLM_FIRST_TOKEN_TIMEOUT", 2.5),
        provider_timeout_s=_positive(env, "VOICEPOOL_PROVIDER_TIMEOUT", 5.0),
        llama_threads=_int(env, "VOICEPOOL_LLAMA_THREADS", 1, 1),
        dialog_path=(env.get("VOICEPOOL_DIALOG") or "").strip() or None,
        dialog_yaml=(env.get("VOICEPOOL_DIALOG_YAML") or "").strip() or None,
        tts_format=_choice(env, "VOICEPOOL_TTS_FORMAT", "mp3", TTS_FORMATS),
        echo_delay_ms=_int(env, "VOICEPOOL_ECHO_DELAY_MS", 120, 0),
        auto_gain_control=_bool(env, "VOICEPOOL_AUTO_GAIN_CONTROL", False),
        echo_gate_db=_float(env, "VOICEPOOL_ECHO_GATE_DB", 8.0),
        echo_gate_hold_s=_float(env, "VOICEPOOL_ECHO_GATE_HOLD", 0.3),
        interruption_min_duration_s=_float(env, "VOICEPOOL_INTERRUPTION_MIN_DURATION", 0.05),
        vad_activation=_fraction(env, "VOICEPOOL_VAD_ACTIVATION", 0.5),
        vad_min_speech_s=_float(env, "VOICEPOOL_VAD_MIN_SPEECH", 0.05),
        early_barge_in=_bool(env, "VOICEPOOL_EARLY_BARGE_IN", True),
        early_barge_in_hold_s=_positive(env, "VOICEPOOL_EARLY_BARGE_IN_HOLD", 0.3),
        preemptive_tts=_bool(env, "VOICEPOOL_PREEMPTIVE_TTS", True),
        tts_threads=_int(env, "VOICEPOOL_TTS_THREADS", 1, 0),
        input_frame_ms=_frame_ms(env, "VOICEPOOL_INPUT_FRAME_MS", 20),
        sync_transcription=_bool(env, "VOICEPOOL_SYNC_TRANSCRIPTION", False),
        eot_threshold=_fraction(env, "VOICEPOOL_EOT_THRESHOLD", 0.5),
        stt_threads=_int(env, "VOICEPOOL_STT_THREADS", 1, 1),
        hang_up_after_greeting=announce,
    )
