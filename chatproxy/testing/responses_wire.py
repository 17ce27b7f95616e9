"""The Responses API wire format: what the model sees (a ``previous_response_id`` chain of
``Stored`` responses, then the input) or the ``invalid_request_error`` OpenAI answers instead,
the request read as the chat-shaped view the shared reply logic expects, an ``Answer`` cut at
``max_output_tokens``, its usage, output items and numbered named-SSE events (round-robin
function calls included), and the ``response`` object that echoes the request's parameters.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from chatproxy.testing.replies import Answer, prompt_tokens

ResponsesMode = Literal["stateful", "stateless", "none"]
RESPONSES_MODES = ("stateful", "stateless", "none")
# A finish reason that leaves a response incomplete, and the reason OpenAI gives for it.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass
class Stored:
    """A response the fake remembers: what its model saw, and what it answered."""

    input: list[Any]
    output: list[dict[str, Any]]


def item_id(prefix: str) -> str:
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


def model_input(
    body: dict[str, Any], remembered: dict[str, Stored], stateful: bool
) -> list[Any] | dict[str, Any]:
    """What the model sees (the ``previous_response_id`` chain, looked up in ``remembered``,
    then the input), or the error OpenAI answers instead: no ``model``, an ``input`` of the
    wrong type, an unknown chain, or (``stateful``) an output that answers an unknown tool call.
    """
    if not isinstance(body.get("model"), str):  # as OpenAI: before anything is answered
        return _invalid(
            "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    if body.get("input") is not None and not isinstance(body["input"], str | list):
        message = (
            "Invalid type for 'input': expected one of a string or array of input items, "
            f"but got {type(body['input']).__name__} instead."
        )
        return _invalid(message, "input")
    items = _input_items(body.get("input"))
    previous = body.get("previous_response_id")
    if previous is not None:
        stored = remembered.get(previous) if isinstance(previous, str) else None
        if stored is None:
            message = f"Previous response with id '{previous}' not found."
            return _invalid(message, "previous_response_id", "previous_response_not_found")
        items = [*stored.input, *stored.output, *items]
    if stateful:
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


def chat_view(body: dict[str, Any], items: list[Any]) -> dict[str, Any]:
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


def pieces_count(answer: Answer) -> int:
    calls = sum(len(frags) for _, _, frags in answer.tool_calls)
    return len(answer.reasoning) + len(answer.content) + len(answer.refusal) + calls


def cut(answer: Answer, limit: int) -> Answer:
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


def responses_usage(answer: Answer, view: dict[str, Any]) -> dict[str, Any]:
    """Usage in the Responses shape: a reply's own (either shape) or counted pieces."""
    given = answer.reply.usage
    if given is not None and "input_tokens" in given:
        return given
    if given is None:
        prompt, output = prompt_tokens(view), pieces_count(answer)
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


def output_items(answer: Answer) -> list[dict[str, Any]]:
    """The finished output items: reasoning, then the message, then the function calls."""
    items: list[dict[str, Any]] = []
    if answer.reasoning:
        summary = [{"type": "summary_text", "text": "".join(answer.reasoning)}]
        items.append({"id": item_id("rs"), "type": "reasoning", "summary": summary})
    if answer.content or answer.refusal or not (answer.tool_calls or answer.reasoning):
        parts: list[dict[str, Any]] = []
        if answer.content or not answer.refusal:
            text = "".join(answer.content)
            parts.append({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
        if answer.refusal:
            parts.append({"type": "refusal", "refusal": "".join(answer.refusal)})
        message = {"id": item_id("msg"), "type": "message", "status": "completed"}
        items.append({**message, "content": parts, "role": "assistant"})
    for call_id, name, frags in answer.tool_calls:
        call = {"id": item_id("fc"), "type": "function_call", "status": "completed"}
        items.append({**call, "arguments": "".join(frags), "call_id": call_id, "name": name})
    if answer.finish_reason in INCOMPLETE and items and "status" in items[-1]:
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
    item: dict[str, Any], index: int, answer: Answer, frags: list[str]
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


def output_events(answer: Answer, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def response_object(
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


def named_sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": e["type"], "sequence_number": n, **e} for n, e in enumerate(events)]
