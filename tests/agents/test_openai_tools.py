"""OpenAI ``tools`` round trips with the official SDK: tool_calls out, results back in."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time."}}
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]


def _sdk(live: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=live.admin_key, max_retries=0)


def _calls(*calls: tuple[str, dict[str, Any]]) -> Behaviour:
    return Behaviour(
        text=json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in calls]})
    )


def test_a_tool_call_and_its_result_round_trip(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, fake = fake_live
    client = _sdk(live)
    fake.push(_calls(("get_weather", {"city": "Paris"})))
    first = client.chat.completions.create(
        model="fake-model", messages=QUESTION, tools=[WEATHER, TIME]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    sent = fake.requests[-1]
    schema = sent["response_format"]["json_schema"]["schema"]
    assert schema["anyOf"][0]["properties"]["tool_calls"]["items"]["properties"]["name"][
        "enum"
    ] == ["get_weather", "get_time"]
    assert "get_weather: Current weather of a city." in sent["messages"][0]["content"]

    fake.push(Behaviour(text=json.dumps({"content": "It is 18 °C in Paris."})))
    second = client.chat.completions.create(
        model="fake-model",
        tools=[WEATHER],
        messages=[
            *QUESTION,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 18}'},
        ],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "It is 18 °C in Paris."
    history = fake.requests[-1]["messages"]
    assert json.loads(history[-2]["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    }
    assert history[-1] == {
        "role": "user",
        "content": f'<tool_result id="{call.id}">\n{{"celsius": 18}}\n</tool_result>',
    }


def test_streamed_tool_calls_arrive_as_deltas(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, fake = fake_live
    fake.push(_calls(("get_weather", {"city": "Lyon"}), ("get_time", {})))
    stream = _sdk(live).chat.completions.create(
        model="fake-model",
        messages=QUESTION,
        tools=[WEATHER, TIME],
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function and delta.function.name:
                    entry["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    entry["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Lyon"}
    assert usage is not None


def test_tool_choice_forces_none_or_one_function(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, fake = fake_live
    client = _sdk(live)
    fake.push(_calls(("get_time", {})))
    forced = client.chat.completions.create(
        model="fake-model",
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_time"
    schema = fake.requests[-1]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["tool_calls"]
    assert schema["properties"]["tool_calls"]["items"]["properties"]["name"]["enum"] == ["get_time"]
    plain = client.chat.completions.create(
        model="fake-model", messages=QUESTION, tools=[WEATHER], tool_choice="none"
    )
    assert plain.choices[0].message.content == "Hello from the fake server."
    assert "response_format" not in fake.requests[-1]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "model": "agent"}, "tools"),
    ],
)
def test_bad_tool_requests_are_400(
    fake_live: tuple[Live, FakeOpenAI], extra: dict[str, Any], param: str
) -> None:
    live, _ = fake_live
    response = live.http.post(
        "/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION, **extra}
    )
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["param"] == param
