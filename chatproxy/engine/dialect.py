"""The wire dialects a generation speaks with the upstream.

A generation asks the upstream in one dialect and publishes its events as they came: chat
completions (``/chat/completions``, ``chat.completion.chunk`` events ending with ``[DONE]``) or
the Responses API (``/responses``, typed events ending with ``response.completed``,
``response.incomplete`` or ``response.failed``). The dialect says where the request goes, how
the answer is accumulated, which event ends the stream, which one is an in-band error, and
what the stored status is once the stream has ended.
"""

from __future__ import annotations

from typing import Any, Protocol

from chatproxy.engine.accumulate import Accumulator
from chatproxy.engine.accumulate_responses import ResponsesAccumulator
from chatproxy.errors import normalize_upstream_error
from chatproxy.store.models import Status

__all__ = ["CHAT_COMPLETIONS", "RESPONSES", "Accumulating", "Dialect"]


class Accumulating(Protocol):
    """What a generation reads of the answer being accumulated."""

    version: int
    content: str
    usage: Any
    model: str | None
    finish_reason: str | None
    upstream_id: str | None
    system_fingerprint: str | None

    def add_chunk(self, chunk: dict[str, Any]) -> None: ...
    def add_completion(self, body: dict[str, Any]) -> None: ...
    def message(self) -> dict[str, Any]: ...


class Dialect:
    """Chat completions: the default dialect."""

    name = "chat.completions"
    path = "/chat/completions"
    #: Whether a stream is asked for its usage (``stream_options.include_usage``).
    asks_usage = True

    def accumulator(self) -> Accumulating:
        return Accumulator()

    def ends(self, data: bytes, acc: Accumulating) -> bool:
        """Whether the event just accumulated (``data``) is the stream's last."""
        return data == b"[DONE]"

    def error(self, data: bytes, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The in-band error an event carries, OpenAI-shaped (``None``: not an error)."""
        if "error" in chunk or chunk.get("object") == "error":
            return normalize_upstream_error(502, data)["error"]
        return None

    def outcome(self, acc: Accumulating) -> tuple[str, dict[str, Any] | None]:
        """The stored status (and error) of an answer whose stream ended normally."""
        return Status.COMPLETED, None


class _Responses(Dialect):
    name = "responses"
    path = "/responses"
    asks_usage = False

    def accumulator(self) -> Accumulating:
        return ResponsesAccumulator()

    def ends(self, data: bytes, acc: Accumulating) -> bool:
        return isinstance(acc, ResponsesAccumulator) and acc.terminal

    def error(self, data: bytes, chunk: dict[str, Any]) -> dict[str, Any] | None:
        if chunk.get("type") != "error":
            return None
        return normalize_upstream_error(502, data)["error"]

    def outcome(self, acc: Accumulating) -> tuple[str, dict[str, Any] | None]:
        assert isinstance(acc, ResponsesAccumulator)
        return acc.status, acc.error


CHAT_COMPLETIONS = Dialect()
RESPONSES = _Responses()
