"""Accumulator: rebuilding the assistant message from chunks or a whole completion."""

from __future__ import annotations

from typing import Any

import orjson

from chatproxy.engine.accumulate import Accumulator, is_usage_only

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One chunk in OpenAI's exact wire shape."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
    }
    body.update(extra)
    return body


def usage_chunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [],
        "usage": USAGE,
    }


def feed(*chunks: dict[str, Any]) -> Accumulator:
    acc = Accumulator()
    for c in chunks:
        acc.add_chunk(c)
    return acc


def test_content_is_joined_across_chunks() -> None:
    acc = feed(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"content": None}),
        chunk({"content": ", world"}),
        chunk({}, finish_reason="stop"),
    )
    assert acc.content == "Hello, world"
    assert acc.message() == {"role": "assistant", "content": "Hello, world"}


def test_content_is_readable_mid_stream() -> None:
    acc = Accumulator()
    assert acc.content == ""
    acc.add_chunk(chunk({"content": "a"}))
    assert acc.content == "a"
    acc.add_chunk(chunk({"content": "b"}))
    acc.add_chunk(chunk({"content": "c"}))
    assert acc.content == "abc"
    acc.add_chunk(chunk({"content": "d"}))
    assert acc.content == "abcd"


def test_reasoning_content_field_deepseek() -> None:
    acc = feed(
        chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
        chunk({"content": None, "reasoning_content": "Let me "}),
        chunk({"content": None, "reasoning_content": "think."}),
        chunk({"content": "42", "reasoning_content": None}),
    )
    assert acc.reasoning == "Let me think."
    assert acc.message() == {
        "role": "assistant",
        "content": "42",
        "reasoning_content": "Let me think.",
    }


def test_reasoning_field_vllm() -> None:
    acc = feed(chunk({"reasoning": "Hmm"}), chunk({"reasoning": "..."}), chunk({"content": "ok"}))
    assert acc.reasoning == "Hmm..."
    assert acc.message()["reasoning_content"] == "Hmm..."


def test_reasoning_sent_under_both_keys_is_not_doubled() -> None:
    acc = feed(chunk({"reasoning": "a", "reasoning_content": "a"}), chunk({"reasoning": "b"}))
    assert acc.reasoning == "ab"


def test_reasoning_is_none_when_never_sent() -> None:
    acc = feed(chunk({"content": "x"}))
    assert acc.reasoning is None
    assert acc.refusal is None
    assert "reasoning_content" not in acc.message()
    assert "refusal" not in acc.message()


def test_refusal_is_accumulated() -> None:
    acc = feed(
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        chunk({"refusal": "I can't "}),
        chunk({"refusal": "help with that."}),
        chunk({}, finish_reason="stop"),
    )
    assert acc.refusal == "I can't help with that."
    assert acc.message() == {
        "role": "assistant",
        "content": "",
        "refusal": "I can't help with that.",
    }


def tool_delta(index: int | None = None, **fields: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {} if index is None else {"index": index}
    delta.update(fields)
    return {"tool_calls": [delta]}


def test_tool_call_fragments_are_merged_by_index() -> None:
    acc = feed(
        chunk({"role": "assistant", "content": None}),
        chunk(
            tool_delta(
                0,
                id="call_1",
                type="function",
                function={"name": "get_weather", "arguments": ""},
            )
        ),
        chunk(
            tool_delta(
                1, id="call_2", type="function", function={"name": "get_time", "arguments": ""}
            )
        ),
        chunk(tool_delta(0, function={"arguments": '{"ci'})),
        chunk(tool_delta(1, function={"arguments": '{"tz":'})),
        chunk(tool_delta(0, function={"arguments": 'ty": "Paris"}'})),
        chunk(tool_delta(1, function={"arguments": ' "CET"}'})),
        chunk({}, finish_reason="tool_calls"),
    )
    assert acc.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
        },
    ]
    assert acc.finish_reason == "tool_calls"
    message = acc.message()
    assert message["content"] is None
    assert message["tool_calls"] == acc.tool_calls


def test_tool_calls_come_out_in_index_order() -> None:
    acc = feed(
        chunk(tool_delta(1, id="call_b", function={"name": "b", "arguments": "{}"})),
        chunk(tool_delta(0, id="call_a", function={"name": "a", "arguments": "{}"})),
    )
    assert [c["id"] for c in acc.tool_calls] == ["call_a", "call_b"]


def test_tool_call_with_missing_or_null_function_parts() -> None:
    acc = feed(
        chunk(tool_delta(0, id="call_1", type="function", function=None)),
        chunk(tool_delta(0, function={"name": "f"})),
        chunk(tool_delta(0, function={"name": None, "arguments": None})),
        chunk(tool_delta(0)),
        chunk(tool_delta(0, function={"arguments": "{}"})),
    )
    assert acc.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_repeated_full_name_and_id_are_not_duplicated() -> None:
    first = {"name": "search"}
    acc = feed(
        chunk(tool_delta(0, id="call_1", type="function", function=first)),
        chunk(tool_delta(0, id="call_1", type="function", function={**first, "arguments": '{"q"'})),
        chunk(tool_delta(0, id="call_1", function={**first, "arguments": ': "x"}'})),
    )
    assert acc.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "search", "arguments": '{"q": "x"}'},
        }
    ]


def test_tool_call_delta_without_index() -> None:
    acc = feed(
        chunk(tool_delta(id="call_1", function={"name": "a", "arguments": '{"x"'})),
        chunk(tool_delta(function={"arguments": ": 1}"})),
        chunk(tool_delta(id="call_2", function={"name": "b", "arguments": "{"})),
        chunk(tool_delta(function={"arguments": "}"})),
    )
    assert acc.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]


def test_usage_only_chunk_is_picked_up() -> None:
    acc = feed(chunk({"content": "hi"}), chunk({}, finish_reason="stop"), usage_chunk())
    assert acc.usage == USAGE
    assert acc.content == "hi"
    assert acc.finish_reason == "stop"


def test_last_non_null_usage_wins() -> None:
    acc = feed(
        chunk({"content": "a"}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
        chunk({"content": "b"}, usage=None),
    )
    assert acc.usage == {"prompt_tokens": 1, "completion_tokens": 1}
    acc.add_chunk(usage_chunk())
    assert acc.usage == USAGE


def test_is_usage_only() -> None:
    assert is_usage_only(usage_chunk()) is True
    assert is_usage_only(chunk({"content": "x"})) is False
    assert is_usage_only(chunk({"content": "x"}, usage=USAGE)) is False
    assert is_usage_only({**usage_chunk(), "usage": None}) is False
    assert is_usage_only({**usage_chunk(), "choices": None}) is False
    assert is_usage_only({"usage": USAGE}) is False
    assert is_usage_only([]) is False  # type: ignore[arg-type]


def test_finish_reason_is_recorded() -> None:
    acc = feed(chunk({"content": "x"}))
    assert acc.finish_reason is None
    acc.add_chunk(chunk({}, finish_reason="length"))
    assert acc.finish_reason == "length"


def test_upstream_id_model_and_fingerprint() -> None:
    acc = Accumulator()
    assert (acc.upstream_id, acc.model, acc.system_fingerprint) == (None, None, None)
    acc.add_chunk(chunk({"content": "x"}, id="chatcmpl-abc", model="gpt-4o-2024-08-06"))
    assert acc.upstream_id == "chatcmpl-abc"
    assert acc.model == "gpt-4o-2024-08-06"
    assert acc.system_fingerprint == "fp_1"
    acc.add_chunk(chunk({"content": "y"}, system_fingerprint=None))
    assert acc.system_fingerprint == "fp_1"


def test_version_increments_on_message_changes_only() -> None:
    acc = Accumulator()
    assert acc.version == 0
    acc.add_chunk(chunk({"role": "assistant", "content": ""}))
    assert acc.version == 0
    acc.add_chunk(chunk({"content": "a"}))
    assert acc.version == 1
    acc.add_chunk(chunk({"reasoning_content": "r"}))
    assert acc.version == 2
    acc.add_chunk(chunk(tool_delta(0, id="call_1", function={"name": "f", "arguments": ""})))
    assert acc.version == 3
    acc.add_chunk(chunk(tool_delta(0, function={"name": "f", "arguments": ""})))
    assert acc.version == 3
    acc.add_chunk(chunk({}, finish_reason="stop"))
    assert acc.version == 3
    acc.add_chunk(usage_chunk())
    assert acc.version == 3
    acc.add_chunk(chunk({"refusal": "no"}))
    assert acc.version == 4


def test_add_completion_reads_the_whole_message() -> None:
    body = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_9",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz":"CET"}'},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": USAGE,
    }
    acc = Accumulator()
    acc.add_completion(body)
    assert acc.message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"CET"}'},
            },
        ],
    }
    assert (acc.upstream_id, acc.model, acc.system_fingerprint) == (
        "chatcmpl-9",
        "gpt-4o-mini",
        "fp_9",
    )
    assert acc.finish_reason == "tool_calls"
    assert acc.usage == USAGE
    assert acc.version == 1


def test_add_completion_with_text_and_reasoning() -> None:
    acc = Accumulator()
    acc.add_completion(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "deepseek-reasoner",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "4",
                        "reasoning_content": "2+2",
                    },
                    "finish_reason": "stop",
                }
            ],
        }
    )
    assert acc.message() == {"role": "assistant", "content": "4", "reasoning_content": "2+2"}
    assert acc.usage is None


def test_add_completion_serialises_object_arguments() -> None:
    acc = Accumulator()
    message = {
        "role": "assistant",
        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
    }
    acc.add_completion({"choices": [{"index": 0, "message": message}]})
    assert orjson.loads(acc.tool_calls[0]["function"]["arguments"]) == {"a": 1}
    assert acc.tool_calls[0]["type"] == "function"


def test_only_choice_zero_is_accumulated() -> None:
    two = chunk({"content": "zero"})
    two["choices"] = [
        {"index": 1, "delta": {"content": "one"}, "finish_reason": None},
        {"index": 0, "delta": {"content": "zero"}, "finish_reason": None},
    ]
    acc = feed(two, {**chunk({}), "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]})
    assert acc.content == "zero"
    assert acc.finish_reason is None


def test_hostile_shapes_do_not_raise() -> None:
    junk: list[Any] = [
        None,
        "data",
        42,
        [],
        {},
        {"choices": None},
        {"choices": "nope"},
        {"choices": [None, 3, "x"]},
        {"choices": [{"index": 0, "delta": None}]},
        {"choices": [{"index": 0}]},
        {"choices": [{"index": 0, "delta": "text"}]},
        {"choices": [{"index": 0, "delta": {"content": 5, "tool_calls": "x"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [None, 1, {"index": "0"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": -1, "id": 3}]}}]},
        {"choices": [{"index": 0, "delta": {"reasoning": ["a"], "refusal": {}}}]},
        {"choices": [{"index": 0, "finish_reason": 7}], "usage": "lots", "id": 9, "model": []},
    ]
    acc = Accumulator()
    for item in junk:
        acc.add_chunk(item)
        acc.add_completion(item)
        is_usage_only(item)
    acc.add_completion({"choices": [{"index": 0, "message": None}]})
    acc.add_completion({"choices": [{"index": 0, "message": {"tool_calls": [None, "x"]}}]})
    assert acc.content == ""
    assert acc.usage is None
    assert acc.upstream_id is None
    assert acc.finish_reason is None
    # Tool-call deltas that carried no id, name or arguments leave no empty call behind.
    assert acc.message() == {"role": "assistant", "content": ""}


def test_message_shape_for_empty_stream() -> None:
    assert Accumulator().message() == {"role": "assistant", "content": ""}


def test_message_keeps_text_alongside_tool_calls() -> None:
    call = tool_delta(0, id="call_1", type="function", function={"name": "f", "arguments": "{}"})
    acc = feed(chunk({"content": "Checking."}), chunk(call))
    assert acc.message() == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


def test_tool_calls_property_returns_copies() -> None:
    acc = feed(chunk(tool_delta(0, id="call_1", function={"name": "f", "arguments": "{}"})))
    acc.tool_calls[0]["function"]["arguments"] = "mutated"
    assert acc.tool_calls[0]["function"]["arguments"] == "{}"
