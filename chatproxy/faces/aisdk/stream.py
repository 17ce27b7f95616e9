"""The AI SDK's UI message stream (protocol ``v1``), made from a generation's events.

A generation publishes the data of each upstream SSE event (:attr:`Generation.events`): OpenAI
``chat.completion.chunk`` JSON, possibly an error ``{"error": {...}}``, and ``[DONE]``.
:class:`UIMessageStream` turns them, one at a time, into UI message stream parts framed as the
AI SDK frames them (``data: {json}\\n\\n``, then ``data: [DONE]\\n\\n``)::

    start {messageId} · start-step
    reasoning-start / -delta / -end · text-start / -delta / -end
    tool-input-start / -delta · tool-input-available (or tool-input-error)
    finish-step · finish {finishReason, messageMetadata} · [DONE]

A failure ends the stream with ``error {errorText}`` and ``[DONE]``; an answer stopped because
its client left (``chats.on_disconnect = "abort"``), as a resuming client sees it, with
``abort {reason}`` and ``[DONE]``. The mapper is pure and incremental: the live response and a
resumed one (any instance) produce the same bytes. The ``start`` part names the UIMessage the
client shows the answer in: the stored answer's id, or, for an answer that goes on after the
client's tool outputs, the client's own assistant message (as the AI SDK's server does), so
that the client continues it instead of adding a second one. A resumed stream is a replay that
the client starts afresh (AI SDK 6 and 7 reset the message on its ``start``): for such an
answer it first replays the steps stored before it, the client's tool outputs as
``tool-output-available`` (:func:`chatproxy.faces.aisdk.messages.earlier_steps`).

Parts of the protocol (AI SDK 6 and 7) that are never produced, because a chat-completions
upstream says nothing they would carry: ``tool-output-error`` / ``-denied`` and
``tool-approval-request`` / ``-response`` (chatproxy runs no tools: the client does, and sends
the outputs and its approvals back in its messages, which are stored), ``custom`` (provider
items such as ``openai.compaction``), ``source-*``, ``file``, ``reasoning-file``, ``data-*``,
``message-metadata`` (the metadata comes in ``finish``), ``reset-step`` (nothing is retried
once a byte was forwarded) and AI SDK 7's ``steering-message``; and the finish reasons
``error`` and AI SDK 7's ``interrupted`` (a failed or cut answer ends with an ``error`` part,
which ``useChat`` reports, and which AI SDK 6 clients read too).

What the UI message form cannot say is kept in ``providerMetadata`` under ``"chatproxy"`` so
that a client sending the message back yields the exact chat-completions message that was
stored (and so threads onto it): a refusal's text part is marked ``{"refusal": true}``, and a
tool call whose arguments are not in compact JSON carries them as sent (``"arguments"``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from chatproxy.engine.accumulate import Accumulator, pick_choice
from chatproxy.engine.feed import Batch
from chatproxy.engine.relay import Rendering
from chatproxy.store.models import Status

__all__ = [
    "ABORTED",
    "DONE",
    "INVALID_ARGUMENTS",
    "PROVIDER",
    "UI_STREAM_HEADERS",
    "UIMessageStream",
    "UIParts",
    "answer_metadata",
    "frame",
    "tool_input",
]

UI_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Vercel-AI-UI-Message-Stream": "v1",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"
PROVIDER = "chatproxy"  # the providerMetadata key of what chatproxy needs back
INVALID_ARGUMENTS = "the model's tool call arguments are not valid JSON"
ENDED_EARLY = "the answer ended before it was complete"
ABORTED = "the client left and the answer was stopped"

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
}


def frame(part: dict[str, Any]) -> bytes:
    """One UI message stream part as an SSE event."""
    return b"data: " + orjson.dumps(part) + b"\n\n"


def tool_input(arguments: str) -> tuple[Any, dict[str, Any] | None, bool]:
    """A tool call's ``input`` for the UI, its ``providerMetadata`` (the arguments as sent,
    when compact JSON would not give them back), and whether they are valid JSON."""
    try:
        parsed = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return arguments, {PROVIDER: {"arguments": arguments}}, False
    if orjson.dumps(parsed).decode() == arguments:
        return parsed, None, True
    return parsed, {PROVIDER: {"arguments": arguments}}, True


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def answer_metadata(model: str | None, usage: Any) -> dict[str, Any] | None:
    """An answer's UIMessage ``metadata``: its model and token usage, in the AI SDK's names."""
    meta: dict[str, Any] = {}
    if model:
        meta["model"] = model
    if isinstance(usage, dict):
        counts = {
            "inputTokens": _int(usage.get("prompt_tokens")),
            "outputTokens": _int(usage.get("completion_tokens")),
            "totalTokens": _int(usage.get("total_tokens")),
        }
        details = usage.get("completion_tokens_details")
        if isinstance(details, dict):
            counts["reasoningTokens"] = _int(details.get("reasoning_tokens"))
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            counts["cachedInputTokens"] = _int(details.get("cached_tokens"))
        counts = {k: v for k, v in counts.items() if v is not None}
        if counts:
            meta["usage"] = counts
    return meta or None


def _delta_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts, as a few servers stream them
        return "".join(
            p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


@dataclass(slots=True)
class _Call:
    id: str = ""
    sent: int = 0  # characters of the arguments sent as tool-input-delta
    started: bool = False
    closed: bool = False


class UIMessageStream:
    """Maps one generation's events to UI message stream bytes, incrementally."""

    def __init__(self, message_id: str, *, finish_reason: bool = True) -> None:
        self.message_id = message_id
        # AI SDK 6 reads the finish reason from the finish part; AI SDK 5 refuses the field.
        self._finish_reason = finish_reason
        self.finished = False  # [DONE] was written
        self._failed = False  # an error part was written
        self._acc = Accumulator()  # tool calls, finish reason, usage and model, as stored
        self._open: tuple[str, str] | None = None  # (kind, part id) of the open text part
        self._parts = 0
        self._calls: list[_Call] = []

    def start(self, earlier: bytes = b"") -> bytes:
        """The head of the stream: ``start`` with the assistant message's id, the parts of
        the ``earlier`` steps of that UIMessage (a resumed answer that goes on after tool
        outputs), ``start-step``."""
        start = frame({"type": "start", "messageId": self.message_id})
        return start + earlier + frame({"type": "start-step"})

    def feed(self, data: bytes) -> bytes:
        """The parts for one event's data."""
        if self.finished:
            return b""
        if data == b"[DONE]":
            return self._done()
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""  # the generation reports invalid upstream data as an error event
        if not isinstance(obj, dict):
            return b""
        if "error" in obj:
            error = obj["error"] if isinstance(obj["error"], dict) else {}
            message = error.get("message")
            return self._error(message if isinstance(message, str) else "upstream error")
        return self._chunk(obj)

    def end(self, error_text: str = ENDED_EARLY) -> bytes:
        """The events stopped (the feed ended): finish the stream if they did not."""
        if self.finished:
            return b""
        return self._done() if self._failed else self._error(error_text) + self._done()

    def abort(self, reason: str = ABORTED) -> bytes:
        """The events stopped because the answer was cancelled: ``abort`` and ``[DONE]``."""
        if self.finished:
            return b""
        self.finished = True
        if self._failed:
            return DONE
        return self._close_text() + frame({"type": "abort", "reason": reason}) + DONE

    # -- parts -------------------------------------------------------------------------------

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        self._acc.add_chunk(chunk)
        choice = pick_choice(chunk.get("choices"))
        if choice is None:
            return b""
        out: list[bytes] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content")
            if not (isinstance(reasoning, str) and reasoning):
                reasoning = delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(self._text("reasoning", reasoning))
            content = _delta_text(delta.get("content"))
            if content:
                out.append(self._text("text", content))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out.append(self._text("refusal", refusal))
            if isinstance(delta.get("tool_calls"), list):
                out.append(self._tool_deltas())
        if isinstance(choice.get("finish_reason"), str):
            out.append(self._close_step())
        return b"".join(out)

    def _text(self, kind: str, delta: str) -> bytes:
        """A delta of a text-like part (``text``, ``reasoning``, or a refusal shown as text)."""
        out = b""
        if self._open is None or self._open[0] != kind:
            out = self._close_text()
            part_id = f"{kind}-{self._parts}"
            self._parts += 1
            self._open = (kind, part_id)
            start: dict[str, Any] = {"type": f"{_wire(kind)}-start", "id": part_id}
            if kind == "refusal":
                start["providerMetadata"] = {PROVIDER: {"refusal": True}}
            out += frame(start)
        wire, part_id = _wire(kind), self._open[1]
        return out + frame({"type": f"{wire}-delta", "id": part_id, "delta": delta})

    def _close_text(self) -> bytes:
        if self._open is None:
            return b""
        kind, part_id = self._open
        self._open = None
        return frame({"type": f"{_wire(kind)}-end", "id": part_id})

    def _tool_deltas(self) -> bytes:
        out = [self._close_text()]
        for position, call in enumerate(self._acc.tool_calls):
            if position == len(self._calls):
                self._calls.append(_Call())
            state = self._calls[position]
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            if not state.started:
                if not name:
                    continue  # its name has not arrived yet
                out.append(self._start_call(state, call, position))
            if len(arguments) > state.sent:
                delta = arguments[state.sent :]
                state.sent = len(arguments)
                out.append(
                    frame(
                        {
                            "type": "tool-input-delta",
                            "toolCallId": state.id,
                            "inputTextDelta": delta,
                        }
                    )
                )
        return b"".join(out)

    def _start_call(self, state: _Call, call: dict[str, Any], position: int) -> bytes:
        state.started = True
        state.id = call["id"] or f"call-{position}"
        part = {
            "type": "tool-input-start",
            "toolCallId": state.id,
            "toolName": call["function"]["name"],
        }
        return frame(part)

    def _close_step(self) -> bytes:
        """The step's text is over and its tool calls are complete."""
        out = [self._close_text()]
        for position, call in enumerate(self._acc.tool_calls):
            if position == len(self._calls):
                self._calls.append(_Call())
            state = self._calls[position]
            if state.closed:
                continue
            if not state.started:
                out.append(self._start_call(state, call, position))
            state.closed = True
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            value, metadata, valid = tool_input(arguments)
            part: dict[str, Any] = {
                "type": "tool-input-available" if valid else "tool-input-error",
                "toolCallId": state.id,
                "toolName": name,
                "input": value,
            }
            if metadata is not None:
                part["providerMetadata"] = metadata
            if not valid:
                part["errorText"] = INVALID_ARGUMENTS
            out.append(frame(part))
        return b"".join(out)

    def _done(self) -> bytes:
        self.finished = True
        if self._failed:
            return DONE
        acc = self._acc
        finish: dict[str, Any] = {"type": "finish"}
        if self._finish_reason:
            finish["finishReason"] = _FINISH_REASONS.get(acc.finish_reason or "", "other")
        metadata = answer_metadata(acc.model, acc.usage)
        if metadata is not None:
            finish["messageMetadata"] = metadata
        return self._close_step() + frame({"type": "finish-step"}) + frame(finish) + DONE

    def _error(self, message: str) -> bytes:
        self._failed = True
        return self._close_text() + frame({"type": "error", "errorText": message})


def _wire(kind: str) -> str:
    return "reasoning" if kind == "reasoning" else "text"


class UIParts(Rendering):
    """The AI SDK face: a generation's events as the UI message stream, in the UIMessage
    ``ui_id``, after the ``earlier`` steps of it. Events that stop short of the end end it
    with an abort part when the answer was cancelled (``status()``, the stored answer's),
    else (the request could not be stored, the proxy is stopping) with an error part."""

    def __init__(
        self,
        headers: Mapping[str, str],
        ui: UIMessageStream,
        status: Callable[[], Awaitable[str | None]],
        earlier: bytes = b"",
    ) -> None:
        super().__init__({**UI_STREAM_HEADERS, **headers})
        self._ui = ui
        self._status = status
        self._earlier = earlier

    async def head(self) -> tuple[int, Mapping[str, str]]:
        return 200, self.headers

    def start(self) -> bytes:
        return self._ui.start(self._earlier)

    def render(self, batch: Batch) -> bytes:
        feed = self._ui.feed
        return b"".join(feed(data) for data in batch.data)

    async def end(self) -> bytes:
        ui = self._ui
        if ui.finished:
            return b""
        return ui.abort() if await self._status() == Status.CANCELLED else ui.end()
