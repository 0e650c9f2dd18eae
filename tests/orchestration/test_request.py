"""One answer request: model ids that name a mode, and the scope rule checked once, in
``Orchestrator.prepare``, whatever the way in."""

from __future__ import annotations

from dataclasses import replace

import pytest

from concilium.auth.principal import OPERATOR, Principal, Scope
from concilium.errors import Forbidden, InvalidRequest, NotFound
from concilium.llm.base import ChatMessage
from concilium.orchestrator.request import (
    AnswerOptions,
    AnswerRequest,
    ConsensusOptions,
    RetrievalOptions,
    check_scopes,
    expand_model_id,
)
from concilium.services import running_services
from tests.conftest import SettingsFactory

CHAT_ONLY = Principal(
    user_id="u1",
    username="ann",
    is_admin=False,
    scopes=frozenset({Scope.CHAT}),
    workspace_id="w1",
)


@pytest.mark.parametrize(
    ("model", "mode", "expected"),
    [
        ("rag:notes", "auto", AnswerOptions(mode="rag", retrieval=RetrievalOptions(("notes",)))),
        (
            "rag:notes@qwen",
            "rag",
            AnswerOptions(model="qwen", mode="rag", retrieval=RetrievalOptions(("notes",))),
        ),
        ("agent", "auto", AnswerOptions(mode="agent")),
        ("agent:qwen", "agent", AnswerOptions(model="qwen", mode="agent")),
        (
            "consensus:fast",
            "auto",
            AnswerOptions(mode="consensus", consensus=ConsensusOptions("fast")),
        ),
        ("agentic-model", "auto", AnswerOptions(model="agentic-model")),  # not a mode's id
        ("qwen", "direct", AnswerOptions(model="qwen", mode="direct")),
    ],
)
def test_model_ids_that_name_a_mode_expand_into_typed_options(
    model: str, mode: str, expected: AnswerOptions
) -> None:
    assert expand_model_id(AnswerOptions(model=model, mode=mode)) == expected


@pytest.mark.parametrize(
    ("model", "mode"), [("rag:notes", "agent"), ("consensus:x", "rag"), ("rag:", "auto")]
)
def test_model_ids_that_contradict_the_mode_are_refused(model: str, mode: str) -> None:
    with pytest.raises(InvalidRequest):
        expand_model_id(AnswerOptions(model=model, mode=mode))


@pytest.mark.parametrize(
    "options",
    [
        AnswerOptions(mode="rag", retrieval=RetrievalOptions(("notes",))),
        AnswerOptions(retrieval=RetrievalOptions(("notes",))),
        AnswerOptions(model="rag:notes"),
    ],
    ids=["mode-rag", "collections", "rag-model"],
)
def test_grounded_answers_need_knowledge_read(options: AnswerOptions) -> None:
    with pytest.raises(Forbidden, match="knowledge:read"):
        check_scopes(CHAT_ONLY, options)
    reader = replace(CHAT_ONLY, scopes=frozenset({Scope.CHAT, Scope.KNOWLEDGE_READ}))
    check_scopes(reader, options)
    check_scopes(OPERATOR, options)  # the operator holds every scope
    check_scopes(CHAT_ONLY, AnswerOptions(model="qwen"))  # not grounded: nothing needed


def test_retrieval_options_override_only_what_they_set() -> None:
    options = RetrievalOptions(("a",), reformulate=False, search="bm25", k=3)
    assert options.overrides() == {"mode": "bm25", "k": 3}
    assert RetrievalOptions().overrides() == {}


async def test_prepare_checks_the_scope_before_any_work(make_settings: SettingsFactory) -> None:
    async with running_services(make_settings()) as services:
        request = AnswerRequest(
            [ChatMessage("user", "what do my notes say?")],
            AnswerOptions(model="rag:notes"),
            principal=CHAT_ONLY,
        )
        with pytest.raises(Forbidden, match="knowledge:read"):
            await services.orchestrator.prepare(request)
        # The operator gets past the scope rule and is told the collection is not there.
        with pytest.raises(NotFound, match="notes"):
            await services.orchestrator.prepare(replace(request, principal=OPERATOR))
