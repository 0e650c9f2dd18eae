"""The one reducer of an answer's events."""

from __future__ import annotations

from concilium.events import (
    AnswerRecord,
    BackendSelected,
    Done,
    ErrorEvent,
    Reformulated,
    RouteChosen,
    Sources,
    Thought,
    Token,
    ToolCall,
    ToolResult,
    Usage,
    WorkerProgress,
)


def test_a_stream_folds_into_its_answer_and_how_it_was_made() -> None:
    record = AnswerRecord()
    events = [
        RouteChosen("agent", "operational", 0.9, "embedding"),
        Reformulated("q?", "query"),
        WorkerProgress(0, "a", "m", "started"),
        WorkerProgress(0, "a", "m", "answered", answer="x"),
        BackendSelected("default", "local", "m"),
        Thought("look", 1),
        ToolCall("c1", "list_files", {}, 1),
        ToolResult("c1", "list_files", "ok", "a.txt", 3),
        Sources(({"n": 1, "source": "a.txt", "location": "p1"},)),
        Token("Hello "),
        Token("world"),
        Usage(5, 2),
        Done("stop", {"cited": [1], "consensus": {"agreement": 1.0}}),
    ]
    for event in events:
        record.observe(event)
    assert record.text == "Hello world"
    assert record.usage == Usage(5, 2)
    assert record.backend == BackendSelected("default", "local", "m")
    assert record.route is events[0]
    assert record.reformulated is events[1]
    assert [type(e) for e in record.steps] == [
        RouteChosen,
        Reformulated,
        WorkerProgress,  # its result, not its start
        Thought,
        ToolCall,
        ToolResult,
    ]
    assert [s["type"] for s in record.agent_steps()] == ["thought", "tool_call", "tool_result"]
    assert record.finish_reason == "stop"
    assert record.cited == [1]
    assert record.consensus == {"agreement": 1.0}
    assert record.error is None


def test_an_error_is_kept_with_what_came_before() -> None:
    record = AnswerRecord()
    for event in (Token("par"), ErrorEvent("backend_error", "gone", retryable=True)):
        record.observe(event)
    assert record.text == "par"
    assert record.error == ErrorEvent("backend_error", "gone", retryable=True)
    assert record.finish_reason is None
