"""The llama.cpp engine process: ``python -m concilium.llm.backends._engine '<options json>'``.

Runs apart from the server so that (1) its Python sampling loop never competes with the
event loop for the GIL, (2) a crash in native code (a corrupt GGUF, an out-of-memory)
kills this process, not the server, and (3) a generation can always be stopped.

Protocol: one JSON object per line. Requests on stdin:
  ``{"op": "generate", "id", "model_path", "model", "messages", "kwargs"}``
  ``{"op": "cancel", "id"}``, ``{"op": "loaded", "id"}``, ``{"op": "shutdown"}``.
Replies on stdout: ``{"ready": true}`` once, then per request ``{"id", "text"}`` for each
token and finally ``{"id", "end": {finish_reason, prompt_tokens, completion_tokens}}`` or
``{"id", "error": "..."}``; ``loaded`` is answered at once, even during a generation, with
``{"id", "loaded": [model names, least recently used first]}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, BinaryIO

from threadpoolctl import threadpool_limits

__all__ = ["main"]


@contextlib.contextmanager
def _model_defaults(*, extra_buffers: bool) -> Iterator[None]:
    """llama-cpp-python's ``Llama`` has no argument for llama.cpp's ``use_extra_bufts``
    (weight repacking, AMX tiles): it starts from ``llama_model_default_params``, which
    this wraps while a model loads. Without extra buffers, AMX kernels are never used."""
    import llama_cpp.llama_cpp as bindings  # what llama_cpp.llama calls them through

    if extra_buffers:
        yield
        return
    name = "llama_model_default_params"
    original = getattr(bindings, name)

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    setattr(bindings, name, defaults)
    try:
        yield
    finally:
        setattr(bindings, name, original)


def extra_buffers_safe() -> bool:
    """Extra buffers (repacked weights) are safe unless this llama.cpp has AMX kernels and
    the CPU advertises AMX: a virtual machine may, and fault on the first tile instruction."""
    import llama_cpp

    if "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode(errors="replace"):
        return True
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return "amx_tile" not in cpuinfo.read()
    except OSError:
        return True


class _Logprobs:
    """A logits processor that records the log-probability of each sampled token.

    llama.cpp gives log-probabilities only to models loaded with ``logits_all`` (a
    context-sized logits buffer: gigabytes for a large vocabulary). The processor sees
    each step's logits instead; the token sampled from them is the last input of the
    next step, so values arrive one token late and the final token's is not known.
    """

    def __init__(self) -> None:
        import numpy as np

        self.np = np
        self.previous: Any = None
        self.values: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        np = self.np
        if self.previous is not None and len(input_ids):
            self.values.append(float(self.previous[int(input_ids[-1])]))
        logits = scores.astype(np.float64)
        top = logits.max()
        self.previous = logits - top - np.log(np.exp(logits - top).sum())
        return scores

    def drain(self) -> list[float]:
        values, self.values = self.values, []
        return values


class _Engine:
    def __init__(self, options: dict[str, Any], out: BinaryIO) -> None:
        self.options = options
        self.out = out
        self.out_lock = threading.Lock()
        self.loaded: OrderedDict[str, Any] = OrderedDict()
        #: The names in ``loaded``, replaced whole on each change: the reader thread
        #: answers from it while the generating thread changes ``loaded``.
        self.loaded_names: tuple[str, ...] = ()
        self.cancelled: set[int] = set()
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def emit(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, ensure_ascii=False) + "\n").encode()
        with self.out_lock:
            self.out.write(data)
            self.out.flush()

    def read_requests(self) -> None:
        """Reader thread: queue work, note cancellations as soon as they arrive."""
        for line in sys.stdin.buffer:
            message = json.loads(line)
            op = message.get("op")
            if op == "cancel":
                self.cancelled.add(message["id"])
            elif op == "loaded":
                self.emit({"id": message["id"], "loaded": list(self.loaded_names)})
            elif op == "generate":
                self.jobs.put(message)
            elif op == "shutdown":
                break
        self.jobs.put(None)  # shutdown, or the server went away

    def load(self, name: str, path: str, n_ctx: int) -> Any:
        llm = self.loaded.get(name)
        if llm is not None:
            self.loaded.move_to_end(name)
            self.loaded_names = tuple(self.loaded)
            return llm
        from llama_cpp import Llama

        while len(self.loaded) >= self.options["max_loaded_models"]:
            _, old = self.loaded.popitem(last=False)
            self.loaded_names = tuple(self.loaded)
            old.close()
        extra = self.options.get("extra_buffers")
        with _model_defaults(extra_buffers=extra_buffers_safe() if extra is None else extra):
            llm = Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=self.options["n_threads"],
                n_batch=self.options["n_batch"],
                use_mlock=self.options["use_mlock"],
                flash_attn=self.options["flash_attn"],
                verbose=False,
            )
        self.loaded[name] = llm
        self.loaded_names = tuple(self.loaded)
        return llm

    def generate(self, job: dict[str, Any]) -> None:
        ident = job["id"]
        if ident in self.cancelled:
            self.cancelled.discard(ident)
            self.emit(
                {
                    "id": ident,
                    "end": {
                        "finish_reason": "cancelled",
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                    },
                }
            )
            return
        try:
            llm = self.load(job["model"], job["model_path"], job["n_ctx"])
            kwargs = dict(job["kwargs"])
            tracker = _Logprobs() if kwargs.pop("logprobs", False) else None
            if tracker is not None:
                from llama_cpp import LogitsProcessorList

                kwargs["logits_processor"] = LogitsProcessorList([tracker])
            stream = llm.create_chat_completion(messages=job["messages"], stream=True, **kwargs)
            produced = 0
            finish: str | None = None
            try:
                for part in stream:
                    if ident in self.cancelled:
                        finish = "cancelled"
                        break
                    choice = part["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        produced += 1
                        message: dict[str, Any] = {"id": ident, "text": text}
                        if tracker is not None:
                            message["logprobs"] = tracker.drain()
                        self.emit(message)
                    finish = choice.get("finish_reason") or finish
            finally:
                stream.close()
            self.emit(
                {
                    "id": ident,
                    "end": {
                        "finish_reason": finish or "stop",
                        "prompt_tokens": max(llm.n_tokens - produced, 0),
                        "completion_tokens": produced,
                    },
                }
            )
        except Exception as exc:  # reported to the server, which maps it to BackendError
            self.emit({"id": ident, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.cancelled.discard(ident)

    def run(self) -> None:
        threading.Thread(target=self.read_requests, name="engine-reader", daemon=True).start()
        self.emit({"ready": True})
        while (job := self.jobs.get()) is not None:
            self.generate(job)
        for llm in self.loaded.values():
            llm.close()


def main() -> None:
    # Stopped by its owner (``shutdown``, or the end of stdin), never by a terminal's
    # Ctrl-C meant for the command that started it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    options = json.loads(sys.argv[1])
    # llama.cpp has its own threads; numpy's BLAS (llama-cpp-python's sampling uses numpy)
    # would otherwise keep a spinning thread per core beside them.
    threadpool_limits(1, user_api="blas")
    # The protocol owns the original stdout; anything native code prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _Engine(options, protocol).run()


if __name__ == "__main__":
    main()
