"""The fake upstream speaks OpenAI's Responses API (``POST /v1/responses``), streamed and not,
from the same scripted replies as Chat Completions: every event and object validates against the
``openai`` SDK's own types, it remembers what it answered for ``previous_response_id`` (unless
told to be stateless or to lack the API), and it misbehaves on demand as the chat path does."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from chatproxy.testing import FakeUpstream, Reply, ToolCall

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
RESPONSE = pydantic.TypeAdapter(Response)
# Sent by OpenAI on the response object, not (yet) declared by the SDK's ``Response`` type.
WIRE_ONLY = {"store"}

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}


def client_of(fake: FakeUpstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0)


def unknown_fields(value: Any, where: str = "$") -> list[str]:
    """Every field the SDK's types do not declare, anywhere in a validated value."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        allowed = WIRE_ONLY if isinstance(value, Response) else set()
        found += [f"{where}.{k}" for k in value.model_extra or {} if k not in allowed]
        for name in type(value).model_fields:
            found += unknown_fields(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += unknown_fields(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += unknown_fields(item, f"{where}.{key}")
    return found


def strict_event(data: dict[str, Any]) -> Any:
    """``data`` validated strictly as one stream event, no undeclared field allowed."""
    event = EVENT.validate_python(data, strict=True)
    assert unknown_fields(event) == [], data
    return event


def strict_response(data: dict[str, Any]) -> Response:
    response = RESPONSE.validate_python(data, strict=True)
    assert unknown_fields(response) == [], data
    return response


def parse_named_sse(raw: bytes) -> list[Any]:
    """Each event's ``data`` (JSON decoded, else the text), checking its ``event:`` line names
    its ``type``."""
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        data = lines[-1].removeprefix("data: ")
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            events.append(data)
            continue
        assert lines[:-1] == [f"event: {payload['type']}"], block
        events.append(payload)
    return events


async def raw_stream(
    http: aiohttp.ClientSession, fake: FakeUpstream, **body: Any
) -> tuple[aiohttp.ClientResponse, list[Any]]:
    payload = {"model": "gpt-test", "input": "Say hello", "stream": True, **body}
    async with http.post(f"{fake.url}/responses", json=payload) as resp:
        return resp, parse_named_sse(await resp.read())


def validated(events: list[Any]) -> list[Any]:
    """The events validated strictly, their sequence numbers checked to be 0..n-1."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return [strict_event(e) for e in events]


async def test_a_non_streamed_response_has_openais_shape(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="Four words right here", reasoning="Let me think"))
    body = {"model": "gpt-test", "input": "Say hello to the nice test"}
    async with http.post(f"{fake.url}/responses", json=body) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        data = await resp.json()
    response = strict_response(data)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "gpt-test"
    assert response.error is None and response.incomplete_details is None
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [s.model_dump() for s in reasoning.summary] == [
        {"type": "summary_text", "text": "Let me think"}
    ]
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.role == "assistant" and message.status == "completed"
    assert data["output"][1]["content"] == [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Four words right here"}
    ]
    assert response.usage is not None
    assert response.usage.input_tokens == 6 and response.usage.output_tokens == 7
    assert response.usage.total_tokens == 13
    assert response.usage.output_tokens_details.reasoning_tokens == 3
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert data["store"] is True and data["metadata"] == {}
    assert (data["tools"], data["tool_choice"], data["truncation"]) == ([], "auto", "disabled")

    fake.enqueue(Reply(content="Same again"))
    again = await sdk.responses.create(model="gpt-test", input="Say hello")
    assert again.output_text == "Same again" and again.id != response.id


async def test_the_request_parameters_are_echoed(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
    form = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    body = {
        "model": "gpt-test",
        "input": "hi",
        "instructions": "Be brief.",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "text": {"format": form},
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 500,
        "store": False,
        "metadata": {"k": "v"},
        "truncation": "auto",
        "user": "u1",
    }
    async with http.post(f"{fake.url}/responses", json=body) as resp:
        data = await resp.json()
    strict_response(data)
    assert data["instructions"] == "Be brief."
    assert data["tools"] == [{**WEATHER, "strict": True}]
    assert data["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert (data["temperature"], data["top_p"], data["parallel_tool_calls"]) == (0.2, 0.9, False)
    assert data["text"] == {"format": form, "verbosity": "medium"}
    assert data["reasoning"] == {"effort": "low", "summary": "auto"}
    assert (data["max_output_tokens"], data["store"], data["metadata"]) == (500, False, {"k": "v"})
    assert (data["truncation"], data["user"], data["previous_response_id"]) == ("auto", "u1", None)


async def test_streamed_events_validate_in_order_from_sequence_number_zero(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    calls = [ToolCall("get_weather", '{"city":"Paris","days":1}', id="call_a")]
    fake.enqueue(
        Reply(chunks=["Hel", "lo"], reasoning="Think first", refusal="No way", tool_calls=calls)
    )
    resp, raw = await raw_stream(http, fake)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert "[DONE]" not in raw
    events = validated(raw)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert final.id == created.id and final.status == "completed"
    reasoning, message, call = final.output
    assert events[4].delta + events[5].delta == "Think first"
    assert events[6].text == "Think first" and events[7].part.text == "Think first"
    assert [events[11].delta, events[12].delta] == ["Hel", "lo"] and events[13].text == "Hello"
    assert events[10].part.text == "" and events[14].part.text == "Hello"
    assert events[18].refusal == "No way" and events[19].part.refusal == "No way"
    assert {(e.item_id, e.output_index) for e in events[3:8]} == {(reasoning.id, 0)}
    assert {(e.item_id, e.output_index) for e in events[10:20]} == {(message.id, 1)}
    assert [e.content_index for e in events[10:20]] == [0] * 5 + [1] * 5
    added = events[21].item
    assert added.type == "function_call" and added.status == "in_progress"
    assert (added.arguments, added.call_id, added.id) == ("", "call_a", call.id)
    assert "".join(e.delta for e in events[22:25]) == '{"city":"Paris","days":1}'
    assert events[25].arguments == call.arguments == '{"city":"Paris","days":1}'
    assert events[26].item == call and call.status == "completed"


async def test_the_stream_helper_gets_the_scripted_answer(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    fake.enqueue(Reply(content="The quick  brown fox,\njumps!  ", reasoning="Hmm, foxes"))
    async with sdk.responses.stream(model="gpt-test", input="Tell me about foxes") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "The quick  brown fox,\njumps!  "
    assert final.output[0].type == "reasoning"
    assert final.output[0].summary[0].text == "Hmm, foxes"
    assert final.status == "completed" and final.usage is not None

    fake.enqueue(Reply(content="Plain and simple"))
    stream = await sdk.responses.create(model="gpt-test", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Plain and simple"


async def test_a_function_tool_round_trip_through_previous_response_id(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    fake.enqueue(
        Reply(tool_calls=[ToolCall("get_weather", '{"city":"Paris","days":1}')]),
        Reply(content="It is sunny in Paris."),
    )
    first = await sdk.responses.create(
        model="gpt-test", input="Weather in Paris?", tools=[WEATHER], instructions="Be nice."
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.status == "completed"
    assert call.arguments == '{"city":"Paris","days":1}'

    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24C"}
    async with sdk.responses.stream(
        model="gpt-test", input=[result], previous_response_id=first.id, tools=[WEATHER]
    ) as stream:
        second = await stream.get_final_response()
    assert second.output_text == "It is sunny in Paris."
    assert second.previous_response_id == first.id

    first_seen, second_seen = (r.model_input for r in fake.responses_requests)
    assert first_seen == [{"role": "user", "content": "Weather in Paris?"}]
    assert second_seen == [*first_seen, call.model_dump(mode="json", exclude_none=True), result]
    # The instructions are not carried over to the next response, as on OpenAI.
    assert second.instructions is None


async def test_auto_calls_an_offered_flat_tool_then_quotes_its_result() -> None:
    async with FakeUpstream(auto=True) as fake, client_of(fake) as sdk:
        choice = {"type": "function", "name": "get_weather"}
        first = await sdk.responses.create(
            model="m", input="Weather?", tools=[WEATHER], tool_choice=choice
        )
        (call,) = first.output
        assert (call.name, call.arguments) == ("get_weather", '{"city":"Paris","days":1}')
        answer = await sdk.responses.create(
            model="m",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Rain"}],
            tools=[WEATHER],
        )
        assert answer.output_text == "The tool said: Rain"


async def test_a_json_schema_text_format_gets_a_matching_document() -> None:
    class Thing(pydantic.BaseModel):
        name: str
        count: int

    async with FakeUpstream(auto=True) as fake, client_of(fake) as sdk:
        parsed = await sdk.responses.parse(model="m", input="A thing?", text_format=Thing)
        assert parsed.output_parsed == Thing(name="Paris", count=1)
        async with sdk.responses.stream(model="m", input="A thing?", text_format=Thing) as stream:
            final = await stream.get_final_response()
        assert final.output_parsed == Thing(name="Paris", count=1)


async def test_input_items_of_every_kind_are_what_the_model_sees(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    items: list[Any] = [
        {"type": "message", "role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather  in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "ok"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Rain"},
    ]
    fake.enqueue(Reply(auto=True))
    answer = await sdk.responses.create(model="m", input=items, tools=[WEATHER])
    assert answer.output_text == "The tool said: Rain"
    assert fake.responses_requests[0].model_input == items
    assert fake.chat_requests == []


async def test_an_unknown_previous_response_id_is_400_and_keeps_the_queue(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    fake.enqueue(Reply(content="kept for later"))
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.responses.create(model="m", input="hi", previous_response_id="resp_nope")
    assert info.value.status_code == 400
    assert info.value.body == {
        "message": "Previous response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    unstored = await sdk.responses.create(model="m", input="hi", store=False)
    assert unstored.output_text == "kept for later"
    with pytest.raises(openai.BadRequestError, match="not found"):
        await sdk.responses.create(model="m", input="again", previous_response_id=unstored.id)


async def test_a_tool_output_for_an_unknown_call_is_400(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    output = {"type": "function_call_output", "call_id": "call_x", "output": "42"}
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.responses.create(model="m", input=[output])
    assert info.value.body == {
        "message": "No tool call found for function call output with call_id call_x.",
        "type": "invalid_request_error",
        "param": "input",
        "code": None,
    }


async def test_bad_bodies_are_400(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Reply(content="kept for later"))
    async with http.post(f"{fake.url}/responses", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    async with http.post(f"{fake.url}/responses", json={"model": "m", "input": {}}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "input"
    async with http.post(f"{fake.url}/responses", json={"model": "m", "input": "x"}) as resp:
        assert (await resp.json())["output"][0]["content"][0]["text"] == "kept for later"
    assert [r.path for r in fake.responses_requests] == ["/v1/responses"] * 3


async def test_a_stateless_upstream_knows_no_previous_response() -> None:
    async with FakeUpstream(responses="stateless") as fake, client_of(fake) as sdk:
        fake.enqueue(Reply(tool_calls=[ToolCall("get_weather", "{}", id="call_1")]))
        first = await sdk.responses.create(model="m", input="Weather?", tools=[WEATHER])
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.responses.create(model="m", input="more", previous_response_id=first.id)
        assert info.value.code == "previous_response_not_found"
        # The whole conversation in the input works, tool results included.
        output = {"type": "function_call_output", "call_id": "call_1", "output": "Rain"}
        call = first.output[0].model_dump(mode="json", exclude_none=True)
        items: list[Any] = [{"role": "user", "content": "Weather?"}, call, output]
        fake.enqueue(Reply(auto=True))
        answer = await sdk.responses.create(model="m", input=items)
        assert answer.output_text == "The tool said: Rain"
        assert fake.responses_requests[-1].model_input == items


async def test_an_upstream_without_the_api_answers_404(http: aiohttp.ClientSession) -> None:
    async with FakeUpstream(responses="none") as fake, client_of(fake) as sdk:
        fake.enqueue(Reply(content="kept for chat"))
        with pytest.raises(openai.NotFoundError) as info:
            await sdk.responses.create(model="m", input="hi")
        assert info.value.body == {
            "message": "Invalid URL (POST /v1/responses)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        async with http.post(f"{fake.url}/nope", json={}) as resp:
            unknown = await resp.json()
        assert unknown["error"] == {**info.value.body, "message": "Invalid URL (POST /v1/nope)"}
        chat = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        assert chat.choices[0].message.content == "kept for chat"
        assert len(fake.responses_requests) == 1 and fake.responses_requests[0].model_input is None


def test_an_unknown_responses_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="stateful, stateless, none"):
        FakeUpstream(responses="sometimes")  # type: ignore[arg-type]


async def test_an_error_status_is_openais_error_before_any_stream(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(status=503, headers={"Retry-After": "1"}))
    payload = {"model": "m", "input": "hi", "stream": True}
    async with http.post(f"{fake.url}/responses", json=payload) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error == {
        "message": "Fake upstream error 503",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    body = {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rl"}}
    fake.enqueue(Reply(status=429, error_body=body))
    with pytest.raises(openai.RateLimitError) as info:
        await sdk.responses.create(model="m", input="hi")
    assert info.value.code == "rl"
    fake.enqueue(Reply(status=400, error_body='{"object":"error","message":"bad"}'))
    async with http.post(f"{fake.url}/responses", json=payload) as resp:
        assert resp.status == 400 and await resp.text() == '{"object":"error","message":"bad"}'


async def test_drop_after_breaks_the_stream(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="one two three four five", drop_after=4))
    received = b""
    payload = {"model": "m", "input": "hi", "stream": True}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{fake.url}/responses", json=payload) as resp:
            async for data in resp.content.iter_any():
                received += data
    assert [e["type"] for e in parse_named_sse(received)] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert not fake.responses_requests[0].completed.is_set()

    fake.enqueue(Reply(content="one two three", drop_after=6))
    with pytest.raises(openai.APIConnectionError):
        async with sdk.responses.stream(model="m", input="hi") as stream:
            await stream.get_final_response()


async def test_split_writes_coalesce_and_delays_still_parse(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    for reply in [
        Reply(content="split me into many pieces", split_writes=True),
        Reply(content="all at once", coalesce=True),
        Reply(content="slowly but surely", chunk_delay=0.01, delay=0.01),
    ]:
        fake.enqueue(reply)
        async with sdk.responses.stream(model="m", input="hi") as stream:
            assert (await stream.get_final_response()).output_text == reply.content


@pytest.mark.parametrize(
    ("reply", "writes_per_event"),
    [(Reply(content="a b"), 1.0), (Reply(content="a b", split_writes=True), 5.0)],
)
async def test_events_are_written_one_by_one_unless_coalesced(
    fake: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    reply: Reply,
    writes_per_event: float,
) -> None:
    writes: list[bytes] = []
    write = aiohttp.web.StreamResponse.write

    async def recording(self: aiohttp.web.StreamResponse, data: bytes) -> None:
        writes.append(bytes(data))
        await write(self, data)

    monkeypatch.setattr(aiohttp.web.StreamResponse, "write", recording)
    payload = {"model": "m", "input": "hi", "stream": True}
    for scripted in (reply, replace(reply, coalesce=True)):
        writes.clear()
        fake.enqueue(scripted)
        async with http.post(f"{fake.url}/responses", json=payload) as resp:
            raw = await resp.read()
        events = validated(parse_named_sse(raw))
        if scripted.coalesce:
            assert writes == [raw]
            continue
        n = int(writes_per_event)
        assert len(writes) == n * len(events)
        per_event = [b"".join(writes[i : i + n]) for i in range(0, len(writes), n)]
        assert per_event == [block + b"\n\n" for block in raw.split(b"\n\n")[:-1]]


async def test_garbage_after_inserts_an_invalid_event(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="x y", garbage_after=2))
    _, events = await raw_stream(http, fake)
    assert events[2] == "{not json"
    assert events[-1]["type"] == "response.completed"
    validated(events[:2] + events[3:])


async def test_fail_after_ends_the_stream_with_response_failed(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="one two", reasoning="deep thought", fail_after=10))
    _, raw = await raw_stream(http, fake)
    events = validated(raw)
    assert [e.type for e in events[8:]] == [
        "response.output_item.done",
        "response.output_item.added",
        "response.failed",
    ]
    failed = events[-1].response
    assert failed.status == "failed" and failed.id == events[0].response.id
    assert failed.error is not None and failed.error.code == "server_error"
    assert [item.type for item in failed.output] == ["reasoning"]
    assert failed.usage is None

    fake.enqueue(Reply(content="one two", fail_after=1000))
    _, raw = await raw_stream(http, fake)
    assert [e.type for e in validated(raw)][-2:] == ["response.output_item.done", "response.failed"]

    fake.enqueue(Reply(content="one two", fail_after=3))
    with pytest.raises(RuntimeError, match=r"response\.completed"):
        async with sdk.responses.stream(model="m", input="hi") as stream:
            await stream.get_final_response()


async def test_fail_after_on_chat_is_an_in_band_error(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    fake.enqueue(Reply(content="one two three", fail_after=2))
    stream = await sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2


async def test_a_length_finish_or_max_output_tokens_is_incomplete(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Reply(content="cut short", finish_reason="length"))
    _, raw = await raw_stream(http, fake)
    events = validated(raw)
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.status == "incomplete" and final.response.completed_at is None
    assert final.response.incomplete_details is not None
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output[0].status == "incomplete"

    fake.enqueue(Reply(content="one two three four five", reasoning="a b"))
    cut = await sdk.responses.create(model="m", input="hi", max_output_tokens=4)
    assert cut.status == "incomplete" and cut.output_text == "one two "
    assert cut.usage is not None and cut.usage.output_tokens == 4
    fake.enqueue(Reply(content="short"))
    whole = await sdk.responses.create(model="m", input="hi", max_output_tokens=4)
    assert whole.status == "completed" and whole.output_text == "short"


async def test_a_refusal_is_a_refusal_part(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    fake.enqueue(Reply(refusal="I can't help with that."))
    response = await sdk.responses.create(model="m", input="hi")
    (message,) = response.output
    assert [p.model_dump() for p in message.content] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    fake.enqueue(Reply(refusal="Nope, sorry."))
    async with sdk.responses.stream(model="m", input="hi") as stream:
        refusals = [e.delta async for e in stream if e.type == "response.refusal.delta"]
        final = await stream.get_final_response()
    assert "".join(refusals) == "Nope, sorry."
    assert final.output[0].content[0].refusal == "Nope, sorry."


async def test_interleaved_calls_stream_round_robin(
    fake: FakeUpstream, sdk: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    calls = [
        ToolCall("a", '{"x":"aaaaaa"}', id="call_1"),
        ToolCall("b", '{"y":"bbb"}', id="call_2"),
    ]
    fake.enqueue(Reply(tool_calls=calls, interleave_tool_calls=True))
    _, raw = await raw_stream(http, fake)
    deltas = [e for e in validated(raw) if e.type == "response.function_call_arguments.delta"]
    assert [e.output_index for e in deltas] == [0, 1, 0, 1, 0, 1]
    fake.enqueue(Reply(tool_calls=calls, interleave_tool_calls=True))
    async with sdk.responses.stream(model="m", input="hi") as stream:
        final = await stream.get_final_response()
    assert [(o.call_id, o.arguments) for o in final.output] == [
        ("call_1", '{"x":"aaaaaa"}'),
        ("call_2", '{"y":"bbb"}'),
    ]


async def test_scripted_usage_of_either_shape(fake: FakeUpstream, sdk: openai.AsyncOpenAI) -> None:
    chat_usage = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    fake.enqueue(Reply(usage=chat_usage))
    usage = (await sdk.responses.create(model="m", input="hi")).usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 4, 14)
    assert usage.input_tokens_details.cached_tokens == 3
    assert usage.output_tokens_details.reasoning_tokens == 2
    own = {
        "input_tokens": 1,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 3,
    }
    fake.enqueue(Reply(usage=own))
    usage = (await sdk.responses.create(model="m", input="hi")).usage
    assert usage is not None and usage.model_dump(exclude_none=True) == own


async def test_fake_headers_and_client_disconnect(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Fake-Chunks": "3", "X-Fake-Chunk-Delay": "0.001"}
    payload = {"model": "m", "input": "hi", "stream": True}
    async with http.post(f"{fake.url}/responses", json=payload, headers=headers) as resp:
        events = validated(parse_named_sse(await resp.read()))
    assert events[-1].response.output_text == "lorem ipsum dolor"

    fake.enqueue(Reply(content="a long answer " * 50, chunk_delay=0.02))
    async with http.post(f"{fake.url}/responses", json=payload) as resp:
        await resp.content.readuntil(b"\n\n")
        resp.close()
    recorded = fake.responses_requests[-1]
    await asyncio.wait_for(recorded.disconnected.wait(), timeout=5)
    assert not recorded.completed.is_set()


async def test_the_demo_answers_responses_in_kind() -> None:
    async with FakeUpstream(demo=True) as demo, client_of(demo) as sdk:
        content = [{"type": "input_text", "text": "Ping  me"}]
        answer = await sdk.responses.create(
            model="m", input=[{"role": "user", "content": content}], instructions="Hi"
        )
        assert answer.output_text.startswith('You said: "Ping me".')
        call = await sdk.responses.create(model="m", input="Weather?", tools=[WEATHER])
        assert call.output[0].type == "function_call"
        assert call.output[0].arguments == '{"city":"Paris","days":1}'
