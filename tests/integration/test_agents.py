"""Agents the runtime hosts, end to end on the real livekit-server (and the real apiserver):

- the example team agent (``examples/agents/booking``, ``VOICEPOOL_AGENT=booking_agent.agent:app``)
  answers a caller with its function tool's result, its LLM llama.cpp's own OpenAI-compatible
  server on loopback, and hangs up through call control when the caller says goodbye;
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from voicepool_devstack.testing import Environment

from .llm_server import ALIAS, LlamaServer
from .test_worker import call, start_worker, workers
from .test_worker_providers import model_path
from .worker_harness import WorkerProcess, agent_name

__all__ = ["workers"]  # the fixture, shared with test_worker

pytestmark = [pytest.mark.livekit]

BOOKING = "booking_agent.agent:app"
SLOTS_QUESTION = "Which slots are free on Tuesday?"
#: What the shipped calendar (examples/agents/booking/booking_agent/slots.json) has free then.
TUESDAY = ("9:30 AM", "2:15 PM")
#: The tests' model server prefills slowly: 1 thread on 2 cores shared with STT and TTS.
SLOW_CPU_DEADLINE = "45"


@pytest.fixture(scope="module")
def booking_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama.cpp's OpenAI-compatible server with its function-calling chat format, warmed with
    one named tool call (the first one compiles the arguments' grammar: seconds)."""
    server = LlamaServer(
        model_path(),
        tmp_path_factory.mktemp("llm"),
        chat_format="chatml-function-calling",
    )
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
        yield server
    finally:
        server.stop()


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


# -- the example team agent -------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_the_booking_agent_speaks_its_tools_result_and_hangs_up_on_goodbye(
    stack_env: Environment,
    tmp_path: Path,
    workers: list[WorkerProcess],
    booking_llm: LlamaServer,
) -> None:
    agent = agent_name()
    w = start_worker(stack_env, tmp_path, workers, agent=agent, extra=booking_env(booking_llm))
    room = f"book-{uuid.uuid4().hex[:6]}"
    async with call(stack_env, agent, room) as c:
        turn = await c.say(SLOTS_QUESTION, answer_timeout=90)
        assert turn.ttfw_ms is not None, f"the caller heard no answer\n{w.tail()}"
        assert turn.answer_seconds > 1.5, "the answer is a sentence, not a click"
        print(f"\ntime to first word of the tool's answer (caller side): {turn.ttfw_ms:.0f} ms")
        await c.say("Thank you, goodbye.", answer_timeout=90)  # the agent's goodbye
        w.wait_log(lambda line: line.get("msg") == "hanging up", 60, "the agent hanging up")

    tool = w.wait_log(
        lambda line: line.get("msg") == "tool called" and line.get("tool") == "find_free_slots",
        10,
        "the find_free_slots call",
    )
    assert (tool["day"], tuple(tool["slots"]), tool["room"]) == ("tuesday", TUESDAY, room), tool
    reply = w.wait_log(
        lambda line: line.get("msg") == "agent turn" and TUESDAY[0] in str(line.get("reply")),
        10,
        "the tool's answer spoken",
    )
    assert all(t in reply["reply"] for t in TUESDAY), reply
    assert reply["room"] == room and reply["participant"] == "caller"
    # the runtime took the latency record from the agent's session, without the agent's help
    assert {"llm_ttft", "tts_ttfb", "ttfw"} <= set(reply.get("latency") or {}), reply
    said = [str(line.get("transcript", "")) for line in w.msgs("user turn")]
    assert any("tuesday" in s.lower() for s in said), said
    assert w.find(lambda line: line.get("tool") == "end_call" and line.get("room") == room)
    assert any("Goodbye" in str(line.get("reply")) for line in w.msgs("agent turn")), w.tail()
    w.wait_log(lambda line: line.get("msg") == "session ended", 30, "session ended")
    assert (w.metric("voicepool_worker_time_to_first_word_seconds_count") or 0) >= 1
    assert w.metric('voicepool_worker_hangups_total{reason="caller"}') == 1.0
