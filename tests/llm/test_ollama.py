"""The Ollama backend against a server speaking Ollama's native protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from concilium.events import BackendSelected, Done, ErrorEvent, Token, Usage
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.services import running_services
from tests.support.fake_llm_servers import Behaviour, FakeOllama


def _settings(make_settings: Callable[..., Any], url: str, **extra: Any) -> Any:
    return make_settings(backends={"ol": {"type": "ollama", "base_url": url, **extra}})


async def test_streams_and_maps_parameters_to_ollama_options(
    make_settings: Callable[..., Any], fake_ollama: tuple[FakeOllama, str]
) -> None:
    fake, url = fake_ollama
    fake.default = Behaviour(text="un deux trois quatre")
    params = GenerationParams(
        temperature=0.2,
        top_p=0.9,
        max_tokens=3,
        stop=("###",),
        seed=3,
        response_format=ResponseFormat("json_object"),
    )
    async with running_services(
        _settings(make_settings, url, context_length=8192, options={"keep_alive": "10m"})
    ) as s:
        events = [
            e
            async for e in s.orchestrator.answer(
                AnswerRequest(
                    [ChatMessage("user", "Compte")], AnswerOptions(model="ol/llama3", params=params)
                )
            )
        ]
        models = {m.id for m in await s.router.list_models()}
    assert "".join(e.text for e in events if isinstance(e, Token)) == "un deux trois"
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "length"
    usage = next(e for e in events if isinstance(e, Usage))
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 3)
    sent = fake.requests[0]
    assert sent["model"] == "llama3"
    assert sent["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "num_predict": 3,
        "stop": ["###"],
        "seed": 3,
        "num_ctx": 8192,
    }
    assert sent["format"] == "json"
    assert sent["keep_alive"] == "10m"
    assert "fake-model" in models


async def test_error_status_and_broken_lines_become_error_events(
    make_settings: Callable[..., Any], fake_ollama: tuple[FakeOllama, str]
) -> None:
    fake, url = fake_ollama
    fake.push(Behaviour("status", status=404), Behaviour("malformed", text="a b c"))
    async with running_services(_settings(make_settings, url)) as s:
        first = [
            e
            async for e in s.orchestrator.answer(
                AnswerRequest([ChatMessage("user", "x")], AnswerOptions(model="ol/missing"))
            )
        ]
        second = [
            e
            async for e in s.orchestrator.answer(
                AnswerRequest([ChatMessage("user", "x")], AnswerOptions(model="ol/llama3"))
            )
        ]
    assert isinstance(first[-1], ErrorEvent)
    assert "404" in first[-1].message
    assert isinstance(second[-1], ErrorEvent)
    assert "malformed" in second[-1].message
    assert any(isinstance(e, BackendSelected) for e in second)
