"""How a generation's events reach a Responses API client.

With ``responses = "translate"`` the generation's log holds the upstream's chat-completions
chunks, and :class:`TranslatedEvents` turns them into Responses events; with ``"native"`` it
holds the upstream's own Responses events, and :class:`NativeEvents` forwards their bytes,
but for the response object in the lifecycle events (``response.created`` ...
``response.completed``), whose ``id`` becomes the stored answer's. Either way a client
resuming with ``starting_after=N`` gets the events after sequence number ``N``, and an answer
cut short (the upstream failed mid-stream, the proxy stopped) ends with ``response.failed``.
A non-streamed answer is written whole, once it is in (:class:`WholeResponse`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatproxy.engine.feed import Batch
from chatproxy.engine.generation import Generation
from chatproxy.engine.relay import EVENT_STREAM_HEADERS, Rendering
from chatproxy.errors import APIError
from chatproxy.faces.responses.events import ChatToResponses, completion_to_response, sse
from chatproxy.store.models import Status

__all__ = [
    "NativeEvents",
    "Outcome",
    "ResponseContext",
    "TranslatedEvents",
    "WholeResponse",
    "response_status",
]

#: The stored answer's status and error, read once its events have ended.
Outcome = Callable[[], Awaitable[tuple[str, dict[str, Any] | None]]]
_LIFECYCLE = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """What the response object says about itself, whichever upstream produced it."""

    id: str  # the stored answer's id
    chat_id: str
    created_at: int
    model: str | None
    params: Mapping[str, Any] = field(default_factory=dict)  # the client's body, but input
    previous_response_id: str | None = None
    background: bool = False

    def skeleton(self) -> dict[str, Any]:
        """What a translator or a translated completion is made with."""
        return {
            "id": self.id,
            "created_at": self.created_at,
            "model": self.model,
            "params": self.params,
            "previous_response_id": self.previous_response_id,
            "conversation": self.chat_id,
            "background": self.background,
            "item_base": self.id,
        }

    def translator(self) -> ChatToResponses:
        """A translator of chat-completions chunks into this response's events."""
        return ChatToResponses(**self.skeleton())

    def own(self, response: dict[str, Any]) -> dict[str, Any]:
        """An upstream's response object, as this response (its id, chain and chat)."""
        response["id"] = self.id
        response["previous_response_id"] = self.previous_response_id
        response["conversation"] = {"id": self.chat_id}
        if self.background:
            response["background"] = True
        return response


def response_status(status: str) -> str:
    """A finished answer's status as a response's (``interrupted``: ``failed``)."""
    ended = (Status.COMPLETED, Status.INCOMPLETE, Status.CANCELLED)
    return status if status in ended else Status.FAILED


class _Events(Rendering):
    """An event stream of Responses events, from sequence number ``after + 1`` on."""

    def __init__(
        self, headers: Mapping[str, str], ctx: ResponseContext, outcome: Outcome, after: int
    ) -> None:
        super().__init__({**EVENT_STREAM_HEADERS, **headers})
        self.ctx = ctx
        self._outcome = outcome
        self._after = after
        self.finished = False

    def _out(self, events: list[dict[str, Any]]) -> bytes:
        after = self._after
        return b"".join(sse(e) for e in events if e["sequence_number"] > after)


class TranslatedEvents(_Events):
    """The generation's chat-completions chunks as Responses events."""

    def __init__(
        self, headers: Mapping[str, str], ctx: ResponseContext, outcome: Outcome, after: int = -1
    ) -> None:
        super().__init__(headers, ctx, outcome, after)
        self._tr = ctx.translator()

    def start(self) -> bytes:
        return self._out(self._tr.start())

    def render(self, batch: Batch) -> bytes:
        events: list[dict[str, Any]] = []
        tr = self._tr
        for data in batch.data:
            if self.finished or data == b"[DONE]":
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # the generation refused it: its end says why
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:  # the answer was cut short, in-band
                events += tr.finish(Status.FAILED, _error(chunk["error"]))
                self.finished = True
            else:
                events += tr.feed(chunk)
        return self._out(events)

    async def end(self) -> bytes:
        if self.finished:
            return b""
        status, error = await self._outcome()
        self.finished = True
        return self._out(self._tr.finish(response_status(status), error))


class _ItemIds:
    """The stored answer's ids for an upstream's output items, given in the order the items
    come (as :func:`~chatproxy.faces.items.answer_items` numbers them: the first item the
    response's id, the next ``{id}_1`` ..., a reasoning item ``rs_{id}``)."""

    def __init__(self, base: str) -> None:
        self._base = base
        self._pairs: list[tuple[bytes, bytes]] = []  # the upstream's, quoted; ours, quoted
        self._items = 0
        self._reasonings = 0

    def add(self, item: Mapping[str, Any]) -> None:
        upstream_id = item.get("id")
        if not isinstance(upstream_id, str) or not upstream_id:
            return
        if item.get("type") == "reasoning":
            n, self._reasonings = self._reasonings, self._reasonings + 1
            ours = f"rs_{self._base}" if n == 0 else f"rs_{self._base}_{n}"
        else:
            n, self._items = self._items, self._items + 1
            ours = self._base if n == 0 else f"{self._base}_{n}"
        self._pairs.append((orjson.dumps(upstream_id), orjson.dumps(ours)))

    def apply(self, data: bytes) -> bytes:
        """``data`` with the upstream's item ids replaced by the stored ones."""
        for theirs, ours in self._pairs:
            if theirs in data:
                data = data.replace(theirs, ours)
        return data


class NativeEvents(_Events):
    """The upstream's own Responses events, forwarded; the response object in the lifecycle
    events is made the stored answer's, and the output items have its items' ids."""

    def __init__(
        self, headers: Mapping[str, str], ctx: ResponseContext, outcome: Outcome, after: int = -1
    ) -> None:
        super().__init__(headers, ctx, outcome, after)
        self._last = -1  # the last sequence number written or skipped
        self._response: dict[str, Any] | None = None  # the last response object seen
        self._ids = _ItemIds(ctx.id)

    def render(self, batch: Batch) -> bytes:
        raw = batch.raw
        out: list[bytes] = []
        for i, data in enumerate(batch.data):
            if self.finished or data == b"[DONE]":
                continue
            piece = self._event(data, raw[i] if raw is not None else None)
            if piece:
                out.append(piece)
        return b"".join(out)

    def _event(self, data: bytes, raw: bytes | None) -> bytes:
        ids = self._ids
        plain = b'"response":' not in data and b'"response.output_item.added"' not in data
        if plain and raw is not None and self._after < 0 and b'"error"' not in data:
            self._last += 1
            return ids.apply(raw)  # the common case: a delta, forwarded as it came
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(event, dict):
            return b""
        if "type" not in event and "error" in event:  # cut short, in-band
            return self._fail(_error(event["error"]))
        seq = event.get("sequence_number")
        self._last = seq if isinstance(seq, int) else self._last + 1
        kind = event.get("type")
        if kind == "response.output_item.added" and isinstance(event.get("item"), dict):
            ids.add(event["item"])
        if kind in _LIFECYCLE and isinstance(event.get("response"), dict):
            self._response = self.ctx.own(event["response"])
            self.finished = kind in ("response.completed", "response.incomplete", "response.failed")
        elif raw is not None and self._last > self._after:
            return ids.apply(raw)
        return ids.apply(sse(event)) if self._last > self._after else b""

    def _fail(self, error: dict[str, Any] | None, status: str = Status.FAILED) -> bytes:
        self.finished = True
        response = dict(self._response or {})
        response.update(status=status, error=error)
        self._last += 1
        event = {"type": "response.failed", "sequence_number": self._last, "response": response}
        return self._ids.apply(sse(event)) if self._last > self._after else b""

    async def end(self) -> bytes:
        if self.finished:
            return b""
        status, error = await self._outcome()
        return self._fail(error, response_status(status))


class WholeResponse(Rendering):
    """A non-streamed answer: the response object, once the upstream's body is in."""

    def __init__(
        self, headers: Mapping[str, str], ctx: ResponseContext, native: bool, gen: Generation
    ) -> None:
        super().__init__(headers)
        self.ctx = ctx
        self._native = native
        self._gen = gen
        self._parts: list[bytes] = []

    async def head(self) -> tuple[int, Mapping[str, str]]:
        try:
            await self._gen.wait_head()
        except APIError as exc:
            exc.headers = {**exc.headers, **self.headers}
            raise
        return 200, {"Content-Type": "application/json", **self.headers}

    def render(self, batch: Batch) -> bytes:
        self._parts += batch.data
        return b""

    async def end(self) -> bytes:
        ctx = self.ctx
        try:
            body = orjson.loads(b"".join(self._parts))
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):  # stored as failed: say so
            tr = ctx.translator()
            tr.start()
            tr.finish(Status.FAILED, self._gen.error)
            return orjson.dumps(tr.response())
        if self._native:
            ids = _ItemIds(ctx.id)
            for item in body.get("output") or []:
                if isinstance(item, dict):
                    ids.add(item)
            return ids.apply(orjson.dumps(ctx.own(body)))
        return orjson.dumps(completion_to_response(body, **ctx.skeleton()))


def _error(error: Any) -> dict[str, Any]:
    return error if isinstance(error, dict) else {"message": str(error), "code": None}
