"""The Responses API's wire shapes, and a chat-completions answer turned into them.

:func:`response_object` is the ``Response`` object as OpenAI returns it, with OpenAI's defaults
for every parameter the request left out. :class:`ChatToResponses` translates a
``chat.completion.chunk`` stream into Responses stream events as it arrives;
:func:`completion_to_response` does the same for one non-streamed ``chat.completion``.

Output items come one after another, as OpenAI emits them: a reasoning item (the upstream's
``reasoning_content`` as a summary), a message (its text and refusal parts), function calls; an
item is closed when the next one starts, and an answer with neither text nor calls is one empty
message. Ids and shapes are those :func:`chatproxy.faces.items.answer_items` gives the stored
answer: the message and the calls are ``item_base``, ``item_base_1``, ... in output order, the
reasoning item ``rs_{item_base}``. The chat-completions side is read through the engine's
:class:`~chatproxy.engine.accumulate.Accumulator` (:attr:`ChatToResponses.acc`), so the stored
assistant message and the client's events come from the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from chatproxy.engine.accumulate import Accumulator, content_text, pick_choice

__all__ = [
    "ChatToResponses",
    "completion_to_response",
    "function_call_item",
    "message_item",
    "reasoning_item",
    "refusal_part",
    "response_error",
    "response_object",
    "responses_usage",
    "sse",
    "text_part",
]

# ``Response.error.code`` as OpenAI's spec enumerates it; any other code is sent as server_error.
_OPENAI_ERROR_CODES = """
server_error rate_limit_exceeded invalid_prompt data_residency_mismatch bio_policy
misalignment_policy_violation vector_store_timeout invalid_image invalid_image_format
invalid_base64_image invalid_image_url image_too_large image_too_small image_parse_error
image_content_policy_violation invalid_image_mode image_file_too_large
unsupported_image_media_type empty_image_file failed_to_download_image image_file_not_found
"""
_ERROR_CODES = frozenset(_OPENAI_ERROR_CODES.split())
# chat finish_reason -> Response.incomplete_details.reason
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# An answer's end -> its terminal event (a cancelled response has no event of its own)
_TERMINAL_EVENTS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.failed",
}


# -- objects ---------------------------------------------------------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def responses_usage(chat_usage: Mapping[str, Any]) -> dict[str, Any]:
    """Chat-completions usage (``prompt_tokens``, ``completion_tokens``, their details) in
    Responses form."""
    prompt = _count(chat_usage.get("prompt_tokens"))
    completion = _count(chat_usage.get("completion_tokens"))
    total = chat_usage.get("total_tokens")
    cached = _details(chat_usage, "prompt_tokens_details")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(cached.get("cached_tokens")),
            "cache_write_tokens": _count(cached.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _count(
                _details(chat_usage, "completion_tokens_details").get("reasoning_tokens")
            ),
        },
        "total_tokens": total if _count(total) else prompt + completion,
    }


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    details = usage.get(key)
    return details if isinstance(details, dict) else {}


def response_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """An error body (``message``, ``code``, ...) as ``Response.error``: ``code`` must be one
    OpenAI defines, so the proxy's own codes become ``server_error``."""
    code = error.get("code")
    message = error.get("message")
    return {
        "code": code if code in _ERROR_CODES else "server_error",
        "message": message if isinstance(message, str) else "",
    }


def _set(params: Mapping[str, Any], key: str, default: Any) -> Any:
    value = params.get(key)
    return default if value is None else value


def _tool(tool: Any) -> Any:
    """A request's tool as OpenAI echoes it: function tools get ``description`` and ``strict``."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    echoed = {
        "type": "function",
        "description": tool.get("description"),
        "name": tool.get("name"),
        "parameters": tool.get("parameters"),
        "strict": _set(tool, "strict", True),
    }
    echoed.update((k, v) for k, v in tool.items() if k not in echoed)
    return echoed


def response_object(
    *,
    id: str,
    created_at: int,
    model: str | None,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    params: Mapping[str, Any],
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    previous_response_id: str | None = None,
    conversation: str | None = None,
    background: bool = False,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The ``Response`` object; ``params`` (the client's request body) supplies the echoed
    parameters, OpenAI's defaults stand for those it does not set."""
    reasoning = params.get("reasoning")
    text = params.get("text")
    tools = params.get("tools")
    service_tier = params.get("service_tier")
    body: dict[str, Any] = {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": background,
        "completed_at": completed_at,
        "conversation": {"id": conversation} if conversation else None,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": params.get("instructions"),
        "max_output_tokens": params.get("max_output_tokens"),
        "max_tool_calls": params.get("max_tool_calls"),
        "model": model or params.get("model") or "",
        "output": output,
        "parallel_tool_calls": _set(params, "parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "prompt_cache_key": params.get("prompt_cache_key"),
        "prompt_cache_retention": params.get("prompt_cache_retention"),
        "reasoning": {
            "effort": None,
            "summary": None,
            **(reasoning if isinstance(reasoning, dict) else {}),
        },
        "safety_identifier": params.get("safety_identifier"),
        # The tier that served the request: "auto" is never what OpenAI answers.
        "service_tier": "default" if service_tier in (None, "auto") else service_tier,
        "store": _set(params, "store", True),
        "temperature": _set(params, "temperature", 1.0),
        "text": {
            "format": {"type": "text"},
            "verbosity": "medium",
            **(text if isinstance(text, dict) else {}),
        },
        "tool_choice": _set(params, "tool_choice", "auto"),
        "tools": [_tool(t) for t in tools] if isinstance(tools, list) else [],
        "top_logprobs": _set(params, "top_logprobs", 0),
        "top_p": _set(params, "top_p", 1.0),
        "truncation": _set(params, "truncation", "disabled"),
        "usage": usage,
        "user": params.get("user"),
        "metadata": _set(params, "metadata", {}),
    }
    if params.get("prompt") is not None:
        body["prompt"] = params["prompt"]
    return body


# -- output items ------------------------------------------------------------------------------


def text_part(text: str) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def refusal_part(refusal: str) -> dict[str, Any]:
    """A ``refusal`` content part."""
    return {"type": "refusal", "refusal": refusal}


def message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant ``message`` output item."""
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def reasoning_item(item_id: str, summary: list[str]) -> dict[str, Any]:
    """A ``reasoning`` output item whose summary parts are ``summary``."""
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text} for text in summary],
    }


def function_call_item(
    item_id: str, status: str, call_id: str, name: str, arguments: str
) -> dict[str, Any]:
    """A ``function_call`` output item."""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _item_id(base: str, position: int) -> str:
    return base if position == 0 else f"{base}_{position}"


# -- the stream translator ---------------------------------------------------------------------


def _delta_texts(delta: dict[str, Any]) -> tuple[str, str, str]:
    """A delta's reasoning, text and refusal, by the Accumulator's rules (``reasoning_content``,
    else ``reasoning``; content parts reduced to their text)."""
    text = delta.get("content")
    if not isinstance(text, str):
        text = content_text(text) or ""
    reasoning = delta.get("reasoning_content")
    if not (isinstance(reasoning, str) and reasoning):
        reasoning = delta.get("reasoning")
    refusal = delta.get("refusal")
    return (
        reasoning if isinstance(reasoning, str) else "",
        text,
        refusal if isinstance(refusal, str) else "",
    )


class _Open:
    """The output item being streamed."""

    __slots__ = ("added", "call", "call_id", "id", "index", "kind", "name", "part", "parts", "text")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind  # "message", "reasoning" or "function_call"
        self.index = index
        self.id = item_id
        self.added = False  # output_item.added sent
        self.parts: list[dict[str, Any]] = []  # a message's closed parts
        self.part = ""  # the type of a message's open part ("output_text", "refusal")
        self.text: list[str] = []  # the open part's text, the summary, or the arguments
        self.call = -1  # a function call's position in the accumulator's tool calls
        self.call_id = ""
        self.name = ""


class ChatToResponses:
    """Turns ``chat.completion.chunk`` dicts into Responses stream events.

    :meth:`start`, then :meth:`feed` for each parsed chunk, then :meth:`finish`; each returns
    the events to send, numbered by ``sequence_number`` across the whole stream. :attr:`acc`
    is the chat-completions answer accumulated from the same chunks (the message to store).
    """

    def __init__(
        self,
        *,
        id: str,
        created_at: int,
        model: str | None,
        params: Mapping[str, Any],
        item_base: str,
        previous_response_id: str | None = None,
        conversation: str | None = None,
        background: bool = False,
    ) -> None:
        self.acc = Accumulator()
        self._skeleton: dict[str, Any] = {
            "id": id,
            "created_at": created_at,
            "params": params,
            "previous_response_id": previous_response_id,
            "conversation": conversation,
            "background": background,
        }
        self._model = model
        self._base = item_base
        self._events: list[dict[str, Any]] = []  # made by the current call
        self._seq = 0
        self._started = False
        self._final: dict[str, Any] | None = None
        self._items: list[dict[str, Any]] = []
        self._open: _Open | None = None
        self._numbered = 0  # messages and calls so far
        self._reasonings = 0
        self._seen_args: dict[int, int] = {}  # per call, the argument characters sent
        self._next_call = 0  # calls before this position are closed

    @property
    def output(self) -> list[dict[str, Any]]:
        """The finished output items, in order."""
        return self._items

    def response(self) -> dict[str, Any]:
        """The final Response object once finished; before that, the response in progress."""
        if self._final is not None:
            return self._final
        return self._response("in_progress", list(self._items))

    def _response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        usage = self.acc.usage
        return response_object(
            model=self.acc.model or self._model,
            status=status,
            output=output,
            usage=responses_usage(usage) if isinstance(usage, dict) else None,
            **self._skeleton,
            **extra,
        )

    def _emit(self, type_: str, at: _Open | None = None, **fields: Any) -> None:
        """Add an event; ``at``: the item it is about (its ``item_id`` and ``output_index``)."""
        event: dict[str, Any] = {"type": type_, "sequence_number": self._seq}
        if at is not None:
            event["item_id"] = at.id
            event["output_index"] = at.index
        event.update(fields)
        self._events.append(event)
        self._seq += 1

    def _flush(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        for type_ in ("response.created", "response.in_progress"):
            initial = response_object(
                model=self._model, status="in_progress", output=[], usage=None, **self._skeleton
            )
            self._emit(type_, response=initial)

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress`` (nothing if already started)."""
        self._start()
        return self._flush()

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events for one parsed chunk (after :meth:`start`'s, if it was not called)."""
        self._start()
        if self._final is None and isinstance(chunk, dict):
            self.acc.add_chunk(chunk)
            choice = pick_choice(chunk.get("choices"))
            delta = choice.get("delta") if choice is not None else None
            if isinstance(delta, dict) and delta:
                self._delta(delta)
        return self._flush()

    def _delta(self, delta: dict[str, Any]) -> None:
        # From the delta itself, not the accumulator's growing text: no copy per chunk.
        reasoning, text, refusal = _delta_texts(delta)
        if reasoning:
            item = self._current("reasoning")
            item.text.append(reasoning)
            self._emit("response.reasoning_summary_text.delta", item, summary_index=0,
                       delta=reasoning)  # fmt: skip
        if text:
            self._part_delta("output_text", text)
        if refusal:
            self._part_delta("refusal", refusal)
        if isinstance(delta.get("tool_calls"), list):
            self._calls_delta(self.acc.tool_calls)

    def finish(
        self,
        status: str = "completed",
        error: dict[str, Any] | None = None,
        *,
        completed_at: int | None = None,
    ) -> list[dict[str, Any]]:
        """Close what is open, then the terminal event (nothing if already finished).

        ``status`` is how the answer ended: ``completed`` (``incomplete`` when the upstream
        stopped for ``length`` or ``content_filter``), ``incomplete``, ``failed`` (``error``,
        an error body, says why) or ``cancelled`` (sent as ``response.failed``: there is no
        event of its own)."""
        if status not in _TERMINAL_EVENTS:
            raise ValueError(f"unknown terminal status {status!r}")
        self._start()
        if self._final is not None:
            return self._flush()
        reason = _INCOMPLETE.get(self.acc.finish_reason or "")
        if status == "completed" and reason is not None:
            status = "incomplete"
        item_status = "completed" if status == "completed" else "incomplete"
        self._close(item_status)
        if self._numbered == 0:  # an answer without text or calls is still a message
            self._current("message")
            self._close(item_status)
        extra: dict[str, Any] = {}
        if status == "completed":
            extra["completed_at"] = int(time.time()) if completed_at is None else completed_at
        elif status == "incomplete":
            extra["incomplete_details"] = {"reason": reason}
        elif error is not None or status == "failed":
            extra["error"] = response_error(error or {"message": "the response failed"})
        self._final = self._response(status, list(self._items), **extra)
        self._emit(_TERMINAL_EVENTS[status], response=self._final)
        return self._flush()

    # -- items -----------------------------------------------------------------------------

    def _current(self, kind: str) -> _Open:
        """The open item if it is a ``kind`` one, else a new one (the open one closed)."""
        item = self._open
        if item is not None and item.kind == kind and kind != "function_call":
            return item
        self._close("completed")
        if kind == "reasoning":
            item_id = _item_id(f"rs_{self._base}", self._reasonings)
            self._reasonings += 1
        else:
            item_id = _item_id(self._base, self._numbered)
            self._numbered += 1
        item = self._open = _Open(kind, len(self._items), item_id)
        if kind == "message":
            self._add(item, message_item(item.id, "in_progress", []))
        elif kind == "reasoning":
            self._add(item, reasoning_item(item.id, []))
            self._emit("response.reasoning_summary_part.added", item, summary_index=0,
                       part={"type": "summary_text", "text": ""})  # fmt: skip
        return item

    def _add(self, item: _Open, body: dict[str, Any]) -> None:
        item.added = True
        self._emit("response.output_item.added", output_index=item.index, item=body)

    def _part_delta(self, part: str, delta: str) -> None:
        item = self._current("message")
        if item.part != part:
            self._close_part(item)
            self._open_part(item, part)
        item.text.append(delta)
        index = len(item.parts)
        if part == "output_text":
            self._emit("response.output_text.delta", item, content_index=index, delta=delta,
                       logprobs=[])  # fmt: skip
        else:
            self._emit("response.refusal.delta", item, content_index=index, delta=delta)

    def _open_part(self, item: _Open, part: str) -> None:
        item.part = part
        empty = text_part("") if part == "output_text" else refusal_part("")
        self._emit("response.content_part.added", item, content_index=len(item.parts), part=empty)

    def _calls_delta(self, calls: list[dict[str, Any]]) -> None:
        # A fragment for a call already closed cannot be sent any more: it is only stored.
        for position in range(self._next_call, len(calls)):
            item = self._open
            if item is None or item.kind != "function_call" or item.call != position:
                item = self._current("function_call")
                item.call = self._next_call = position
            call = calls[position]
            function = call["function"]
            item.name, item.call_id = function["name"], call["id"] or ""
            arguments = function["arguments"]
            seen = self._seen_args.get(position, 0)
            if len(arguments) <= seen:
                continue
            if not item.added:  # added on its first arguments: by then name and id are whole
                self._add(item, self._call_body(item, "in_progress", ""))
            delta = arguments[seen:]
            self._seen_args[position] = len(arguments)
            item.text.append(delta)
            self._emit("response.function_call_arguments.delta", item, delta=delta)

    def _call_body(self, item: _Open, status: str, arguments: str) -> dict[str, Any]:
        call_id = item.call_id or f"call_{item.id}"
        return function_call_item(item.id, status, call_id, item.name, arguments)

    def _close_part(self, item: _Open) -> None:
        if not item.part:
            return
        text = "".join(item.text)
        index = len(item.parts)
        if item.part == "output_text":
            part = text_part(text)
            self._emit("response.output_text.done", item, content_index=index, text=text,
                       logprobs=[])  # fmt: skip
        else:
            part = refusal_part(text)
            self._emit("response.refusal.done", item, content_index=index, refusal=text)
        self._emit("response.content_part.done", item, content_index=index, part=part)
        item.parts.append(part)
        item.part, item.text = "", []

    def _close(self, status: str) -> None:
        """Close the open item with ``status`` (``completed``, or ``incomplete`` when cut)."""
        item = self._open
        if item is None:
            return
        self._open = None
        text = "".join(item.text)
        if item.kind == "message":
            if not item.parts and not item.part:  # an empty answer: one empty text part
                self._open_part(item, "output_text")
            self._close_part(item)
            body = message_item(item.id, status, item.parts)
        elif item.kind == "reasoning":
            self._emit("response.reasoning_summary_text.done", item, summary_index=0, text=text)
            cut = {"status": "incomplete"} if status == "incomplete" else {}
            self._emit("response.reasoning_summary_part.done", item, summary_index=0,
                       part={"type": "summary_text", "text": text}, **cut)  # fmt: skip
            body = reasoning_item(item.id, [text])
        else:
            if not item.added:
                self._add(item, self._call_body(item, "in_progress", ""))
            self._emit("response.function_call_arguments.done", item, arguments=text)
            body = self._call_body(item, status, text)
            self._next_call = item.call + 1
        self._emit("response.output_item.done", output_index=item.index, item=body)
        self._items.append(body)


def _completion_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` as one chunk whose delta is the whole message."""
    choice = pick_choice(completion.get("choices")) or {}
    message = choice.get("message")
    delta = dict(message) if isinstance(message, dict) else {}
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        delta["tool_calls"] = [
            {**call, "index": i} if isinstance(call, dict) else call for i, call in enumerate(calls)
        ]
    return {
        **{k: v for k, v in completion.items() if k != "choices"},
        "choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}],
    }


def completion_to_response(
    completion: dict[str, Any],
    *,
    id: str,
    created_at: int,
    params: Mapping[str, Any],
    item_base: str,
    model: str | None = None,
    previous_response_id: str | None = None,
    conversation: str | None = None,
    background: bool = False,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` as the Response object (the stream's item rules)."""
    translator = ChatToResponses(
        id=id,
        created_at=created_at,
        model=model,
        params=params,
        item_base=item_base,
        previous_response_id=previous_response_id,
        conversation=conversation,
        background=background,
    )
    translator.feed(_completion_chunk(completion))
    translator.finish(completed_at=completed_at)
    return translator.response()


def sse(event: dict[str, Any]) -> bytes:
    """One Responses stream event as an SSE frame."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
