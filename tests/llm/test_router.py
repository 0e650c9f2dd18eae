"""The router against real HTTP servers speaking the OpenAI protocol (scripted at the edge)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from concilium.errors import BackendTimeout, ModelNotFound
from concilium.events import BackendSelected, Done, ErrorEvent, Event, Token, Usage
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.llm.breaker import BreakerState
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.services import Services, running_services
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI

QUESTION = [ChatMessage("user", "Say hello")]


def _remote(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "models": ["fake-model"], **extra}


@contextlib.asynccontextmanager
async def _services(make_settings: Callable[..., Any], **overrides: Any) -> AsyncIterator[Services]:
    async with running_services(make_settings(**overrides)) as services:
        yield services


async def _events(
    services: Services,
    model: str = "fake-model",
    messages: list[ChatMessage] | None = None,
    **kw: Any,
) -> list[Event]:
    request = AnswerRequest(messages or QUESTION, AnswerOptions(model=model, **kw))
    return [e async for e in services.orchestrator.answer(request)]


def _text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


def _selected(events: list[Event]) -> BackendSelected:
    return next(e for e in events if isinstance(e, BackendSelected))


async def test_streams_text_and_usage_and_sends_the_request_openai_style(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    async with _services(
        make_settings, backends={"remote": _remote(url, api_key="sk-test-123")}
    ) as s:
        events = await _events(
            s, params=GenerationParams(temperature=0.5, max_tokens=50, stop=("\n",), seed=7)
        )
    assert _text(events) == "Hello from the fake server."
    assert isinstance(events[-1], Done)
    assert events[-1].finish_reason == "stop"
    usage = next(e for e in events if isinstance(e, Usage))
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 5)
    sent = fake.requests[0]
    assert sent["model"] == "fake-model"
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["seed"]) == (
        0.5,
        50,
        ["\n"],
        7,
    )
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert fake.headers[0]["authorization"] == "Bearer sk-test-123"


async def test_retries_a_429_after_the_delay_the_server_asks_for(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.push(Behaviour("status", status=429, headers={"Retry-After": "0.3"}))
    async with _services(
        make_settings, backends={"remote": _remote(url)}, router={"backoff_max": 1.0}
    ) as s:
        started = asyncio.get_running_loop().time()
        events = await _events(s)
        elapsed = asyncio.get_running_loop().time() - started
    assert _text(events) == "Hello from the fake server."
    assert fake.calls == 2
    assert elapsed >= 0.3


async def test_a_retry_after_longer_than_we_wait_moves_to_the_next_target(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (_second, url2) = fake_openai_pair
    first.default = Behaviour("status", status=429, headers={"Retry-After": "60"})
    async with _services(
        make_settings,
        backends={"one": _remote(url1), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
        router={"backoff_max": 1.0},
    ) as s:
        started = asyncio.get_running_loop().time()
        events = await _events(s, "chain")
        elapsed = asyncio.get_running_loop().time() - started
    assert _selected(events).backend == "two"
    assert first.calls == 1
    assert elapsed < 5


async def test_upstream_streams_of_the_wrong_shape_are_backend_errors(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    async with _services(
        make_settings, backends={"remote": _remote(url)}, router={"retries": 0}
    ) as s:
        for bad in ('{"choices": ["x"]}', '{"choices": [{"delta": "x"}]}', "[1, 2]"):
            fake.push(Behaviour("raw", text=bad))
            events = await _events(s)
            assert isinstance(events[-1], ErrorEvent), bad
            assert events[-1].code == "backend_error"
            assert "malformed" in events[-1].message


async def test_malformed_chunk_before_any_text_is_retried(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.push(Behaviour("malformed"))
    async with _services(make_settings, backends={"remote": _remote(url)}) as s:
        events = await _events(s)
    assert _text(events) == "Hello from the fake server."
    assert fake.calls == 2


async def test_fallback_chain_answers_from_the_second_when_the_first_fails(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (second, url2) = fake_openai_pair
    first.default = Behaviour("status", status=503)
    second.default = Behaviour(text="Answer from the second.")
    async with _services(
        make_settings,
        backends={"one": _remote(url1), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
        router={"retries": 2},
    ) as s:
        events = await _events(s, "chain")
        metrics = s.metrics.render().decode()
    assert _text(events) == "Answer from the second."
    assert first.calls == 3  # one try and two retries
    selected = _selected(events)
    assert selected.backend == "two"
    assert selected.skipped
    assert selected.skipped[0].startswith("one/fake-model")
    assert 'concilium_fallbacks_total{model="chain"} 1.0' in metrics


async def test_breaker_opens_after_five_failures_and_stops_calling_the_backend(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (_second, url2) = fake_openai_pair
    first.default = Behaviour("status", status=500)
    async with _services(
        make_settings,
        backends={"one": _remote(url1), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
        router={"retries": 0, "breaker_failure_threshold": 5, "breaker_reset_seconds": 0.5},
    ) as s:
        for _ in range(5):
            assert _text(await _events(s, "chain")) == "Hello from the fake server."
        assert first.calls == 5
        assert s.router.breakers["one"].state is BreakerState.OPEN
        assert 'concilium_breaker_state{backend="one"} 2.0' in s.metrics.render().decode()
        events = await _events(s, "chain")
        assert first.calls == 5  # skipped while open
        assert "circuit open" in _selected(events).skipped[0]

        await asyncio.sleep(0.6)  # half-open: one trial goes through and succeeds
        first.default = Behaviour()
        events = await _events(s, "chain")
        assert _selected(events).backend == "one"
        assert s.router.breakers["one"].state is BreakerState.CLOSED
        assert 'concilium_breaker_state{backend="one"} 0.0' in s.metrics.render().decode()


async def test_no_first_token_within_timeout_falls_back_and_abandons_the_request(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (_second, url2) = fake_openai_pair
    first.default = Behaviour("hang")
    async with _services(
        make_settings,
        backends={"one": _remote(url1, first_token_timeout=0.3), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
        router={"retries": 0},
    ) as s:
        events = await _events(s, "chain")
    assert _text(events) == "Hello from the fake server."
    assert "no first token" in _selected(events).skipped[0]
    for _ in range(50):
        if first.cancelled:
            break
        await asyncio.sleep(0.05)
    assert first.cancelled == 1


async def test_backend_dying_mid_stream_ends_with_an_error_and_no_retry(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (second, url2) = fake_openai_pair
    first.default = Behaviour("die", text="one two three four five", die_after=2)
    async with _services(
        make_settings,
        backends={"one": _remote(url1), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
    ) as s:
        events = await _events(s, "chain")
    assert _text(events) == "one two"
    assert isinstance(events[-1], ErrorEvent)
    assert first.calls == 1
    assert second.calls == 0  # text already reached the client: no silent restart


async def test_silence_mid_stream_beyond_idle_timeout_is_an_error(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.default = Behaviour(text="slow words here", chunk_delay=2.0)
    async with _services(make_settings, backends={"remote": _remote(url, idle_timeout=0.3)}) as s:
        route = s.router.resolve("fake-model")
        received: list[Event] = []
        with pytest.raises(BackendTimeout):
            async for event in s.router.stream(route, QUESTION, GenerationParams()):
                received.append(event)
    assert _text(received) == "slow"


async def test_client_error_is_not_retried_but_the_chain_goes_on(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (_second, url2) = fake_openai_pair
    first.default = Behaviour("status", status=400)
    async with _services(
        make_settings,
        backends={"one": _remote(url1), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
    ) as s:
        events = await _events(s, "chain")
        assert s.router.breakers["one"].consecutive_failures == 0
    assert first.calls == 1
    assert _selected(events).backend == "two"


async def test_all_backends_down_is_one_clear_error(
    make_settings: Callable[..., Any], fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (first, url1), (second, url2) = fake_openai_pair
    first.default = second.default = Behaviour("status", status=502)
    async with _services(
        make_settings,
        backends={"one": _remote(url1), "two": _remote(url2)},
        models={"chain": {"targets": ["one/fake-model", "two/fake-model"]}},
        router={"retries": 0},
    ) as s:
        events = await _events(s, "chain")
    assert len(events) == 1
    error = events[0]
    assert isinstance(error, ErrorEvent)
    assert error.code == "backend_unavailable"
    assert "one/fake-model" in error.message
    assert "two/fake-model" in error.message


async def test_unreachable_server_falls_back(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    _fake, url = fake_openai
    async with _services(
        make_settings,
        backends={"dead": _remote("http://127.0.0.1:9/v1"), "live": _remote(url)},
        models={"chain": {"targets": ["dead/fake-model", "live/fake-model"]}},
        router={"retries": 1},
    ) as s:
        events = await _events(s, "chain")
    assert _selected(events).backend == "live"


async def test_api_key_never_appears_in_logs_or_errors(
    make_settings: Callable[..., Any],
    fake_openai: tuple[FakeOpenAI, str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, url = fake_openai
    fake.default = Behaviour("status", status=401)
    secret = "sk-very-secret-value-42"
    async with _services(make_settings, backends={"remote": _remote(url, api_key=secret)}) as s:
        events = await _events(s)
    assert isinstance(events[-1], ErrorEvent)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text
    assert secret not in events[-1].message


async def test_closing_the_stream_closes_the_upstream_request(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.default = Behaviour(text="a b c d e f g h", chunk_delay=0.2)
    async with _services(make_settings, backends={"remote": _remote(url)}) as s:
        route = s.router.resolve("fake-model")
        stream = s.router.stream(route, QUESTION, GenerationParams())
        async for event in stream:
            if isinstance(event, Token):
                break
        await stream.aclose()  # type: ignore[attr-defined]
        for _ in range(50):
            if fake.cancelled:
                break
            await asyncio.sleep(0.05)
    assert fake.cancelled == 1
    assert fake.completed == 0


# -- resolution -------------------------------------------------------------------------


async def test_model_ids_resolve_to_aliases_backends_and_the_catalog(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    _, url = fake_openai
    async with _services(
        make_settings,
        backends={"local": {"type": "embedded"}, "remote": _remote(url)},
        models={
            "fast": {"targets": ["remote/other-model", "smollm2-135m"]},
            "loop": {"targets": ["loop"]},
        },
    ) as s:
        router = s.router
        assert [t.label for t in router.resolve("fast").targets] == [
            "remote/other-model",
            "local/smollm2-135m",
        ]
        assert [t.label for t in router.resolve("default").targets] == ["local/smollm2-135m"]
        assert [t.label for t in router.resolve("remote/x/y").targets] == ["remote/x/y"]
        assert [t.label for t in router.resolve("fake-model").targets] == ["remote/fake-model"]
        for bad in ("nope", "loop", "", "missing/fake-model"):
            with pytest.raises(ModelNotFound):
                router.resolve(bad)
        listed = {m.id for m in await router.list_models()}
    assert {"default", "fast", "smollm2-135m", "qwen2.5-coder-1.5b", "fake-model"} <= listed


# -- cache ------------------------------------------------------------------------------


async def test_deterministic_answers_are_served_from_the_cache(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    async with _services(make_settings, backends={"remote": _remote(url)}) as s:
        zero = GenerationParams(temperature=0)
        first = await _events(s, params=zero)
        again = await _events(s, params=zero)
        assert fake.calls == 1
        assert _text(again) == _text(first)
        assert _selected(again).cached
        await _events(s, params=GenerationParams(temperature=0.8))
        await _events(s, params=GenerationParams(temperature=0.8))
        assert fake.calls == 3  # sampled: never cached by default
        await _events(s, params=GenerationParams(temperature=0.8), use_cache=True)
        await _events(s, params=GenerationParams(temperature=0.8), use_cache=True)
        assert fake.calls == 4
        await _events(s, params=zero, use_cache=False)
        assert fake.calls == 5
        metrics = s.metrics.render().decode()
    assert "concilium_cache_hits_total 2.0" in metrics


async def test_failed_and_partial_answers_are_not_cached(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.push(Behaviour("die", text="a b c d", die_after=2))
    async with _services(make_settings, backends={"remote": _remote(url)}) as s:
        zero = GenerationParams(temperature=0)
        assert isinstance((await _events(s, params=zero))[-1], ErrorEvent)
        assert _text(await _events(s, params=zero)) == "Hello from the fake server."
    assert fake.calls == 2


# -- context window ---------------------------------------------------------------------


async def test_long_history_is_trimmed_to_the_window_oldest_first(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    history = [ChatMessage("system", "Be brief.")]
    for i in range(30):
        history.append(ChatMessage("user", f"question {i} " + "x" * 300))
        history.append(ChatMessage("assistant", f"answer {i} " + "y" * 300))
    history.append(ChatMessage("user", "the latest question"))
    async with _services(
        make_settings, backends={"remote": _remote(url, context_length=2048)}
    ) as s:
        events = await _events(s, messages=history, params=GenerationParams(max_tokens=256))
    sent = fake.requests[0]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1] == {"role": "user", "content": "the latest question"}
    assert 3 < len(sent) < len(history)
    assert sent[1]["role"] == "user"  # history opens with a question, never an orphan answer
    assert "question 29" in sent[-3]["content"]
    done = events[-1]
    assert isinstance(done, Done)
    # No summary model here (the default one is not served): old turns are left out.
    assert done.context is not None
    assert done.context.dropped == len(history) - len(sent)


async def test_an_oversized_latest_message_is_cut_not_rejected(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    huge = "begin " + "word " * 20_000 + " end"
    async with _services(
        make_settings, backends={"remote": _remote(url, context_length=1024)}
    ) as s:
        events = await _events(
            s, messages=[ChatMessage("user", huge)], params=GenerationParams(max_tokens=2000)
        )
    assert isinstance(events[-1], Done)
    sent = fake.requests[0]
    content = sent["messages"][-1]["content"]
    assert content.startswith("begin ")
    assert content.endswith(" end")
    assert len(content) < len(huge)
    assert sent["max_tokens"] <= 1024 - len(content) // 3
