"""The booking example agent's model server, shared by every suite that runs that agent.

llama.cpp's OpenAI-compatible server with its function-calling chat format (``LlamaServer``),
started once per test session (the agents suite and the session-control suite both call the
booking agent) and warmed with one named tool call: the first one compiles the arguments'
grammar, which takes seconds a caller should not wait for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from voicepool_worker.providers.llama_llm import find_model

from .llm_server import ALIAS, LlamaServer

BOOKING = "booking_agent.agent:app"
#: The tests' model server prefills slowly: 1 thread on 2 cores shared with STT and TTS.
SLOW_CPU_DEADLINE = "45"


def model_path(name: str | None = None) -> str:
    """The worker's default GGUF (Qwen2.5-0.5B), or ``smollm2`` where speed beats quality."""
    assert importlib.util.find_spec("llama_cpp") is not None, (
        "llama-cpp-python is not installed: run `make build`"
    )
    path = find_model(name)
    assert path is not None, f"no GGUF model {name or ''} installed: run `make build`"
    return path


def start(log_dir: Path) -> LlamaServer:
    """The server, ready and warmed (the caller stops it)."""
    server = LlamaServer(model_path(), log_dir, chat_format="chatml-function-calling")
    try:
        server.wait_ready()
        tool = {
            "type": "function",
            "function": {
                "name": "find_free_slots",
                "parameters": {
                    "type": "object",
                    "properties": {"day": {"type": "string"}},
                    "required": ["day"],
                },
            },
        }
        server.chat(
            {
                "model": ALIAS,
                "messages": [{"role": "user", "content": "free on monday?"}],
                "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "find_free_slots"}},
            }
        )
    except BaseException:
        server.stop()
        raise
    return server


def booking_env(llm: LlamaServer) -> dict[str, str]:
    """What a pool running the booking agent sets (examples/agents/booking/pool.yaml)."""
    return {
        "VOICEPOOL_AGENT": BOOKING,
        "VOICEPOOL_LLM": "openai",
        "VOICEPOOL_LLM_BASE_URL": llm.base_url,
        "VOICEPOOL_LLM_API_KEY": llm.api_key,
        "VOICEPOOL_LLM_MODEL": ALIAS,
        "VOICEPOOL_LLM_FIRST_TOKEN_TIMEOUT": SLOW_CPU_DEADLINE,
    }
