"""A scriptable fake OpenAI-compatible upstream for tests, demos and benchmarks.

::

    async with FakeUpstream() as fake:
        fake.enqueue(Reply(content="Hi there"), Reply(status=503, headers={"Retry-After": "1"}))
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="x")
        ...
        assert fake.chat_requests[0].json["messages"][0]["role"] == "user"

It speaks the Chat Completions and the Responses wire formats closely enough for the ``openai``
SDK to parse, and misbehaves on demand: slow or fragmented streams, dropped connections, bad
events, failures mid-stream, error statuses.

``POST /v1/responses`` answers from the same queue. A reply's reasoning becomes a ``reasoning``
item (its summary), its content and refusal a ``message`` item, its tool calls ``function_call``
items; ``finish_reason="length"`` (or a ``max_output_tokens`` below the reply's piece count, which
cuts it there) makes it ``incomplete``. ``responses="stateful"`` (the default) remembers what it
answered, as OpenAI does, and resolves ``previous_response_id`` itself (what the model saw is
``RecordedRequest.model_input``); ``"stateless"`` remembers nothing, as vLLM, Ollama and
llama.cpp do; ``"none"`` answers 404 there, as an upstream without that API does.

With ``auto`` (``FakeUpstream(auto=True)`` for every unscripted answer, ``Reply(auto=True)`` for
one; ``demo`` implies it) it answers in kind, as an agent framework expects a model to:

- the request offers ``tools`` and its last message is not a tool result: a call of the tool
  ``tool_choice`` names (else the first one), its arguments built from the tool's JSON schema
  (required properties only: strings ``"Paris"``, numbers ``1``, booleans ``true``), spelled
  compact as OpenAI sends them (``{"city":"Paris"}``) or, with ``spaced_arguments``, as
  Python's ``json.dumps`` does (``{"city": "Paris"}``), and streamed in fragments;
- ``response_format`` (Responses: ``text.format``) asks for JSON: a JSON document
  (``json_schema``: one with the schema's required properties; ``json_object``:
  ``{"answer": <the reply's text>}``);
- the last message is a tool result: text quoting it (``The tool said: ...``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Self

import orjson
from aiohttp import web

__all__ = [
    "DEFAULT_CONTENT",
    "PLACEHOLDER_TEXT",
    "FakeUpstream",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "example_value",
]

DEFAULT_CONTENT = "Hello! How can I help you today?"
DEMO_CHUNK_DELAY = 0.02
FAST_CHUNKS = 20
MODELS = ("fake-model", "fake-reasoner")

_PIECE_RE = re.compile(r"\s*\S+\s*|\s+")
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_DONE = b"data: [DONE]\n\n"
_GARBAGE = b"data: {not json\n\n"
# Stands in for the completion id in cached (fast mode) events; swapped per response.
_PLACEHOLDER_ID = "chatcmpl-" + "X" * 24
_FAST_CACHE_MAX = 256


@dataclass
class ToolCall:
    """One scripted function call; ``arguments`` is JSON text, streamed in fragments."""

    name: str
    arguments: str
    id: str | None = None  # default: "call_<random>"


@dataclass
class Reply:
    """One scripted answer to a ``/chat/completions`` or ``/responses`` request.

    When ``tool_calls`` or ``refusal`` is set and ``content`` is left at its default (and
    ``chunks`` is None), the answer carries no content.
    """

    content: str = DEFAULT_CONTENT
    chunks: list[str] | None = None  # content pieces; default: word-ish pieces of ``content``
    reasoning: str | None = None  # streamed before the content
    reasoning_field: str = "reasoning_content"  # or "reasoning" (newer vLLM)
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    interleave_tool_calls: bool = False  # stream the calls' fragments round-robin
    finish_reason: str | None = None  # default: "tool_calls" if tool_calls else "stop"
    usage: dict[str, Any] | None = None  # default: word counts of the prompt and the pieces
    model: str | None = None  # default: the request's model
    status: int = 200  # not 200: answer ``error_body`` as JSON, never a stream
    error_body: dict[str, Any] | str | None = None  # default: OpenAI error shape; str: sent raw
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    delay: float = 0.0  # seconds before the response head
    chunk_delay: float = 0.0  # seconds between stream events
    drop_after: int | None = None  # abort the connection after this many events
    split_writes: bool = False  # write each event in several separate small writes
    coalesce: bool = False  # write all events at once
    garbage_after: int | None = None  # insert an invalid ``data: {not json`` event here
    # Replace the stream from this event on with an in-band failure: chat, a ``data: {"error":
    # ...}`` event; responses, ``response.failed``. The final event is replaced at the latest.
    fail_after: int | None = None
    auto: bool = False  # answer in kind: a tool call, a JSON document (see the module doc)
    spaced_arguments: bool = False  # auto tool-call arguments as ``{"city": "Paris"}``


_PLAIN = Reply()


class _Headers(dict[str, str]):
    """Header names lower-cased; lookups ignore case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class RecordedRequest:
    """A request the fake received; ``headers`` looks names up case-insensitively."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    completed: asyncio.Event = field(default_factory=asyncio.Event)
    # ``/responses``: the input items the model saw (``previous_response_id``'s chain, then input)
    model_input: list[Any] | None = None


@dataclass
class _Answer:
    """A reply resolved against its request: everything needed to render either wire form."""

    reply: Reply
    model: str
    reasoning: list[str]
    content: list[str]
    refusal: list[str]
    tool_calls: list[tuple[str, str, list[str]]]  # (id, name, argument fragments)
    finish_reason: str
    usage: dict[str, Any] = field(default_factory=dict)


def _pieces(text: str) -> list[str]:
    return _PIECE_RE.findall(text)


def _filler(n: int) -> str:
    return " ".join(_FILLER[i % len(_FILLER)] for i in range(max(n, 0)))


def _fragments(text: str, parts: int = 3) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _resolve(reply: Reply, body: dict[str, Any]) -> _Answer:
    if reply.chunks is not None:
        content = list(reply.chunks)
    elif reply.content == DEFAULT_CONTENT and (reply.tool_calls or reply.refusal is not None):
        content = []
    else:
        content = _pieces(reply.content)
    calls = [
        (tc.id or f"call_{secrets.token_hex(12)}", tc.name, _fragments(tc.arguments))
        for tc in reply.tool_calls or []
    ]
    reasoning, refusal = _pieces(reply.reasoning or ""), _pieces(reply.refusal or "")
    finish = reply.finish_reason or ("tool_calls" if calls else "stop")
    model = reply.model or str(body.get("model") or MODELS[0])
    answer = _Answer(reply, model, reasoning, content, refusal, calls, finish)
    done = len(reasoning) + len(content) + len(refusal) + sum(len(c[2]) for c in calls)
    answer.usage = _usage(reply, body, done)
    return answer


def _usage(reply: Reply, body: dict[str, Any], completion: int) -> dict[str, Any]:
    if reply.usage is not None:
        return reply.usage
    prompt = _prompt_tokens(body)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _deltas(answer: _Answer) -> list[dict[str, Any]]:
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


def _head(kind: str, cid: str, created: int, answer: _Answer) -> dict[str, Any]:
    return {
        "id": cid,
        "object": kind,
        "created": created,
        "model": answer.model,
        "system_fingerprint": "fp_fake",
    }


def _chunk_events(answer: _Answer, cid: str, created: int, include_usage: bool) -> list[bytes]:
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


def _usage_event(answer: _Answer, cid: str, created: int) -> bytes:
    head = _head("chat.completion.chunk", cid, created, answer)
    return _sse({**head, "choices": [], "usage": answer.usage})


def _completion(answer: _Answer, cid: str, created: int) -> dict[str, Any]:
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


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> web.Response:
    body = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    resp = web.Response(status=status, body=body, headers=headers)
    resp.content_type = "application/json"
    return resp


def _split(event: bytes) -> list[bytes]:
    # Cut inside the "data:" prefix, inside the JSON, and between the two newlines.
    mid = 3 + (len(event) - 5) // 2
    parts = [event[:3], event[3:mid], event[mid:-2], event[-2:-1], event[-1:]]
    return [p for p in parts if p]


def _header_number(request: web.Request, name: str) -> float | None:
    try:
        value = float(request.headers[name])
    except (KeyError, ValueError):
        return None
    return value if 0 <= value < 1e6 else None


def _embedding(text: str, dims: int) -> list[float]:
    raw = b"".join(
        hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range(-(-dims // 32) or 1)
    )
    vec = [b / 127.5 - 1.0 for b in raw[:dims]]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vec]


async def _write_events(
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


async def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    # Let what was written reach the socket first: abort() discards buffered data.
    for _ in range(1000):
        if transport.is_closing() or not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.001)
    transport.abort()


def _misbehave(reply: Reply, events: list[bytes], failure: Callable[[int], bytes]) -> list[bytes]:
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


def _error_response(reply: Reply) -> web.Response:
    """The error a reply with a status other than 200 answers, before any stream."""
    error = reply.error_body
    if error is None:
        error = _error_body(reply.status, f"Fake upstream error {reply.status}")
    return _json_response(reply.status, error, reply.headers)


def _stream_response(reply: Reply) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    return web.StreamResponse(headers={**headers, **reply.headers})


_FAILURE_MESSAGE = "The fake upstream failed mid-stream."
_CHAT_FAILURE = _sse(_error_body(500, _FAILURE_MESSAGE))


PLACEHOLDER_TEXT = "Paris"
_SCHEMA_DEPTH = 12


def example_value(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value that conforms to the JSON schema ``schema``: required properties only, strings
    ``PLACEHOLDER_TEXT``, numbers 1, booleans true, one item per array; ``$ref`` followed."""
    root = schema if root is None else root
    if depth > _SCHEMA_DEPTH:
        return None  # a schema that requires itself
    if not isinstance(schema, dict):
        return PLACEHOLDER_TEXT
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        target: Any = root
        for key in filter(None, ref[2:].split("/")):
            target = target.get(key) if isinstance(target, dict) else None
        return example_value(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        listed = schema.get(combinator)
        options = [
            o
            for o in (listed if isinstance(listed, list) else [])
            if isinstance(o, dict) and o.get("type") != "null"
        ]
        if options:
            return example_value(options[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        return {
            str(name): example_value(properties.get(name, {}), root, depth + 1)
            for name in (required if isinstance(required, list) else [])
        }
    if kind == "array":
        return [example_value(schema.get("items", {}), root, depth + 1)]
    scalars = {"integer": 1, "number": 1, "boolean": True, "null": None}
    return scalars.get(kind, PLACEHOLDER_TEXT) if isinstance(kind, str) else PLACEHOLDER_TEXT


def _offered_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function the request would have called: the one ``tool_choice`` names, else the
    first one offered; None when no tool is offered or ``tool_choice`` is ``"none"``."""
    tools = body.get("tools")
    functions = [
        t["function"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
    ]
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") or choice.get("name")
        return next((f for f in functions if f["name"] == named), functions[0])
    return functions[0]


def _json_answer(reply: Reply, body: dict[str, Any]) -> str | None:
    """The JSON document ``response_format`` asks for, or None when it asks for none."""
    form = body.get("response_format")
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "json_object":
        return orjson.dumps({"answer": reply.content}).decode()
    if kind == "json_schema":
        spec = form.get("json_schema") if isinstance(form, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(example_value(schema or {"type": "object"})).decode()
    return None


def _in_kind(reply: Reply, body: dict[str, Any]) -> Reply:
    """``reply`` answered in kind for this request (the rules in the module docstring)."""
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, _text_of(message.get("content")))
    tool = None if results else _offered_tool(body)
    if tool is not None:
        arguments = example_value(tool.get("parameters") or {"type": "object"})
        text = json.dumps(arguments) if reply.spaced_arguments else orjson.dumps(arguments).decode()
        return replace(reply, chunks=[], tool_calls=[ToolCall(tool["name"], text)], refusal=None)
    document = _json_answer(reply, body)
    if document is not None:
        return replace(reply, chunks=_fragments(document, 4), tool_calls=None)
    if results:
        quoted = "; ".join(" ".join(r.split()) for r in results)
        return replace(reply, content=f"The tool said: {quoted}", chunks=None, tool_calls=None)
    return reply


def _demo_reply(body: dict[str, Any]) -> Reply:
    said = ""
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            said = " ".join(_text_of(message.get("content")).split())
            break
    if len(said) > 80:
        said = said[:77] + "..."
    opening = f'You said: "{said}".' if said else "Hi there!"
    content = (
        f"{opening} I'm the chatproxy demo model, so my answers are canned, "
        "but this conversation is stored just like a real one."
    )
    return Reply(content=content, chunk_delay=DEMO_CHUNK_DELAY, auto=True)


# -- Responses API ----------------------------------------------------------------------------

ResponsesMode = Literal["stateful", "stateless", "none"]
_RESPONSES_MODES = ("stateful", "stateless", "none")
# A finish reason that leaves a response incomplete, and the reason OpenAI gives for it.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass
class _Stored:
    """A response the fake remembers: what its model saw, and what it answered."""

    input: list[Any]
    output: list[dict[str, Any]]


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _invalid(message: str, param: str | None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


def _given(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _input_items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def _chat_view(body: dict[str, Any], items: list[Any]) -> dict[str, Any]:
    """A Responses request as the Chat Completions logic shared by both paths reads it
    (``messages``, ``tools``, ``tool_choice``, ``response_format``); ``items`` is its input."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        items = [*instructions, *items]
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
        elif kind == "function_call":
            function = {"name": item.get("name"), "arguments": item.get("arguments")}
            call = {"id": item.get("call_id"), "type": "function", "function": function}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            result = {"tool_call_id": item.get("call_id"), "content": item.get("output")}
            messages.append({"role": "tool", **result})
    tools = body.get("tools")
    keys = ("name", "description", "parameters")
    functions = [
        {"type": "function", "function": {k: t[k] for k in keys if k in t}}
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and t.get("type") == "function"
    ]
    view: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "tools": functions,
        "tool_choice": body.get("tool_choice"),
    }
    text = body.get("text")
    form = text.get("format") if isinstance(text, dict) else None
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "json_schema" and isinstance(form, dict):
        spec = {"name": form.get("name"), "schema": form.get("schema")}
        view["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind == "json_object":
        view["response_format"] = {"type": "json_object"}
    return view


def _pieces_count(answer: _Answer) -> int:
    calls = sum(len(frags) for _, _, frags in answer.tool_calls)
    return len(answer.reasoning) + len(answer.content) + len(answer.refusal) + calls


def _cut(answer: _Answer, limit: int) -> _Answer:
    """``answer`` cut after ``limit`` pieces, as a ``max_output_tokens`` limit cuts a model."""
    left = max(limit, 0)

    def take(pieces: list[str]) -> list[str]:
        nonlocal left
        kept = pieces[:left]
        left -= len(kept)
        return kept

    reasoning, content, refusal = take(answer.reasoning), take(answer.content), take(answer.refusal)
    calls = []
    for call_id, name, frags in answer.tool_calls:
        if not left:
            break
        calls.append((call_id, name, take(frags)))
    return replace(
        answer,
        reasoning=reasoning,
        content=content,
        refusal=refusal,
        tool_calls=calls,
        finish_reason="length",
    )


def _responses_usage(answer: _Answer, view: dict[str, Any]) -> dict[str, Any]:
    """Usage in the Responses shape: a reply's own (either shape) or counted pieces."""
    given = answer.reply.usage
    if given is not None and "input_tokens" in given:
        return given
    if given is None:
        prompt, output = _prompt_tokens(view), _pieces_count(answer)
        cached, reasoning = 0, len(answer.reasoning)
    else:
        prompt = int(given.get("prompt_tokens") or 0)
        output = int(given.get("completion_tokens") or 0)
        cached = int((given.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        reasoning = int((given.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def _output_items(answer: _Answer) -> list[dict[str, Any]]:
    """The finished output items: reasoning, then the message, then the function calls."""
    items: list[dict[str, Any]] = []
    if answer.reasoning:
        summary = [{"type": "summary_text", "text": "".join(answer.reasoning)}]
        items.append({"id": _item_id("rs"), "type": "reasoning", "summary": summary})
    if answer.content or answer.refusal or not (answer.tool_calls or answer.reasoning):
        parts: list[dict[str, Any]] = []
        if answer.content or not answer.refusal:
            text = "".join(answer.content)
            parts.append({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
        if answer.refusal:
            parts.append({"type": "refusal", "refusal": "".join(answer.refusal)})
        message = {"id": _item_id("msg"), "type": "message", "status": "completed"}
        items.append({**message, "content": parts, "role": "assistant"})
    for call_id, name, frags in answer.tool_calls:
        call = {"id": _item_id("fc"), "type": "function_call", "status": "completed"}
        items.append({**call, "arguments": "".join(frags), "call_id": call_id, "name": name})
    if answer.finish_reason in _INCOMPLETE and items and "status" in items[-1]:
        items[-1]["status"] = "incomplete"
    return items


def _in_progress(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` as ``response.output_item.added`` shows it, before any of its content."""
    if item["type"] == "reasoning":
        return {**item, "summary": []}
    if item["type"] == "message":
        return {**item, "status": "in_progress", "content": []}
    return {**item, "status": "in_progress", "arguments": ""}


def _item_events(
    item: dict[str, Any], index: int, answer: _Answer, frags: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One output item's events, without sequence numbers: opening, deltas, closing."""
    ref = {"item_id": item["id"], "output_index": index}
    added = {"type": "response.output_item.added", "output_index": index}
    opening = [{**added, "item": _in_progress(item)}]
    middle: list[dict[str, Any]] = []
    closing = [{"type": "response.output_item.done", "output_index": index, "item": item}]
    if item["type"] == "reasoning":
        text = item["summary"][0]["text"]
        at = {**ref, "summary_index": 0}
        empty, full = {"type": "summary_text", "text": ""}, {"type": "summary_text", "text": text}
        middle.append({"type": "response.reasoning_summary_part.added", **at, "part": empty})
        middle += [
            {"type": "response.reasoning_summary_text.delta", **at, "delta": p}
            for p in answer.reasoning
        ]
        middle.append({"type": "response.reasoning_summary_text.done", **at, "text": text})
        middle.append({"type": "response.reasoning_summary_part.done", **at, "part": full})
    elif item["type"] == "message":
        for content_index, part in enumerate(item["content"]):
            at = {**ref, "content_index": content_index}
            if part["type"] == "output_text":
                start = {**part, "text": ""}
                deltas = [
                    {"type": "response.output_text.delta", **at, "delta": p, "logprobs": []}
                    for p in answer.content
                ]
                done = {"type": "response.output_text.done", **at, "text": part["text"]}
                done["logprobs"] = []
            else:
                start = {**part, "refusal": ""}
                deltas = [
                    {"type": "response.refusal.delta", **at, "delta": p} for p in answer.refusal
                ]
                done = {"type": "response.refusal.done", **at, "refusal": part["refusal"]}
            middle.append({"type": "response.content_part.added", **at, "part": start})
            middle += [*deltas, done]
            middle.append({"type": "response.content_part.done", **at, "part": part})
    else:
        middle += [
            {"type": "response.function_call_arguments.delta", **ref, "delta": f} for f in frags
        ]
        done = {"type": "response.function_call_arguments.done", **ref}
        closing.insert(0, {**done, "arguments": item["arguments"]})
    return opening, middle, closing


def _output_events(answer: _Answer, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every output item's events in order; function calls round-robin when the reply says."""
    frags = iter(f for _, _, f in answer.tool_calls)
    per_item = [
        _item_events(item, i, answer, next(frags) if item["type"] == "function_call" else [])
        for i, item in enumerate(items)
    ]
    calls = [e for e, item in zip(per_item, items, strict=True) if item["type"] == "function_call"]
    if not (answer.reply.interleave_tool_calls and len(calls) > 1):
        return [event for parts in per_item for part in parts for event in part]
    others = [e for e, item in zip(per_item, items, strict=True) if item["type"] != "function_call"]
    events = [event for parts in others for part in parts for event in part]
    events += [event for opening, _, _ in calls for event in opening]
    longest = max(len(middle) for _, middle, _ in calls)
    events += [m[i] for i in range(longest) for _, m, _ in calls if i < len(m)]
    events += [event for _, _, closing in calls for event in closing]
    return events


def _echo_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") == "function":
        return {"description": None, "strict": True, **tool}
    return tool


def _response_object(
    rid: str,
    created: int,
    body: dict[str, Any],
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    *,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """A ``response`` object as OpenAI returns it, the request's parameters echoed."""
    tools = body.get("tools")
    reasoning, text = body.get("reasoning"), body.get("text")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    text = text if isinstance(text, dict) else {}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": bool(body.get("background")),
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": _given(body, "parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None, **reasoning},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": _given(body, "store", True),
        "temperature": _given(body, "temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium", **text},
        "tool_choice": _given(body, "tool_choice", "auto"),
        "tools": [_echo_tool(t) for t in (tools if isinstance(tools, list) else [])],
        "top_logprobs": _given(body, "top_logprobs", 0),
        "top_p": _given(body, "top_p", 1.0),
        "truncation": _given(body, "truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "metadata": _given(body, "metadata", {}),
    }


def _named_sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": e["type"], "sequence_number": n, **e} for n, e in enumerate(events)]


class FakeUpstream:
    """A fake OpenAI-compatible server whose ``/chat/completions`` and ``/responses`` answers
    are scripted.

    ``enqueue`` replies (FIFO, one per chat or responses request); an empty queue answers with
    ``default``,
    else a demo echo when ``demo``, else ``Reply()``. ``fast`` caches the encoded stream of that
    fallback (20 pieces unless ``default`` is given) for benchmarks. ``auto`` (and
    ``spaced_arguments``) make that fallback answer in kind (tool calls, JSON documents: see the
    module docstring), as the demo's does. Headers ``X-Fake-Chunks: <n>`` and
    ``X-Fake-Chunk-Delay: <seconds>`` override any reply. ``responses`` says how it serves the
    Responses API: ``"stateful"`` (remembers responses, as OpenAI), ``"stateless"`` (every
    ``previous_response_id`` is unknown), ``"none"`` (404, no such API).
    """

    def __init__(
        self,
        *,
        default: Reply | None = None,
        demo: bool = False,
        fast: bool = False,
        auto: bool = False,
        spaced_arguments: bool = False,
        responses: ResponsesMode = "stateful",
    ):
        self.requests: list[RecordedRequest] = []
        self.responses = responses
        self._stored: dict[str, _Stored] = {}
        self._queue: deque[Reply] = deque()
        self._demo = demo
        self._fast = fast
        if default is None and fast and not demo:
            default = Reply(content=_filler(FAST_CHUNKS))
        if default is None and auto and not demo:
            default = Reply()
        if default is not None and (auto or spaced_arguments):
            spaced = spaced_arguments or default.spaced_arguments
            default = replace(default, auto=auto or default.auto, spaced_arguments=spaced)
        self._default = default
        self._spaced = spaced_arguments
        self._cache: dict[tuple[str, bool, float | None], tuple[_Answer, int, list[bytes]]] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/responses", self._responses)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/embeddings", self._embeddings)
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies for the next chat or responses requests, in order."""
        self._queue.extend(replies)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded ``POST .../chat/completions`` requests."""
        return [
            r for r in self.requests if r.method == "POST" and r.path.endswith("/chat/completions")
        ]

    @property
    def responses(self) -> ResponsesMode:
        """How ``/v1/responses`` is answered: ``stateful`` (``previous_response_id`` resolved),
        ``stateless`` (never), ``none`` (404, as an upstream without the API)."""
        return self._responses_mode

    @responses.setter
    def responses(self, mode: ResponsesMode) -> None:
        if mode not in _RESPONSES_MODES:
            raise ValueError(f"responses must be one of {', '.join(_RESPONSES_MODES)}")
        self._responses_mode = mode

    @property
    def responses_requests(self) -> list[RecordedRequest]:
        """The recorded ``POST .../responses`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/responses")]

    @property
    def url(self) -> str:
        """Base url, e.g. ``http://127.0.0.1:PORT/v1``; only after :meth:`start`."""
        if self._url is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on a real port (0: any free one); return the base url."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        # handler_cancellation: a client that goes away cancels the handler at once.
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=0.25
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown}:{bound}/v1"
        return self._url

    async def close(self) -> None:
        """Stop serving (in-flight responses get a short grace period)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- handlers ------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.read()
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        names = {name.lower() for name in request.headers}
        headers = _Headers({n: ", ".join(request.headers.getall(n)) for n in names})
        record = RecordedRequest(
            request.method, request.path, dict(request.query), headers, body, parsed
        )
        self.requests.append(record)
        return record

    async def _respond(
        self,
        request: web.Request,
        record: RecordedRequest,
        resp: web.StreamResponse,
        reply: Reply = _PLAIN,
        events: list[bytes] | None = None,
        coalesce: bool = False,
    ) -> web.StreamResponse:
        """Send ``resp`` (then ``events`` as its stream), noting completion or disconnection."""
        try:
            if reply.delay > 0:
                await asyncio.sleep(reply.delay)
            await resp.prepare(request)
            if events is not None:
                await _write_events(resp, reply, events, coalesce)
                if reply.drop_after is not None:
                    await _drop(request)
                    return resp
            await resp.write_eof()
        except ConnectionError:
            record.disconnected.set()
            return resp
        except asyncio.CancelledError:
            record.disconnected.set()
            raise
        record.completed.set()
        return resp

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        message = f"Invalid URL ({request.method} {request.path})"
        return await self._respond(request, record, _json_response(404, _error_body(404, message)))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "chatproxy"}
            for m in MODELS
        ]
        return await self._respond(
            request, record, _json_response(200, {"object": "list", "data": data})
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        body = record.json if isinstance(record.json, dict) else {}
        inputs = body.get("input")
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
        ):
            inputs = [inputs]  # one text, or one list of token ids
        if not isinstance(inputs, list) or not inputs:
            error = _error_body(400, "'input' must be a string or a non-empty list")
            return await self._respond(request, record, _json_response(400, error))
        data = []
        for index, item in enumerate(inputs):
            vec: Any = _embedding(str(item), int(body.get("dimensions") or 8))
            if body.get("encoding_format") == "base64":
                vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vec})
        tokens = sum(len(str(item).split()) for item in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        model = body.get("model") or "fake-embedding"
        payload = {"object": "list", "data": data, "model": model, "usage": usage}
        return await self._respond(request, record, _json_response(200, payload))

    def _scripted(
        self, request: web.Request, body: dict[str, Any]
    ) -> tuple[Reply, bool, float | None]:
        """The reply for this chat-shaped request, the ``X-Fake-*`` headers and ``auto``
        applied; whether its encoding may be cached; the ``X-Fake-Chunks`` count."""
        reply, cacheable = self._next_reply(body)
        n_chunks = _header_number(request, "X-Fake-Chunks")
        if n_chunks is not None:
            reply = replace(reply, content=_filler(int(n_chunks)), chunks=None)
        chunk_delay = _header_number(request, "X-Fake-Chunk-Delay")
        if chunk_delay is not None:
            reply = replace(reply, chunk_delay=chunk_delay)
        if reply.auto:
            answered = _in_kind(reply, body)
            cacheable = cacheable and answered is reply
            reply = answered
        return reply, cacheable, n_chunks

    def _next_reply(self, body: dict[str, Any]) -> tuple[Reply, bool]:
        """The reply to use, and whether its encoding may be cached (fast mode)."""
        if self._queue:
            return self._queue.popleft(), False
        if self._default is not None:
            return self._default, self._fast
        if self._demo:
            return replace(_demo_reply(body), spaced_arguments=self._spaced), False
        return Reply(), False

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        body = record.json
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            return await self._respond(
                request, record, _json_response(400, _error_body(400, message))
            )
        reply, cacheable, n_chunks = self._scripted(request, body)
        if reply.status != 200:
            return await self._respond(request, record, _error_response(reply), reply)

        cid = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if not body.get("stream"):
            answer = _resolve(reply, body)
            resp = _json_response(200, _completion(answer, cid, created), reply.headers)
            return await self._respond(request, record, resp, reply)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if cacheable:
            key = (str(body.get("model")), include_usage, n_chunks)
            cached = self._cache.get(key)
            if cached is None:
                if len(self._cache) >= _FAST_CACHE_MAX:
                    self._cache.clear()
                answer = _resolve(reply, body)
                template = _chunk_events(answer, _PLACEHOLDER_ID, created, include_usage)
                cached = self._cache[key] = (answer, created, template)
            answer, created, template = cached
            placeholder, fresh = _PLACEHOLDER_ID.encode(), cid.encode()
            events = [e.replace(placeholder, fresh) for e in template]
            if include_usage:
                # Usage depends on the prompt, so it is never cached.
                done = answer.usage.get("completion_tokens", 0)
                answer = replace(answer, usage=_usage(reply, body, done))
        else:
            answer = _resolve(reply, body)
            events = _chunk_events(answer, cid, created, include_usage)
        if include_usage:
            events.append(_usage_event(answer, cid, created))
        events.append(_DONE)
        events = _misbehave(reply, events, lambda _: _CHAT_FAILURE)
        resp = _stream_response(reply)
        return await self._respond(request, record, resp, reply, events, reply.coalesce)

    def _model_input(self, body: dict[str, Any]) -> list[Any] | dict[str, Any]:
        """What the model sees (the ``previous_response_id`` chain, then the input), or the
        error OpenAI answers when that chain, or a tool call an output answers, is unknown."""
        items = _input_items(body.get("input"))
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = self._stored.get(previous) if isinstance(previous, str) else None
            if stored is None:
                message = f"Previous response with id '{previous}' not found."
                return _invalid(message, "previous_response_id", "previous_response_not_found")
            items = [*stored.input, *stored.output, *items]
        if self._responses_mode == "stateful":
            typed = [i for i in items if isinstance(i, dict)]
            called = {i.get("call_id") for i in typed if i.get("type") == "function_call"}
            for item in typed:
                if item.get("type") == "function_call_output" and item.get("call_id") not in called:
                    message = (
                        "No tool call found for function call output with call_id "
                        f"{item.get('call_id')}."
                    )
                    return _invalid(message, "input")
        return items

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        if self._responses_mode == "none":
            return await self._not_found(request)
        record = await self._record(request)
        body = record.json
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            return await self._respond(
                request, record, _json_response(400, _error_body(400, message))
            )
        if not isinstance(body.get("model"), str):  # as OpenAI: before anything is answered
            missing = _invalid(
                "Missing required parameter: 'model'.", "model", "missing_required_parameter"
            )
            return await self._respond(request, record, _json_response(400, missing))
        if body.get("input") is not None and not isinstance(body["input"], str | list):
            message = (
                "Invalid type for 'input': expected one of a string or array of input items, "
                f"but got {type(body['input']).__name__} instead."
            )
            error = _json_response(400, _invalid(message, "input"))
            return await self._respond(request, record, error)
        seen = self._model_input(body)
        if isinstance(seen, dict):
            return await self._respond(request, record, _json_response(400, seen))
        record.model_input = seen
        view = _chat_view(body, seen)
        reply, _, _ = self._scripted(request, view)
        if reply.status != 200:
            return await self._respond(request, record, _error_response(reply), reply)

        answer = _resolve(reply, view)
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < _pieces_count(answer):
            answer = _cut(answer, limit)
        rid, created = _item_id("resp"), int(time.time())
        items = _output_items(answer)
        usage = _responses_usage(answer, view)
        incomplete = _INCOMPLETE.get(answer.finish_reason)
        status = "incomplete" if incomplete else "completed"
        final = _response_object(
            rid, created, body, answer.model, status, items, usage, incomplete=incomplete
        )
        stored = _Stored(seen, items)
        if self._responses_mode == "stateful" and body.get("store") is not False:
            self._stored[rid] = stored
        if not body.get("stream"):
            return await self._respond(request, record, _json_response(200, final, reply.headers))

        start = _response_object(rid, created, body, answer.model, "in_progress", [], None)
        steps = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
            *_output_events(answer, items),
            {"type": f"response.{status}", "response": final},
        ]
        steps = _numbered(steps)

        def failure(at: int) -> bytes:
            done = [e["item"] for e in steps[:at] if e["type"] == "response.output_item.done"]
            stored.output = done
            error = {"code": "server_error", "message": _FAILURE_MESSAGE}
            failed = _response_object(
                rid, created, body, answer.model, "failed", done, None, error=error
            )
            event = {"type": "response.failed", "sequence_number": at, "response": failed}
            return _named_sse(event)

        events = _misbehave(reply, [_named_sse(e) for e in steps], failure)
        resp = _stream_response(reply)
        return await self._respond(request, record, resp, reply, events, reply.coalesce)
