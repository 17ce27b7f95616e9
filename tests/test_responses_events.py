"""Responses API shapes: a chat-completions answer as Responses events and objects
(faces/responses/events.py), and a Responses answer as the stored chat message
(engine/accumulate_responses.py). Every event is checked against the openai SDK's own types, and
the SDK's stream accumulator must end with the response the translator reports."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from chatproxy.engine.accumulate import Accumulator
from chatproxy.engine.accumulate_responses import ResponsesAccumulator, chat_usage
from chatproxy.faces.items import answer_items
from chatproxy.faces.responses.events import (
    ChatToResponses,
    completion_to_response,
    response_object,
    responses_usage,
    sse,
)

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
PARAMS: dict[str, Any] = {"model": "gpt-test", "input": "hi"}
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
}
RESPONSES_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 17,
}
CHAT_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


# -- chat-completions chunks, in OpenAI's wire shape -------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test-2025",
        "system_fingerprint": "fp_1",
        "choices": [choice],
    }


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    body = chunk()
    body["choices"] = []
    body["usage"] = usage
    return body


def call(index: int, id: str | None = None, name: str | None = None, args: Any = None) -> dict:
    """One tool-call delta; only the fields given are sent, as upstreams send them."""
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    delta: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        delta |= {"id": id, "type": "function"}
    return delta


def calls(*deltas: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return chunk({"tool_calls": list(deltas)}, finish_reason)


# -- expected items ----------------------------------------------------------------------------


def text(part: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": part}


def refusal(part: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": part}


def msg(item_id: str, status: str, *parts: dict[str, Any]) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "content": list(parts),
            "role": "assistant"}  # fmt: skip


def fc(item_id: str, status: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments,
            "call_id": call_id, "name": name}  # fmt: skip


def rs(item_id: str, summary: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": summary}]}  # fmt: skip


# -- running the translator --------------------------------------------------------------------


def translator() -> ChatToResponses:
    return ChatToResponses(
        id="resp_1", created_at=1700000000, model="gpt-test", params=PARAMS, item_base="msg_1"
    )


def run(
    *chunks: dict[str, Any], status: str = "completed", error: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], ChatToResponses]:
    """Translate ``chunks``, check the events with the SDK, return them and the translator."""
    t = translator()
    events = t.start()
    for c in chunks:
        events += t.feed(c)
    events += t.finish(status, error, completed_at=1700000009)
    check_with_sdk(events, t.response())
    return events, t


def strip_parsed(value: Any) -> Any:
    """The SDK's final response without the ``parsed`` fields its parser adds."""
    if isinstance(value, dict):
        skip = ("parsed", "parsed_arguments")
        return {k: strip_parsed(v) for k, v in value.items() if k not in skip}
    if isinstance(value, list):
        return [strip_parsed(v) for v in value]
    return value


def check_with_sdk(events: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """Each event validates as the SDK's type; numbering is 0, 1, ...; the SDK's accumulator
    rebuilds every text and argument string from the deltas and ends with ``final``."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert all(orjson.loads(orjson.dumps(e)) == e for e in events)
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    snapshots: dict[tuple[int, int], str] = {}
    for event in events:
        for out in state.handle_event(EVENTS.validate_python(event)):
            if out.type == "response.output_text.delta":
                snapshots[(out.output_index, out.content_index)] = out.snapshot
            elif out.type == "response.function_call_arguments.delta":
                snapshots[(out.output_index, -1)] = out.snapshot
    for index, item in enumerate(final["output"]):
        if item["type"] == "function_call" and item["arguments"]:
            assert snapshots[(index, -1)] == item["arguments"]
        for part_index, part in enumerate(item.get("content") or []):
            if part["type"] == "output_text" and part["text"]:
                assert snapshots[(index, part_index)] == part["text"]
    Response.model_validate(final)
    terminal = events[-1]
    assert terminal["response"] == final
    if terminal["type"] == "response.completed":
        completed = state._completed_response
        assert completed is not None
        assert strip_parsed(completed.model_dump(mode="json", exclude_unset=True)) == final


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def numbered(first: int, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Expected events, numbered from ``first``."""
    return [{"type": e["type"], "sequence_number": first + i, **e} for i, e in enumerate(events)]


MESSAGE_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


# -- chat completions -> Responses events ----------------------------------------------------


def test_text_stream_becomes_one_message_with_one_text_part() -> None:
    events, t = run(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, finish_reason="stop"),
    )
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["model"] == "gpt-test"
    assert created["output"] == [] and created["usage"] is None
    assert events[:2] == numbered(
        0,
        {"type": "response.created", "response": created},
        {"type": "response.in_progress", "response": created},
    )
    at = {"item_id": "msg_1", "output_index": 0}
    assert events[2:9] == numbered(
        2,
        {"type": "response.output_item.added", "output_index": 0,
         "item": msg("msg_1", "in_progress")},
        {"type": "response.content_part.added", **at, "content_index": 0, "part": text("")},
        {"type": "response.output_text.delta", **at, "content_index": 0, "delta": "Hel",
         "logprobs": []},
        {"type": "response.output_text.delta", **at, "content_index": 0, "delta": "lo",
         "logprobs": []},
        {"type": "response.output_text.done", **at, "content_index": 0, "text": "Hello",
         "logprobs": []},
        {"type": "response.content_part.done", **at, "content_index": 0, "part": text("Hello")},
        {"type": "response.output_item.done", "output_index": 0,
         "item": msg("msg_1", "completed", text("Hello"))},
    )  # fmt: skip
    final = events[9]["response"]
    assert events[9] == {"type": "response.completed", "sequence_number": 9, "response": final}
    assert final["status"] == "completed" and final["completed_at"] == 1700000009
    assert final["output"] == [msg("msg_1", "completed", text("Hello"))] == t.output
    assert final["model"] == "gpt-test-2025"  # the upstream's
    assert Response.model_validate(final).output_text == "Hello"
    assert t.acc.message() == {"role": "assistant", "content": "Hello"}


def test_reasoning_then_text_is_a_reasoning_item_then_a_message() -> None:
    events, t = run(
        chunk({"role": "assistant", "reasoning_content": "Let me"}),
        chunk({"reasoning_content": " think."}),
        chunk({"content": "42"}),
        chunk({}, finish_reason="stop"),
    )
    at = {"item_id": "rs_msg_1", "output_index": 0, "summary_index": 0}
    assert events[2:9] == numbered(
        2,
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "rs_msg_1", "type": "reasoning", "summary": []}},
        {"type": "response.reasoning_summary_part.added", **at,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", **at, "delta": "Let me"},
        {"type": "response.reasoning_summary_text.delta", **at, "delta": " think."},
        {"type": "response.reasoning_summary_text.done", **at, "text": "Let me think."},
        {"type": "response.reasoning_summary_part.done", **at,
         "part": {"type": "summary_text", "text": "Let me think."}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": rs("rs_msg_1", "Let me think.")},
    )  # fmt: skip
    assert types(events[9:]) == [*MESSAGE_EVENTS, "response.completed"]
    assert {e.get("item_id", e.get("item", {}).get("id")) for e in events[9:-1]} == {"msg_1"}
    assert {e["output_index"] for e in events[9:-1]} == {1}
    assert events[-1]["response"]["output"] == [
        rs("rs_msg_1", "Let me think."),
        msg("msg_1", "completed", text("42")),
    ]
    assert t.acc.message()["reasoning_content"] == "Let me think."


def test_reasoning_key_spelled_reasoning_counts_once_when_both_are_sent() -> None:
    events, t = run(
        chunk({"reasoning": "hmm"}),
        chunk({"reasoning_content": " ok", "reasoning": " ok"}),
        chunk({"content": "yes"}, finish_reason="stop"),
    )
    assert events[-1]["response"]["output"][0] == rs("rs_msg_1", "hmm ok")
    assert t.acc.message()["reasoning_content"] == "hmm ok"


def test_two_parallel_tool_calls_with_fragmented_arguments() -> None:
    events, t = run(
        chunk({"role": "assistant", "content": None, "tool_calls": [
            call(0, "call_a", "weather", "")]}),
        calls(call(0, args='{"city":')),
        calls(call(0, args=' "Paris"}')),
        calls(call(1, "call_b", "time", "")),
        calls(call(1, args='{"tz": "CET"}')),
        chunk({}, finish_reason="tool_calls"),
        usage_chunk(),
    )  # fmt: skip
    first = fc("msg_1", "completed", "call_a", "weather", '{"city": "Paris"}')
    second = fc("msg_1_1", "completed", "call_b", "time", '{"tz": "CET"}')
    a = {"item_id": "msg_1", "output_index": 0}
    b = {"item_id": "msg_1_1", "output_index": 1}
    assert events[2:-1] == numbered(
        2,
        {"type": "response.output_item.added", "output_index": 0,
         "item": fc("msg_1", "in_progress", "call_a", "weather", "")},
        {"type": "response.function_call_arguments.delta", **a, "delta": '{"city":'},
        {"type": "response.function_call_arguments.delta", **a, "delta": ' "Paris"}'},
        {"type": "response.function_call_arguments.done", **a, "arguments": '{"city": "Paris"}'},
        {"type": "response.output_item.done", "output_index": 0, "item": first},
        {"type": "response.output_item.added", "output_index": 1,
         "item": fc("msg_1_1", "in_progress", "call_b", "time", "")},
        {"type": "response.function_call_arguments.delta", **b, "delta": '{"tz": "CET"}'},
        {"type": "response.function_call_arguments.done", **b, "arguments": '{"tz": "CET"}'},
        {"type": "response.output_item.done", "output_index": 1, "item": second},
    )  # fmt: skip
    final = events[-1]["response"]
    assert final["output"] == [first, second]
    assert final["usage"] == RESPONSES_USAGE
    assert [(c["id"], c["function"]["arguments"]) for c in t.acc.message()["tool_calls"]] == [
        ("call_a", '{"city": "Paris"}'),
        ("call_b", '{"tz": "CET"}'),
    ]


def test_tool_calls_sent_together_in_one_chunk_come_out_one_after_another() -> None:
    events, _ = run(
        calls(
            call(0, "call_a", "a", "{}"), call(1, "call_b", "b", "{}"), finish_reason="tool_calls"
        )
    )
    one_call = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert types(events[2:-1]) == one_call * 2
    assert [e["output_index"] for e in events[2:-1]] == [0] * 4 + [1] * 4


def test_arguments_sent_as_an_object_become_a_json_string() -> None:
    events, t = run(
        calls(call(0, "call_x", "f", {"a": 1, "b": [2]})),
        chunk({}, finish_reason="tool_calls"),
    )
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"a":1,"b":[2]}']
    assert events[-1]["response"]["output"] == [
        fc("msg_1", "completed", "call_x", "f", '{"a":1,"b":[2]}')
    ]
    assert t.acc.tool_calls[0]["function"]["arguments"] == '{"a":1,"b":[2]}'


def test_text_then_tool_call_closes_the_message_first() -> None:
    events, _ = run(
        chunk({"content": "Checking."}),
        calls(call(0, "call_a", "f")),
        calls(call(0, args="{}")),
        chunk({}, finish_reason="tool_calls"),
    )
    assert types(events[2:]) == [
        *MESSAGE_EVENTS,
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1]["response"]["output"] == [
        msg("msg_1", "completed", text("Checking.")),
        fc("msg_1_1", "completed", "call_a", "f", "{}"),
    ]


def test_call_without_arguments_is_still_added_and_done() -> None:
    events, _ = run(calls(call(0, "call_a", "now")), chunk({}, finish_reason="tool_calls"))
    assert types(events[2:]) == [
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1]["response"]["output"] == [fc("msg_1", "completed", "call_a", "now", "")]


def test_refusal_is_a_refusal_part_of_the_message() -> None:
    events, t = run(
        chunk({"role": "assistant", "content": None, "refusal": "I can't"}),
        chunk({"refusal": " help."}),
        chunk({}, finish_reason="stop"),
    )
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    assert events[3:8] == numbered(
        3,
        {"type": "response.content_part.added", **at, "part": refusal("")},
        {"type": "response.refusal.delta", **at, "delta": "I can't"},
        {"type": "response.refusal.delta", **at, "delta": " help."},
        {"type": "response.refusal.done", **at, "refusal": "I can't help."},
        {"type": "response.content_part.done", **at, "part": refusal("I can't help.")},
    )
    assert events[-1]["response"]["output"] == [msg("msg_1", "completed", refusal("I can't help."))]
    assert t.acc.message()["refusal"] == "I can't help."


def test_text_and_refusal_are_two_parts_of_one_message() -> None:
    events, _ = run(
        chunk({"content": "Well."}), chunk({"refusal": "No."}), chunk({}, finish_reason="stop")
    )
    assert events[-1]["response"]["output"] == [
        msg("msg_1", "completed", text("Well."), refusal("No."))
    ]
    refusal_delta = next(e for e in events if e["type"] == "response.refusal.delta")
    assert refusal_delta["content_index"] == 1


def test_an_empty_answer_is_one_empty_message() -> None:
    events, _ = run(chunk({"role": "assistant", "content": ""}), chunk({}, finish_reason="stop"))
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    assert events[2:-1] == numbered(
        2,
        {"type": "response.output_item.added", "output_index": 0,
         "item": msg("msg_1", "in_progress")},
        {"type": "response.content_part.added", **at, "part": text("")},
        {"type": "response.output_text.done", **at, "text": "", "logprobs": []},
        {"type": "response.content_part.done", **at, "part": text("")},
        {"type": "response.output_item.done", "output_index": 0,
         "item": msg("msg_1", "completed", text(""))},
    )  # fmt: skip


def test_length_cut_is_incomplete_with_max_output_tokens() -> None:
    events, _ = run(chunk({"content": "The answer is"}), chunk({}, "length"), usage_chunk())
    assert types(events)[-2:] == ["response.output_item.done", "response.incomplete"]
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["completed_at"] is None
    assert final["output"] == [msg("msg_1", "incomplete", text("The answer is"))]
    assert events[-2]["item"] == final["output"][0]
    assert final["usage"] == RESPONSES_USAGE


def test_content_filter_is_incomplete_with_content_filter() -> None:
    events, _ = run(chunk({"content": "Once"}), chunk({}, finish_reason="content_filter"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}


def test_cut_during_reasoning_marks_the_summary_part_incomplete() -> None:
    events, _ = run(chunk({"reasoning_content": "Step one"}), chunk({}, finish_reason="length"))
    part_done = next(e for e in events if e["type"] == "response.reasoning_summary_part.done")
    assert part_done["status"] == "incomplete"
    assert events[-1]["response"]["output"] == [
        rs("rs_msg_1", "Step one"),
        msg("msg_1", "incomplete", text("")),  # the answer it never reached
    ]


def test_usage_only_last_chunk_is_the_response_usage() -> None:
    events, t = run(
        chunk({"content": "Hi"}),
        chunk({}, finish_reason="stop"),
        usage_chunk({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                     "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 1}}),
    )  # fmt: skip
    assert events[-1]["response"]["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 1},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    # The usage-only chunk makes no event of its own.
    assert types(events)[-2:] == ["response.output_item.done", "response.completed"]
    assert t.acc.usage is not None and t.acc.usage["prompt_tokens"] == 9


def test_failure_mid_stream_closes_what_is_open_then_fails() -> None:
    error = {"message": "the upstream connection failed mid-stream (ClientPayloadError)",
             "type": "upstream_error", "param": None, "code": "upstream_disconnected"}  # fmt: skip
    events, t = run(
        chunk({"reasoning_content": "Thinking"}),
        chunk({"content": "Partial"}),
        status="failed",
        error=error,
    )
    assert types(events)[-7:] == [*MESSAGE_EVENTS, "response.failed"]
    final = events[-1]["response"]
    assert final["status"] == "failed"
    assert final["error"] == {"code": "server_error", "message": error["message"]}
    assert final["output"] == [
        rs("rs_msg_1", "Thinking"),
        msg("msg_1", "incomplete", text("Partial")),
    ]
    assert t.response() is final


def test_failure_keeps_an_openai_error_code() -> None:
    error = {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}
    events, _ = run(chunk({"content": "x"}), status="failed", error=error)
    assert events[-1]["response"]["error"] == {
        "code": "rate_limit_exceeded",
        "message": "slow down",
    }


def test_failure_before_any_output() -> None:
    events, _ = run(status="failed", error={"message": "boom", "code": None})
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert events[-1]["response"]["output"] == [msg("msg_1", "incomplete", text(""))]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}


def test_cancelled_ends_with_response_failed_of_status_cancelled() -> None:
    events, _ = run(chunk({"content": "Stop"}), status="cancelled")
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["error"] is None
    assert events[-1]["response"]["output"] == [msg("msg_1", "incomplete", text("Stop"))]


def test_explicit_incomplete_without_a_finish_reason() -> None:
    events, _ = run(chunk({"content": "Long"}), status="incomplete")
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": None}
    assert events[-1]["response"]["output"] == [msg("msg_1", "incomplete", text("Long"))]


def test_unknown_terminal_status_is_refused() -> None:
    with pytest.raises(ValueError, match="interrupted"):
        translator().finish("interrupted")


def test_feed_without_start_starts_and_finish_ends_once() -> None:
    t = translator()
    first = t.feed(chunk({"content": "a"}))
    assert types(first)[:2] == ["response.created", "response.in_progress"]
    assert t.start() == []
    end = t.finish()
    assert end[-1]["type"] == "response.completed"
    assert t.finish() == [] and t.feed(chunk({"content": "b"})) == []
    numbers = [e["sequence_number"] for e in first + end]
    assert numbers == list(range(len(numbers)))


def test_empty_and_junk_chunks_make_no_events() -> None:
    t = translator()
    t.start()
    assert t.feed(chunk({"role": "assistant", "content": ""})) == []
    assert t.feed({"choices": "nope"}) == []
    assert t.feed(calls({"index": 0})) == []
    assert t.response()["status"] == "in_progress"


def test_a_fragment_for_a_closed_call_is_kept_in_the_stored_message_only() -> None:
    events, t = run(
        calls(call(0, "call_a", "a", "{")),
        calls(call(1, "call_b", "b", "{}")),
        calls(call(0, args="}")),
        chunk({}, finish_reason="tool_calls"),
    )
    assert [i["arguments"] for i in events[-1]["response"]["output"]] == ["{", "{}"]
    assert [c["function"]["arguments"] for c in t.acc.tool_calls] == ["{}", "{}"]


def test_the_translators_accumulator_stores_what_the_chat_accumulator_would() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "r"}),
        chunk({"content": [{"type": "text", "text": "Hi"}]}),
        calls(call(0, "call_a", "f", "{}")),
        chunk({}, finish_reason="tool_calls"),
        usage_chunk(),
    ]
    events, t = run(*chunks)
    plain = Accumulator()
    for c in chunks:
        plain.add_chunk(c)
    assert t.acc.message() == plain.message()
    assert (t.acc.usage, t.acc.finish_reason, t.acc.upstream_id, t.acc.model) == (
        plain.usage,
        plain.finish_reason,
        plain.upstream_id,
        plain.model,
    )
    assert events[-1]["response"]["output"][1] == msg("msg_1", "completed", text("Hi"))


@pytest.mark.parametrize(
    "chunks",
    [
        [chunk({"reasoning_content": "r"}), chunk({"content": "Hi"}), calls(call(0, "c", "f"))],
        [chunk({"content": ""})],
        [chunk({"content": "Well."}), chunk({"refusal": "No."})],
        [chunk({"refusal": "No."})],
        [calls(call(0, "call_a", "a", "{}"), call(1, "call_b", "b", "[]"))],
    ],
)
def test_items_are_those_the_stored_answer_shows(chunks: list[dict[str, Any]]) -> None:
    """What a stream sends is what ``GET /v1/responses/{id}`` shows of the stored answer
    (but for ``logprobs: []``, which OpenAI sends in a streamed text part)."""
    events, t = run(*chunks, chunk({}, finish_reason="stop"))
    stored = answer_items(t.acc.message(), "completed", "msg_1")
    for item in events[-1]["response"]["output"]:
        for part in item.get("content", []):
            part.pop("logprobs", None)
    assert events[-1]["response"]["output"] == stored


# -- Response object ---------------------------------------------------------------------------


def test_response_object_has_openais_defaults() -> None:
    body = response_object(
        id="resp_1",
        created_at=1,
        model="m",
        status="completed",
        output=[],
        usage=None,
        params={"model": "m", "input": "x"},
    )
    assert body == {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "background": False,
        "completed_at": None,
        "conversation": None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "m",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }
    Response.model_validate(body)


def test_response_object_echoes_the_request() -> None:
    params = {
        "model": "m",
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f", "parameters": {}}, {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "f"},
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 100,
        "truncation": "auto",
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "flex",
        "user": "u1",
        "prompt_cache_key": "pk",
    }
    body = response_object(
        id="resp_2",
        created_at=5,
        model=None,
        status="in_progress",
        output=[],
        usage=None,
        params=params,
        previous_response_id="resp_1",
        conversation="conv_1",
        background=True,
    )
    Response.model_validate(body)
    assert body["tools"] == [
        {"type": "function", "description": None, "name": "f", "parameters": {}, "strict": True},
        {"type": "web_search"},
    ]
    assert body["text"] == {"format": {"type": "json_object"}, "verbosity": "medium"}
    assert body["reasoning"] == {"effort": "low", "summary": None}
    echoed = {k: body[k] for k in params if k not in ("tools", "text", "reasoning")}
    assert echoed == {k: v for k, v in params.items() if k not in ("tools", "text", "reasoning")}
    assert (body["previous_response_id"], body["conversation"], body["background"]) == (
        "resp_1",
        {"id": "conv_1"},
        True,
    )


def test_responses_usage_from_chat_usage() -> None:
    assert responses_usage(USAGE) == RESPONSES_USAGE
    assert responses_usage({"prompt_tokens": 2, "completion_tokens": 3}) == {
        "input_tokens": 2,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 5,
    }


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test-2025",
        "choices": [choice],
        "usage": USAGE,
    }


def to_response(body: dict[str, Any]) -> dict[str, Any]:
    return completion_to_response(
        body,
        id="resp_1",
        created_at=1700000000,
        params=PARAMS,
        item_base="msg_1",
        completed_at=1700000009,
    )


def test_completion_to_response_matches_the_stream() -> None:
    message = {
        "role": "assistant",
        "content": "Calling.",
        "reasoning_content": "Need data.",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "call_b", "type": "function", "function": {"name": "b", "arguments": "[]"}},
        ],
    }
    body = to_response(completion(message, "tool_calls"))
    Response.model_validate(body)
    _, streamed = run(
        chunk({"role": "assistant", "reasoning_content": "Need data."}),
        chunk({"content": "Calling."}),
        calls(call(0, "call_a", "a", "{}"), call(1, "call_b", "b", "[]")),
        chunk({}, finish_reason="tool_calls"),
        usage_chunk(),
    )
    assert body == streamed.response()
    assert body["output"] == [
        rs("rs_msg_1", "Need data."),
        msg("msg_1", "completed", text("Calling.")),
        fc("msg_1_1", "completed", "call_a", "a", "{}"),
        fc("msg_1_2", "completed", "call_b", "b", "[]"),
    ]
    assert body["status"] == "completed" and body["usage"] == RESPONSES_USAGE
    assert body["model"] == "gpt-test-2025"


def test_completion_to_response_cut_by_length() -> None:
    body = to_response(completion({"role": "assistant", "content": "Half"}, "length"))
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"] == [msg("msg_1", "incomplete", text("Half"))]


def test_completion_to_response_with_content_parts() -> None:
    parts = [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    body = to_response(completion({"role": "assistant", "content": parts}))
    assert body["output"] == [msg("msg_1", "completed", text("AB"))]


def test_sse_frame() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "é"}
    assert sse(event) == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","sequence_number":3,"delta":"\xc3\xa9"}\n\n'
    )


# -- Responses events -> the stored chat message -----------------------------------------------


class Stream:
    """An OpenAI-shaped Responses event stream, numbered as it is written."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.add("response.created", response=upstream("in_progress", []))
        self.add("response.in_progress", response=upstream("in_progress", []))

    def add(self, type_: str, **fields: Any) -> Stream:
        self.events.append({"type": type_, "sequence_number": len(self.events), **fields})
        return self

    def message(self, index: int, item_id: str, deltas: list[str]) -> dict[str, Any]:
        """A message's events as OpenAI sends them; returns the finished item."""
        at = {"item_id": item_id, "output_index": index, "content_index": 0}
        whole = "".join(deltas)
        done = msg(item_id, "completed", text(whole))
        self.add("response.output_item.added", output_index=index, item=msg(item_id, "in_progress"))
        self.add("response.content_part.added", **at, part=text(""))
        for d in deltas:
            self.add("response.output_text.delta", **at, delta=d, logprobs=[], obfuscation="xyz")
        self.add("response.output_text.done", **at, text=whole, logprobs=[])
        self.add("response.content_part.done", **at, part=text(whole))
        self.add("response.output_item.done", output_index=index, item=done)
        return done

    def call(self, index: int, item_id: str, call_id: str, name: str, pieces: list[str]) -> dict:
        at = {"item_id": item_id, "output_index": index}
        args = "".join(pieces)
        done = fc(item_id, "completed", call_id, name, args)
        added = fc(item_id, "in_progress", call_id, name, "")
        self.add("response.output_item.added", output_index=index, item=added)
        for p in pieces:
            self.add("response.function_call_arguments.delta", **at, delta=p, obfuscation="ab")
        self.add("response.function_call_arguments.done", **at, arguments=args)
        self.add("response.output_item.done", output_index=index, item=done)
        return done

    def accumulate(self) -> ResponsesAccumulator:
        acc = ResponsesAccumulator()
        for event in self.events:
            EVENTS.validate_python(event)  # the test streams are OpenAI's shapes
            acc.add_chunk(event)
        return acc


def upstream(status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A Response object from a native upstream."""
    return response_object(
        id="resp_up",
        created_at=1,
        model="gpt-5-2025",
        status=status,
        output=output,
        usage=extra.pop("usage", None),
        params={"model": "gpt-5"},
        **extra,
    )


UP_USAGE = {
    "input_tokens": 20,
    "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
    "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 50,
}


def test_accumulates_a_text_stream() -> None:
    s = Stream()
    acc = ResponsesAccumulator()
    for event in s.events:
        acc.add_chunk(event)
    assert (acc.upstream_id, acc.model, acc.terminal, acc.status) == (
        "resp_up",
        "gpt-5-2025",
        False,
        None,
    )
    done = s.message(0, "msg_up", ["Hel", "lo"])
    seen = []
    for event in s.events[2:]:
        acc.add_chunk(event)
        seen.append((acc.content, acc.version))
    assert seen[2:4] == [("Hel", 1), ("Hello", 2)]  # after each delta
    assert seen[-1] == ("Hello", 2)  # .done events repeat the text: nothing changes
    s.add("response.completed", response=upstream("completed", [done], usage=UP_USAGE))
    EVENTS.validate_python(s.events[-1])
    acc.add_chunk(s.events[-1])
    assert acc.terminal and acc.status == "completed"
    assert acc.version == 2
    assert acc.message() == {"role": "assistant", "content": "Hello"}
    assert acc.finish_reason == "stop"
    assert acc.usage == {
        "prompt_tokens": 20,
        "completion_tokens": 30,
        "total_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 10},
    }
    assert acc.system_fingerprint is None and acc.error is None


def test_accumulates_reasoning_summary_parts_then_text() -> None:
    s = Stream()
    at = {"item_id": "rs_1", "output_index": 0}
    s.add("response.output_item.added", output_index=0,
          item={"id": "rs_1", "type": "reasoning", "summary": []})  # fmt: skip
    summaries = []
    for i, words in enumerate([["First ", "idea."], ["Second."]]):
        whole = "".join(words)
        summaries.append({"type": "summary_text", "text": whole})
        empty = {"type": "summary_text", "text": ""}
        s.add("response.reasoning_summary_part.added", **at, summary_index=i, part=empty)
        for w in words:
            s.add("response.reasoning_summary_text.delta", **at, summary_index=i, delta=w)
        s.add("response.reasoning_summary_text.done", **at, summary_index=i, text=whole)
        s.add("response.reasoning_summary_part.done", **at, summary_index=i, part=summaries[-1])
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": summaries}
    s.add("response.output_item.done", output_index=0, item=reasoning)
    answer = s.message(1, "msg_1", ["Answer"])
    s.add("response.completed", response=upstream("completed", [reasoning, answer]))
    acc = s.accumulate()
    assert acc.message() == {
        "role": "assistant",
        "content": "Answer",
        "reasoning_content": "First idea.\n\nSecond.",
    }
    assert acc.finish_reason == "stop"


def test_reasoning_text_is_preferred_to_its_summary() -> None:
    s = Stream()
    s.add("response.output_item.added", output_index=0,
          item={"id": "rs_1", "type": "reasoning", "summary": []})  # fmt: skip
    at = {"item_id": "rs_1", "output_index": 0}
    s.add("response.reasoning_text.delta", **at, content_index=0, delta="raw thoughts")
    s.add("response.reasoning_summary_text.delta", **at, summary_index=0, delta="summary")
    acc = s.accumulate()
    assert acc.message() == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "raw thoughts",
    }


def test_accumulates_function_calls() -> None:
    s = Stream()
    first = s.call(0, "fc_1", "call_1", "weather", ['{"city"', ': "Oslo"}'])
    second = s.call(1, "fc_2", "call_2", "time", ["{}"])
    s.add("response.completed", response=upstream("completed", [first, second]))
    acc = s.accumulate()
    assert acc.message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }  # fmt: skip
    assert acc.finish_reason == "tool_calls"
    assert acc.content == ""


def test_text_after_the_calls_is_a_stop() -> None:
    s = Stream()
    first = s.call(0, "fc_1", "call_1", "f", ["{}"])
    answer = s.message(1, "msg_1", ["Done."])
    s.add("response.completed", response=upstream("completed", [first, answer]))
    acc = s.accumulate()
    assert acc.finish_reason == "stop"
    assert acc.message()["content"] == "Done."


def test_incomplete_is_length_and_keeps_the_text() -> None:
    s = Stream()
    s.message(0, "msg_1", ["Cut ", "he"])
    details = {"reason": "max_output_tokens"}
    s.add("response.incomplete", response=upstream("incomplete", [], incomplete_details=details))
    acc = s.accumulate()
    assert acc.terminal and acc.status == "incomplete"
    assert acc.finish_reason == "length"
    assert acc.content == "Cut he"  # an empty final output does not erase the stream's


def test_incomplete_for_content_filter() -> None:
    s = Stream()
    details = {"reason": "content_filter"}
    s.add("response.incomplete", response=upstream("incomplete", [], incomplete_details=details))
    assert s.accumulate().finish_reason == "content_filter"


def test_failed_response_sets_status_and_error() -> None:
    s = Stream()
    s.message(0, "msg_1", ["Part"])
    error = {"code": "server_error", "message": "The model failed."}
    s.add("response.failed", response=upstream("failed", [], error=error))
    acc = s.accumulate()
    assert acc.terminal and acc.status == "failed"
    assert acc.error == error
    assert acc.finish_reason is None
    assert acc.content == "Part"


def test_error_event_sets_error_but_is_not_terminal() -> None:
    s = Stream()
    s.add("error", code="rate_limit_exceeded", message="Slow down.", param=None)
    acc = s.accumulate()
    assert not acc.terminal
    assert acc.status == "failed"
    assert acc.error == {"code": "rate_limit_exceeded", "message": "Slow down.", "param": None}


def test_refusal_events() -> None:
    s = Stream()
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    s.add("response.output_item.added", output_index=0, item=msg("msg_1", "in_progress"))
    s.add("response.content_part.added", **at, part=refusal(""))
    s.add("response.refusal.delta", **at, delta="No")
    s.add("response.refusal.done", **at, refusal="No.")
    acc = s.accumulate()
    assert acc.message() == {"role": "assistant", "content": "", "refusal": "No."}


def test_done_text_replaces_what_the_deltas_built_but_empty_never_erases() -> None:
    s = Stream()
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    s.add("response.output_item.added", output_index=0, item=msg("msg_1", "in_progress"))
    s.add("response.output_text.delta", **at, delta="Helo", logprobs=[])
    s.add("response.output_text.done", **at, text="Hello", logprobs=[])
    s.add("response.output_text.done", **at, text="", logprobs=[])
    s.add("response.output_item.done", output_index=0, item=msg("msg_1", "completed"))
    acc = s.accumulate()
    assert acc.content == "Hello"
    assert acc.version == 2


def test_non_streamed_response() -> None:
    body = upstream(
        "completed",
        [
            rs("rs_1", "Plan."),
            msg("msg_1", "completed", text("Hi "), text("there")),
            {**fc("fc_1", "completed", "call_9", "search", ""), "arguments": {"q": "x"}},
        ],
        usage=UP_USAGE,
    )
    acc = ResponsesAccumulator()
    acc.add_completion(body)
    assert acc.message() == {
        "role": "assistant",
        "content": "Hi there",
        "reasoning_content": "Plan.",
        "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "search", "arguments": '{"q":"x"}'}},
        ],
    }  # fmt: skip
    assert acc.finish_reason == "tool_calls"
    assert acc.terminal and acc.status == "completed"
    assert (acc.upstream_id, acc.model) == ("resp_up", "gpt-5-2025")
    assert acc.usage is not None and acc.usage["total_tokens"] == 50
    assert acc.version == 1


def test_junk_events_are_ignored() -> None:
    acc = ResponsesAccumulator()
    for junk in (
        "text",
        {"type": 3},
        {"type": "response.output_text.delta", "delta": "x"},  # no item to put it in
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "web_call"}},
        {"type": "response.output_text.delta", "output_index": "0", "delta": "x"},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": 5},
        {"type": "response.completed", "response": "nope"},
    ):
        acc.add_chunk(junk)  # type: ignore[arg-type]
    assert acc.message() == {"role": "assistant", "content": ""}
    assert acc.version == 0
    assert acc.terminal and acc.status == "completed"


def test_round_trip_through_both_translations() -> None:
    """Chat chunks -> Responses events -> the stored message: the same as the chat one."""
    events, t = run(
        chunk({"role": "assistant", "reasoning_content": "Think"}),
        chunk({"content": "Result: "}),
        chunk({"content": "4"}),
        calls(call(0, "call_a", "f", '{"n"')),
        calls(call(0, args=": 4}")),
        chunk({}, finish_reason="tool_calls"),
        usage_chunk(),
    )
    acc = ResponsesAccumulator()
    for event in events:
        acc.add_chunk(event)
    assert acc.message() == t.acc.message()
    assert acc.finish_reason == "tool_calls" == t.acc.finish_reason
    assert acc.usage == CHAT_USAGE
    assert acc.upstream_id == "resp_1"


def test_chat_usage_from_responses_usage() -> None:
    assert chat_usage(RESPONSES_USAGE) == CHAT_USAGE
    assert chat_usage({"input_tokens": 1, "output_tokens": 2}) == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    assert chat_usage("x") is None
