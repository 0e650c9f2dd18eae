"""Follow-up questions rewritten before retrieval, extra phrasings fused, and the switch
that turns it off. The rewriting model is a scripted server (the process edge); the
retrieval, fusion and prompts are Concilium's own, on a real collection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, LiveFactory, remote_backend, wait_for_job

HANDBOOK = """# Zephyr-9 handbook

## Warranty

The Zephyr-9 motor carries a seven-year warranty; the burrs are covered for two years.

## Refunds

Orders of the Zephyr-9 grinder may be returned for a full refund within 45 days of
delivery.

## Cleaning

Brush the burrs every week and never wash them with water.
"""
SCOPES = ["chat", "knowledge:read", "knowledge:write"]
FOLLOW_UP = [
    {"role": "user", "content": "What warranty does the Zephyr-9 have?"},
    {"role": "assistant", "content": "Seven years on the motor [1]."},
    {"role": "user", "content": "and if I want my money back?"},
]
REWRITE = "How long do I have to return a Zephyr-9 grinder for a refund?"


@pytest.fixture
def served(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Iterator[tuple[Live, httpx.Client, FakeOpenAI]]:
    fake, url = fake_openai
    with live_server(
        backends={"remote": remote_backend(url)},
        chat={"default_model": "fake-model"},
        orchestration={"reformulation": {"model": "remote/fake-model"}},
    ) as live:
        _, client = live.login("admin", SCOPES)
        collection = client.post("/api/collections", json={"name": "zephyr"}).json()
        job = client.post(
            f"/api/collections/{collection['id']}/documents",
            files=[("files", ("zephyr.md", HANDBOOK.encode()))],
        ).json()
        assert wait_for_job(client, job["id"])["status"] == "completed"
        yield live, client, fake


def _ask(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/chat/completions",
        json={"model": "rag:zephyr", "messages": FOLLOW_UP, "max_tokens": 32, **body},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_follow_up_is_rewritten_then_searched(
    served: tuple[Live, httpx.Client, FakeOpenAI],
) -> None:
    _, client, fake = served
    fake.push(Behaviour(text=REWRITE))
    answer = _ask(client)
    assert answer["concilium"]["reformulation"] == {
        "type": "reformulation",
        "original": "and if I want my money back?",
        "query": REWRITE,
        "queries": [],
    }
    assert "45 days" in answer["sources"][0]["snippet"]
    rewrite_prompt = fake.requests[0]["messages"][-1]["content"]
    assert "What warranty does the Zephyr-9 have?" in rewrite_prompt
    assert rewrite_prompt.rstrip().endswith("user: and if I want my money back?\n\n→".rstrip())
    # The answer model got the question as asked, with the passages found for the rewrite.
    asked = fake.requests[1]["messages"][-1]["content"]
    assert "45 days" in asked
    assert asked.endswith("Question: and if I want my money back?")


def test_multi_query_searches_every_phrasing(
    served: tuple[Live, httpx.Client, FakeOpenAI],
) -> None:
    live, client, fake = served
    live.services.settings.orchestration.reformulation.multi_query = 2
    try:
        fake.push(
            Behaviour(text=REWRITE),
            Behaviour(text='{"queries": ["Zephyr-9 refund period", "how to clean the burrs"]}'),
        )
        answer = _ask(client)
    finally:
        live.services.settings.orchestration.reformulation.multi_query = 0
    found = answer["concilium"]["reformulation"]
    assert found["query"] == REWRITE
    assert found["queries"] == ["Zephyr-9 refund period", "how to clean the burrs"]
    snippets = " ".join(s["snippet"] for s in answer["sources"])
    assert "45 days" in snippets
    assert "Brush the burrs" in snippets  # found only by the second extra phrasing
    assert fake.requests[1]["response_format"]["type"] == "json_schema"


def test_reformulation_can_be_turned_off_per_request(
    served: tuple[Live, httpx.Client, FakeOpenAI],
) -> None:
    _, client, fake = served
    conversation = client.post("/api/conversations", json={}).json()
    first = client.post(
        f"/api/conversations/{conversation['id']}/messages",
        json={"content": "What warranty does the Zephyr-9 have?", "collections": ["zephyr"]},
    )
    assert first.status_code == 200, first.text
    calls = fake.calls
    second = client.post(
        f"/api/conversations/{conversation['id']}/messages",
        json={"content": "and refunds?", "collections": ["zephyr"], "reformulate": False},
    ).json()
    # One model call: the answer; the question was searched with the previous one.
    assert fake.calls == calls + 1
    steps = second["message"]["steps"] or []
    assert not [s for s in steps if s["type"] == "reformulation"]
    assert second["message"]["sources"]
