"""Rerankers change results (the complaint is that rerank settings "do nothing")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from concilium.auth.principal import OPERATOR
from concilium.errors import BackendUnavailable, InvalidRequest
from concilium.knowledge.rerank import LLMReranker
from concilium.knowledge.service import Upload
from concilium.knowledge.settings import CollectionSettings
from tests.knowledge.conftest import Knowledge, KnowledgeFactory
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import remote_backend

PASSAGES = {
    "a.txt": "Solar panels convert sunlight into electricity for the house.",
    "b.txt": "Solar water heaters warm the water of the house with sunlight.",
    "c.txt": "A heat pump moves heat from the garden into the house, even in winter.",
}
QUERY = "how is the house heated with sunlight"


async def _collection(k: Knowledge) -> str:
    cid = await k.collection()
    job = await k.service.ingest(
        OPERATOR, cid, [Upload(name, text.encode()) for name, text in PASSAGES.items()]
    )
    assert (await k.run(job.id)).progress.indexed == len(PASSAGES)
    return cid


def _sources(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [h.source for h in hits]


async def test_remote_reranker_reorders_and_only_sees_the_top(
    make_knowledge: KnowledgeFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    k = await make_knowledge(
        backends={"rr": remote_backend(url)},
        knowledge={"rerankers": {"jina": {"kind": "remote", "backend": "rr", "model": "m"}}},
    )
    cid = await _collection(k)
    plain = await k.service.search(OPERATOR, QUERY, [cid])
    assert _sources(plain)[0] != "c.txt"  # the heat pump passage does not say "sunlight"

    fake.rerank_words = ["heat pump", "garden", "winter"]
    reranked = await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": "jina"})
    assert _sources(reranked)[0] == "c.txt"
    assert reranked[0].scores["rerank"] == 3.0
    [sent] = fake.rerank_requests
    assert sent["query"] == QUERY
    assert sent["model"] == "m"
    assert sorted(sent["documents"]) == sorted(PASSAGES.values())

    # Only the best ``rerank_top`` candidates go to the reranker; the others stay behind.
    top_one = await k.service.search(
        OPERATOR, QUERY, [cid], options={"rerank": "jina", "rerank_top": 1}
    )
    assert len(fake.rerank_requests[-1]["documents"]) == 1
    assert _sources(top_one) == _sources(plain)

    # A collection setting applies to every search of it.
    tuned = CollectionSettings.model_validate({"retrieval": {"rerank": "jina"}})
    await k.service.update_collection(OPERATOR, cid, settings=tuned)
    assert _sources(await k.service.search(OPERATOR, QUERY, [cid]))[0] == "c.txt"
    assert _sources(await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": ""})) == (
        _sources(plain)
    )

    fake.push(Behaviour(kind="status", status=503))
    with pytest.raises(BackendUnavailable, match="jina"):
        await k.service.search(OPERATOR, QUERY, [cid])


async def test_llm_reranker_follows_the_judges_scores(
    make_knowledge: KnowledgeFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    k = await make_knowledge(
        backends={"judge": remote_backend(url)},
        chat={"default_model": "fake-model"},
        cache={"enabled": False},
    )
    cid = await _collection(k)
    plain = _sources(await k.service.search(OPERATOR, QUERY, [cid]))
    # The judge reads passages in the incoming order; the last one gets the best score,
    # the second answers something unreadable (scored 0).
    fake.push(
        Behaviour(text='{"relevance": 1}'),
        Behaviour(text="I think it is relevant"),
        Behaviour(text='{"relevance": 3}'),
    )
    reranked = await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": "llm"})
    assert _sources(reranked) == [plain[2], plain[0], plain[1]]
    assert [h.scores["rerank"] for h in reranked] == [3.0, 1.0, 0.0]
    judge = k.service.retriever.rerankers.get("llm")
    assert isinstance(judge, LLMReranker)
    assert judge.unreadable == 1
    asked = fake.requests[-1]
    assert asked["temperature"] == 0
    assert asked["response_format"]["type"] == "json_schema"
    assert "Query: " + QUERY in asked["messages"][1]["content"]


async def test_llm_reranker_reads_the_embedded_model_constrained_answers(
    make_knowledge: KnowledgeFactory, models_dir: Path
) -> None:
    """The real local model, held to the JSON schema by llama.cpp's grammar."""
    k = await make_knowledge(cache={"enabled": False})
    cid = await _collection(k)
    reranked = await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": "llm"})
    judge = k.service.retriever.rerankers.get("llm")
    assert isinstance(judge, LLMReranker)
    assert judge.unreadable == 0
    scores = [h.scores["rerank"] for h in reranked]
    assert all(s in (0.0, 1.0, 2.0, 3.0) for s in scores)
    assert scores == sorted(scores, reverse=True)


async def test_cross_encoder_problems_are_clear(
    make_knowledge: KnowledgeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "ce"
    model_dir.mkdir()
    k = await make_knowledge(
        knowledge={
            "rerankers": {
                "missing": {"kind": "cross-encoder", "path": str(tmp_path / "absent")},
                "ce": {"kind": "cross-encoder", "path": str(model_dir)},
            }
        }
    )
    cid = await _collection(k)
    with pytest.raises(InvalidRequest, match="not a directory"):
        await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": "missing"})
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # not installed
    with pytest.raises(InvalidRequest, match="needs sentence-transformers"):
        await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": "ce"})
    with pytest.raises(InvalidRequest, match="unknown reranker 'nope'"):
        await k.service.search(OPERATOR, QUERY, [cid], options={"rerank": "nope"})
