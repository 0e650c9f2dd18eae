"""The official ``openai`` SDK against a running Concilium serving the real SmolLM2 model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from concilium.api.app import create_app
from concilium.config import Settings
from concilium.services import Services
from tests.conftest import MODELS_DIR, TEST_MODEL
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, remote_backend
from tests.support.servers import serve_app

pytestmark = pytest.mark.model

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Live]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("sdk"),
        models_dir=MODELS_DIR,
        chat={"default_model": TEST_MODEL},
        logging={"level": "WARNING"},
        auth={"argon2_time_cost": 1, "argon2_memory_kib": 8192},
        limits={"ip_per_minute": 0, "user_per_minute": 0, "key_per_minute": 0},
        orchestration={"classifier": {"enabled": False}},  # the protocol, not the mode choice
    )
    services = Services.build(settings)
    with serve_app(create_app(settings, services)) as running:
        live = Live(running, services)
        yield live
        live.close()


@pytest.fixture
def client(server: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0)


@pytest.fixture
async def async_client(server: Live) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0
    ) as client:
        yield client


def test_sync_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TEST_MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == TEST_MODEL
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 20
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_sync_stream_with_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=16,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


async def test_async_stream(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model=TEST_MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True
    )  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces).strip()


async def test_async_completion(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(
        model=TEST_MODEL, messages=HELLO, max_tokens=8, temperature=0
    )  # type: ignore[arg-type]
    assert completion.choices[0].message.content


def test_max_tokens_and_stop(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    short = client.chat.completions.create(
        model=TEST_MODEL,
        messages=ask,
        max_tokens=3,  # type: ignore[arg-type]
        temperature=0,
    )
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None
    assert short.usage.completion_tokens == 3
    full = (
        client.chat.completions.create(
            model=TEST_MODEL,
            messages=ask,
            max_tokens=40,  # type: ignore[arg-type]
            temperature=0,
        )
        .choices[0]
        .message.content
        or ""
    )
    stop = full.split()[3]
    stopped = client.chat.completions.create(
        model=TEST_MODEL,
        messages=ask,
        max_tokens=40,  # type: ignore[arg-type]
        temperature=0.0,
        stop=[stop],
        seed=1,
    )
    assert stop not in (stopped.choices[0].message.content or "")


def test_json_object_response_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TEST_MODEL,
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with a JSON object like {"animal": "cat"}.'}],
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    completion = client.chat.completions.create(
        model=TEST_MODEL,
        max_tokens=40,
        temperature=0,
        messages=HELLO,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert isinstance(json.loads(completion.choices[0].message.content or "")["city"], str)


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def run() -> str:
        return (
            client.chat.completions.create(
                model=TEST_MODEL,
                messages=[{"role": "user", "content": "Invent a word."}],
                temperature=1.2,
                seed=99,
                max_tokens=12,
            )
            .choices[0]
            .message.content
            or ""
        )

    assert run() == run()


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"default", TEST_MODEL, "qwen2.5-coder-1.5b"} <= ids


def test_errors_map_to_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=HELLO)  # type: ignore[arg-type]
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TEST_MODEL, messages=HELLO, temperature=5)  # type: ignore[arg-type]


def test_backend_failures_reach_the_sdk(
    live_server: object, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    with live_server(backends={"r": remote_backend(url)}, router={"retries": 0}) as live:  # type: ignore[operator]
        sdk = openai.OpenAI(base_url=live.url + "/v1", api_key=live.admin_key, max_retries=0)
        fake.push(Behaviour("status", status=503))
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="fake-model", messages=HELLO)  # type: ignore[arg-type]
        fake.push(Behaviour("status", status=503))
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="fake-model", messages=HELLO, stream=True)  # type: ignore[arg-type]
        fake.push(Behaviour("die", text="one two three four", die_after=2))
        stream = sdk.chat.completions.create(model="fake-model", messages=HELLO, stream=True)  # type: ignore[arg-type]
        received = []
        with pytest.raises(openai.APIError):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "one two"
