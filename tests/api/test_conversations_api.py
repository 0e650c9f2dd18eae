"""The chat API over real HTTP: conversations, turns as JSON and SSE, branches, cancellation."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, remote_backend

FAKE_TEXT = "Hello from the fake server."


def _new(live: Live, **body: Any) -> dict[str, Any]:
    response = live.http.post("/api/conversations", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _post(live: Live, cid: str, content: str, **extra: Any) -> dict[str, Any]:
    response = live.http.post(
        f"/api/conversations/{cid}/messages", json={"content": content, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def _events(source: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_conversation_crud(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    first = _new(live)
    assert first["title"] == "New conversation"
    second = _new(live, title="Trip", model="fake-model", system_prompt="Be brief.")
    assert (second["title"], second["model"], second["system_prompt"]) == (
        "Trip",
        "fake-model",
        "Be brief.",
    )

    page = live.http.get("/api/conversations", params={"limit": 1}).json()
    assert page["total"] == 2
    assert [c["id"] for c in page["items"]] == [second["id"]]

    renamed = live.http.patch(f"/api/conversations/{first['id']}", json={"title": "Renamed"})
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Renamed"
    detail = live.http.get(f"/api/conversations/{first['id']}").json()
    assert detail["title"] == "Renamed"
    assert detail["messages"] == []

    assert live.http.delete(f"/api/conversations/{first['id']}").status_code == 204
    assert live.http.get(f"/api/conversations/{first['id']}").status_code == 404
    assert live.http.delete(f"/api/conversations/{first['id']}").status_code == 404
    assert live.http.get("/api/conversations").json()["total"] == 1


def test_a_turn_as_json_is_stored_with_its_measurements(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _fake = fake_live
    conv = _new(live)
    turn = _post(live, conv["id"], "Bonjour, ça va ?")
    assert turn["user_message"]["content"] == "Bonjour, ça va ?"
    message = turn["message"]
    assert message["content"] == FAKE_TEXT
    assert message["status"] == "complete"
    assert message["parent_id"] == turn["user_message"]["id"]
    assert (message["backend"], message["model"]) == ("remote", "fake-model")
    assert (message["prompt_tokens"], message["completion_tokens"]) == (11, 5)
    assert message["latency_ms"] >= 0
    assert message["ttft_ms"] is not None
    assert message["finish_reason"] == "stop"
    detail = live.http.get(f"/api/conversations/{conv['id']}").json()
    assert detail["title"] == "Bonjour, ça va ?"
    assert detail["active_path"] == [turn["user_message"]["id"], message["id"]]


def test_a_turn_streams_typed_events_over_sse(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    conv = _new(live)
    with connect_sse(
        live.http,
        "POST",
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "Hi", "stream": True},
    ) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = _events(source)
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["message", "backend"]
    assert kinds[-2:] == ["usage", "done"]
    assert set(kinds[2:-2]) == {"token"}
    assert "".join(data["text"] for kind, data in events if kind == "token") == FAKE_TEXT
    started = events[0][1]
    stored = live.http.get(
        f"/api/conversations/{conv['id']}/messages/{started['assistant_message_id']}"
    ).json()
    assert stored["content"] == FAKE_TEXT
    assert stored["status"] == "complete"


def test_accept_header_alone_selects_sse(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    conv = _new(live)
    response = live.http.post(
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "Hi"},
        headers={"Accept": "text/event-stream"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: done" in response.text


def test_history_goes_to_the_model_with_the_system_prompt(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    conv = _new(live, system_prompt="You are terse.")
    _post(live, conv["id"], "first question")
    _post(live, conv["id"], "second question")
    assert fake.requests[-1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": FAKE_TEXT},
        {"role": "user", "content": "second question"},
    ]


def test_the_default_system_prompt_says_who_answers_in_the_user_s_language(
    fake_live: tuple[Live, FakeOpenAI], live_server: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    live, fake = fake_live
    _post(live, _new(live)["id"], "Qui es-tu, et qui t'a créé ?")
    french = fake.requests[-1]["messages"][0]
    assert french["role"] == "system"
    assert "Tu es Concilium" in french["content"]
    assert "pas été créé par OpenAI" in french["content"]
    _post(live, _new(live)["id"], "Who are you, and who made you?")
    english = fake.requests[-1]["messages"][0]["content"]
    assert "You are Concilium" in english
    assert "not made by OpenAI" in english
    assert "fake-model" in english  # the model that answers here
    # Administrators set their own, per language or for all.
    _, url = fake_openai
    with live_server(
        backends={"remote": remote_backend(url)},
        chat={"default_model": "fake-model", "system_prompts": {"fr": "Tu es Hélène."}},
    ) as other:
        _post(other, _new(other)["id"], "Bonjour, qui es-tu ?")
        assert fake.requests[-1]["messages"][0]["content"] == "Tu es Hélène."


def test_editing_a_question_starts_a_branch_and_keeps_the_old_one(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    conv = _new(live)
    one = _post(live, conv["id"], "q1")
    _post(live, conv["id"], "q2")
    fake.default = Behaviour(text="edited answer")
    edit = live.http.post(
        f"/api/conversations/{conv['id']}/messages/{one['user_message']['id']}/edit",
        json={"content": "q1 edited"},
    )
    assert edit.status_code == 200, edit.text
    branch = edit.json()
    assert branch["user_message"]["parent_id"] is None
    assert branch["message"]["content"] == "edited answer"
    assert fake.requests[-1]["messages"][1:] == [{"role": "user", "content": "q1 edited"}]
    detail = live.http.get(f"/api/conversations/{conv['id']}").json()
    assert len(detail["messages"]) == 6
    assert detail["active_path"] == [branch["user_message"]["id"], branch["message"]["id"]]
    # the next turn continues the new branch
    _post(live, conv["id"], "q3")
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == [
        "q1 edited",
        "edited answer",
        "q3",
    ]


def test_regenerating_an_answer_adds_a_sibling_and_switching_branches_works(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    conv = _new(live)
    first = _post(live, conv["id"], "q1")
    fake.default = Behaviour(text="second take")
    again = live.http.post(
        f"/api/conversations/{conv['id']}/messages/{first['message']['id']}/regenerate", json={}
    )
    assert again.status_code == 200, again.text
    regenerated = again.json()["message"]
    assert regenerated["parent_id"] == first["user_message"]["id"]
    assert regenerated["content"] == "second take"
    assert fake.requests[-1]["messages"][1:] == [{"role": "user", "content": "q1"}]

    switched = live.http.patch(
        f"/api/conversations/{conv['id']}", json={"active_leaf_id": first["message"]["id"]}
    )
    assert switched.status_code == 200
    _post(live, conv["id"], "q2")
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["q1", FAKE_TEXT, "q2"]


def test_explicit_cancel_stops_the_backend_and_keeps_the_partial_answer(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.05)
    conv = _new(live)
    events: list[tuple[str, dict[str, Any]]] = []
    with connect_sse(
        live.http,
        "POST",
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "long please", "stream": True},
    ) as source:
        for sse in source.iter_sse():
            events.append((sse.event, json.loads(sse.data)))
            if sse.event == "token" and sum(1 for kind, _ in events if kind == "token") == 3:
                mid = events[0][1]["assistant_message_id"]
                cancel = live.http.post(f"/api/conversations/{conv['id']}/messages/{mid}/cancel")
                assert cancel.status_code == 202
                assert cancel.json() == {"cancelled": True}
    assert events[-1] == ("done", {"type": "done", "finish_reason": "cancelled", "extra": {}})
    _wait_for(lambda: fake.cancelled == 1)
    stored = live.http.get(f"/api/conversations/{conv['id']}/messages/{mid}").json()
    assert stored["status"] == "cancelled"
    assert stored["content"].startswith("w0 w1 w2")
    assert len(stored["content"].split()) < 100
    again = live.http.post(f"/api/conversations/{conv['id']}/messages/{mid}/cancel")
    assert again.status_code == 409


def test_client_disconnect_mid_stream_stops_the_backend(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    conv = _new(live)
    with (
        httpx.Client(base_url=live.url, timeout=10, headers=live.http.headers) as client,
        connect_sse(
            client,
            "POST",
            f"/api/conversations/{conv['id']}/messages",
            json={"content": "long please", "stream": True},
        ) as source,
    ):
        seen = 0
        for sse in source.iter_sse():
            if sse.event == "message":
                mid = json.loads(sse.data)["assistant_message_id"]
            seen += sse.event == "token"
            if seen == 3:
                break
    _wait_for(lambda: fake.cancelled == 1)
    _wait_for(
        lambda: (
            live.http.get(f"/api/conversations/{conv['id']}/messages/{mid}").json()["status"]
            != "generating"
        )
    )
    stored = live.http.get(f"/api/conversations/{conv['id']}/messages/{mid}").json()
    assert stored["status"] == "cancelled"
    assert fake.completed == 0


def test_client_disconnect_during_a_json_turn_stops_the_backend(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    conv = _new(live)
    body = json.dumps({"content": "long"}).encode()
    url = httpx.URL(live.url)
    with socket.create_connection((url.host, url.port)) as sock:
        head = (
            f"POST /api/conversations/{conv['id']}/messages HTTP/1.1\r\nHost: {url.host}\r\n"
            f"Authorization: {live.http.headers['authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        _wait_for(lambda: len(fake.requests) >= 1, timeout=30)  # the backend is streaming
    _wait_for(lambda: fake.cancelled == 1, timeout=30)  # the client left: so does the backend
    assert fake.completed == 0


def test_backend_dying_mid_stream_gives_an_error_event_and_an_incomplete_message(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    fake.default = Behaviour("die", text="alpha beta gamma delta", die_after=2)
    conv = _new(live)
    with connect_sse(
        live.http,
        "POST",
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "hi", "stream": True},
    ) as source:
        events = _events(source)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "error"
    assert "".join(d["text"] for k, d in events if k == "token") == "alpha beta"
    mid = events[0][1]["assistant_message_id"]
    stored = live.http.get(f"/api/conversations/{conv['id']}/messages/{mid}").json()
    assert stored["status"] == "incomplete"
    assert stored["content"] == "alpha beta"
    assert stored["error"]


def test_a_failed_json_turn_is_a_problem_response_and_stays_recorded(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    fake.default = Behaviour("status", status=500)
    conv = _new(live)
    response = live.http.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hi"})
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "backend_error"
    detail = live.http.get(f"/api/conversations/{conv['id']}").json()
    assert [m["status"] for m in detail["messages"]] == ["complete", "error"]


def test_answers_use_the_conversation_model_unless_the_turn_names_one(
    live_server: Any,
    fake_openai_pair: list[tuple[FakeOpenAI, str]],
) -> None:
    (one, url1), (two, url2) = fake_openai_pair
    backends = {
        "one": {"type": "openai", "base_url": url1},
        "two": {"type": "openai", "base_url": url2},
    }
    with live_server(backends=backends, chat={"default_model": "one/m"}) as live:
        conv = _new(live, model="two/m")
        _post(live, conv["id"], "a")
        assert (one.calls, two.calls) == (0, 1)
        _post(live, conv["id"], "b", model="one/m")
        assert (one.calls, two.calls) == (1, 1)
        assert live.http.post("/api/conversations", json={"model": "nope"}).status_code == 404


def _search(client: httpx.Client, q: str, **params: Any) -> dict[str, Any]:
    response = client.get("/api/conversations", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return response.json()


def _titles(page: dict[str, Any]) -> list[str]:
    return [c["title"] for c in page["items"]]


def test_search_finds_titles_and_message_contents_ignoring_case(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    _new(live, title="Trip to Lisbon")
    holidays = _new(live, title="Holidays")
    _post(live, holidays["id"], "Any cheap FLIGHTS to Porto in May?")
    _new(live, title="Unrelated")

    by_title = _search(live.http, "lisbon")
    assert (_titles(by_title), by_title["total"]) == (["Trip to Lisbon"], 1)
    assert by_title["items"][0]["snippet"] is None

    by_message = _search(live.http, "flights porto")
    assert (_titles(by_message), by_message["total"]) == (["Holidays"], 1)
    assert by_message["items"][0]["snippet"] == "Any cheap FLIGHTS to Porto in May?"
    assert _titles(_search(live.http, "  LISBON ")) == ["Trip to Lisbon"]
    assert _titles(_search(live.http, "lisbon porto")) == []  # every word, in one text
    # The answers are searched too; without q, no snippets.
    assert _titles(_search(live.http, "fake server")) == ["Holidays"]
    assert live.http.get("/api/conversations").json()["items"][0]["snippet"] is None


def test_search_matches_percent_and_underscore_literally(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    for title in ("100% done", "1000 done", "snake_case", "snakeXcase"):
        _new(live, title=title)
    assert _titles(_search(live.http, "100%")) == ["100% done"]
    assert _titles(_search(live.http, "%")) == ["100% done"]
    assert _titles(_search(live.http, "snake_case")) == ["snake_case"]
    assert _titles(_search(live.http, "e_c")) == ["snake_case"]


def test_search_never_returns_another_user_s_conversations(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    _, bob = live.user()
    bobs = bob.post("/api/conversations", json={"title": "Secret plans"}).json()
    _post(live, _new(live, title="Admin notes")["id"], "nothing secret")

    assert _titles(_search(live.http, "secret")) == ["Admin notes"]
    assert _titles(_search(live.http, "plans")) == []
    found = _search(bob, "secret")
    assert ([c["id"] for c in found["items"]], found["total"]) == ([bobs["id"]], 1)


def test_blank_or_too_long_search_is_a_problem(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    for q in ("", "   ", "x" * 201, "a\x00b"):
        response = live.http.get("/api/conversations", params={"q": q})
        assert response.status_code == 422, (q, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert live.http.get("/api/conversations", params={"q": "x" * 200}).status_code == 200


def test_search_total_counts_every_match_beyond_the_page(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    budgets = [_new(live, title=f"Budget {year}") for year in (2023, 2024, 2025)]
    _new(live, title="Groceries")
    page = _search(live.http, "budget", limit=2)
    assert page["total"] == 3
    assert [c["id"] for c in page["items"]] == [budgets[2]["id"], budgets[1]["id"]]
    rest = _search(live.http, "budget", limit=2, offset=2)
    assert ([c["id"] for c in rest["items"]], rest["total"]) == ([budgets[0]["id"]], 3)
