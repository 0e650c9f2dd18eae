"""The intent classifier: the shipped examples, the real multilingual embedder, the model
fallback when unsure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from concilium.orchestrator.auto import IntentModeChooser
from concilium.orchestrator.intent import INTENTS, IntentClassifier, load_examples, shipped_examples
from concilium.services import running_services
from tests.conftest import TEST_MODEL, SettingsFactory


def _classifier(services: object) -> IntentClassifier:
    auto = services.orchestrator.auto  # type: ignore[attr-defined]
    assert isinstance(auto, IntentModeChooser)
    return auto.classifier


def test_the_shipped_set_covers_every_intent_in_both_languages() -> None:
    examples = shipped_examples(None)
    assert len(examples) >= 150
    per = Counter((e.intent, e.lang) for e in examples)
    assert {intent for intent, _ in per} == set(INTENTS)
    assert all(per[(intent, lang)] >= 20 for intent in INTENTS for lang in ("fr", "en"))
    held = shipped_examples("heldout")
    train = shipped_examples("train")
    assert len(held) >= 50
    assert not {e.text for e in held} & {e.text for e in train}


async def test_held_out_examples_are_classified_by_the_embedder(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(orchestration={"classifier": {"enabled": True, "llm_fallback": False}})
    async with running_services(settings) as services:
        classifier = _classifier(services)
        held = shipped_examples("heldout")
        decisions = [await classifier.classify(e.text) for e in held]
    right = sum(d.intent == e.intent for d, e in zip(decisions, held, strict=True))
    assert right / len(held) >= 0.85  # 0.90 measured (BENCHMARKS.md)
    assert all(d.method == "embedding" for d in decisions)
    assert all(abs(sum(d.scores.values()) - 1) < 1e-6 for d in decisions)
    # Confident decisions are right more often than unsure ones.
    sure = [
        d.intent == e.intent for d, e in zip(decisions, held, strict=True) if d.confidence >= 0.9
    ]
    assert sum(sure) / len(sure) > right / len(held)


async def test_extra_examples_from_a_file_teach_new_phrasings(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    extra = tmp_path / "intents.jsonl"
    extra.write_text(
        '{"text": "abracadabra zorglub", "intent": "operational"}\n'
        '{"text": "zorglub abracadabra, tout de suite", "intent": "operational"}\n',
        encoding="utf-8",
    )
    settings = make_settings(
        orchestration={
            "classifier": {"enabled": True, "llm_fallback": False, "examples_file": str(extra)}
        }
    )
    async with running_services(settings) as services:
        decision = await _classifier(services).classify("abracadabra zorglub !")
    assert decision.intent == "operational"


def test_a_bad_examples_file_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "intent": "chit_chat"}\n{"text": "x", "intent": "nope"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: unknown intent 'nope'"):
        load_examples(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not an example"):
        load_examples(bad)


@pytest.mark.model
async def test_an_unsure_classifier_asks_the_model(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        orchestration={
            "classifier": {
                "enabled": True,
                "threshold": 1.0,
                "llm_fallback": True,
                "fallback_model": TEST_MODEL,
            }
        }
    )
    async with running_services(settings) as services:
        decision = await _classifier(services).classify("the thing from before, again")
    assert decision.method == "model"
    assert decision.intent in INTENTS


async def test_a_fallback_that_fails_keeps_the_embedding_decision(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        backends={"down": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}},
        orchestration={
            "classifier": {
                "enabled": True,
                "threshold": 1.0,
                "llm_fallback": True,
                "fallback_model": "down/m",
            }
        },
    )
    async with running_services(settings) as services:
        decision = await _classifier(services).classify("bonjour à tous")
    assert (decision.intent, decision.method) == ("chit_chat", "embedding")
