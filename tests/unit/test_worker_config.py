"""Worker configuration from the pod environment: validated up front, one-line errors."""

from __future__ import annotations

import pytest
from voicepool_worker import config
from voicepool_worker.agents import receptionist
from voicepool_worker.config import ConfigError
from voicepool_worker.runtime.loader import DEFAULT_AGENT
from voicepool_worker.runtime.server import preload_modules

from .conftest import LIVEKIT_ENV as BASE


def test_defaults_are_the_embedded_offline_providers() -> None:
    cfg = config.load(BASE)
    assert (cfg.stt, cfg.llm, cfg.tts) == ("whisper", "rules", "piper")
    assert cfg.capacity == 1 and cfg.http_port == 8081 and cfg.log_level == "INFO"
    assert not cfg.pod_reporting and cfg.greeting and cfg.system_prompt
    assert "piper" in preload_modules(
        cfg, receptionist.app, DEFAULT_AGENT
    ) and "livekit.plugins.openai" not in preload_modules(cfg, receptionist.app, DEFAULT_AGENT)
    # the voice-loop levers the benchmark kept (docs/worker.md, "Figures")
    assert cfg.vad_min_silence_s == 0.25 and cfg.input_frame_ms == 20
    assert cfg.interruption_min_duration_s == 0.05 and cfg.vad_activation == 0.5
    assert not cfg.sync_transcription
    assert cfg.early_barge_in and cfg.early_barge_in_hold_s == 0.3
    assert cfg.agent_join_timeout_s == 30.0 and cfg.tts_cache_dir is None
    late = config.load({**BASE, "VOICEPOOL_AGENT_JOIN_TIMEOUT": "90"})
    assert late.agent_join_timeout_s == 90.0
    assert config.load({**BASE, "VOICEPOOL_AGENT_JOIN_TIMEOUT": "0"}).agent_join_timeout_s == 1.0
    assert cfg.process_start_timeout_s == 60.0
    slow = config.load({**BASE, "VOICEPOOL_PROCESS_START_TIMEOUT": "180"})
    assert slow.process_start_timeout_s == 180.0  # an agent whose prewarm loads a large model
    assert (
        preload_modules(cfg, receptionist.app, DEFAULT_AGENT)[-1]
        == "voicepool_worker.agents.receptionist.preload_models"
    )


def test_pod_env() -> None:
    cfg = config.load(
        {
            **BASE,
            "POD_NAME": "w-0",
            "POD_NAMESPACE": "ns",
            "VOICEPOOL_SESSIONS_PER_POD": "4",
            "VOICEPOOL_DRAIN_TIMEOUT_SECONDS": "30",
            "VOICEPOOL_AGENT_NAME": "receptionist",
            "VOICEPOOL_LOG_LEVEL": "warning",
        }
    )
    assert cfg.pod_reporting and cfg.pod_namespace == "ns"
    assert (cfg.capacity, cfg.drain_timeout_s, cfg.agent_name) == (4, 30, "receptionist")
    assert cfg.log_level == "WARN"


def test_openai_endpoints_take_the_key_from_env() -> None:
    cfg = config.load(
        {
            **BASE,
            "VOICEPOOL_STT": "openai",
            "VOICEPOOL_LLM": "openai",
            "VOICEPOOL_TTS": "openai",
            "VOICEPOOL_OPENAI_API_KEY": "sk-shared",
            "VOICEPOOL_OPENAI_BASE_URL": "http://llm.internal/v1",
            "VOICEPOOL_LLM_API_KEY": "sk-llm",
            "VOICEPOOL_LLM_MODEL": "qwen2.5-7b-instruct",
        }
    )
    assert cfg.llm_openai is not None and cfg.llm_openai.api_key == "sk-llm"
    assert cfg.llm_openai.model == "qwen2.5-7b-instruct"
    assert cfg.stt_openai is not None and cfg.stt_openai.api_key == "sk-shared"
    assert cfg.tts_openai is not None and cfg.tts_openai.base_url == "http://llm.internal/v1"
    assert "livekit.plugins.openai" in preload_modules(cfg, receptionist.app, DEFAULT_AGENT)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEKIT_URL": ""}, "missing required environment variable(s): LIVEKIT_URL"),
        ({"LIVEKIT_URL": "localhost:7880"}, "must start with ws://"),
        ({"VOICEPOOL_TTS": "polly"}, "VOICEPOOL_TTS='polly' is not one of"),
        ({"VOICEPOOL_LLM": "openai"}, "needs an API key"),
        ({"VOICEPOOL_SESSIONS_PER_POD": "0"}, "must be >= 1"),
        ({"VOICEPOOL_DRAIN_TIMEOUT_SECONDS": "soon"}, "is not an integer"),
        ({"VOICEPOOL_NOISE_SUPPRESSION": "maybe"}, "is not a boolean"),
        ({"VOICEPOOL_LOG_LEVEL": "LOUD"}, "VOICEPOOL_LOG_LEVEL='LOUD'"),
        (
            {"VOICEPOOL_ENDPOINTING_MIN_DELAY": "2", "VOICEPOOL_ENDPOINTING_MAX_DELAY": "1"},
            "MAX_DELAY must be >=",
        ),
        ({"VOICEPOOL_DTMF_MENU": "1 opening hours"}, "VOICEPOOL_DTMF_MENU: '1 opening hours'"),
        ({"VOICEPOOL_TRANSFER_TO": "+15550100"}, "use tel:+<number> or sip:user@host"),
        ({"VOICEPOOL_INPUT_FRAME_MS": "25"}, "must be a multiple of 10 ms"),
        ({"VOICEPOOL_INPUT_FRAME_MS": "5"}, "must be >= 10"),
        ({"VOICEPOOL_WARM_TRANSFER_TO": "sip:desk@pbx"}, "is not an E.164 number"),
        ({"VOICEPOOL_EARLY_BARGE_IN": "soon"}, "VOICEPOOL_EARLY_BARGE_IN='soon' is not a boolean"),
        ({"VOICEPOOL_EARLY_BARGE_IN_HOLD": "0"}, "VOICEPOOL_EARLY_BARGE_IN_HOLD"),
        (
            {"VOICEPOOL_VAD_ACTIVATION": "1.5"},
            "VOICEPOOL_VAD_ACTIVATION=1.5 must be between 0 and 1",
        ),
    ],
)
def test_bad_values_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load({**BASE, **env})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_outbound_destinations_are_an_allow_list_of_prefixes() -> None:
    assert config.load(BASE).allowed_destinations == ()  # unset: no outbound call at all
    cfg = config.load({**BASE, "VOICEPOOL_SIP_ALLOWED_DESTINATIONS": "+1555, +44 20"})
    assert cfg.allowed_destinations == ("+1555", "+4420")
    with pytest.raises(ConfigError, match="VOICEPOOL_SIP_ALLOWED_DESTINATIONS: '1555'"):
        config.load({**BASE, "VOICEPOOL_SIP_ALLOWED_DESTINATIONS": "1555"})


def test_an_announcement_line_says_its_greeting_and_hangs_up() -> None:
    cfg = config.load(
        {
            **BASE,
            "VOICEPOOL_GREETING": "The number you have dialled is not in service.",
            "VOICEPOOL_HANG_UP_AFTER_GREETING": "true",
        }
    )
    assert cfg.hang_up_after_greeting and not config.load(BASE).hang_up_after_greeting
    with pytest.raises(ConfigError, match="needs a VOICEPOOL_GREETING"):
        config.load({**BASE, "VOICEPOOL_GREETING": "", "VOICEPOOL_HANG_UP_AFTER_GREETING": "1"})
