"""``POST /v1/chat/completions``: validate, thread, start a generation, relay it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

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
    UPSTREAM,
)
from chatproxy.auth import Caller
from chatproxy.errors import Conflict, InvalidRequest, PermissionDenied
from chatproxy.ids import CHAT_ID_RE, new_chat_id, new_message_id
from chatproxy.limits.policy import tightest
from chatproxy.proxy.generation import Generation
from chatproxy.proxy.relay import relay
from chatproxy.settings import Settings
from chatproxy.store.store import NewMessage, Store, Turn, utcnow
from chatproxy.store.threading import message_text, prefix_hashes

__all__ = ["ChatRequest", "handle_chat_completions", "parse_chat_request"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TITLE_LENGTH = 80
# Client headers worth passing on to the upstream (OpenAI, OpenRouter).
FORWARDED_HEADERS = ("OpenAI-Organization", "OpenAI-Project", "HTTP-Referer", "X-Title")


@dataclass(slots=True)
class ChatRequest:
    """A validated chat-completions request body."""

    raw: bytes
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    stream: bool
    model: str | None


def _invalid(message: str, code: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a request body; anything malformed raises :class:`InvalidRequest`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise _invalid("'messages' is required", "missing_required_parameter", "messages")
    if not isinstance(messages, list):
        raise _invalid("'messages' must be an array", "invalid_type", "messages")
    if not messages:
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
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "invalid_type", "stream_options")
    return ChatRequest(raw, body, messages, bool(stream), model)


def header_value(request: web.Request, names: list[str]) -> str | None:
    """The first of ``names`` present in the request headers."""
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            return value
    return None


def _title(messages: list[dict[str, Any]]) -> str | None:
    for m in messages:
        if m.get("role") == "user":
            text = " ".join(message_text(m.get("content")).split())
            if len(text) > TITLE_LENGTH:
                text = text[:TITLE_LENGTH].rsplit(" ", 1)[0] + "…"
            return text or None
    return None


async def plan_turn(
    store: Store, settings: Settings, caller: Caller, req: ChatRequest, chat_id: str | None
) -> tuple[Turn, str]:
    """Decide where the request's messages go (SPEC §3.4); returns the turn and the hash of
    its last message (the parent of the assistant answer)."""
    hashes = prefix_hashes(req.messages)
    chat_is_new = False
    if chat_id is not None:
        owner = await store.chat_owner(chat_id)
        if owner is not None and owner != caller.user_id:
            raise PermissionDenied("this chat belongs to another user", code="chat_forbidden")
        chat_is_new = owner is None
    match = None if chat_is_new else await store.find_thread(caller.user_id, hashes, chat_id)
    if match is not None:
        chat_id, parent_id, first_new = match.chat_id, match.message_id, match.index + 1
    else:
        parent_id, first_new = None, 0
        if chat_id is None:
            chat_id, chat_is_new = new_chat_id(), True
    new_messages = [
        NewMessage(
            id=new_message_id(),
            role=m["role"],
            data=m,
            text=message_text(m.get("content")),
            prefix_hash=hashes[i],
        )
        for i, m in enumerate(req.messages[first_new:], start=first_new)
    ]
    params = {k: v for k, v in req.body.items() if k != "messages"}
    turn = Turn(
        user_id=caller.user_id,
        chat_id=chat_id,
        chat_is_new=chat_is_new,
        title=_title(req.messages) if chat_is_new and settings.chats.title != "none" else None,
        parent_id=parent_id,
        new_messages=new_messages,
        assistant_id=new_message_id(),
        params=params,
        model=req.model,
        instance_id=store.instance_id,
        created_at=utcnow(),
    )
    return turn, hashes[-1]


def upstream_body(req: ChatRequest) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the usage-only chunk must be hidden.

    Streams ask for usage (to store it); a client that did not ask is not shown it. Otherwise
    the client's bytes are sent as they came.
    """
    if not req.stream:
        return req.raw, False
    options = req.body.get("stream_options") or {}
    if options.get("include_usage") is True:
        return req.raw, False
    body = dict(req.body, stream_options=dict(options, include_usage=True))
    return orjson.dumps(body), True


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    """Proxy and persist one chat completion (streaming or not)."""
    app = request.app
    settings = app[SETTINGS]
    store = app[STORE]
    caller = request[CALLER]
    chat_id = header_value(request, settings.headers.chat_id)
    if chat_id is not None and not CHAT_ID_RE.fullmatch(chat_id):
        raise _invalid(
            "the chat id header must match [A-Za-z0-9_-]{1,128}", "invalid_chat_id", "X-Chat-Id"
        )
    req = parse_chat_request(await request.read())
    daily, extra = await app[LIMITS].check_daily(caller)
    if daily is not None:
        request[RATE_LIMIT] = tightest(request.get(RATE_LIMIT), daily)
    request[RATE_EXTRA] = extra
    turn, parent_hash = await plan_turn(store, settings, caller, req, chat_id)
    generations = app[GENERATIONS]
    # From this check to the registration below nothing awaits: no second generation can start
    # on the chat in between.
    if generations.busy(turn.chat_id):
        raise Conflict(
            "an answer is being generated in this chat; wait for it, or follow it at "
            f"GET /v1/conversations/{turn.chat_id}/stream",
            code="chat_busy",
        )
    body, hide_usage = upstream_body(req)
    upstream = app[UPSTREAM]
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    headers.update(upstream.auth_headers(caller.upstream_authorization))
    for name in FORWARDED_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    gen = Generation(
        turn=turn,
        parent_hash=parent_hash,
        body=body,
        upstream_headers=headers,
        stream=req.stream,
        hide_usage=hide_usage,
        store=store,
        upstream=upstream,
        settings=settings,
        request_id=request[REQUEST_ID],
    )
    gen.start()
    generations.add(gen)
    request[CHAT_ID] = turn.chat_id
    return await relay(request, gen, {"X-Chat-Id": turn.chat_id, "X-Message-Id": turn.assistant_id})
