"""Prompts built within the window: per-part budgets, old turns summarised (and the
summary extended as the conversation grows), counted with the real model's tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from concilium.events import Done
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.orchestrator.prompt import PromptParts
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.services import Services, running_services
from tests.conftest import TEST_MODEL, SettingsFactory
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI

pytestmark = pytest.mark.model

WINDOW = 1024


def _conversation(turns: int) -> list[ChatMessage]:
    out = []
    for i in range(turns):
        out.append(ChatMessage("user", f"Question {i}: " + "tell me about the harbour " * 12))
        out.append(ChatMessage("assistant", f"Answer {i}: " + "the harbour is old and busy " * 12))
    return out


def _settings(make_settings: SettingsFactory, url: str, **context: Any) -> Any:
    return make_settings(
        backends={
            "local": {"type": "embedded", "context_length": WINDOW},
            "remote": {"type": "openai", "base_url": url, "models": ["summariser"]},
        },
        orchestration={"context": {"summary_model": "remote/summariser", **context}},
    )


async def _tokens(services: Services, messages: list[ChatMessage]) -> int:
    route = services.router.resolve(TEST_MODEL)
    return sum(await route.targets[0].backend.token_counts(TEST_MODEL, messages))


async def test_old_turns_are_summarised_and_the_summary_is_extended(
    make_settings: SettingsFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.default = Behaviour(text="The user asked about the harbour; it is old and busy.")
    async with running_services(_settings(make_settings, url)) as services:
        builder = services.orchestrator.prompts
        route = services.router.resolve(TEST_MODEL)
        history = _conversation(12)
        question = ChatMessage("user", "And how deep is it?")
        built = await builder.build(
            route, PromptParts(system="You are a guide.", history=history, question=question), 128
        )
        assert built.report.summarised > 0
        assert built.report.dropped == 0
        assert built.messages[0].role == "system"
        assert built.messages[0].content.startswith("You are a guide.")
        assert "Summary of the earlier conversation: The user asked about the harbour" in (
            built.messages[0].content
        )
        assert built.messages[-1] == question
        kept = built.messages[1:-1]
        assert kept == history[len(history) - len(kept) :]  # the latest turns, word for word
        assert kept[0].role == "user"
        assert await _tokens(services, built.messages) + built.report.answer <= WINDOW
        assert len(fake.requests) == 1

        # Two more turns: only the newly old ones are summarised, onto the summary so far.
        longer = [
            *history,
            ChatMessage("user", "And the lighthouse?"),
            ChatMessage("assistant", "It is red. " * 30),
        ]
        again = await builder.build(route, PromptParts(history=longer, question=question), 128)
        assert again.report.summarised > built.report.summarised
        assert len(fake.requests) == 2
        prompt = fake.requests[-1]["messages"][-1]["content"]
        assert prompt.startswith("(summary so far) The user asked about the harbour")
        assert "Question 0" not in prompt

        # The same history again: the summary is reused, no model call.
        await builder.build(route, PromptParts(history=longer, question=question), 128)
        assert len(fake.requests) == 2


async def test_without_summaries_old_turns_are_left_out_and_parts_keep_their_share(
    make_settings: SettingsFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    settings = _settings(make_settings, url, summarise=False, system_share=0.1)
    async with running_services(settings) as services:
        builder = services.orchestrator.prompts
        route = services.router.resolve(TEST_MODEL)
        system = "Always answer politely. " * 100  # far more than a tenth of the window
        built = await builder.build(
            route,
            PromptParts(
                system=system,
                memory=["The user lives in Brest.", "The user prefers short answers."],
                history=_conversation(12),
                question=ChatMessage("user", "How deep is the harbour?"),
            ),
            128,
        )
        assert built.report.dropped > 0
        assert built.report.system_cut is True
        assert built.report.system <= builder.budget(route, "system", 128)
        assert built.messages[0].content.endswith("- The user prefers short answers.")
        assert "[…]" in built.messages[0].content
        assert await _tokens(services, built.messages) + built.report.answer <= WINDOW
    assert not fake.requests


async def test_a_long_conversation_is_answered_with_its_summary(
    make_settings: SettingsFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.default = Behaviour(text="Earlier: harbour questions.")
    async with running_services(_settings(make_settings, url)) as services:
        messages = [*_conversation(12), ChatMessage("user", "Thanks!")]
        prepared = await services.orchestrator.prepare(
            AnswerRequest(
                messages,
                AnswerOptions(
                    model=TEST_MODEL, mode="direct", params=GenerationParams(max_tokens=8)
                ),
            )
        )
        events = [e async for e in services.orchestrator.stream(prepared)]
    done = [e for e in events if isinstance(e, Done)]
    assert done[0].context is not None
    assert done[0].context.summarised > 0
    assert done[0].dropped_messages == 0  # nothing left for the router to cut
