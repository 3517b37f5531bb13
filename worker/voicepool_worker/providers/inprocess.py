"""The livekit-agents plugin surface of the providers that run inside the call process.

The rules and llama.cpp LLMs, and the piper and espeak-ng TTS, differ in what their streams do,
not in how livekit-agents asks for one: the framework's ``chat``/``synthesize`` signatures
live here once, and each provider names its stream class (``stream_type``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from livekit.agents import llm, tts
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)


class InProcessLLM(llm.LLM[Any]):
    """An LLM whose stream class does the work; tools are passed through to it."""

    stream_type: ClassVar[type[llm.LLMStream]]

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[Any] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return self.stream_type(
            self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


class InProcessTTS(tts.TTS[Any]):
    """A TTS that renders a whole text per request (``ChunkedStream``)."""

    stream_type: ClassVar[type[tts.ChunkedStream]]

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self.stream_type(tts=self, input_text=text, conn_options=conn_options)
