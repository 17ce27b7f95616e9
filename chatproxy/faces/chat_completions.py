"""``POST /v1/chat/completions``: validate, thread, start a generation, relay it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from chatproxy.appkeys import (
    CALLER,
    CHAT_ID,
    GENERATIONS,
    LIMITS,
    RATE_EXTRA,
    RATE_LIMIT,
    REQUEST_ID,
    SETTINGS,
    STORE,
)
from chatproxy.engine.dialect import CHAT_COMPLETIONS, Dialect
from chatproxy.engine.feed import Batch, LocalFeed
from chatproxy.engine.generation import Generation
from chatproxy.engine.planning import Plan, plan_client_history, plan_server_history
from chatproxy.engine.relay import Rendering, write_feed
from chatproxy.engine.start import ChatRequest, Engine, Face, Work, start_generation
from chatproxy.errors import APIError, InvalidRequest, json_object
from chatproxy.faces.http import chat_id_header, flag_header
from chatproxy.ids import check_id
from chatproxy.limits.policy import tightest
from chatproxy.offload import LARGE_BODY, offload
from chatproxy.store.models import MODEL_LENGTH, refuse_nul
from chatproxy.store.store import Turn

__all__ = [
    "UpstreamBytes",
    "check_daily_quota",
    "handle_chat_completions",
    "launch",
    "launch_threaded",
    "parse_chat_request",
]

# The lock :func:`launch_threaded` takes for a request that needs none across instances.
_UNLOCKED = contextlib.nullcontext()
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Client headers worth passing on to the upstream (OpenAI, OpenRouter).
FORWARDED_HEADERS = ("OpenAI-Organization", "OpenAI-Project", "HTTP-Referer", "X-Title")


def _invalid(message: str, code: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def parse_chat_request(raw: bytes, *, allow_empty: bool = False) -> ChatRequest:
    """Parse and check a request body; anything malformed raises :class:`InvalidRequest`.

    ``allow_empty``: with server-side history, no new message means "answer again".

    A NUL character anywhere outside ``messages`` (the model, a parameter's name or value),
    or a model name wider than its column, is refused here, before the upstream is called:
    neither store could keep it. The messages go upstream as they came and are stored with
    any NUL replaced: they may hold what the upstream itself answered before."""
    body = json_object(raw)
    messages = body.get("messages")
    if messages is None:
        raise _invalid("'messages' is required", "missing_required_parameter", "messages")
    if not isinstance(messages, list):
        raise _invalid("'messages' must be an array", "invalid_type", "messages")
    if not messages and not allow_empty:
        raise _invalid("'messages' must contain at least one message", "empty_array", "messages")
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(f"'{param}' must be an object", "invalid_type", param)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _invalid(
                f"'{param}.role' must be one of {', '.join(sorted(ROLES))}",
                "invalid_value",
                f"{param}.role",
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid(
                f"'{param}.content' must be a string or an array of content parts",
                "invalid_type",
                f"{param}.content",
            )
        if content is None and role in ("user", "system", "developer") and "content" not in m:
            raise _invalid(
                f"'{param}.content' is required", "missing_required_parameter", f"{param}.content"
            )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "invalid_type", "stream")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("'model' must be a string", "invalid_type", "model")
    if model is not None and len(model) > MODEL_LENGTH:
        raise _invalid(
            f"'model' is longer than {MODEL_LENGTH} characters", "invalid_value", "model"
        )
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "invalid_type", "stream_options")
    if b"\\u0000" in raw:
        refuse_nul({k: v for k, v in body.items() if k != "messages"})
    return ChatRequest(raw, body, messages, bool(stream), model)


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    """Proxy and persist one chat completion (streaming or not)."""
    app = request.app
    settings = app[SETTINGS]
    store = app[STORE]
    caller = request[CALLER]
    chat_id = chat_id_header(request, settings)
    history_mode = request.headers.get("X-Chat-History", settings.chats.history).strip().lower()
    if history_mode not in ("client", "server"):
        raise _invalid("X-Chat-History must be client or server", "invalid_value", "X-Chat-History")
    branch_from = request.headers.get("X-Chat-Parent")
    if branch_from is not None:
        if history_mode != "server":
            raise _invalid(
                "X-Chat-Parent goes with X-Chat-History: server", "invalid_request", "X-Chat-Parent"
            )
        branch_from = check_id(branch_from, what="parent", param="X-Chat-Parent")
    stored = flag_header(request, "X-Chat-Store", True)
    raw = await request.read()
    req = await offload(
        len(raw) > LARGE_BODY, parse_chat_request, raw, allow_empty=history_mode == "server"
    )
    await check_daily_quota(request)
    if history_mode == "server":
        turn, parent_hash, history = await plan_server_history(
            store, settings, caller, req.body, req.messages, chat_id, branch_from
        )
        if not stored:
            turn = None
        gen = await launch(request, req, turn, parent_hash, history, branch_from)
    elif stored:

        async def plan() -> Plan:
            return await plan_client_history(
                store, settings, caller, req.body, req.messages, chat_id
            )

        async def start(plan: Plan) -> Generation:
            turn, parent_hash, history = plan
            return await launch(request, req, turn, parent_hash, history, branch_from)

        gen = await launch_threaded(request, chat_id, req.raw, plan, start)
        turn = gen.turn
    else:  # incognito with the client's own history: nothing to look up
        turn = None
        gen = await launch(request, req, None, "", [], branch_from)
    headers = {} if turn is None else {"X-Chat-Id": turn.chat_id, "X-Message-Id": turn.assistant_id}
    return await write_feed(request, LocalFeed(gen), UpstreamBytes(gen, headers))


class UpstreamBytes(Rendering):
    """The chat-completions face: the upstream's status, headers and bytes, untouched (but
    for the usage-only chunk a client did not ask for), with the proxy's headers added."""

    def __init__(self, gen: Generation, headers: Mapping[str, str]) -> None:
        super().__init__(headers)
        self.gen = gen

    async def head(self) -> tuple[int, Mapping[str, str]]:
        try:
            head = await self.gen.wait_head()
        except APIError as exc:
            exc.headers = {**exc.headers, **self.headers}
            raise
        headers = CIMultiDict(head.headers)
        headers.update(self.headers)
        return head.status, headers

    def render(self, batch: Batch) -> bytes:
        raw = batch.raw
        assert raw is not None  # a generation of this process
        return raw[0] if len(raw) == 1 else b"".join(raw)


async def launch_threaded(
    request: web.Request,
    chat_id: str | None,
    raw: bytes,
    plan: Callable[[], Awaitable[Plan]],
    start: Callable[[Plan], Awaitable[Generation]],
) -> Generation:
    """Plan a client-history turn and start its generation, one request at a time: the same
    request (``raw``, for the same caller and ``chat_id``) sent twice at once threads as if
    sent one after the other, the second planned once the first one's turn is written."""
    gen = None
    generations = request.app[GENERATIONS]
    try:
        key = _request_key(request[CALLER].user_id, chat_id, raw)
        async with generations.one_at_a_time(key):
            planned = await plan()
            # A new chat: another instance may be planning the same request. Plan again
            # under the lock they share (it may have been stored meanwhile).
            new_chat = chat_id is None and planned[0].chat_is_new
            async with generations.across_instances(key) if new_chat else _UNLOCKED:
                if new_chat and generations.shared is not None:
                    planned = await plan()
                gen = await start(planned)
                await gen.begun()
    except asyncio.CancelledError:  # the client left before it could subscribe
        if gen is not None:
            gen.client_left()
        raise
    return gen


def _request_key(user_id: str, chat_id: str | None, raw: bytes) -> str:
    """What makes two requests the same for threading: caller, chat header, body."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{user_id}\0{chat_id or ''}\0".encode())
    h.update(raw)
    return h.hexdigest()


async def check_daily_quota(request: web.Request) -> None:
    """Refuse the request (429) when the caller's daily quota is used up; otherwise note the
    quota's state for the rate-limit headers."""
    daily, extra = await request.app[LIMITS].check_daily(request[CALLER])
    if daily is not None:
        request[RATE_LIMIT] = tightest(request.get(RATE_LIMIT), daily)
    request[RATE_EXTRA] = extra


async def launch(
    request: web.Request,
    req: ChatRequest,
    turn: Turn | None,
    parent_hash: str,
    history: list[dict[str, Any]],
    branch_from: str | None,
    face: Face = "chat.completions",
    dialect: Dialect = CHAT_COMPLETIONS,
) -> Generation:
    """Start the generation of ``turn`` (``None``: not stored) for the client of ``request``
    (:func:`~chatproxy.engine.start.start_generation`)."""
    work = Work(
        face=face,
        caller=request[CALLER],
        request=req,
        turn=turn,
        parent_hash=parent_hash,
        history=history,
        branch_from=branch_from,
        request_id=request[REQUEST_ID],
        headers={
            name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers
        },
        dialect=dialect,
    )
    gen = await start_generation(Engine.of(request.app), work)
    if turn is not None:
        request[CHAT_ID] = turn.chat_id
    return gen
