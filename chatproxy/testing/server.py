"""The fake server itself: ``FakeUpstream`` (the aiohttp app, its routes, the reply queue and
its fallbacks, the ``X-Fake-*`` header overrides, fast mode's cache of encoded streams, the
stored responses), ``RecordedRequest`` and the case-insensitive headers it records, the models
list and the embeddings; how each answer is worded and encoded is left to ``replies``,
``chat_wire`` and ``responses_wire``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import struct
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Self

import orjson
from aiohttp import web

from chatproxy.testing.chat_wire import (
    CHAT_FAILURE,
    DONE,
    FAILURE_MESSAGE,
    chunk_events,
    completion,
    drop,
    error_body,
    error_response,
    json_response,
    misbehave,
    stream_response,
    usage_event,
    write_events,
)
from chatproxy.testing.replies import (
    MODELS,
    Answer,
    Reply,
    chat_usage,
    demo_reply,
    filler,
    in_kind,
    resolve,
)
from chatproxy.testing.responses_wire import (
    INCOMPLETE,
    RESPONSES_MODES,
    ResponsesMode,
    Stored,
    chat_view,
    cut,
    item_id,
    model_input,
    named_sse,
    numbered,
    output_events,
    output_items,
    pieces_count,
    response_object,
    responses_usage,
)

FAST_CHUNKS = 20
# Stands in for the completion id in cached (fast mode) events; swapped per response.
_PLACEHOLDER_ID = "chatcmpl-" + "X" * 24
_FAST_CACHE_MAX = 256

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


class FakeUpstream:
    """A fake OpenAI-compatible server whose ``/chat/completions`` and ``/responses`` answers
    are scripted.

    ``enqueue`` replies (FIFO, one per chat or responses request); an empty queue answers with
    ``default``,
    else a demo echo when ``demo``, else ``Reply()``. ``fast`` caches the encoded stream of that
    fallback (20 pieces unless ``default`` is given) for benchmarks. ``auto`` (and
    ``spaced_arguments``) make that fallback answer in kind (tool calls, JSON documents: see the
    package docstring), as the demo's does. Headers ``X-Fake-Chunks: <n>`` and
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
        self._stored: dict[str, Stored] = {}
        self._queue: deque[Reply] = deque()
        self._demo = demo
        self._fast = fast
        if default is None and fast and not demo:
            default = Reply(content=filler(FAST_CHUNKS))
        if default is None and auto and not demo:
            default = Reply()
        if default is not None and (auto or spaced_arguments):
            spaced = spaced_arguments or default.spaced_arguments
            default = replace(default, auto=auto or default.auto, spaced_arguments=spaced)
        self._default = default
        self._spaced = spaced_arguments
        self._cache: dict[tuple[str, bool, float | None], tuple[Answer, int, list[bytes]]] = {}
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
        if mode not in RESPONSES_MODES:
            raise ValueError(f"responses must be one of {', '.join(RESPONSES_MODES)}")
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
                await write_events(resp, reply, events, coalesce)
                if reply.drop_after is not None:
                    await drop(request)
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
        return await self._respond(request, record, json_response(404, error_body(404, message)))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "chatproxy"}
            for m in MODELS
        ]
        return await self._respond(
            request, record, json_response(200, {"object": "list", "data": data})
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
            error = error_body(400, "'input' must be a string or a non-empty list")
            return await self._respond(request, record, json_response(400, error))
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
        return await self._respond(request, record, json_response(200, payload))

    def _scripted(
        self, request: web.Request, body: dict[str, Any]
    ) -> tuple[Reply, bool, float | None]:
        """The reply for this chat-shaped request, the ``X-Fake-*`` headers and ``auto``
        applied; whether its encoding may be cached; the ``X-Fake-Chunks`` count."""
        reply, cacheable = self._next_reply(body)
        n_chunks = _header_number(request, "X-Fake-Chunks")
        if n_chunks is not None:
            reply = replace(reply, content=filler(int(n_chunks)), chunks=None)
        chunk_delay = _header_number(request, "X-Fake-Chunk-Delay")
        if chunk_delay is not None:
            reply = replace(reply, chunk_delay=chunk_delay)
        if reply.auto:
            answered = in_kind(reply, body)
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
            return replace(demo_reply(body), spaced_arguments=self._spaced), False
        return Reply(), False

    async def _recorded_json(
        self, request: web.Request
    ) -> tuple[RecordedRequest, dict[str, Any]] | web.StreamResponse:
        """The request, recorded, and its JSON object body; or the 400 for a body that is not
        one."""
        record = await self._record(request)
        if isinstance(record.json, dict):
            return record, record.json
        message = "We could not parse the JSON body of your request."
        return await self._respond(request, record, json_response(400, error_body(400, message)))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._recorded_json(request)
        if isinstance(parsed, web.StreamResponse):
            return parsed
        record, body = parsed
        reply, cacheable, n_chunks = self._scripted(request, body)
        if reply.status != 200:
            return await self._respond(request, record, error_response(reply), reply)

        cid = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if not body.get("stream"):
            answer = resolve(reply, body)
            resp = json_response(200, completion(answer, cid, created), reply.headers)
            return await self._respond(request, record, resp, reply)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if cacheable:
            key = (str(body.get("model")), include_usage, n_chunks)
            cached = self._cache.get(key)
            if cached is None:
                if len(self._cache) >= _FAST_CACHE_MAX:
                    self._cache.clear()
                answer = resolve(reply, body)
                template = chunk_events(answer, _PLACEHOLDER_ID, created, include_usage)
                cached = self._cache[key] = (answer, created, template)
            answer, created, template = cached
            placeholder, fresh = _PLACEHOLDER_ID.encode(), cid.encode()
            events = [e.replace(placeholder, fresh) for e in template]
            if include_usage:
                # Usage depends on the prompt, so it is never cached.
                done = answer.usage.get("completion_tokens", 0)
                answer = replace(answer, usage=chat_usage(reply, body, done))
        else:
            answer = resolve(reply, body)
            events = chunk_events(answer, cid, created, include_usage)
        if include_usage:
            events.append(usage_event(answer, cid, created))
        events.append(DONE)
        events = misbehave(reply, events, lambda _: CHAT_FAILURE)
        resp = stream_response(reply)
        return await self._respond(request, record, resp, reply, events, reply.coalesce)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        if self._responses_mode == "none":
            return await self._not_found(request)
        parsed = await self._recorded_json(request)
        if isinstance(parsed, web.StreamResponse):
            return parsed
        record, body = parsed
        seen = model_input(body, self._stored, self._responses_mode == "stateful")
        if isinstance(seen, dict):
            return await self._respond(request, record, json_response(400, seen))
        record.model_input = seen
        view = chat_view(body, seen)
        reply, _, _ = self._scripted(request, view)
        if reply.status != 200:
            return await self._respond(request, record, error_response(reply), reply)

        answer = resolve(reply, view)
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < pieces_count(answer):
            answer = cut(answer, limit)
        rid, created = item_id("resp"), int(time.time())
        items = output_items(answer)
        usage = responses_usage(answer, view)
        incomplete = INCOMPLETE.get(answer.finish_reason)
        status = "incomplete" if incomplete else "completed"
        final = response_object(
            rid, created, body, answer.model, status, items, usage, incomplete=incomplete
        )
        stored = Stored(seen, items)
        if self._responses_mode == "stateful" and body.get("store") is not False:
            self._stored[rid] = stored
        if not body.get("stream"):
            return await self._respond(request, record, json_response(200, final, reply.headers))

        start = response_object(rid, created, body, answer.model, "in_progress", [], None)
        steps = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
            *output_events(answer, items),
            {"type": f"response.{status}", "response": final},
        ]
        steps = numbered(steps)

        def failure(at: int) -> bytes:
            done = [e["item"] for e in steps[:at] if e["type"] == "response.output_item.done"]
            stored.output = done
            error = {"code": "server_error", "message": FAILURE_MESSAGE}
            failed = response_object(
                rid, created, body, answer.model, "failed", done, None, error=error
            )
            event = {"type": "response.failed", "sequence_number": at, "response": failed}
            return named_sse(event)

        events = misbehave(reply, [named_sse(e) for e in steps], failure)
        resp = stream_response(reply)
        return await self._respond(request, record, resp, reply, events, reply.coalesce)
