"""Consensus: workers in parallel, strategies, early exit, timeouts, failures, budgets.

Workers are served by scripted OpenAI-protocol servers (one script per model name, so
parallel requests get their own whatever their order), by a backend that is down, and
by the real SmolLM2 model; the orchestrator, router and consensus engine are ours.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from concilium.config import Settings
from concilium.events import Done, ErrorEvent, Event, Token, WorkerProgress, event_to_dict
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.orchestrator.consensus import (
    WorkerAnswer,
    agreement_pick,
    normalise_answer,
    vote,
)
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.services import Services, running_services
from tests.conftest import TEST_MODEL, SettingsFactory
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import LiveFactory

QUESTION = [ChatMessage("user", "What is the capital of France? Answer with one word.")]
#: Nothing listens there: connections are refused at once.
DOWN = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["fake-model"]}


def _remote(url: str, *models: str) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "models": list(models) or ["fake-model"]}


def _answer(
    i: int, text: str, confidence: float | None = None, weight: float = 1.0
) -> WorkerAnswer:
    return WorkerAnswer(i, f"w{i}", "m", "answered", text, confidence=confidence, weight=weight)


# -- strategies, without models -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("The answer is 42.", "number:42"),
        ("42", "number:42"),
        ("**42**", "number:42"),
        ("B) Paris", "choice:b"),
        ("(c)", "choice:c"),
        ("D.", "choice:d"),
        ("Réponse : Londres", "londres"),
        ("La Tour Eiffel", "tour eiffel"),
        ("Paris.\nIt is the capital.", "paris"),
        ("3,5", "number:3.5"),
    ],
)
def test_answers_are_normalised_before_they_vote(text: str, key: str) -> None:
    assert normalise_answer(text) == key


def test_majority_counts_normalised_answers() -> None:
    result = vote([_answer(0, "Paris"), _answer(1, "paris."), _answer(2, "Lyon")])
    assert result is not None
    assert result.key == "paris"
    assert result.answer.index == 0
    assert math.isclose(result.support, 2 / 3)


def test_a_tie_goes_to_the_more_confident_answer() -> None:
    result = vote([_answer(0, "Paris", 0.4), _answer(1, "Lyon", 0.9)])
    assert result is not None
    assert result.key == "lyon"


def test_weighted_votes_follow_weights_and_confidence() -> None:
    answers = [
        _answer(0, "Paris", 0.5),
        _answer(1, "Paris", 0.5),
        _answer(2, "Lyon", 0.9, weight=3.0),
    ]
    assert vote(answers).key == "paris"  # type: ignore[union-attr]
    weighted = vote(answers, weighted=True)
    assert weighted is not None
    assert weighted.key == "lyon"
    assert math.isclose(weighted.tally["lyon"], 2.7)
    # Confidence matters too: a confident pair beats a heavy but unsure worker.
    unsure = [_answer(0, "Paris", 0.9), _answer(1, "Paris", 0.9), _answer(2, "Lyon", 0.2, 3.0)]
    assert vote(unsure, weighted=True).key == "paris"  # type: ignore[union-attr]


def test_failed_workers_do_not_vote_and_agreement_picks_the_central_answer() -> None:
    failed = WorkerAnswer(3, "w3", "m", "failed", "", error="down")
    assert vote([failed]) is None
    picked = agreement_pick(
        [
            _answer(0, "Paris is the capital of France."),
            _answer(1, "The capital of France is Paris."),
            _answer(2, "Berlin, I think."),
            failed,
        ]
    )
    assert picked is not None
    assert picked.index in (0, 1)


# -- the engine, with scripted servers ------------------------------------------------


async def _events(services: Services, model: str, **request: Any) -> list[Event]:
    prepared = await services.orchestrator.prepare(
        AnswerRequest(
            QUESTION,
            AnswerOptions(model=model, params=GenerationParams(max_tokens=32), **request),
        )
    )
    return [event async for event in services.orchestrator.stream(prepared)]


def _done(events: list[Event]) -> dict[str, Any]:
    done = [e for e in events if isinstance(e, Done)]
    assert done, [event_to_dict(e) for e in events]
    summary = done[-1].consensus
    assert summary is not None
    return summary.to_dict()


def _text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


async def _started(
    make_settings: SettingsFactory, url: str, profiles: dict[str, Any], **extra: Any
) -> AsyncIterator[Services]:
    settings = make_settings(
        backends={"remote": _remote(url), "down": DOWN},
        orchestration={"consensus": profiles},
        **extra,
    )
    async with running_services(settings) as services:
        yield services


@pytest.fixture
def consensus_services(
    make_settings: SettingsFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Callable[..., Any]:
    _, url = fake_openai
    return lambda profiles, **extra: _started(make_settings, url, profiles, **extra)


async def test_early_exit_stops_the_slow_worker_and_skips_the_merger(
    fake_openai: tuple[FakeOpenAI, str], consensus_services: Callable[..., Any]
) -> None:
    fake, _ = fake_openai
    fake.by_model = {
        "a": Behaviour(text="Paris."),
        "b": Behaviour(text="paris"),
        "slow": Behaviour(text="London", start_delay=60),
        "merger": Behaviour(text="merged"),
    }
    profile = {
        "workers": [{"model": "remote/a"}, {"model": "remote/b"}, {"model": "remote/slow"}],
        "merger_model": "remote/merger",
    }
    async for services in consensus_services({"p": profile}):
        events = await _events(services, "consensus:p")
    summary = _done(events)
    assert _text(events) == "Paris."
    assert summary["early_exit"] is True
    assert summary["method"] == "vote"
    statuses = {w["name"]: w["status"] for w in summary["workers"]}
    assert statuses == {
        "remote/a@0.3": "answered",
        "remote/b@0.3": "answered",
        "remote/slow@0.3": "stopped",
    }
    assert [r["model"] for r in fake.requests].count("merger") == 0
    progress = [e for e in events if isinstance(e, WorkerProgress)]
    assert [e.status for e in progress].count("started") == 3
    assert events[0].type == "route"
    assert events[0].profile == "p"


async def test_merger_writes_the_answer_when_workers_disagree(
    fake_openai: tuple[FakeOpenAI, str], consensus_services: Callable[..., Any]
) -> None:
    fake, _ = fake_openai
    fake.by_model = {
        "a": Behaviour(text="Paris"),
        "b": Behaviour(text="Lyon"),
        "merger": Behaviour(text="Paris is the capital."),
    }
    profile = {
        "workers": [{"model": "remote/a", "temperature": 0.1}, {"model": "remote/b"}],
        "merger_model": "remote/merger",
    }
    async for services in consensus_services({"p": profile}):
        events = await _events(services, "consensus:p")
    summary = _done(events)
    assert _text(events) == "Paris is the capital."
    assert summary["method"] == "merger"
    merged = [r for r in fake.requests if r["model"] == "merger"]
    assert len(merged) == 1
    prompt = merged[0]["messages"][-1]["content"]
    assert "Answer 1:\nParis" in prompt
    assert "Answer 2:\nLyon" in prompt
    # Each worker ran at its own temperature.
    sent = {r["model"]: r["temperature"] for r in fake.requests if r["model"] in ("a", "b")}
    assert sent == {"a": 0.1, "b": 0.3}


async def test_a_down_worker_and_a_slow_worker_leave_a_partial_result(
    fake_openai: tuple[FakeOpenAI, str], consensus_services: Callable[..., Any]
) -> None:
    fake, _ = fake_openai
    fake.by_model = {"a": Behaviour(text="Paris"), "slow": Behaviour(text="x", start_delay=60)}
    profile = {
        "workers": [
            {"model": "remote/a"},
            {"model": "down/fake-model"},
            {"model": "remote/slow", "timeout_seconds": 0.5},
            {"model": "no-such-model"},
        ],
        "strategy": "majority",
    }
    async for services in consensus_services({"p": profile}):
        events = await _events(services, "consensus:p")
    summary = _done(events)
    assert _text(events) == "Paris"
    statuses = [w["status"] for w in summary["workers"]]
    assert statuses == ["answered", "failed", "timeout", "failed"]
    assert "no-such-model" in summary["workers"][3]["error"]
    assert summary["answered"] == 1


async def test_when_too_few_workers_answer_the_request_fails_cleanly(
    fake_openai: tuple[FakeOpenAI, str], consensus_services: Callable[..., Any]
) -> None:
    fake, _ = fake_openai
    fake.by_model = {"a": Behaviour(text="Paris")}
    profile = {
        "workers": [{"model": "remote/a"}, {"model": "down/fake-model"}],
        "min_workers": 2,
    }
    async for services in consensus_services({"p": profile}):
        events = await _events(services, "consensus:p")
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1
    assert "1 of 2 workers answered" in errors[0].message
    assert not any(isinstance(e, Token) for e in events)


async def test_the_token_budget_stops_the_remaining_workers(
    fake_openai: tuple[FakeOpenAI, str], consensus_services: Callable[..., Any]
) -> None:
    fake, _ = fake_openai
    fake.by_model = {
        "a": Behaviour(text="one two three four five six"),
        "slow": Behaviour(text="late", start_delay=60),
    }
    profile = {
        "workers": [{"model": "remote/a"}, {"model": "remote/slow"}],
        "strategy": "majority",
        "max_tokens": 5,
    }
    async for services in consensus_services({"p": profile}):
        events = await _events(services, "consensus:p")
    summary = _done(events)
    assert [w["status"] for w in summary["workers"]] == ["answered", "stopped"]
    assert summary["workers"][1]["error"] == "budget"


async def test_weighted_uses_log_probabilities_and_best_of_asks_a_judge(
    fake_openai: tuple[FakeOpenAI, str], consensus_services: Callable[..., Any]
) -> None:
    fake, _ = fake_openai
    fake.by_model = {
        "sure": Behaviour(text="Lyon", logprob=-0.05),
        "unsure-1": Behaviour(text="Paris", logprob=-2.0),
        "unsure-2": Behaviour(text="Paris", logprob=-2.0),
        "judge": Behaviour(text='{"best": 2}'),
    }
    workers = [{"model": "remote/sure"}, {"model": "remote/unsure-1"}, {"model": "remote/unsure-2"}]
    profiles = {
        "w": {"workers": workers, "strategy": "weighted", "early_exit": False},
        "b": {
            "workers": workers,
            "strategy": "best_of",
            "judge_model": "remote/judge",
            "early_exit": False,
        },
    }
    async for services in consensus_services(profiles):
        weighted = await _events(services, "consensus:w")
        best = await _events(services, "consensus:b")
    summary = _done(weighted)
    # One sure worker (e^-0.05 = 0.95) outweighs two unsure ones (2 x e^-2 = 0.27); a
    # plain majority would have said Paris.
    assert _text(weighted) == "Lyon"
    confidences = [w["confidence"] for w in summary["workers"]]
    assert confidences[0] == pytest.approx(math.exp(-0.05))
    assert confidences[1] == pytest.approx(math.exp(-2.0))
    assert summary["tally"]["lyon"] == pytest.approx(math.exp(-0.05), abs=1e-3)
    # Only the weighted profile's workers ask for log-probabilities.
    assert sum(bool(r.get("logprobs")) for r in fake.requests) == 3
    judged = _done(best)
    assert judged["method"] == "judge:model"
    assert judged["winner"] == 1
    assert _text(best) == "Paris"


async def test_cache_keys_include_the_mode_and_the_profile(
    fake_openai: tuple[FakeOpenAI, str], make_settings: SettingsFactory
) -> None:
    fake, url = fake_openai
    one = {"workers": [{"model": "remote/fake-model", "temperature": 0}]}
    settings: Settings = make_settings(
        backends={"remote": _remote(url)},
        chat={"default_model": "remote/fake-model"},
        orchestration={"consensus": {"p1": one, "p2": one}},
    )
    async with running_services(settings) as services:
        calls = []
        for model, mode in [
            ("remote/fake-model", "direct"),
            ("consensus:p1", "auto"),
            ("consensus:p1", "auto"),
            ("consensus:p2", "auto"),
            ("remote/fake-model", "direct"),
        ]:
            prepared = await services.orchestrator.prepare(
                AnswerRequest(
                    QUESTION,
                    AnswerOptions(model=model, mode=mode, params=GenerationParams(temperature=0)),
                )
            )
            _ = [e async for e in services.orchestrator.stream(prepared)]
            calls.append(fake.calls)
    # direct → new; p1 → new (not direct's entry); p1 again → cached; p2 → new; direct → cached
    assert calls == [1, 2, 2, 3, 3]


async def test_unknown_profiles_and_conflicting_modes_are_refused(
    consensus_services: Callable[..., Any],
) -> None:
    from concilium.errors import InvalidRequest

    async for services in consensus_services({}):
        with pytest.raises(InvalidRequest, match="no consensus profile 'nope'"):
            await services.orchestrator.prepare(
                AnswerRequest(QUESTION, AnswerOptions(model="consensus:nope"))
            )
        with pytest.raises(InvalidRequest, match="answers in mode consensus"):
            await services.orchestrator.prepare(
                AnswerRequest(QUESTION, AnswerOptions(model="consensus:default", mode="rag"))
            )


# -- the done-when path: the OpenAI SDK, the real model, a backend that is down ----------


@pytest.mark.model
def test_consensus_default_streams_progress_and_a_merged_answer_through_the_openai_sdk(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    fake.by_model = {"lyon": Behaviour(text="Lyon")}
    profile = {
        "workers": [
            {"model": TEST_MODEL, "temperature": 0},
            {"model": "remote/lyon"},
            {"model": "down/fake-model"},
        ],
        "merger_model": TEST_MODEL,
        "early_exit": False,
    }
    with live_server(
        backends={"local": {"type": "embedded"}, "remote": _remote(url), "down": DOWN},
        orchestration={"consensus": {"default": profile}},
    ) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key=live.admin_key, max_retries=0)
        assert "consensus:default" in {m.id for m in client.models.list()}
        stream = client.chat.completions.create(
            model="consensus:default",
            messages=[{"role": "user", "content": QUESTION[0].content}],
            max_tokens=24,
            stream=True,
        )
        chunks = list(stream)
        events = [
            c.model_extra["concilium"]
            for c in chunks
            if c.model_extra and "concilium" in c.model_extra
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]

        full = client.chat.completions.create(
            model="consensus:default",
            messages=[{"role": "user", "content": QUESTION[0].content}],
            max_tokens=24,
        )
    assert events[0]["type"] == "route"
    assert events[0]["profile"] == "default"
    workers = [e for e in events if e["type"] == "worker"]
    assert sorted(e["status"] for e in workers) == [
        "answered",
        "answered",
        "failed",
        "started",
        "started",
        "started",
    ]
    local = next(e for e in workers if e["model"] == TEST_MODEL and e["status"] == "answered")
    assert local["answer"]
    assert local["completion_tokens"] > 0
    assert text.strip()
    assert finishes in (["stop"], ["length"])
    summary = full.model_extra["concilium"]["consensus"]  # type: ignore[index]
    assert summary["method"] == "merger"
    assert summary["answered"] == 2
    assert full.choices[0].message.content
