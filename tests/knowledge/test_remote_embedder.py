"""A remote ``/v1/embeddings`` embedder, served here by another Concilium server."""

from __future__ import annotations

import pytest

from concilium.auth.principal import OPERATOR
from concilium.knowledge.embedders.remote import RemoteEmbedderError
from concilium.knowledge.service import Upload
from tests.knowledge.conftest import KnowledgeFactory
from tests.support.live import LiveFactory

PEER_USE = {"backend": "peer", "model": "use-m3", "dim": 512}
PASSAGES = {
    "tides.txt": "Les marées sont causées par l'attraction de la Lune et du Soleil.",
    "bread.txt": "Le pain se fait avec de la farine, de l'eau, du sel et du levain.",
    "rails.txt": "The first public railway opened in 1825 between Stockton and Darlington.",
}


async def test_remote_vectors_search_like_local_ones(
    make_knowledge: KnowledgeFactory, live_server: LiveFactory
) -> None:
    with live_server() as peer:
        key, _ = peer.login("admin", ["knowledge:read"])
        backend = {"type": "openai", "base_url": peer.url + "/v1", "api_key": key, "models": []}
        k = await make_knowledge(
            backends={"peer": backend},
            knowledge={"embedders": {"peer-use": PEER_USE}},
        )
        remote = await k.collection("remote", embedder="peer-use")
        local = await k.collection("local")
        for cid in (remote, local):
            job = await k.service.ingest(
                OPERATOR, cid, [Upload(n, t.encode()) for n, t in PASSAGES.items()]
            )
            assert (await k.run(job.id)).progress.indexed == len(PASSAGES)

        for query in ("pourquoi la mer monte et descend", "when did trains start"):
            options = {"mode": "dense"}
            far = await k.service.search(OPERATOR, query, [remote], options=options)
            near = await k.service.search(OPERATOR, query, [local], options=options)
            assert [h.source for h in far] == [h.source for h in near]
            # float32 vectors, sent as JSON numbers: equal to a few ulps
            assert [h.relevance for h in far] == pytest.approx(
                [h.relevance for h in near], abs=1e-6
            )

        wrong = await make_knowledge(
            backends={"peer": {**backend, "api_key": "ck_not_a_key"}},
            knowledge={"embedders": {"peer-use": PEER_USE}},
        )
        refused = await wrong.collection("refused", embedder="peer-use")
        with pytest.raises(RemoteEmbedderError, match="401"):
            await wrong.service.search(OPERATOR, "marées", [refused], options={"mode": "dense"})
