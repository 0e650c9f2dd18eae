"""The embedded llama.cpp backend with the real SmolLM2-135M model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from concilium.errors import ModelNotFound
from concilium.events import Done, ErrorEvent, Event, Token, Usage
from concilium.llm.backends.embedded import EmbeddedBackend
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.services import Services, running_services

pytestmark = pytest.mark.model

COUNT = [ChatMessage("user", "Count from 1 to 20, separated by commas.")]


@pytest.fixture
async def services(make_settings: Callable[..., Any], models_dir: Path) -> AsyncIterator[Services]:
    async with running_services(make_settings(cache={"enabled": False})) as s:
        yield s


async def _answer(
    s: Services, messages: list[ChatMessage], model: str = "smollm2-135m", **params: Any
) -> list[Event]:
    request = AnswerRequest(messages, AnswerOptions(model=model, params=GenerationParams(**params)))
    return [e async for e in s.orchestrator.answer(request)]


def _text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


async def test_generates_a_streamed_answer_with_usage(services: Services) -> None:
    events = await _answer(
        services,
        [ChatMessage("user", "What is the capital of France?")],
        temperature=0,
        max_tokens=24,
    )
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) > 3
    assert _text(events).strip()
    usage = next(e for e in events if isinstance(e, Usage))
    assert 10 < usage.prompt_tokens < 200
    assert 0 < usage.completion_tokens <= 24
    assert isinstance(events[-1], Done)


async def test_max_tokens_ends_with_length(services: Services) -> None:
    events = await _answer(services, COUNT, temperature=0, max_tokens=5)
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.completion_tokens == 5
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "length"


async def test_stop_sequence_ends_the_answer_before_it(services: Services) -> None:
    full = _text(await _answer(services, COUNT, temperature=0, max_tokens=40))
    words = full.split()
    assert len(words) > 4, full
    stop = words[3]
    stopped = _text(await _answer(services, COUNT, temperature=0, max_tokens=40, stop=(stop,)))
    assert stop not in stopped
    assert full.startswith(stopped)
    assert len(stopped) < len(full)


async def test_same_seed_same_sampled_answer(services: Services) -> None:
    ask = [ChatMessage("user", "Write a short poem about the sea.")]
    one = _text(await _answer(services, ask, temperature=1.0, seed=1234, max_tokens=30))
    two = _text(await _answer(services, ask, temperature=1.0, seed=1234, max_tokens=30))
    assert one == two


async def test_json_object_format_constrains_the_output(services: Services) -> None:
    ask = [ChatMessage("user", "Give the name and age of a person as JSON.")]
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    text = _text(
        await _answer(
            services,
            ask,
            temperature=0,
            max_tokens=60,
            response_format=ResponseFormat("json_schema", schema),
        )
    )
    value = json.loads(text)
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int)


async def test_closing_the_stream_stops_the_generation(services: Services) -> None:
    backend = services.backends["local"]
    assert isinstance(backend, EmbeddedBackend)
    request = AnswerRequest(
        COUNT,
        AnswerOptions(model="smollm2-135m", params=GenerationParams(temperature=0, max_tokens=400)),
    )
    stream = services.orchestrator.answer(request)
    seen = 0
    async for event in stream:
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        if backend.generations_cancelled:
            break
        await asyncio.sleep(0.05)
    assert backend.generations_cancelled == 1
    assert backend.tokens_generated < 100
    # the worker is free again
    after = await _answer(services, COUNT, temperature=0, max_tokens=3)
    assert isinstance(after[-1], Done)


async def test_loaded_models_are_told_by_the_engine_even_while_it_generates(
    services: Services,
) -> None:
    backend = services.backends["local"]
    assert isinstance(backend, EmbeddedBackend)
    assert await backend.loaded_models() == []
    assert backend.engine_starts == 0  # asking does not start the engine
    request = AnswerRequest(
        COUNT,
        AnswerOptions(model="smollm2-135m", params=GenerationParams(temperature=0, max_tokens=400)),
    )
    stream = services.orchestrator.answer(request)
    async for event in stream:
        if isinstance(event, Token):
            assert await backend.loaded_models() == ["smollm2-135m"]
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert await backend.loaded_models() == ["smollm2-135m"]


async def test_concurrent_requests_are_queued_not_mixed(services: Services) -> None:
    asks = [[ChatMessage("user", f"Say the word {w}.")] for w in ("apple", "river", "cloud")]
    solo = [_text(await _answer(services, a, temperature=0, max_tokens=12)) for a in asks]
    together = await asyncio.gather(
        *(_answer(services, a, temperature=0, max_tokens=12) for a in asks)
    )
    assert [_text(events) for events in together] == solo


async def test_history_longer_than_the_window_is_fitted(
    make_settings: Callable[..., Any], models_dir: Path
) -> None:
    settings = make_settings(
        backends={"local": {"type": "embedded", "options": {"n_ctx": 512}}},
        cache={"enabled": False},
    )
    history: list[ChatMessage] = []
    for i in range(40):
        history += [
            ChatMessage("user", f"Tell me fact number {i} about cats."),
            ChatMessage("assistant", f"Fact {i}: cats sleep a lot. " * 4),
        ]
    history.append(ChatMessage("user", "Thanks! And dogs?"))
    async with running_services(settings) as s:
        events = await _answer(s, history, temperature=0, max_tokens=64)
        counts = await s.backends["local"].token_counts("smollm2-135m", history[:2])
    assert isinstance(events[-1], Done), events[-1]
    # Old turns were summarised (or, without a summary, left out) to fit.
    context = events[-1].context
    assert context is not None
    assert context.summarised + context.dropped > 40
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.prompt_tokens + usage.completion_tokens <= 512
    assert all(c > 6 for c in counts)


async def test_gguf_paths_are_served_only_from_allowed_directories(
    make_settings: Callable[..., Any], models_dir: Path, tmp_path: Path
) -> None:
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    allowed.mkdir()
    elsewhere.mkdir()
    copy = allowed / "copy.gguf"
    copy.write_bytes((models_dir / "smollm2-135m-instruct-q4_1.gguf").read_bytes())
    (elsewhere / "other.gguf").write_bytes(copy.read_bytes())
    settings = make_settings(
        backends={"local": {"type": "embedded", "options": {"model_dirs": [str(allowed)]}}}
    )
    async with running_services(settings) as s:
        events = await _answer(s, COUNT, model=str(copy), max_tokens=3)
        assert isinstance(events[-1], Done)
        for refused in (
            elsewhere / "other.gguf",
            allowed / "absent.gguf",
            allowed / ".." / "elsewhere" / "other.gguf",
        ):
            with pytest.raises(ModelNotFound):
                await _answer(s, COUNT, model=str(refused))


async def test_a_corrupt_model_file_is_a_clear_error_and_the_backend_survives(
    make_settings: Callable[..., Any], models_dir: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 4096)
    settings = make_settings(
        backends={"local": {"type": "embedded", "options": {"model_dirs": [str(tmp_path)]}}}
    )
    async with running_services(settings) as s:
        broken = await _answer(s, COUNT, model=str(corrupt))
        assert isinstance(broken[-1], ErrorEvent)
        assert broken[-1].code == "backend_error"
        assert isinstance((await _answer(s, COUNT, max_tokens=2))[-1], Done)


async def test_a_killed_engine_ends_the_answer_with_an_error_and_comes_back(
    services: Services,
) -> None:
    backend = services.backends["local"]
    assert isinstance(backend, EmbeddedBackend)
    request = AnswerRequest(
        COUNT,
        AnswerOptions(model="smollm2-135m", params=GenerationParams(temperature=0, max_tokens=400)),
    )
    events: list[Event] = []
    async for event in services.orchestrator.answer(request):
        events.append(event)
        if isinstance(event, Token) and sum(isinstance(e, Token) for e in events) == 3:
            assert backend._engine is not None
            os.kill(backend._engine.proc.pid, signal.SIGKILL)  # as a native crash would
    assert isinstance(events[-1], ErrorEvent)
    assert "engine stopped" in events[-1].message
    after = await _answer(services, COUNT, temperature=0, max_tokens=3)
    assert isinstance(after[-1], Done)
    assert backend.engine_starts == 2


@pytest.mark.parametrize(
    "name",
    [
        "local//etc/passwd.gguf",
        "local/../../x.gguf",
        "local/~nosuchuser/a.gguf",
        "local/" + "a" * 300 + ".gguf",
        "/srv/" + "b" * 300 + ".gguf",
        "~nosuchuser/a.gguf",
    ],
)
async def test_explicit_backend_paths_obey_the_same_directory_rule(
    services: Services, name: str
) -> None:
    with pytest.raises(ModelNotFound):
        services.router.resolve(name)


def test_extra_buffers_are_off_only_where_amx_kernels_meet_an_amx_cpu() -> None:
    import llama_cpp

    from concilium.llm.backends._engine import extra_buffers_safe
    from concilium.llm.backends.embedded import _extra_buffers

    assert _extra_buffers("auto") is None  # the engine decides, where llama.cpp is loaded
    assert _extra_buffers("on") is True
    assert _extra_buffers("off") is False
    kernels = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode()
    cpu = "amx_tile" in Path("/proc/cpuinfo").read_text()
    assert extra_buffers_safe() is not (kernels and cpu)
    assert not kernels  # make install builds llama.cpp without AMX (pyproject.toml)


def test_the_engine_asks_for_no_extra_buffers_only_while_loading() -> None:
    """The wrapped defaults are what ``Llama`` reads, and are restored after the load."""
    import llama_cpp.llama_cpp as bindings

    from concilium.llm.backends._engine import _model_defaults

    before = bindings.llama_model_default_params
    with _model_defaults(extra_buffers=False):
        assert bindings.llama_model_default_params().use_extra_bufts is False
    assert bindings.llama_model_default_params is before
    assert bindings.llama_model_default_params().use_extra_bufts is True
