"""Knowledge over real HTTP: uploads, jobs, versions, search, grounded answers, embeddings.

The chat model is the scripted OpenAI-protocol server (the process edge); everything
else — parsers, embedder, indexes, retrieval, the RAG mode — is the real thing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from httpx_sse import connect_sse

from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, LiveFactory, remote_backend, wait_for_job

KNOWLEDGE = ["chat", "knowledge:read", "knowledge:write"]

LEAVE = (
    "# Congés payés\n\n"
    "Chaque salarié a droit à 27 jours de congés payés par année civile. "
    "La demande se fait dans l'outil RH au moins un mois à l'avance.\n\n"
    "## Report\n\nLes jours non pris au 31 mars sont perdus, sauf accord écrit du manager.\n"
)
PARKING = (
    "Le parking du siège ouvre à 7 heures et ferme à 21 heures. "
    "Les badges d'accès sont délivrés par l'accueil au rez-de-chaussée.\n"
)


@pytest.fixture
def kb(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Iterator[tuple[Live, FakeOpenAI, Any, dict[str, Any]]]:
    """A server whose chat model is scripted, a client with knowledge scopes, and a
    collection "handbook" holding two French documents."""
    fake, url = fake_openai
    with live_server(
        backends={"remote": remote_backend(url)},
        chat={"default_model": "fake-model"},
        knowledge={"max_file_bytes": 64 * 1024, "parse_workers": 1},
    ) as live:
        _, client = live.login("admin", KNOWLEDGE)
        collection = client.post("/api/collections", json={"name": "handbook"}).json()
        job = client.post(
            f"/api/collections/{collection['id']}/documents",
            files=[
                ("files", ("conges.md", LEAVE.encode())),
                ("files", ("parking.txt", PARKING.encode())),
            ],
            data={"tags": ["rh"]},
        )
        assert job.status_code == 202, job.text
        assert wait_for_job(client, job.json()["id"])["status"] == "completed"
        yield live, fake, client, collection


def _turn(client: Any, content: str, **extra: Any) -> dict[str, Any]:
    conv = client.post("/api/conversations", json={}).json()
    response = client.post(
        f"/api/conversations/{conv['id']}/messages", json={"content": content, **extra}
    )
    assert response.status_code == 200, response.text
    message: dict[str, Any] = response.json()["message"]
    return message


# -- documents and jobs ------------------------------------------------------------------


def test_upload_reports_progress_versions_and_keeps_the_original(kb: Any) -> None:
    _, _, client, collection = kb
    cid = collection["id"]
    listed = client.get(f"/api/collections/{cid}/documents").json()
    assert listed["total"] == 2
    leave = next(d for d in listed["items"] if d["source"] == "conges.md")
    assert leave["language"] == "fr"
    assert leave["tags"] == ["rh"]
    assert leave["current_version"]["number"] == 1

    chunks = client.get(f"/api/documents/{leave['id']}/chunks").json()
    assert chunks[0]["heading_path"][0] == "Congés payés"
    assert chunks[0]["char_start"] < chunks[0]["char_end"] <= len(LEAVE)
    original = client.get(f"/api/documents/{leave['id']}/file")
    assert original.content == LEAVE.encode()
    assert "sandbox" in original.headers["content-security-policy"]

    # Same bytes: skipped. Changed bytes: version 2, and only its text is found.
    same = client.post(
        f"/api/collections/{cid}/documents", files=[("files", ("conges.md", LEAVE.encode()))]
    ).json()
    assert wait_for_job(client, same["id"])["progress"]["skipped"] == 1
    changed = LEAVE.replace("27 jours", "30 jours")
    job = client.post(
        f"/api/collections/{cid}/documents", files=[("files", ("conges.md", changed.encode()))]
    ).json()
    done = wait_for_job(client, job["id"])
    assert done["status"] == "completed"
    assert done["progress"]["indexed"] == 1
    detail = client.get(f"/api/documents/{leave['id']}").json()
    versions = {v["number"]: v for v in detail["versions"]}
    assert [v["number"] for v in detail["versions"]] == [2, 1]  # newest first
    assert detail["current_version"]["number"] == 2
    assert versions[1]["retired_at"] is not None
    assert versions[2]["retired_at"] is None
    hits = client.post(
        "/api/search", json={"query": "jours de congés payés", "collections": [cid]}
    ).json()["hits"]
    texts = " ".join(h["text"] for h in hits)
    assert "30 jours" in texts
    assert "27 jours" not in texts
    old = client.get(f"/api/documents/{leave['id']}/file", params={"version": versions[1]["id"]})
    assert old.content == LEAVE.encode()


def test_bad_files_fail_alone_with_a_reason(kb: Any) -> None:
    _, _, client, collection = kb
    cid = collection["id"]
    job = client.post(
        f"/api/collections/{cid}/documents",
        files=[
            ("files", ("tool.exe", b"MZ\x90\x00" + bytes(range(256)) * 4)),
            ("files", ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog")),
            ("files", ("notes.txt", "Le code wifi des invités est TOURNESOL.".encode())),
        ],
    ).json()
    done = wait_for_job(client, job["id"])
    assert done["status"] == "completed"
    assert done["progress"]["indexed"] == 1
    assert done["progress"]["failed"] == 2
    reasons = {f["source"]: f["reason"] for f in done["failures"]}
    assert reasons == {"tool.exe": "unsupported", "broken.pdf": "corrupt"}
    assert all(f["error"] for f in done["failures"])

    too_big = client.post(
        f"/api/collections/{cid}/documents",
        files=[("files", ("big.txt", b"a" * (64 * 1024 + 1)))],
    )
    assert too_big.status_code == 413
    assert too_big.headers["content-type"].startswith("application/problem+json")
    no_files = client.post(f"/api/collections/{cid}/documents", data={"tags": ["x"]})
    assert no_files.status_code == 422
    not_multipart = client.post(f"/api/collections/{cid}/documents", json={"files": []})
    assert not_multipart.status_code == 422
    # Nothing of the refused requests was stored.
    names = {d["source"] for d in client.get(f"/api/collections/{cid}/documents").json()["items"]}
    assert names == {"conges.md", "parking.txt", "notes.txt"}


def test_retry_requeues_only_the_failed_files(kb: Any) -> None:
    _, _, client, collection = kb
    job = client.post(
        f"/api/collections/{collection['id']}/documents",
        files=[("files", ("empty.txt", b"")), ("files", ("ok.txt", b"Un texte correct."))],
    ).json()
    done = wait_for_job(client, job["id"])
    assert (done["progress"]["indexed"], done["progress"]["failed"]) == (1, 1)
    retried = client.post(f"/api/jobs/{job['id']}/retry")
    assert retried.status_code == 200, retried.text
    again = wait_for_job(client, job["id"])
    assert again["status"] == "completed"
    assert (again["progress"]["indexed"], again["progress"]["failed"]) == (1, 1)
    assert client.post(f"/api/jobs/{'0' * 32}/retry").status_code == 404


def test_search_filters_and_validation(kb: Any) -> None:
    _, _, client, collection = kb
    cid = collection["id"]
    found = client.post(
        "/api/search",
        json={"query": "à quelle heure ferme le parking", "collections": ["handbook"]},
    )
    assert found.status_code == 200, found.text
    top = found.json()["hits"][0]
    assert top["source"] == "parking.txt"
    assert top["location"]
    assert set(top["scores"]) >= {"bm25", "dense", "relevance"}
    assert 0 < top["relevance"] <= 1

    tagged = client.post(
        "/api/search",
        json={"query": "parking", "collections": [cid], "filters": {"tags": ["absent"]}},
    ).json()
    assert tagged["hits"] == []
    only_bm25 = client.post(
        "/api/search", json={"query": "badges accueil", "collections": [cid], "mode": "bm25"}
    ).json()["hits"]
    assert set(only_bm25[0]["scores"]) == {"bm25", "relevance"}

    for bad in (
        {"query": "", "collections": [cid]},
        {"query": "x", "collections": []},
        {"query": "x", "collections": [cid], "k": 0},
        {"query": "x", "collections": [cid], "alpha": 2},
        {"query": "x", "collections": [cid], "mode": "magic"},
        {"query": "x", "collections": [cid], "filters": {"languages": ["french!"]}},
        {"query": "x", "collections": [cid], "surprise": True},
    ):
        response = client.post("/api/search", json=bad)
        assert response.status_code == 422, (bad, response.text)
    unknown = client.post("/api/search", json={"query": "x", "collections": ["nope"]})
    assert unknown.status_code == 404
    no_reranker = client.post(
        "/api/search", json={"query": "x", "collections": [cid], "rerank": "nope"}
    )
    assert no_reranker.status_code == 422
    assert "nope" in no_reranker.json()["detail"]


def test_deleting_a_document_removes_it_from_search(kb: Any) -> None:
    _, _, client, collection = kb
    cid = collection["id"]
    items = client.get(f"/api/collections/{cid}/documents").json()["items"]
    parking = next(d for d in items if d["source"] == "parking.txt")
    assert client.delete(f"/api/documents/{parking['id']}").status_code == 204
    hits = client.post(
        "/api/search", json={"query": "parking badges", "collections": [cid]}
    ).json()["hits"]
    assert all(h["source"] != "parking.txt" for h in hits)
    assert client.get(f"/api/documents/{parking['id']}").status_code == 404
    stats = client.get(f"/api/collections/{cid}").json()
    assert stats["documents"] == 1


# -- grounded answers --------------------------------------------------------------------


def test_rag_turn_grounds_the_prompt_and_stores_cited_sources(kb: Any) -> None:
    _, fake, client, collection = kb
    fake.default = Behaviour(text="Vous avez droit à 27 jours de congés payés par an [1].")
    message = _turn(
        client,
        "Combien de jours de congés payés ai-je par an ?",
        mode="rag",
        collections=[collection["id"]],
    )
    system, asked = fake.requests[-1]["messages"]
    assert system["role"] == "system"
    assert "en français" in system["content"]
    # The numbered passages travel with the question.
    assert asked["role"] == "user"
    assert asked["content"].startswith("Sources :\n\n[1] ")
    assert "27 jours" in asked["content"]
    assert asked["content"].endswith("Question : Combien de jours de congés payés ai-je par an ?")
    assert message["content"].endswith("[1].")
    first = message["sources"][0]
    assert first["n"] == 1
    assert first["source"] == "conges.md"
    assert first["cited"] is True
    assert first["heading_path"][0] == "Congés payés"
    assert "27 jours" in first["snippet"]
    assert all(s["cited"] is False for s in message["sources"][1:])


def test_rag_stream_sends_sources_before_the_text(kb: Any) -> None:
    _, fake, client, _ = kb
    fake.default = Behaviour(text="Il ouvre à 7 heures [1].")
    conv = client.post("/api/conversations", json={}).json()
    with connect_sse(
        client,
        "POST",
        f"/api/conversations/{conv['id']}/messages",
        json={
            "content": "À quelle heure ouvre le parking ?",
            "stream": True,
            "collections": ["handbook"],
        },
    ) as source:
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    kinds = [kind for kind, _ in events]
    assert kinds.index("sources") < kinds.index("token")
    sources = next(data for kind, data in events if kind == "sources")["sources"]
    assert sources[0]["source"] == "parking.txt"
    done = events[-1]
    assert done[0] == "done"
    assert done[1]["extra"]["cited"] == [1]
    assert done[1]["extra"]["citations"] == [
        {"start": 0, "end": len("Il ouvre à 7 heures [1]."), "sources": [1], "claimed": [1]}
    ]


def test_rag_says_nothing_was_found_without_asking_the_model(kb: Any) -> None:
    _, fake, client, collection = kb
    calls = fake.calls
    message = _turn(
        client,
        "What is the orbital period of the moons of Neptune?",
        mode="rag",
        collections=[collection["id"]],
    )
    assert fake.calls == calls
    assert "no relevant passage" in message["content"]
    assert "handbook" in message["content"]
    assert message["sources"] == []
    # A threshold of 0 lets the best passages through: the model is asked.
    _turn(
        client,
        "What is the orbital period of the moons of Neptune?",
        mode="rag",
        collections=[collection["id"]],
        retrieval={"min_score": 0},
    )
    assert fake.calls == calls + 1


def test_rag_needs_the_knowledge_scope_and_a_readable_collection(kb: Any) -> None:
    live, _, _, collection = kb
    _, chat_only = live.login("admin", ["chat"])
    conv = chat_only.post("/api/conversations", json={}).json()
    refused = chat_only.post(
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "Congés ?", "mode": "rag", "collections": [collection["id"]]},
    )
    assert refused.status_code == 403
    models = {m["id"] for m in chat_only.get("/v1/models").json()["data"]}
    assert "rag:handbook" not in models

    _, other = live.user(scopes=KNOWLEDGE)
    conv = other.post("/api/conversations", json={}).json()
    hidden = other.post(
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "Congés ?", "mode": "rag", "collections": [collection["id"]]},
    )
    assert hidden.status_code == 404
    bad = other.post(
        f"/api/conversations/{conv['id']}/messages",
        json={"content": "Congés ?", "mode": "rag", "retrieval": {"k": 0}},
    )
    assert bad.status_code == 422


def test_openai_rag_models_return_sources(kb: Any) -> None:
    _, fake, client, _ = kb
    fake.default = Behaviour(text="27 jours par an [1].")
    models = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert "rag:handbook" in models
    body = {
        "model": "rag:handbook",
        "messages": [{"role": "user", "content": "Combien de jours de congés payés par an ?"}],
    }
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["choices"][0]["message"]["content"] == "27 jours par an [1]."
    assert data["sources"][0]["source"] == "conges.md"

    with connect_sse(client, "POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        chunks = [json.loads(e.data) for e in s.iter_sse() if e.data != "[DONE]"]
    with_sources = [c for c in chunks if "sources" in c]
    assert len(with_sources) == 1
    assert with_sources[0]["choices"] == []
    assert chunks.index(with_sources[0]) < next(
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["delta"].get("content")
    )
    explicit = client.post(
        "/v1/chat/completions", json={**body, "model": "rag:handbook@fake-model"}
    )
    assert explicit.status_code == 200
    missing = client.post("/v1/chat/completions", json={**body, "model": "rag:nowhere"})
    assert missing.status_code == 404


def test_citation_markers_that_point_nowhere_never_reach_the_user(kb: Any) -> None:
    """The model cites [9] (no such source) and [2] (a source that says nothing of it):
    the stream, the stored message and the OpenAI reply all show the supporting [n]."""
    _, fake, client, collection = kb
    fake.default = Behaviour(text="Chaque salarié a droit à 27 jours de congés payés. [9]")
    body = {"content": "Combien de jours de congés payés ?", "collections": [collection["id"]]}
    stored = _turn(client, **body, mode="rag")
    sources = {s["n"]: s["source"] for s in stored["sources"]}
    assert "[9]" not in stored["content"]
    cited = int(stored["content"].rsplit("[", 1)[1].rstrip("]"))
    assert sources[cited] == "conges.md"
    conv = client.post("/api/conversations", json={}).json()
    with connect_sse(
        client,
        "POST",
        f"/api/conversations/{conv['id']}/messages",
        json={**body, "mode": "rag", "stream": True},
    ) as events:
        streamed = "".join(
            json.loads(e.data)["text"] for e in events.iter_sse() if e.event == "token"
        )
    assert streamed == stored["content"]
    fake.default = Behaviour(text="27 jours par an [2].")
    reply = client.post(
        "/v1/chat/completions",
        json={
            "model": "rag:handbook",
            "messages": [{"role": "user", "content": "Combien de jours de congés payés ?"}],
        },
    ).json()
    content = reply["choices"][0]["message"]["content"]
    number = int(content.rsplit("[", 1)[1].rstrip("].")) if "[" in content else None
    assert number is None or reply["sources"][number - 1]["source"] == "conges.md", content


# -- embeddings ----------------------------------------------------------------------------


def test_embeddings_endpoint_speaks_openai(kb: Any) -> None:
    _, _, client, _ = kb
    texts = ["Le chat dort sur le canapé.", "The cat sleeps on the sofa.", "Taux d'intérêt."]
    floats = client.post("/v1/embeddings", json={"model": "default", "input": texts})
    assert floats.status_code == 200, floats.text
    data = floats.json()
    assert data["object"] == "list"
    assert data["model"] == "use-m3"
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = np.array([d["embedding"] for d in data["data"]], dtype=np.float32)
    assert vectors.shape == (3, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # across languages
    assert data["usage"]["prompt_tokens"] > 0

    packed = client.post(
        "/v1/embeddings", json={"model": "use-m3", "input": texts[0], "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype=np.float32)
    assert np.allclose(decoded, vectors[0], atol=1e-6)

    for bad, status in (
        ({"model": "default", "input": []}, 400),
        ({"model": "nope", "input": "x"}, 404),
        ({"model": "default", "input": "x", "dimensions": 3}, 400),
        ({"model": "default", "input": ["a" * 100_000] * 11}, 413),
        ({"model": "default"}, 400),  # the OpenAI routes answer validation errors with 400
        ({"model": "default", "input": [1, 2]}, 400),
    ):
        response = client.post("/v1/embeddings", json=bad)
        assert response.status_code == status, (bad, response.text)
