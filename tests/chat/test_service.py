"""The chat service's guarantees, driven directly (no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from concilium.events import Done, ErrorEvent, Token
from concilium.orchestrator.request import AnswerOptions
from concilium.services import Services, running_services
from concilium.store.models import MessageStatus
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI


@pytest.fixture
async def services(
    make_settings: Callable[..., Any], fake_openai: tuple[FakeOpenAI, str]
) -> AsyncIterator[Services]:
    _, url = fake_openai
    settings = make_settings(
        backends={"r": {"type": "openai", "base_url": url, "models": ["fake-model"]}},
        chat={"default_model": "fake-model"},
    )
    async with running_services(settings) as s:
        yield s


async def test_cancel_before_the_generation_starts_still_stores_and_ends_it(
    services: Services, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, _ = fake_openai
    chat = services.chat
    conversation = await chat.create(None)
    generation = await chat.post(None, conversation.id, "hello")
    assert generation.cancel()  # the task has not run a single step yet
    events = [e async for e in generation.events()]
    assert isinstance(events[-1], Done)
    assert events[-1].finish_reason == "cancelled"
    message = await chat.message(None, conversation.id, generation.message_id)
    assert message.status == MessageStatus.CANCELLED
    assert fake.calls == 0
    # the conversation takes its next turn normally
    after = await chat.post(None, conversation.id, "again")
    assert [type(e) for e in [e async for e in after.events()]][-1] is Done


async def test_a_second_cancel_and_a_shutdown_do_not_interrupt_the_saving(
    services: Services, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, _ = fake_openai
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.02)
    chat = services.chat
    conversation = await chat.create(None)
    generation = await chat.post(None, conversation.id, "hello")
    events = generation.events()
    async for event in events:
        if isinstance(event, Token):
            break
    assert generation.cancel("cancelled")
    assert not generation.cancel("shutdown")
    await chat.shutdown()
    rest = [e async for e in events]
    assert isinstance(rest[-1], Done)
    message = await chat.message(None, conversation.id, generation.message_id)
    assert message.status == MessageStatus.CANCELLED
    assert message.content.startswith("w0")


async def test_shutdown_stores_live_answers_as_incomplete(
    services: Services, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, _ = fake_openai
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.02)
    chat = services.chat
    conversation = await chat.create(None)
    generation = await chat.post(None, conversation.id, "hello", options=AnswerOptions())
    async for event in generation.events():
        if isinstance(event, Token):
            break
    await chat.shutdown(timeout=5)
    message = await chat.message(None, conversation.id, generation.message_id)
    assert message.status == MessageStatus.INCOMPLETE
    assert message.content


@pytest.mark.allow_error_logs  # the storage failure is logged on purpose
async def test_a_storage_failure_is_reported_instead_of_done(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = services.chat
    conversation = await chat.create(None)

    async def broken_save(message_id: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(chat, "_save", broken_save)
    generation = await chat.post(None, conversation.id, "hello")
    events = [e async for e in generation.events()]
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].code == "storage_error"
    await asyncio.sleep(0)
