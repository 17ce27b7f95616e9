"""The Chat Completions wire format and how a stream is sent: an ``Answer``'s deltas as
``chat.completion.chunk`` events (SSE), the usage event, the whole ``chat.completion``, the
OpenAI error body and JSON responses, and the sending shared with the Responses API: events
written whole, split in small writes or coalesced, with delays, an invalid event, an in-band
failure or a dropped connection as the ``Reply`` asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from chatproxy.testing.replies import Answer, Reply

DONE = b"data: [DONE]\n\n"
_GARBAGE = b"data: {not json\n\n"


def _deltas(answer: Answer) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
    deltas += [{answer.reply.reasoning_field: p} for p in answer.reasoning]
    deltas += [{"content": p} for p in answer.content]
    deltas += [{"refusal": p} for p in answer.refusal]
    per_call: list[list[dict[str, Any]]] = []
    for index, (call_id, name, frags) in enumerate(answer.tool_calls):
        head = {"index": index, "id": call_id, "type": "function"}
        head["function"] = {"name": name, "arguments": ""}
        tail = [{"index": index, "function": {"arguments": f}} for f in frags]
        per_call.append([head, *tail])
    if answer.reply.interleave_tool_calls:
        longest = max((len(c) for c in per_call), default=0)
        ordered = [c[i] for i in range(longest) for c in per_call if i < len(c)]
    else:
        ordered = [d for c in per_call for d in c]
    deltas += [{"tool_calls": [d]} for d in ordered]
    return deltas


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _head(kind: str, cid: str, created: int, answer: Answer) -> dict[str, Any]:
    return {
        "id": cid,
        "object": kind,
        "created": created,
        "model": answer.model,
        "system_fingerprint": "fp_fake",
    }


def chunk_events(answer: Answer, cid: str, created: int, include_usage: bool) -> list[bytes]:
    """Every ``chat.completion.chunk`` event up to and including the finish chunk."""
    head = _head("chat.completion.chunk", cid, created, answer)
    steps = [(d, None) for d in _deltas(answer)] + [({}, answer.finish_reason)]
    events = []
    for delta, finish in steps:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk: dict[str, Any] = {**head, "choices": [choice]}
        if include_usage:
            chunk["usage"] = None
        events.append(_sse(chunk))
    return events


def usage_event(answer: Answer, cid: str, created: int) -> bytes:
    head = _head("chat.completion.chunk", cid, created, answer)
    return _sse({**head, "choices": [], "usage": answer.usage})


def completion(answer: Answer, cid: str, created: int) -> dict[str, Any]:
    text = "".join(answer.content)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if not text and (answer.tool_calls or answer.refusal) else text,
        "refusal": "".join(answer.refusal) if answer.refusal else None,
    }
    if answer.reasoning:
        message[answer.reply.reasoning_field] = "".join(answer.reasoning)
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": "".join(f)}}
            for i, n, f in answer.tool_calls
        ]
    choice = {"index": 0, "message": message, "logprobs": None}
    choice["finish_reason"] = answer.finish_reason
    head = _head("chat.completion", cid, created, answer)
    return {**head, "choices": [choice], "usage": answer.usage}


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    body = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    resp = web.Response(status=status, body=body, headers=headers)
    resp.content_type = "application/json"
    return resp


def _split(event: bytes) -> list[bytes]:
    # Cut inside the "data:" prefix, inside the JSON, and between the two newlines.
    mid = 3 + (len(event) - 5) // 2
    parts = [event[:3], event[3:mid], event[mid:-2], event[-2:-1], event[-1:]]
    return [p for p in parts if p]


async def write_events(
    resp: web.StreamResponse, reply: Reply, events: list[bytes], coalesce: bool
) -> None:
    if coalesce:
        await resp.write(b"".join(events))
        return
    for i, event in enumerate(events):
        if i and reply.chunk_delay > 0:
            await asyncio.sleep(reply.chunk_delay)
        if not reply.split_writes:
            await resp.write(event)
            continue
        for part in _split(event):
            await resp.write(part)
            # Separate writes only become separate TCP segments if the loop gets to send each.
            await asyncio.sleep(0.001)


async def drop(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    # Let what was written reach the socket first: abort() discards buffered data.
    for _ in range(1000):
        if transport.is_closing() or not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.001)
    transport.abort()


def misbehave(reply: Reply, events: list[bytes], failure: Callable[[int], bytes]) -> list[bytes]:
    """``events`` as ``reply`` asks: failing in-band (``failure(n)`` is the event that replaces
    the ``n``-th), with an invalid event inserted, cut short before a dropped connection."""
    if reply.fail_after is not None and events:
        at = min(max(reply.fail_after, 0), len(events) - 1)
        events = [*events[:at], failure(at)]
    if reply.garbage_after is not None:
        events.insert(reply.garbage_after, _GARBAGE)
    if reply.drop_after is not None:
        events = events[: reply.drop_after]
    return events


def error_response(reply: Reply) -> web.Response:
    """The error a reply with a status other than 200 answers, before any stream."""
    error = reply.error_body
    if error is None:
        error = error_body(reply.status, f"Fake upstream error {reply.status}")
    return json_response(reply.status, error, reply.headers)


def stream_response(reply: Reply) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    return web.StreamResponse(headers={**headers, **reply.headers})


FAILURE_MESSAGE = "The fake upstream failed mid-stream."
CHAT_FAILURE = _sse(error_body(500, FAILURE_MESSAGE))
