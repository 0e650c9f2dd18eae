"""The retriever works through the index protocols: a collection indexed by other
implementations (brute force here) answers like the default tantivy + usearch pair."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from concilium.auth.principal import OPERATOR
from concilium.knowledge.index import Precision
from concilium.knowledge.index.manager import IndexManager
from concilium.knowledge.service import KnowledgeService, Upload
from tests.knowledge.conftest import Knowledge


class WordOverlap:
    """Counts the query's words in each text: crude, but a LexicalSearch."""

    def __init__(self, path: Path) -> None:
        self.texts: dict[int, set[str]] = {}

    @property
    def count(self) -> int:
        return len(self.texts)

    def apply(self, adds: Iterable[tuple[int, str, str | None]], removes: Iterable[int]) -> None:
        for key in removes:
            self.texts.pop(key, None)
        for key, text, _ in adds:
            self.texts[key] = set(re.findall(r"\w+", text.lower()))

    def clear(self) -> None:
        self.texts.clear()

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        words = set(re.findall(r"\w+", query.lower()))
        scored = [(key, float(len(words & text))) for key, text in self.texts.items()]
        return sorted((s for s in scored if s[1] > 0), key=lambda s: -s[1])[:limit]


class BruteForce:
    """Exact cosine over every vector: a VectorSearch with no index at all."""

    def __init__(self, path: Path, dim: int, precision: Precision) -> None:
        self.dim, self.precision = dim, precision
        self.vectors: dict[int, np.ndarray] = {}

    @property
    def count(self) -> int:
        return len(self.vectors)

    def apply(self, adds: Iterable[tuple[int, np.ndarray]], removes: Iterable[int]) -> None:
        for key in removes:
            self.vectors.pop(key, None)
        for key, vector in adds:
            self.vectors[key] = vector / np.linalg.norm(vector)

    def save(self) -> None:
        pass

    def clear(self) -> None:
        self.vectors.clear()

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        query = vector / np.linalg.norm(vector)
        scored = [(key, float(v @ query)) for key, v in self.vectors.items()]
        return sorted(scored, key=lambda s: -s[1])[:limit]


async def test_other_index_implementations_answer_through_the_same_retriever(
    knowledge: Knowledge,
) -> None:
    cid = await knowledge.collection()
    texts = [
        "The boiler is serviced every October by the heating company.",
        "Tomatoes are sown indoors in March and planted out in May.",
        "The car's tyres are changed for winter ones in November.",
    ]
    job = await knowledge.service.ingest(
        OPERATOR, cid, [Upload(f"n{i}.txt", t.encode()) for i, t in enumerate(texts)]
    )
    await knowledge.run(job.id)
    default = knowledge.service
    other = KnowledgeService(
        knowledge.settings,
        knowledge.db,
        default.workspaces,
        default.embedders,
        default.rerankers,
        indexes=IndexManager(
            knowledge.settings.data_dir / "other-indexes",
            knowledge.db,
            default.embedders.dim,
            lexical=WordOverlap,
            vector=BruteForce,
        ),
    )
    for mode in ("bm25", "dense", "hybrid"):
        ours = await other.search(
            OPERATOR, "When is the boiler serviced?", [cid], options={"mode": mode}
        )
        theirs = await default.search(
            OPERATOR, "When is the boiler serviced?", [cid], options={"mode": mode}
        )
        assert ours, mode
        assert ours[0].chunk_id == theirs[0].chunk_id, mode
        assert "boiler" in ours[0].text
    index = await other.indexes.current(await default.collection(OPERATOR, cid))
    assert isinstance(index.vector, BruteForce)
    assert index.vector.count == index.lexical.count == 3
