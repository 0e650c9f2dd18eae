"""The one reducer of an answer's events."""

from __future__ import annotations

from concilium.events import (
    AnswerRecord,
    BackendSelected,
    Citation,
    ConsensusSummary,
    ContextReport,
    Done,
    ErrorEvent,
    ModeChosen,
    Reformulated,
    Sources,
    Thought,
    Token,
    ToolCall,
    ToolResult,
    Usage,
    WorkerProgress,
    WorkerSummary,
    event_to_dict,
)

CONSENSUS = ConsensusSummary(
    profile="default",
    strategy="majority",
    workers=(WorkerSummary(0, "a", "m", "answered", answer="x", key="x"),),
    answered=1,
    agreement=1.0,
    method="single",
    winner=0,
    tally=(("x", 1.0),),
)


def test_a_stream_folds_into_its_answer_and_how_it_was_made() -> None:
    record = AnswerRecord()
    events = [
        ModeChosen("agent", "operational", 0.9, "embedding"),
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
        Done("stop", grounded=True, cited=(1,), consensus=CONSENSUS),
    ]
    for event in events:
        record.observe(event)
    assert record.text == "Hello world"
    assert record.usage == Usage(5, 2)
    assert record.backend == BackendSelected("default", "local", "m")
    assert record.route is events[0]
    assert record.reformulated is events[1]
    assert [type(e) for e in record.steps] == [
        ModeChosen,
        Reformulated,
        WorkerProgress,  # its result, not its start
        Thought,
        ToolCall,
        ToolResult,
    ]
    assert [s["type"] for s in record.agent_steps()] == ["thought", "tool_call", "tool_result"]
    assert record.finish_reason == "stop"
    assert record.cited == (1,)
    assert record.consensus is CONSENSUS
    assert record.error is None


def test_an_error_is_kept_with_what_came_before() -> None:
    record = AnswerRecord()
    for event in (Token("par"), ErrorEvent("backend_error", "gone", retryable=True)):
        record.observe(event)
    assert record.text == "par"
    assert record.error == ErrorEvent("backend_error", "gone", retryable=True)
    assert record.finish_reason is None


def test_done_is_typed_and_its_json_form_keeps_the_wire_shape() -> None:
    """``done.extra`` on the wire: the fields set; a grounded answer always says what it
    cited (an empty list included); nested results as plain JSON."""
    grounded = Done(
        "stop",
        grounded=True,
        citations=(Citation(0, 12, (1,), (1, 3)),),
        context=ContextReport(4096, 512, counted=False),
    )
    assert event_to_dict(grounded) == {
        "type": "done",
        "finish_reason": "stop",
        "extra": {
            "grounded": True,
            "cited": [],
            "citations": [{"start": 0, "end": 12, "sources": [1], "claimed": [1, 3]}],
            "context": {
                "window": 4096,
                "answer": 512,
                "counted": False,
                "system": 0,
                "system_cut": False,
                "tools": 0,
                "tools_over_share": False,
                "memory": 0,
                "question": 0,
                "history": 0,
                "summarised": 0,
                "dropped": 0,
            },
        },
    }
    assert Done("stop").extra == {}
    assert Done("stop", cached=True).extra == {"cached": True}
    summary = Done("stop", consensus=CONSENSUS).extra["consensus"]
    assert summary["tally"] == {"x": 1.0}  # votes per key, as a JSON object
    assert "merger_error" not in summary  # said only when the merger failed
    assert summary["workers"][0]["key"] == "x"
