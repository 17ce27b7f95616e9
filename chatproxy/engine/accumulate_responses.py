"""Rebuilds the assistant message from a Responses API answer: its stream events or the whole
``Response`` object.

The store keeps chat-completions messages, so what comes out is shaped as
:class:`~chatproxy.engine.accumulate.Accumulator` shapes it: ``content``, ``refusal``,
``reasoning_content`` (the reasoning text, else its summary) and ``tool_calls`` (one per
``function_call`` item, ``id`` its ``call_id``); usage in ``prompt_tokens`` /
``completion_tokens`` form. Deltas build each part; a ``.done`` event, a finished item and the
terminal response's ``output`` are authoritative and replace what the deltas built. Nothing here
raises on an event of an unexpected shape.
"""

from __future__ import annotations

from typing import Any

from chatproxy.engine.accumulate import as_text, assistant_message, joined

__all__ = ["ResponsesAccumulator", "chat_usage"]

_TERMINAL = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
}
_ENVELOPE = frozenset({"response.created", "response.in_progress", "response.queued"})
_KIND = {"message", "function_call", "reasoning"}
_USAGE_DETAILS = (
    ("input_tokens_details", "prompt_tokens_details", ("cached_tokens", "cache_write_tokens")),
    ("output_tokens_details", "completion_tokens_details", ("reasoning_tokens",)),
)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage (``input_tokens``, ``output_tokens``, details) in chat-completions form."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("input_tokens"))
    completion = _int(usage.get("output_tokens"))
    total = _int(usage.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    }
    for source, target, keys in _USAGE_DETAILS:
        details = usage.get(source)
        if isinstance(details, dict):
            counts = {k: details[k] for k in keys if _int(details.get(k)) is not None}
            if counts:
                out[target] = counts
    return out


class _Item:
    """One output item: a message's parts, a reasoning item's texts, or a function call."""

    __slots__ = ("args", "call_id", "content", "id", "kind", "name", "summary")

    def __init__(self, kind: str, item_id: str | None) -> None:
        self.kind = kind
        self.id = item_id
        # By index: a message's parts (type, pieces), a reasoning item's summary and content.
        self.content: dict[int, tuple[str, list[str]]] = {}
        self.summary: dict[int, list[str]] = {}
        self.call_id: str | None = None
        self.name = ""
        self.args: list[str] = []

    def texts(self, part_type: str) -> list[str]:
        content = self.content
        return [joined(content[i][1]) for i in sorted(content) if content[i][0] == part_type]

    def part(self, index: int, part_type: str) -> list[str]:
        """The pieces of content part ``index`` (opened as ``part_type`` if new)."""
        entry = self.content.get(index)
        if entry is None:
            entry = self.content[index] = (part_type, [])
        return entry[1]

    def replace(self, item: dict[str, Any]) -> bool:
        """Take a whole item (``output_item.done``, or an ``output`` entry); whether it changed
        anything."""
        before = self.snapshot()
        if isinstance(item.get("id"), str):
            self.id = item["id"]
        if self.kind == "function_call":
            call_id = item.get("call_id")
            if isinstance(call_id, str) and call_id:
                self.call_id = call_id
            name = item.get("name")
            if isinstance(name, str) and name:
                self.name = name
            args = as_text(item.get("arguments"))
            if args:
                self.args = [args]
        elif self.kind == "message":
            parts = item.get("content")
            if isinstance(parts, list):
                content = {}
                for i, part in enumerate(parts):
                    kind, text = _part_text(part)
                    if kind is not None:
                        content[i] = (kind, [text])
                if content:
                    self.content = content
        else:
            summary = _texts(item.get("summary"), "summary_text")
            if summary:
                self.summary = summary
            texts = _texts(item.get("content"), "reasoning_text")
            if texts:
                self.content = {i: ("reasoning_text", t) for i, t in texts.items()}
        # (An item sent without its text never erases what the deltas built.)
        return self.snapshot() != before

    def snapshot(self) -> tuple[Any, ...]:
        return (
            self.call_id,
            self.name,
            joined(self.args),
            tuple((k, joined(p)) for k, p in self.content.values()),
            tuple(joined(p) for p in self.summary.values()),
        )


def _part_text(part: Any) -> tuple[str | None, str]:
    """A content part's type and text (``output_text``, ``refusal`` or ``reasoning_text``)."""
    if isinstance(part, dict):
        kind = part.get("type")
        if kind == "output_text" and isinstance(part.get("text"), str):
            return kind, part["text"]
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            return kind, part["refusal"]
        if kind == "reasoning_text" and isinstance(part.get("text"), str):
            return kind, part["text"]
    return None, ""


def _texts(parts: Any, part_type: str) -> dict[int, list[str]]:
    """The texts of a list of ``part_type`` parts, by index."""
    if not isinstance(parts, list):
        return {}
    return {
        i: [p["text"]]
        for i, p in enumerate(parts)
        if isinstance(p, dict)
        and p.get("type", part_type) == part_type
        and isinstance(p.get("text"), str)
    }


class ResponsesAccumulator:
    """Builds the assistant message from Responses stream events (streaming) or one
    ``Response`` object (non-streaming), with :class:`~chatproxy.engine.accumulate.Accumulator`'s
    interface.

    Every attribute is readable mid-stream; ``version`` grows whenever the message changes.
    ``terminal`` is set by ``response.completed``, ``response.incomplete`` or
    ``response.failed``; ``status`` and ``error`` say how it ended (an ``error`` event sets
    them too).
    """

    __slots__ = (
        "_by_id",
        "_items",
        "error",
        "finish_reason",
        "model",
        "status",
        "system_fingerprint",
        "terminal",
        "upstream_id",
        "usage",
        "version",
    )

    def __init__(self) -> None:
        self._items: dict[int, _Item] = {}
        self._by_id: dict[str, int] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.upstream_id: str | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.version = 0
        self.terminal = False
        self.status: str | None = None
        self.error: dict[str, Any] | None = None

    # -- reading ---------------------------------------------------------------------------

    def _ordered(self, kind: str) -> list[_Item]:
        items = self._items
        return [items[i] for i in sorted(items) if items[i].kind == kind]

    @property
    def content(self) -> str:
        """The answer's text so far (``""`` if none)."""
        return "".join(t for item in self._ordered("message") for t in item.texts("output_text"))

    @property
    def refusal(self) -> str | None:
        """Refusal text so far, or None if there is none."""
        text = "".join(t for item in self._ordered("message") for t in item.texts("refusal"))
        return text or None

    @property
    def reasoning(self) -> str | None:
        """Reasoning so far (each item's text, else its summary), or None if there is none."""
        pieces: list[str] = []
        for item in self._ordered("reasoning"):
            texts = item.texts("reasoning_text") or [
                joined(item.summary[i]) for i in sorted(item.summary)
            ]
            pieces.extend(t for t in texts if t)
        return "\n\n".join(pieces) or None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """One chat-completions tool call per function_call item, in output order."""
        return [
            {
                "id": item.call_id or item.id,
                "type": "function",
                "function": {"name": item.name, "arguments": joined(item.args)},
            }
            for item in self._ordered("function_call")
            # A junk event can open a call that never gets an id, a name or arguments.
            if item.call_id or item.id or item.name or joined(item.args)
        ]

    def message(self) -> dict[str, Any]:
        """The assistant message in OpenAI chat format."""
        return assistant_message(self.content, self.refusal, self.reasoning, self.tool_calls)

    # -- feeding ---------------------------------------------------------------------------

    def add_chunk(self, event: dict[str, Any]) -> None:
        """Fold in one parsed Responses stream event."""
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            return
        if kind in _ENVELOPE or kind in _TERMINAL:
            response = event.get("response")
            if isinstance(response, dict):
                self._take_response(response, final=kind in _TERMINAL)
            if kind in _TERMINAL:
                self._end(_TERMINAL[kind], response if isinstance(response, dict) else {})
        elif kind == "error":
            self.status = "failed"
            self.error = {k: event.get(k) for k in ("code", "message", "param") if k in event}
        elif kind.startswith("response.") and self._apply(kind[9:], event):
            self.version += 1

    def add_completion(self, body: dict[str, Any]) -> None:
        """Fold in a whole non-streaming ``Response`` object."""
        if not isinstance(body, dict):
            return
        self._take_response(body, final=True)
        status = body.get("status")
        if status in ("completed", "incomplete", "failed"):
            self._end(status, body)

    def _take_response(self, response: dict[str, Any], *, final: bool) -> None:
        if self.upstream_id is None:
            value = response.get("id")
            if isinstance(value, str) and value:
                self.upstream_id = value
        value = response.get("model")
        if isinstance(value, str) and value and (self.model is None or final):
            self.model = value
        usage = chat_usage(response.get("usage"))
        if usage is not None:
            self.usage = usage
        if not final:
            return
        output = response.get("output")
        # The final output is the whole answer; a terminal event may leave it out (or empty).
        if isinstance(output, list) and output:
            changed = False
            for index, body in enumerate(output):
                if isinstance(body, dict) and self._replace(index, body):
                    changed = True
            if changed:
                self.version += 1

    def _end(self, status: str, response: dict[str, Any]) -> None:
        self.terminal = True
        value = response.get("status")
        self.status = value if isinstance(value, str) else status
        error = response.get("error")
        if isinstance(error, dict):
            self.error = error
        if status == "completed":
            # "The answer ends in function calls": the last message or call is a call.
            last = [i for i in sorted(self._items) if self._items[i].kind != "reasoning"]
            ends_in_call = bool(last) and self._items[last[-1]].kind == "function_call"
            self.finish_reason = "tool_calls" if ends_in_call else "stop"
        elif status == "incomplete":
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            self.finish_reason = "content_filter" if reason == "content_filter" else "length"

    def _item(self, index: Any, item_id: Any, kind: Any) -> _Item | None:
        """The item at ``output_index`` (else the one with ``item_id``), made if new."""
        if not (isinstance(index, int) and not isinstance(index, bool) and index >= 0):
            index = self._by_id.get(item_id) if isinstance(item_id, str) else None
            if index is None:
                return None
        item = self._items.get(index)
        if item is None:
            if kind not in _KIND:
                return None
            item = self._items[index] = _Item(kind, item_id if isinstance(item_id, str) else None)
        if isinstance(item_id, str) and item_id:
            self._by_id[item_id] = index
        return item

    def _replace(self, index: Any, body: dict[str, Any]) -> bool:
        item = self._item(index, body.get("id"), body.get("type"))
        return item is not None and item.kind == body.get("type") and item.replace(body)

    def _apply(self, kind: str, event: dict[str, Any]) -> bool:
        """Fold in an output event (``kind`` without ``response.``); whether anything changed."""
        get = event.get
        if kind in ("output_item.added", "output_item.done"):
            body = get("item")
            return isinstance(body, dict) and self._replace(get("output_index"), body)
        target = _TARGETS.get(kind)
        if target is None:
            return False
        item = self._item(get("output_index"), get("item_id"), target[0])
        if item is None:
            return False
        value = get(target[2])
        if target[1] == "part":  # a message's text or refusal, or a reasoning item's text
            part_type, value = _part_text(value)
            if (part_type == "reasoning_text") != (item.kind == "reasoning") or part_type is None:
                return False
            return _put(item.part(_index(get("content_index")), part_type), value, kind)
        if item.kind != target[0]:
            return False
        if target[2] == "part":  # a summary part
            value = value.get("text") if isinstance(value, dict) else None
        if not isinstance(value, str):
            return False
        if target[1] == "args":
            pieces = item.args
        elif target[1] == "summary":
            pieces = item.summary.setdefault(_index(get("summary_index")), [])
        else:
            pieces = item.part(_index(get("content_index")), target[1])
        return _put(pieces, value, kind)


# event (without "response.") -> (item type, where its text goes, the field with the text)
_TARGETS: dict[str, tuple[str, str, str]] = {
    "content_part.added": ("message", "part", "part"),
    "content_part.done": ("message", "part", "part"),
    "output_text.delta": ("message", "output_text", "delta"),
    "output_text.done": ("message", "output_text", "text"),
    "refusal.delta": ("message", "refusal", "delta"),
    "refusal.done": ("message", "refusal", "refusal"),
    "function_call_arguments.delta": ("function_call", "args", "delta"),
    "function_call_arguments.done": ("function_call", "args", "arguments"),
    "reasoning_summary_part.added": ("reasoning", "summary", "part"),
    "reasoning_summary_part.done": ("reasoning", "summary", "part"),
    "reasoning_summary_text.delta": ("reasoning", "summary", "delta"),
    "reasoning_summary_text.done": ("reasoning", "summary", "text"),
    "reasoning_text.delta": ("reasoning", "reasoning_text", "delta"),
    "reasoning_text.done": ("reasoning", "reasoning_text", "text"),
}


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _put(pieces: list[str], value: str, kind: str) -> bool:
    """A delta is appended; a whole text (``.done``, ``.added``) replaces the pieces, but an
    empty one never erases what the deltas built."""
    if kind.endswith(".delta"):
        if not value:
            return False
        pieces.append(value)
        return True
    if not value or joined(pieces) == value:
        return False
    pieces[:] = [value]
    return True
