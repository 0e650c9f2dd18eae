"""Mode auto end to end: the real embedder classifies, the real collections confirm, the
real SmolLM2 answers; the route is the first event of every stream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from tests.support.live import LiveFactory, wait_for_job

pytestmark = pytest.mark.model

ZEPHYR = """# Zephyr-9 customer handbook

## Refunds

Orders of the Zephyr-9 espresso grinder may be returned for a full refund within 45 days
of delivery. Refunds are paid back to the original card within five working days.

## Warranty

The Zephyr-9 motor carries a seven-year warranty; the burrs are covered for two years.
"""


def _router_on(live_server: LiveFactory) -> Any:
    return live_server(
        orchestration={"classifier": {"enabled": True}},
        agents={"max_iterations": 2, "step_tokens": 96},
    )


def _turn(client: httpx.Client, content: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    conversation = client.post("/api/conversations", json={}).json()
    with connect_sse(
        client,
        "POST",
        f"/api/conversations/{conversation['id']}/messages",
        json={"content": content, "stream": True, "max_tokens": 48, **body},
    ) as source:
        return [(e.event, json.loads(e.data)) for e in source.iter_sse()]


def _route(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message"
    assert kinds[1] == "route", kinds  # before any backend, token or tool event
    return events[1][1]


SCOPES = ["chat", "knowledge:read", "knowledge:write", "tools"]


def _collection(client: httpx.Client) -> str:
    collection = client.post("/api/collections", json={"name": "zephyr"}).json()
    job = client.post(
        f"/api/collections/{collection['id']}/documents",
        files=[("files", ("zephyr.md", ZEPHYR.encode()))],
    ).json()
    assert wait_for_job(client, job["id"])["status"] == "completed"
    return str(collection["id"])


def test_auto_routes_greetings_tasks_and_questions(live_server: LiveFactory) -> None:
    with _router_on(live_server) as live:
        _, client = live.login("admin", SCOPES)
        collection = _collection(client)

        hello = _route(_turn(client, "bonjour"))
        assert (hello["mode"], hello["intent"], hello["method"]) == (
            "direct",
            "chit_chat",
            "embedding",
        )
        assert hello["confidence"] > 0.6

        task_events = _turn(client, "restart the web container")
        task = _route(task_events)
        assert (task["mode"], task["intent"]) == ("agent", "operational")
        # The agent took over: its steps follow the route, not a plain answer.
        assert {"thought", "tool_call"} & {kind for kind, _ in task_events}, task_events

        # The collections hold the answer: grounded, with sources, though none were named.
        grounded_events = _turn(client, "How many days do I have to return a Zephyr-9 grinder?")
        grounded = _route(grounded_events)
        assert (grounded["mode"], grounded["intent"]) == ("rag", "knowledge")
        assert grounded["collections"] == [collection]
        sources = [data for kind, data in grounded_events if kind == "sources"]
        assert sources
        assert "45 days" in sources[0]["sources"][0]["snippet"]

        # A question the collections do not answer stays with the model.
        elsewhere = _route(_turn(client, "Who wrote the novel Les Misérables?"))
        assert (elsewhere["mode"], elsewhere["intent"]) == ("direct", "knowledge")
        assert elsewhere["collections"] == []

        # An explicit mode is obeyed; there is no decision to show.
        forced = [kind for kind, _ in _turn(client, "bonjour", mode="direct")]
        assert "route" not in forced

        # The route is stored with the answer.
        conversations = client.get("/api/conversations").json()["items"]
        stored = [
            client.get(f"/api/conversations/{c['id']}").json()["messages"][-1]
            for c in conversations
        ]
        assert sum(bool(m["steps"]) and m["steps"][0]["type"] == "route" for m in stored) == 4


ORION = """# Serveur Orion — exploitation

## Sauvegardes

Les sauvegardes complètes du serveur Orion sont lancées chaque nuit à 2 h 30, les
sauvegardes incrémentales toutes les quatre heures. Elles sont conservées trente jours.
"""


def test_a_question_the_collections_answer_goes_to_rag_whatever_the_first_guess(
    live_server: LiveFactory,
) -> None:
    """The classifier takes this question for an operational task; the collections hold
    its answer, so it is answered from them rather than by an agent hunting for it."""
    with _router_on(live_server) as live:
        _, client = live.login("admin", SCOPES)
        collection = client.post("/api/collections", json={"name": "exploitation"}).json()
        job = client.post(
            f"/api/collections/{collection['id']}/documents",
            files=[("files", ("orion.md", ORION.encode()))],
        ).json()
        assert wait_for_job(client, job["id"])["status"] == "completed"
        question = "À quelle heure sont lancées les sauvegardes complètes du serveur Orion ?"
        route = _route(_turn(client, question))
        assert (route["mode"], route["intent"]) == ("rag", "operational")
        assert route["collections"] == [collection["id"]]
        # A key that may not read the collections is told why they were not used.
        _, chat_only = live.login("admin", ["chat"])
        hidden = _route(_turn(chat_only, question))
        assert hidden["mode"] != "rag"
        assert "lacks the knowledge:read scope" in hidden["reason"]


def test_the_route_reaches_openai_clients(live_server: LiveFactory) -> None:
    with _router_on(live_server) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key=live.admin_key, max_retries=0)
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Salut, comment ça va ?"}],
            max_tokens=16,
            stream=True,
        )
        extras = [c.model_extra.get("concilium") for c in stream if c.model_extra]
        routes = [e for e in extras if e and e["type"] == "route"]
        assert len(routes) == 1
        assert (routes[0]["mode"], routes[0]["intent"]) == ("direct", "chit_chat")
        full = client.chat.completions.create(
            model="default",
            messages=[
                {
                    "role": "user",
                    "content": "Translate this sentence into Spanish: the train is late.",
                }
            ],
            max_tokens=16,
        )
        route = full.model_extra["concilium"]["route"]  # type: ignore[index]
        assert (route["mode"], route["intent"]) == ("direct", "generation")
