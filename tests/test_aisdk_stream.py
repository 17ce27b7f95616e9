"""The UI message stream of POST /api/chat, byte for byte, from the fake upstream's answers:
text, reasoning, refusals, tool calls, usage, finish reasons and failures."""

from __future__ import annotations

import aiohttp

from chatproxy.faces.aisdk.stream import UIMessageStream
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.aisdk import full, post_chat, user

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
META = (
    b'"messageMetadata":{"model":"fake-model",'
    b'"usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5}}'
)


def expected(message_id: str, *lines: bytes) -> bytes:
    head = [
        b'{"type":"start","messageId":"' + message_id.encode() + b'"}',
        b'{"type":"start-step"}',
    ]
    return b"".join(b"data: " + line + b"\n\n" for line in [*head, *lines])


async def answer(
    http: aiohttp.ClientSession, proxy: ProxyServer, upstream: FakeUpstream, reply: Reply
) -> tuple[bytes, str]:
    upstream.enqueue(reply)
    status, headers, raw = await post_chat(http, proxy, full("c1", user("u1", "Hi")))
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert headers["X-Chat-Id"] == "c1"
    return raw, headers["X-Message-Id"]


async def test_text_streams_as_one_text_part_then_finish_with_usage(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw, mid = await answer(http, proxy, upstream, Reply(chunks=["Hel", "lo"], usage=USAGE))
    assert raw == expected(
        mid,
        b'{"type":"text-start","id":"text-0"}',
        b'{"type":"text-delta","id":"text-0","delta":"Hel"}',
        b'{"type":"text-delta","id":"text-0","delta":"lo"}',
        b'{"type":"text-end","id":"text-0"}',
        b'{"type":"finish-step"}',
        b'{"type":"finish","finishReason":"stop",' + META + b"}",
        b"[DONE]",
    )


async def test_reasoning_then_text_are_two_parts(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    reply = Reply(
        chunks=["Yes"], reasoning="Let me think", usage=USAGE, reasoning_field="reasoning"
    )
    raw, mid = await answer(http, proxy, upstream, reply)
    assert raw == expected(
        mid,
        b'{"type":"reasoning-start","id":"reasoning-0"}',
        b'{"type":"reasoning-delta","id":"reasoning-0","delta":"Let "}',
        b'{"type":"reasoning-delta","id":"reasoning-0","delta":"me "}',
        b'{"type":"reasoning-delta","id":"reasoning-0","delta":"think"}',
        b'{"type":"reasoning-end","id":"reasoning-0"}',
        b'{"type":"text-start","id":"text-1"}',
        b'{"type":"text-delta","id":"text-1","delta":"Yes"}',
        b'{"type":"text-end","id":"text-1"}',
        b'{"type":"finish-step"}',
        b'{"type":"finish","finishReason":"stop",' + META + b"}",
        b"[DONE]",
    )


async def test_tool_calls_stream_their_input_and_end_available_with_the_arguments_as_sent(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    calls = [
        ToolCall("get_weather", '{"city": "Paris"}', id="call_a"),
        ToolCall("get_time", '{"tz":"CET"}', id="call_b"),
    ]
    raw, mid = await answer(
        http, proxy, upstream, Reply(tool_calls=calls, interleave_tool_calls=True, usage=USAGE)
    )
    assert raw == expected(
        mid,
        b'{"type":"tool-input-start","toolCallId":"call_a","toolName":"get_weather"}',
        b'{"type":"tool-input-start","toolCallId":"call_b","toolName":"get_time"}',
        b'{"type":"tool-input-delta","toolCallId":"call_a","inputTextDelta":"{\\"city"}',
        b'{"type":"tool-input-delta","toolCallId":"call_b","inputTextDelta":"{\\"tz"}',
        b'{"type":"tool-input-delta","toolCallId":"call_a","inputTextDelta":"\\": \\"Pa"}',
        b'{"type":"tool-input-delta","toolCallId":"call_b","inputTextDelta":"\\":\\"C"}',
        b'{"type":"tool-input-delta","toolCallId":"call_a","inputTextDelta":"ris\\"}"}',
        b'{"type":"tool-input-delta","toolCallId":"call_b","inputTextDelta":"ET\\"}"}',
        # Not compact JSON: the arguments as the model sent them come along, so that the
        # message the client sends back is the one stored.
        b'{"type":"tool-input-available","toolCallId":"call_a","toolName":"get_weather",'
        b'"input":{"city":"Paris"},"providerMetadata":{"chatproxy":{"arguments":'
        b'"{\\"city\\": \\"Paris\\"}"}}}',
        b'{"type":"tool-input-available","toolCallId":"call_b","toolName":"get_time",'
        b'"input":{"tz":"CET"}}',
        b'{"type":"finish-step"}',
        b'{"type":"finish","finishReason":"tool-calls",' + META + b"}",
        b"[DONE]",
    )


async def test_text_then_a_tool_call_with_arguments_that_are_not_json(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    reply = Reply(
        chunks=["On it."],
        tool_calls=[ToolCall("search", "{oops", id="call_x")],
        usage=USAGE,
    )
    raw, mid = await answer(http, proxy, upstream, reply)
    assert raw == expected(
        mid,
        b'{"type":"text-start","id":"text-0"}',
        b'{"type":"text-delta","id":"text-0","delta":"On it."}',
        b'{"type":"text-end","id":"text-0"}',
        b'{"type":"tool-input-start","toolCallId":"call_x","toolName":"search"}',
        b'{"type":"tool-input-delta","toolCallId":"call_x","inputTextDelta":"{o"}',
        b'{"type":"tool-input-delta","toolCallId":"call_x","inputTextDelta":"op"}',
        b'{"type":"tool-input-delta","toolCallId":"call_x","inputTextDelta":"s"}',
        b'{"type":"tool-input-error","toolCallId":"call_x","toolName":"search","input":"{oops",'
        b'"providerMetadata":{"chatproxy":{"arguments":"{oops"}},'
        b'"errorText":"the model\'s tool call arguments are not valid JSON"}',
        b'{"type":"finish-step"}',
        b'{"type":"finish","finishReason":"tool-calls",' + META + b"}",
        b"[DONE]",
    )


async def test_a_refusal_is_text_marked_as_a_refusal(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw, mid = await answer(http, proxy, upstream, Reply(refusal="No.", usage=USAGE))
    assert raw == expected(
        mid,
        b'{"type":"text-start","id":"refusal-0","providerMetadata":{"chatproxy":{"refusal":true}}}',
        b'{"type":"text-delta","id":"refusal-0","delta":"No."}',
        b'{"type":"text-end","id":"refusal-0"}',
        b'{"type":"finish-step"}',
        b'{"type":"finish","finishReason":"stop",' + META + b"}",
        b"[DONE]",
    )


async def test_finish_reasons_and_usage_details_in_the_aisdk_names(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 7,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    raw, _ = await answer(
        http, proxy, upstream, Reply(chunks=["a"], finish_reason="length", usage=usage)
    )
    assert raw.endswith(
        b'data: {"type":"finish","finishReason":"length","messageMetadata":{"model":"fake-model",'
        b'"usage":{"inputTokens":10,"outputTokens":7,"totalTokens":17,"reasoningTokens":5,'
        b'"cachedInputTokens":4}}}\n\ndata: [DONE]\n\n'
    )
    raw, _ = await answer(http, proxy, upstream, Reply(chunks=["a"], finish_reason="eos"))
    assert b'"finishReason":"other"' in raw
    raw, _ = await answer(
        http, proxy, upstream, Reply(chunks=["a"], finish_reason="content_filter")
    )
    assert b'"finishReason":"content-filter"' in raw


async def test_an_upstream_error_before_the_first_byte_is_an_error_part_in_a_200_stream(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    reply = Reply(status=400, error_body={"error": {"message": "bad model", "type": "x"}})
    raw, mid = await answer(http, proxy, upstream, reply)
    assert raw == expected(mid, b'{"type":"error","errorText":"bad model"}', b"[DONE]")


async def test_a_stream_broken_mid_answer_closes_the_text_then_error_then_done(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw, mid = await answer(http, proxy, upstream, Reply(chunks=["a", "b", "c"], drop_after=3))
    assert raw == expected(
        mid,
        b'{"type":"text-start","id":"text-0"}',
        b'{"type":"text-delta","id":"text-0","delta":"a"}',
        b'{"type":"text-delta","id":"text-0","delta":"b"}',
        b'{"type":"text-end","id":"text-0"}',
        b'{"type":"error","errorText":"the upstream connection failed mid-stream '
        b'(ClientPayloadError)"}',
        b"[DONE]",
    )


async def test_invalid_upstream_data_is_an_error_part(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw, _ = await answer(http, proxy, upstream, Reply(chunks=["a", "b"], garbage_after=2))
    assert raw.endswith(
        b'data: {"type":"text-end","id":"text-0"}\n\n'
        b'data: {"type":"error","errorText":"the upstream sent invalid data"}\n\n'
        b"data: [DONE]\n\n"
    )


def test_events_that_stop_without_done_end_in_an_error_and_done() -> None:
    ui = UIMessageStream("msg_1")
    assert ui.feed(b'{"choices":[{"index":0,"delta":{"content":"x"}}]}') == (
        b'data: {"type":"text-start","id":"text-0"}\n\n'
        b'data: {"type":"text-delta","id":"text-0","delta":"x"}\n\n'
    )
    assert ui.end() == (
        b'data: {"type":"text-end","id":"text-0"}\n\n'
        b'data: {"type":"error","errorText":"the answer ended before it was complete"}\n\n'
        b"data: [DONE]\n\n"
    )
    assert ui.end() == b""
    assert ui.feed(b"[DONE]") == b""


def test_a_tool_call_whose_name_comes_late_starts_once_named_with_all_its_input() -> None:
    ui = UIMessageStream("msg_1")
    first = b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":'
    assert ui.feed(first + b'{"arguments":"{}"}}]}}]}') == b""
    out = ui.feed(first + b'{"name":"f"}}]},"finish_reason":"tool_calls"}]}')
    assert out == (
        b'data: {"type":"tool-input-start","toolCallId":"c","toolName":"f"}\n\n'
        b'data: {"type":"tool-input-delta","toolCallId":"c","inputTextDelta":"{}"}\n\n'
        b'data: {"type":"tool-input-available","toolCallId":"c","toolName":"f","input":{}}\n\n'
    )


async def test_for_ai_sdk_5_clients_the_finish_part_carries_no_finish_reason(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"aisdk.finish_reason": False})
    raw, mid = await answer(http, proxy, upstream, Reply(chunks=["Hi"], usage=USAGE))
    assert raw == expected(
        mid,
        b'{"type":"text-start","id":"text-0"}',
        b'{"type":"text-delta","id":"text-0","delta":"Hi"}',
        b'{"type":"text-end","id":"text-0"}',
        b'{"type":"finish-step"}',
        b'{"type":"finish",' + META + b"}",
        b"[DONE]",
    )
