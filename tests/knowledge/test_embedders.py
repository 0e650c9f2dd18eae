"""The bundled embedders, each on real text: a question lands nearer its answer than
nearer an unrelated passage, in the dimensions the embedder declares."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from concilium.errors import InvalidRequest
from concilium.knowledge.embedders import EmbedderRegistry
from tests.conftest import SettingsFactory

PASSAGES = [
    "The boiler is serviced every October by the heating company.",
    "Tomatoes are sown indoors in March and planted out in May.",
]


def _ranks_the_answer_first(registry: EmbedderRegistry, name: str, question: str) -> None:
    embedder = registry.get(name)
    documents = embedder.embed(PASSAGES, "document")
    query = embedder.embed([question], "query")
    assert documents.shape == (2, embedder.dim)
    assert np.allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-3)
    scores = documents @ query[0]
    assert scores[0] > scores[1], scores


@pytest.mark.parametrize(
    ("name", "question"),
    [
        ("use-m3", "When is the boiler serviced?"),
        ("e5-small", "Quand l'entretien de la chaudière a-t-il lieu ?"),
        ("static", "boiler serviced"),
    ],
)
def test_a_question_is_nearest_its_answer(
    make_settings: SettingsFactory, name: str, question: str
) -> None:
    _ranks_the_answer_first(EmbedderRegistry(make_settings()), name, question)


def test_minilm_runs_with_its_extra_or_says_how_to_install_it(
    make_settings: SettingsFactory,
) -> None:
    registry = EmbedderRegistry(make_settings())
    if importlib.util.find_spec("torch") is not None:
        _ranks_the_answer_first(registry, "minilm", "When is the boiler serviced?")
        return
    with pytest.raises(InvalidRequest, match=r"pip install 'concilium\[minilm\]'"):
        registry.get("minilm").embed(["text"], "document")
