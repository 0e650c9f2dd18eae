"""llama.cpp on this machine: GGUF models from the catalog or a path.

Generation runs in a child process (``_engine``), started on first use and restarted if
it dies. Measured reason: in-process, llama-cpp-python's per-token Python code and the
event loop share one GIL, which cost ~6% of generation speed on two cores; out of process
the server's work per token is reading one line from a pipe. The child also contains
native crashes. Generations run one at a time, in arrival order: a CPU has no spare
cores for two. Token counting (to fit prompts) stays here, on a vocabulary-only model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import structlog
from pydantic import Field

from concilium.errors import BackendError, ModelNotFound, ModelNotInstalled
from concilium.llm import catalog
from concilium.llm.base import (
    Backend,
    ChatMessage,
    ChatRequest,
    Chunk,
    GenerationParams,
    ModelInfo,
    OptionsModel,
)

__all__ = ["EmbeddedBackend", "EmbeddedOptions"]

log = structlog.get_logger(__name__)
_MESSAGE_OVERHEAD = 6  # role markers and separators of chat templates
_ENGINE_START_TIMEOUT = 120.0
#: The engine answers ``loaded`` from its reader thread: a slower answer means it is stuck.
_LOADED_TIMEOUT = 1.0


class EmbeddedOptions(OptionsModel):
    n_ctx: int = Field(4096, ge=512, description="Context window allocated per loaded model.")
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads; default: every core this process may run on."
    )
    n_batch: int = Field(512, ge=8, description="Prompt-processing batch size.")
    max_loaded_models: int = Field(1, ge=1, description="Models kept in memory (LRU).")
    use_mlock: bool = Field(False, description="Lock model pages in RAM.")
    flash_attn: bool = Field(False, description="Use flash attention kernels.")
    extra_buffers: Literal["auto", "on", "off"] = Field(
        "auto",
        description="llama.cpp's extra weight buffers (repacking for faster CPU kernels, "
        "Intel AMX). auto: on, except where llama.cpp was built with AMX kernels and the CPU "
        "says it has AMX (virtual machines often advertise it and fault on its first use; "
        "`make install` builds llama.cpp without AMX, so its repacked kernels stay on).",
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories whose .gguf files may be named by path (the models dir always).",
    )


def _usable_cpus() -> int:
    """The cores this process may run on (a container's or a taskset's share, not the
    machine's): more threads than that make llama.cpp's workers wait on each other."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _extra_buffers(choice: str) -> bool | None:
    """on/off, or None: the engine decides (``_engine.extra_buffers_safe``)."""
    return None if choice == "auto" else choice == "on"


class _EngineProcess:
    """The child process and the requests waiting on it."""

    def __init__(
        self, proc: asyncio.subprocess.Process, observe: Callable[[dict[str, Any]], None]
    ) -> None:
        self.proc = proc
        self.observe = observe
        self.pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.reader = asyncio.create_task(self._read(), name="engine-reader")

    @classmethod
    async def start(
        cls, options: dict[str, Any], observe: Callable[[dict[str, Any]], None]
    ) -> _EngineProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "concilium.llm.backends._engine",
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C (SIGINT to the foreground group) is for
            # the command, which cancels the answer; the engine is stopped by its owner.
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(_ENGINE_START_TIMEOUT):
                ready = await proc.stdout.readline()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackendError("llama.cpp engine did not start", retryable=True) from None
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        if not ready:
            code = await proc.wait()
            raise BackendError(f"llama.cpp engine exited at start (code {code})", retryable=True)
        return cls(proc, observe)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                message = json.loads(line)
                self.observe(message)  # also after the requester left (a cancelled end)
                queue = self.pending.get(message.get("id", 0))
                if queue is not None:
                    queue.put_nowait(message)
        except Exception:
            # An engine that breaks its protocol cannot be trusted with the next request.
            log.exception("engine_protocol_error")
            self.proc.kill()
        finally:
            code = await self.proc.wait()
            for queue in self.pending.values():
                queue.put_nowait({"crashed": code})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        if self.proc.stdin.is_closing():
            return
        self.proc.stdin.write((json.dumps(message, ensure_ascii=False) + "\n").encode())

    async def generate(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        ident = next(self.ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending[ident] = queue
        finished = False
        try:
            self._send({"op": "generate", "id": ident, **job})
            assert self.proc.stdin is not None
            try:
                await self.proc.stdin.drain()
            except ConnectionError as exc:
                raise BackendError("llama.cpp engine stopped", retryable=True) from exc
            while True:
                message = await queue.get()
                finished = "text" not in message
                yield message
                if finished:
                    return
        finally:
            del self.pending[ident]
            if not finished:
                self._send({"op": "cancel", "id": ident})

    async def loaded(self) -> list[str]:
        """The models the engine holds in memory, least recently used first."""
        ident = next(self.ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending[ident] = queue
        try:
            self._send({"op": "loaded", "id": ident})
            message = await queue.get()
        finally:
            del self.pending[ident]
        return [str(name) for name in message.get("loaded", ())]  # none if it crashed

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self._send({"op": "shutdown"})
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class EmbeddedBackend(Backend):
    supports_json_schema = True
    local = True
    default_context_length = 4096
    options_model: ClassVar[type[OptionsModel]] = EmbeddedOptions
    options: EmbeddedOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: _EngineProcess | None = None
        self._engine_lock: asyncio.Lock | None = None
        self._vocab: dict[str, Any] = {}
        self._paths: dict[str, Path] = {}
        self._vocab_lock = threading.Lock()
        self._closed = False
        #: Counters for observability.
        self.tokens_generated = 0
        self.generations_cancelled = 0
        self.engine_starts = 0

    # -- models -------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self.settings.resolved_models_dir

    def serves(self, model: str) -> bool:
        if model in catalog.CATALOG or super().serves(model):
            return True
        if not model.endswith(".gguf"):
            return False
        # A path names a file only inside allowed directories: clients must not be able
        # to make the server open arbitrary files.
        try:
            path = Path(model).expanduser().resolve()
            allowed = [self.models_dir, *self.options.model_dirs]
            return path.is_file() and any(path.is_relative_to(d.resolve()) for d in allowed)
        except (OSError, RuntimeError, ValueError):  # unreadable, too long, unknown ~user, NUL
            return False

    def allows(self, model: str) -> bool:
        return self.serves(model)

    def _require(self, model: str) -> None:
        if not self.serves(model):
            raise ModelNotFound(f"model {model!r} is not served by backend {self.name!r}")

    def context_length(self, model: str) -> int:
        entry = catalog.CATALOG.get(model)
        trained = entry.context_length if entry else self.options.n_ctx
        return min(self.options.n_ctx, trained, self.config.context_length or self.options.n_ctx)

    async def list_models(self) -> list[ModelInfo]:
        def installed(entry: catalog.CatalogModel) -> bool:
            return catalog.is_assembled(self.models_dir, entry) or catalog.packages_installed(entry)

        infos = [
            ModelInfo(
                id=entry.name,
                backend=self.name,
                context_length=self.context_length(entry.name),
                installed=await asyncio.to_thread(installed, entry),
                description=entry.description,
            )
            for entry in catalog.CATALOG.values()
        ]
        infos += [
            ModelInfo(id=m, backend=self.name, context_length=self.context_length(m))
            for m in self.config.models
            if m not in catalog.CATALOG
        ]
        return infos

    def _installed(self, name: str) -> bool:
        entry = catalog.CATALOG.get(name)
        if entry is None:
            return Path(name).expanduser().is_file()
        return catalog.is_assembled(self.models_dir, entry) or catalog.packages_installed(entry)

    async def check(self, model: str | None = None) -> None:
        name = model or self.settings.chat.default_model
        if not await asyncio.to_thread(self._installed, name):
            raise ModelNotInstalled(f"{name!r} is not installed: `concilium models pull {name}`")

    # -- tokens -------------------------------------------------------------------------

    def _vocab_for(self, model: str) -> Any:
        with self._vocab_lock:
            vocab = self._vocab.get(model)
            if vocab is None:
                # The model wrapper without a context: a vocab-only Llama would still
                # create a context (and warn about it on stderr).
                import llama_cpp
                from llama_cpp._internals import LlamaModel

                path = catalog.locate_model(self.models_dir, model)
                params = llama_cpp.llama_model_default_params()
                params.vocab_only = True
                try:
                    vocab = LlamaModel(path_model=str(path), params=params, verbose=False)
                except ValueError as exc:  # llama.cpp's way of saying "not a model I can read"
                    raise BackendError(f"llama.cpp: {exc}", retryable=False) from exc
                self._vocab[model] = vocab
            return vocab

    def _count(self, model: str, messages: Sequence[ChatMessage]) -> list[int]:
        vocab = self._vocab_for(model)
        with self._vocab_lock:
            return [
                len(vocab.tokenize(m.content.encode(), False, False)) + _MESSAGE_OVERHEAD
                for m in messages
            ]

    async def token_counts(self, model: str, messages: Sequence[ChatMessage]) -> list[int]:
        self._require(model)
        return await asyncio.to_thread(self._count, model, messages)

    # -- generation ---------------------------------------------------------------------

    @staticmethod
    def _kwargs(params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for key in (
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ):
            value = getattr(params, key)
            if value is not None:
                kwargs[key] = value
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.logprobs:
            kwargs["logprobs"] = True
        fmt = params.response_format
        if fmt is not None:
            kwargs["response_format"] = (
                {"type": "json_object", "schema": fmt.schema}
                if fmt.schema
                else {"type": "json_object"}
            )
        return kwargs

    async def _running_engine(self) -> _EngineProcess:
        if self._engine_lock is None:
            self._engine_lock = asyncio.Lock()
        async with self._engine_lock:
            if self._engine is None or not self._engine.alive:
                if self._engine is not None:
                    log.warning(
                        "engine_restarting",
                        backend=self.name,
                        exit_code=self._engine.proc.returncode,
                    )
                    await self._engine.stop()
                opts = self.options
                self._engine = await _EngineProcess.start(
                    {
                        "n_threads": opts.n_threads or _usable_cpus(),
                        "n_batch": opts.n_batch,
                        "max_loaded_models": opts.max_loaded_models,
                        "use_mlock": opts.use_mlock,
                        "flash_attn": opts.flash_attn,
                        "extra_buffers": _extra_buffers(opts.extra_buffers),
                    },
                    self._observe,
                )
                self.engine_starts += 1
            return self._engine

    async def loaded_models(self) -> list[str]:
        """Asks the engine, if it runs (it is not started for this)."""
        engine = self._engine
        if engine is None or not engine.alive:
            return []
        try:
            async with asyncio.timeout(_LOADED_TIMEOUT):
                return await engine.loaded()
        except TimeoutError:
            log.warning("engine_loaded_timeout", backend=self.name)
            return []

    def _observe(self, message: dict[str, Any]) -> None:
        if "text" in message:
            self.tokens_generated += 1
        elif message.get("end", {}).get("finish_reason") == "cancelled":
            self.generations_cancelled += 1

    async def preload(self, model: str) -> None:
        """Start the engine and load ``model`` now instead of on the first request."""
        request = ChatRequest(model, [ChatMessage("user", "hi")], GenerationParams(max_tokens=1))
        async for _ in self.stream_chat(request):
            pass

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        if self._closed:
            raise BackendError("backend is shut down", retryable=False)
        self._require(request.model)
        path = self._paths.get(request.model)
        if path is None:  # located (and assembled, verified) once, then remembered
            path = await asyncio.to_thread(catalog.locate_model, self.models_dir, request.model)
            self._paths[request.model] = path
        engine = await self._running_engine()
        job = {
            "model": request.model,
            "model_path": str(path),
            "n_ctx": self.context_length(request.model),
            "messages": [m.to_dict() for m in request.messages],
            "kwargs": self._kwargs(request.params),
        }
        async for message in engine.generate(job):
            text = message.get("text")
            if text is not None:
                yield Chunk(text=text, logprobs=tuple(message.get("logprobs", ())))
            elif "end" in message:
                end = message["end"]
                yield Chunk(
                    finish_reason=end["finish_reason"],
                    prompt_tokens=end["prompt_tokens"],
                    completion_tokens=end["completion_tokens"],
                )
            elif "error" in message:
                raise BackendError(f"llama.cpp: {message['error']}", retryable=False)
            else:
                raise BackendError(
                    f"llama.cpp engine stopped (exit code {message.get('crashed')})",
                    retryable=True,
                )

    async def aclose(self) -> None:
        self._closed = True
        if self._engine is not None:
            await self._engine.stop()
            self._engine = None
        with self._vocab_lock:
            for vocab in self._vocab.values():
                vocab.close()
            self._vocab.clear()
