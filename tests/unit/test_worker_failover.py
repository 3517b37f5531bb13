"""Provider chains: config parsing, the OpenAI plugins' request URLs, and failover bookkeeping.

The URL tests build the real livekit-plugins-openai objects and ask their openai client to
construct the request it would send (nothing is sent). The failover tests drive livekit-agents'
real ``FallbackAdapter`` over two in-process LLMs, one of which fails or stalls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from livekit.agents import APIConnectionError, APIStatusError, llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from openai._models import FinalRequestOptions
from voicepool_worker import config, providers
from voicepool_worker.agents import receptionist
from voicepool_worker.agents.receptionist import resilience
from voicepool_worker.config import ConfigError
from voicepool_worker.providers.failover import FailoverMonitor, latency_of, next_available
from voicepool_worker.runtime.loader import DEFAULT_AGENT
from voicepool_worker.runtime.server import preload_modules

from .conftest import LIVEKIT_ENV as BASE

OPENAI_ALL = {
    **BASE,
    "VOICEPOOL_STT": "openai",
    "VOICEPOOL_LLM": "openai",
    "VOICEPOOL_TTS": "openai",
    "OPENAI_API_KEY": "sk-test",
}


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield


def request_url(instance: Any, path: str) -> str:
    client = instance._client  # the plugin's openai.AsyncClient
    return str(client._build_request(FinalRequestOptions.construct(method="post", url=path)).url)


# -- the base URL -----------------------------------------------------------------------------


def test_no_base_url_means_the_public_endpoint_for_every_stage() -> None:
    """The old ``base_url=ep.base_url or ""`` made every STT request URL relative."""
    cfg = config.load(OPENAI_ALL)
    assert cfg.stt_openai is not None and cfg.stt_openai.base_url is None
    stt = providers.build_stt(cfg)
    llm_ = providers.build_llm(cfg)
    tts = providers.build_tts(cfg)
    assert request_url(stt, "/audio/transcriptions") == (
        "https://api.openai.com/v1/audio/transcriptions"
    )
    assert request_url(llm_, "/chat/completions") == "https://api.openai.com/v1/chat/completions"
    assert request_url(tts, "/audio/speech") == "https://api.openai.com/v1/audio/speech"
    assert "base_url" not in providers.openai_kwargs(cfg.stt_openai)


def test_an_empty_base_url_is_what_broke_it() -> None:
    import openai

    broken = openai.AsyncClient(api_key="k", base_url="")
    url = broken._build_request(FinalRequestOptions.construct(method="post", url="/x")).url
    assert not url.is_absolute_url


def test_per_stage_and_shared_base_urls() -> None:
    cfg = config.load(
        {
            **OPENAI_ALL,
            "VOICEPOOL_OPENAI_BASE_URL": "http://127.0.0.1:9000/v1",
            "VOICEPOOL_STT_BASE_URL": "http://127.0.0.1:9001/v1/",
        }
    )
    assert request_url(providers.build_stt(cfg), "/audio/transcriptions") == (
        "http://127.0.0.1:9001/v1/audio/transcriptions"
    )
    assert request_url(providers.build_tts(cfg), "/audio/speech") == (
        "http://127.0.0.1:9000/v1/audio/speech"
    )


# -- chains in the config ---------------------------------------------------------------------


def test_ordered_chains() -> None:
    cfg = config.load(
        {
            **BASE,
            "VOICEPOOL_LLM": "openai, llama",
            "VOICEPOOL_TTS": "piper,espeak",
            "OPENAI_API_KEY": "k",
        }
    )
    assert cfg.llm_chain == ("openai", "llama") and cfg.llm == "openai"
    assert cfg.tts_chain == ("piper", "espeak") and cfg.stt_chain == ("whisper",)
    assert cfg.llm_openai is not None and cfg.tts_openai is None
    assert "livekit.plugins.openai" in preload_modules(cfg, receptionist.app, DEFAULT_AGENT)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOICEPOOL_LLM": "openai,gpt5"}, "VOICEPOOL_LLM='gpt5' is not one of"),
        ({"VOICEPOOL_LLM": "rules,,llama"}, "has an empty entry"),
        ({"VOICEPOOL_TTS": "piper,piper"}, "names a provider twice"),
        ({"VOICEPOOL_LLM": "llama,openai"}, "VOICEPOOL_LLM=openai needs an API key"),
        ({"VOICEPOOL_LLM_FIRST_TOKEN_TIMEOUT": "0"}, "must be > 0"),
        ({"VOICEPOOL_LLAMA_THREADS": "0"}, "must be >= 1"),
    ],
)
def test_bad_chains_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load({**BASE, **env})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_chain_builds_livekits_fallback_adapter() -> None:
    cfg = config.load({**BASE, "VOICEPOOL_LLM": "openai,rules", "OPENAI_API_KEY": "k"})
    adapter = providers.build_llm(cfg)
    assert isinstance(adapter, llm.FallbackAdapter)
    assert providers.name_of(adapter) == "openai,rules"
    assert [providers.name_of(i) for i in providers.instances_of(adapter)] == ["openai", "rules"]
    assert adapter._attempt_timeout == cfg.llm_first_token_timeout_s


# -- failover bookkeeping ---------------------------------------------------------------------


def test_next_available_skips_the_failed_and_the_down() -> None:
    names = ["openai", "llama", "rules"]
    assert next_available(names, [False, True, True], 0) == "llama"
    assert next_available(names, [False, False, True], 1) == "rules"
    assert next_available(names, [False, False, False], 2) == "none"


def test_latency_of_each_stage() -> None:
    class M:
        ttft, ttfb, duration = 0.25, 0.1, 0.0

    assert latency_of("llm", M()) == 0.25 and latency_of("tts", M()) == 0.1
    assert latency_of("stt", M()) is None  # a streaming STT has no request time


class ScriptedLLM(llm.LLM[Any]):
    """Answers with ``text``, or fails (``fail``), or stalls before the first token."""

    def __init__(self, text: str, *, fail: str | None = None, stall_s: float = 0.0) -> None:
        super().__init__()
        self.text, self.fail, self.stall_s = text, fail, stall_s

    def chat(self, *, chat_ctx: llm.ChatContext, tools: Any = None, **kw: Any) -> llm.LLMStream:
        conn = kw.get("conn_options", DEFAULT_API_CONNECT_OPTIONS)
        return _Stream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn)


class _Stream(llm.LLMStream):
    async def _run(self) -> None:
        owner = self._llm
        assert isinstance(owner, ScriptedLLM)
        if owner.fail in ("401", "404"):  # a bad key; a model the server does not know
            msg = "invalid api key" if owner.fail == "401" else "model 'gpt-9' not found"
            raise APIStatusError(msg, status_code=int(owner.fail), retryable=False)
        if owner.fail:
            raise APIConnectionError(owner.fail, retryable=False)
        if owner.stall_s:
            try:
                await asyncio.wait_for(asyncio.sleep(owner.stall_s), self._conn_options.timeout)
            except TimeoutError:
                raise APIConnectionError("no first token", retryable=False) from None
        self._event_ch.send_nowait(
            llm.ChatChunk(id="x", delta=llm.ChoiceDelta(role="assistant", content=owner.text))
        )


async def ask(model: llm.LLM[Any]) -> str:
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="what are your opening hours")
    out = ""
    async with model.chat(
        chat_ctx=ctx, conn_options=APIConnectOptions(max_retry=0, timeout=0.5)
    ) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                out += chunk.delta.content
    return out


@pytest.mark.parametrize(
    "failure", [{"fail": "401"}, {"fail": "404"}, {"fail": "refused"}, {"stall_s": 30.0}]
)
async def test_a_failed_or_late_primary_is_skipped_counted_and_probed(
    failure: dict[str, Any],
) -> None:
    primary = providers._named(ScriptedLLM("primary", **failure), "openai")
    backup = providers._named(ScriptedLLM("backup"), "llama")
    adapter = providers._named(
        llm.FallbackAdapter([primary, backup], attempt_timeout=0.3, max_retry_per_llm=0),
        "openai,llama",
    )
    failovers: list[tuple[str, str, str]] = []
    monitor = FailoverMonitor(
        "llm", adapter, on_failover=lambda *a: failovers.append(a), on_latency=lambda *a: None
    )
    assert monitor.names == ["openai", "llama"]
    assert await ask(adapter) == "backup"
    assert failovers == [("llm", "openai", "llama")]
    assert await ask(adapter) == "backup"  # still down: the backup answers straight away
    assert failovers == [("llm", "openai", "llama")]

    # it comes back: a background probe (started by a turn the backup serves) sees it
    primary.fail, primary.stall_s = None, 0.0
    for _ in range(20):
        assert await ask(adapter) == "backup"
        await asyncio.sleep(0.1)
        if adapter._status[0].available:
            break
    assert await ask(adapter) == "primary"


def test_apology_is_rate_limited() -> None:
    a = resilience.Apology(interval_s=4.0)
    assert a.due(100.0) and not a.due(101.0) and a.due(104.5)


def test_reason_names_the_http_status() -> None:
    err = APIStatusError("Incorrect API key provided", status_code=401, retryable=False)
    assert resilience.reason_of(err).startswith("HTTP 401:")
    assert resilience.reason_of(TimeoutError()) == "TimeoutError"
