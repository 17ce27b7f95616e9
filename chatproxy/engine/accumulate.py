"""Rebuilds the assistant message from ``chat.completion.chunk`` objects or a ``chat.completion``.

Upstreams differ in small ways (``reasoning_content`` vs ``reasoning``, tool-call ``id``/``name``
sent once or repeated, missing ``index``), and some send junk; nothing here raises on JSON of an
unexpected shape, it just ignores what it cannot use.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "Accumulator",
    "as_text",
    "assistant_message",
    "content_text",
    "is_usage_only",
    "joined",
    "pick_choice",
]


def is_usage_only(chunk: Any) -> bool:
    """True for the trailing usage chunk: ``choices`` is an empty list and ``usage`` is set."""
    if not isinstance(chunk, dict):
        return False
    choices = chunk.get("choices")
    return isinstance(choices, list) and not choices and chunk.get("usage") is not None


class _ToolCall:
    __slots__ = ("args", "id", "index", "name", "type")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.type: str | None = None
        self.name = ""
        self.args: list[str] = []

    def merge(self, delta: dict[str, Any]) -> bool:
        """Fold one tool-call delta in; return whether anything changed."""
        changed = False
        call_id = delta.get("id")
        if self.id is None and isinstance(call_id, str) and call_id:
            self.id = call_id
            changed = True
        call_type = delta.get("type")
        if self.type is None and isinstance(call_type, str) and call_type:
            self.type = call_type
            changed = True
        function = delta.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            # Some upstreams repeat the full name in every fragment; others stream it in pieces.
            if isinstance(name, str) and name and name != self.name:
                self.name += name
                changed = True
            args = as_text(function.get("arguments"))
            if args:
                self.args.append(args)
                changed = True
        return changed

    def as_dict(self) -> dict[str, Any]:
        args = self.args
        if len(args) > 1:
            args[:] = ["".join(args)]
        return {
            "id": self.id,
            "type": self.type or "function",
            "function": {"name": self.name, "arguments": args[0] if args else ""},
        }


def assistant_message(
    content: str, refusal: str | None, reasoning: str | None, tool_calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """The assistant message in OpenAI chat format (content ``None`` when it is only calls)."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": (content or None) if tool_calls else content,
    }
    if refusal is not None:
        message["refusal"] = refusal
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def as_text(value: Any) -> str | None:
    """Tool-call arguments as text: strings as-is, objects (sent by a few upstreams) as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            return None
    return None


def content_text(value: Any) -> str | None:
    """Message content as text; a list of content parts is reduced to its text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [
            part["text"]
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "".join(texts)
    return None


def pick_choice(choices: Any) -> dict[str, Any] | None:
    """The choice with ``index`` 0 (a choice without ``index`` counts by its position)."""
    if not isinstance(choices, list):
        return None
    for position, choice in enumerate(choices):
        if isinstance(choice, dict) and choice.get("index", position) == 0:
            return choice
    return None


class Accumulator:
    """Builds the assistant message from chat.completion.chunk dicts (streaming) or one
    chat.completion (non-streaming).

    Only choice 0 is accumulated. Every attribute is readable mid-stream; ``version`` grows
    whenever content, reasoning, refusal or tool calls change.
    """

    __slots__ = (
        "_calls",
        "_content",
        "_last_call",
        "_reasoning",
        "_refusal",
        "finish_reason",
        "model",
        "system_fingerprint",
        "upstream_id",
        "usage",
        "version",
    )

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] | None = None
        self._refusal: list[str] | None = None
        self._calls: dict[int, _ToolCall] = {}
        self._last_call: _ToolCall | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.upstream_id: str | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.version = 0

    @property
    def content(self) -> str:
        """The text so far (``""`` if none)."""
        return joined(self._content)

    @property
    def reasoning(self) -> str | None:
        """Reasoning text so far, or None if the upstream sent none."""
        return None if self._reasoning is None else joined(self._reasoning)

    @property
    def refusal(self) -> str | None:
        """Refusal text so far, or None if the upstream sent none."""
        return None if self._refusal is None else joined(self._refusal)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls in ``index`` order, each a fresh OpenAI-shaped dict."""
        calls = self._calls
        # A junk delta can open a call that never receives an id, a name or arguments.
        return [
            calls[i].as_dict()
            for i in sorted(calls)
            if calls[i].id or calls[i].name or calls[i].args
        ]

    def add_chunk(self, chunk: dict[str, Any]) -> None:
        """Fold in one parsed ``chat.completion.chunk`` object."""
        self._add(chunk, "delta", True)

    def add_completion(self, body: dict[str, Any]) -> None:
        """Fold in a whole non-streaming ``chat.completion`` response."""
        self._add(body, "message", False)

    def _add(self, obj: dict[str, Any], key: str, streaming: bool) -> None:
        # Once per chunk: the common shapes are tested first, the rest as pick_choice does.
        if not isinstance(obj, dict):
            return
        get = obj.get
        # Every chunk repeats these; the first non-empty value is the one kept.
        if self.upstream_id is None:
            value = get("id")
            if isinstance(value, str) and value:
                self.upstream_id = value
        if self.model is None:
            value = get("model")
            if isinstance(value, str) and value:
                self.model = value
        if self.system_fingerprint is None:
            value = get("system_fingerprint")
            if isinstance(value, str) and value:
                self.system_fingerprint = value
        usage = get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = get("choices")
        choice = choices[0] if type(choices) is list and choices else None
        if type(choice) is not dict or choice.get("index", 0) != 0:
            choice = pick_choice(choices)
        if choice is None:
            return
        part = choice.get(key)
        if isinstance(part, dict) and self._apply(part, streaming):
            self.version += 1
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str):
            self.finish_reason = finish_reason

    def message(self) -> dict[str, Any]:
        """The assistant message in OpenAI chat format."""
        return assistant_message(self.content, self.refusal, self.reasoning, self.tool_calls)

    def _apply(self, delta: dict[str, Any], streaming: bool) -> bool:
        """Merge a delta (or a whole message); return whether the message changed."""
        changed = False
        text = delta.get("content")
        if not isinstance(text, str):
            text = content_text(text)
        if text:
            self._content.append(text)
            changed = True
            if len(delta) == 1:  # the usual delta: nothing else to look at
                return True
        # vLLM has sent both keys with the same text; take one so it is not doubled.
        reasoning = delta.get("reasoning_content")
        if not (isinstance(reasoning, str) and reasoning):
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            if self._reasoning is None:
                self._reasoning = []
            self._reasoning.append(reasoning)
            changed = True
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            if self._refusal is None:
                self._refusal = []
            self._refusal.append(refusal)
            changed = True
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for tool_delta in tool_calls:
                if isinstance(tool_delta, dict) and self._merge_call(tool_delta, streaming):
                    changed = True
        return changed

    def _merge_call(self, delta: dict[str, Any], streaming: bool) -> bool:
        calls = self._calls
        index = delta.get("index") if streaming else None
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            call = calls.get(index)
            if call is None:
                call = calls[index] = _ToolCall(index)
        else:
            call = self._call_without_index(delta, streaming)
        self._last_call = call
        return call.merge(delta)

    def _call_without_index(self, delta: dict[str, Any], streaming: bool) -> _ToolCall:
        """Place a delta lacking ``index``: a new id opens the next call, else continue the last."""
        calls = self._calls
        call_id = delta.get("id")
        if isinstance(call_id, str) and call_id:
            for call in calls.values():
                if call.id == call_id:
                    return call
        elif streaming and self._last_call is not None:
            return self._last_call
        index = max(calls) + 1 if calls else 0
        call = calls[index] = _ToolCall(index)
        return call


def joined(pieces: list[str]) -> str:
    """Join ``pieces`` and keep the result as the single piece, so later reads stay cheap."""
    if not pieces:
        return ""
    if len(pieces) > 1:
        pieces[:] = ["".join(pieces)]
    return pieces[0]
