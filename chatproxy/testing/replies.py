"""Scripted replies and how they resolve: ``Reply`` and ``ToolCall`` (what a test queues), the
``Answer`` a reply becomes against its request (its pieces of reasoning, content, refusal and
tool-call arguments, its finish reason, its usage), the ``auto`` rules that answer a request in
kind (a tool call built from the tool's JSON schema by ``example_value``, a JSON document, a
quoted tool result), and the demo's echo; nothing here knows a wire format or a socket.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

DEFAULT_CONTENT = "Hello! How can I help you today?"
DEMO_CHUNK_DELAY = 0.02
MODELS = ("fake-model", "fake-reasoner")

_PIECE_RE = re.compile(r"\s*\S+\s*|\s+")
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


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
    auto: bool = False  # answer in kind: a tool call, a JSON document (see the package doc)
    spaced_arguments: bool = False  # auto tool-call arguments as ``{"city": "Paris"}``


@dataclass
class Answer:
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


def filler(n: int) -> str:
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


def prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def resolve(reply: Reply, body: dict[str, Any]) -> Answer:
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
    answer = Answer(reply, model, reasoning, content, refusal, calls, finish)
    done = len(reasoning) + len(content) + len(refusal) + sum(len(c[2]) for c in calls)
    answer.usage = chat_usage(reply, body, done)
    return answer


def chat_usage(reply: Reply, body: dict[str, Any], completion: int) -> dict[str, Any]:
    if reply.usage is not None:
        return reply.usage
    prompt = prompt_tokens(body)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


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


def in_kind(reply: Reply, body: dict[str, Any]) -> Reply:
    """``reply`` answered in kind for this request (the rules in the package docstring)."""
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


def demo_reply(body: dict[str, Any]) -> Reply:
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
