"""The fake upstream answers in kind when asked to: tool calls when tools are offered (in either
argument spelling), text quoting a tool result, JSON documents for ``response_format``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from chatproxy.testing import FakeUpstream, Reply, example_value

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "detail": {"type": "string"},
            },
            "required": ["city", "days", "metric"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def auto() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(auto=True) as upstream:
        yield upstream


def sdk(fake: FakeUpstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0)


async def streamed(fake: FakeUpstream, **body: Any) -> dict[str, Any]:
    """Stream one answer; what it carried: text, finish reason, tool calls and their fragments."""
    async with sdk(fake) as client:
        stream = await client.chat.completions.create(model="m", stream=True, **body)
        text, finish = "", None
        calls: dict[int, dict[str, Any]] = {}
        async for chunk in stream:
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "fragments": []})
                call["id"] = tc.id or call["id"]
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["fragments"].append(tc.function.arguments)
    return {"text": text, "finish": finish, "calls": [calls[i] for i in sorted(calls)]}


async def completed(fake: FakeUpstream, **body: Any) -> Any:
    async with sdk(fake) as client:
        return (await client.chat.completions.create(model="m", **body)).choices[0]


async def test_offered_tools_get_a_call_of_the_first_one_streamed_in_fragments(
    auto: FakeUpstream,
) -> None:
    seen = await streamed(auto, messages=ASK, tools=[WEATHER, TIME])
    assert seen["text"] == ""
    assert seen["finish"] == "tool_calls"
    [call] = seen["calls"]
    assert call["name"] == "get_weather"
    assert call["id"].startswith("call_")
    assert len(call["fragments"]) > 1
    # Required properties only, spelled compact as OpenAI does.
    assert "".join(call["fragments"]) == '{"city":"Paris","days":1,"metric":true}'


async def test_spaced_arguments_are_spelled_as_python_json_dumps() -> None:
    async with FakeUpstream(auto=True, spaced_arguments=True) as fake:
        seen = await streamed(fake, messages=ASK, tools=[WEATHER])
        choice = await completed(fake, messages=ASK, tools=[WEATHER])
    assert "".join(seen["calls"][0]["fragments"]) == '{"city": "Paris", "days": 1, "metric": true}'
    [call] = choice.message.tool_calls
    assert call.function.arguments == '{"city": "Paris", "days": 1, "metric": true}'


async def test_a_non_streamed_tool_call_has_no_content(auto: FakeUpstream) -> None:
    choice = await completed(auto, messages=ASK, tools=[WEATHER])
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == (
        "get_weather",
        '{"city":"Paris","days":1,"metric":true}',
    )


@pytest.mark.parametrize(
    "tool_choice",
    [
        {"type": "function", "function": {"name": "get_time"}},
        {"type": "function", "name": "get_time"},
    ],
)
async def test_tool_choice_names_the_tool_called(
    auto: FakeUpstream, tool_choice: dict[str, Any]
) -> None:
    choice = await completed(auto, messages=ASK, tools=[WEATHER, TIME], tool_choice=tool_choice)
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_time", '{"zone":"Paris"}')


async def test_tool_choice_none_gets_text(auto: FakeUpstream) -> None:
    choice = await completed(auto, messages=ASK, tools=[WEATHER], tool_choice="none")
    assert choice.message.tool_calls is None
    assert choice.message.content == "Hello! How can I help you today?"


async def test_a_tool_result_is_quoted_in_the_answer(auto: FakeUpstream) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny,  21 C"},
    ]
    seen = await streamed(auto, messages=messages, tools=[WEATHER])
    assert seen == {"text": "The tool said: Sunny, 21 C", "finish": "stop", "calls": []}
    choice = await completed(auto, messages=messages, tools=[WEATHER])
    assert choice.message.content == "The tool said: Sunny, 21 C"


async def test_json_schema_gets_a_document_with_the_required_properties(
    auto: FakeUpstream,
) -> None:
    # The shape pydantic gives an agent's output type: $defs, $ref, anyOf with null, enums.
    schema = {
        "$defs": {
            "Place": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["name"],
            }
        },
        "type": "object",
        "properties": {
            "place": {"$ref": "#/$defs/Place"},
            "temperature": {"type": "number"},
            "sky": {"enum": ["sunny", "cloudy"]},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["place", "temperature", "sky", "note", "tags"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "forecast", "schema": schema, "strict": True},
    }
    expected = {
        "place": {"name": "Paris"},
        "temperature": 1,
        "sky": "sunny",
        "note": "Paris",
        "tags": ["Paris"],
    }
    seen = await streamed(auto, messages=ASK, response_format=response_format)
    assert json.loads(seen["text"]) == expected
    choice = await completed(auto, messages=ASK, response_format=response_format)
    assert json.loads(choice.message.content) == expected


async def test_json_object_gets_the_reply_as_a_document(auto: FakeUpstream) -> None:
    auto.enqueue(Reply(content="Sunny all week", auto=True))
    choice = await completed(auto, messages=ASK, response_format={"type": "json_object"})
    assert json.loads(choice.message.content) == {"answer": "Sunny all week"}


async def test_after_a_tool_result_json_is_still_json(auto: FakeUpstream) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "noon"},
    ]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}
    choice = await completed(auto, messages=messages, tools=[TIME], response_format=response_format)
    assert json.loads(choice.message.content) == {"ok": True}


async def test_without_auto_offered_tools_change_nothing() -> None:
    async with FakeUpstream() as fake:
        choice = await completed(fake, messages=ASK, tools=[WEATHER])
    assert choice.message.tool_calls is None
    assert choice.message.content == "Hello! How can I help you today?"


async def test_scripted_replies_stay_scripted_on_an_auto_upstream(auto: FakeUpstream) -> None:
    auto.enqueue(Reply(content="As scripted"))
    choice = await completed(auto, messages=ASK, tools=[WEATHER])
    assert choice.message.content == "As scripted"
    assert choice.message.tool_calls is None


async def test_one_reply_can_answer_in_kind_on_a_plain_upstream() -> None:
    async with FakeUpstream() as fake:
        fake.enqueue(Reply(auto=True, spaced_arguments=True))
        choice = await completed(fake, messages=ASK, tools=[TIME])
    [call] = choice.message.tool_calls
    assert call.function.arguments == '{"zone": "Paris"}'


async def test_the_demo_upstream_calls_offered_tools() -> None:
    async with FakeUpstream(demo=True) as demo:
        seen = await streamed(demo, messages=ASK, tools=[TIME])
        plain = await completed(demo, messages=ASK)
    assert [(c["name"], "".join(c["fragments"])) for c in seen["calls"]] == [
        ("get_time", '{"zone":"Paris"}')
    ]
    assert plain.message.content.startswith('You said: "What is the weather in Paris?".')


def test_example_values_follow_the_schema() -> None:
    assert example_value({"type": ["null", "integer"]}) == 1
    assert example_value({"const": "x"}) == "x"
    assert example_value({"properties": {"a": {"type": "string"}}}) == {}  # nothing required
    assert example_value({}) == "Paris"
    assert example_value({"oneOf": [{"type": "boolean"}]}) is True
    assert example_value({"type": "array", "items": {"type": "number"}}) == [1]
    # A schema that requires itself ends instead of recursing forever.
    looped = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    value = example_value(looped)
    depth = 0
    while isinstance(value, dict):
        value, depth = value["next"], depth + 1
    assert value is None and depth > 1
