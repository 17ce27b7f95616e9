"""``/v1/responses``: OpenAI's Responses API, stored into the same chats as chat completions.

``POST /v1/responses`` parses the request, threads it (``previous_response_id`` continues the
branch that ends at that stored response; ``conversation`` names the chat; else ``X-Chat-Id``,
else the prefix-hash rule on the whole input), starts a generation through the engine and
writes it back as Responses events or a response object. The upstream is asked in its own
``/v1/responses`` (``native``) or in chat completions (``translate``), as
``[upstream] responses`` says (:mod:`chatproxy.faces.responses.dialect`). The response's id is
the stored answer's. ``background: true`` answers at once and runs the answer as the proxy's
own generation. The stored-response endpoints (``GET``, ``DELETE``, ``/input_items``,
``/cancel``) are owner-scoped like the rest of the history API (:mod:`chatproxy.access`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from chatproxy.access import (
    Need,
    chat_state,
    choice,
    completion_for,
    continued_chat,
    paging,
    path_id,
)
from chatproxy.appkeys import CALLER, GENERATIONS, SETTINGS, STORE
from chatproxy.engine.dialect import CHAT_COMPLETIONS, RESPONSES
from chatproxy.engine.eventlog import EventLog
from chatproxy.engine.feed import LocalFeed
from chatproxy.engine.generation import Generation
from chatproxy.engine.planning import Plan, plan_client_history, plan_server_history
from chatproxy.engine.registry import Replay
from chatproxy.engine.relay import write_feed
from chatproxy.engine.start import ChatRequest
from chatproxy.errors import APIError, Conflict, InvalidRequest, json_object
from chatproxy.faces.chat_completions import check_daily_quota, launch, launch_threaded
from chatproxy.faces.history.conversations import ensure_not_busy
from chatproxy.faces.history.resume import find_feed
from chatproxy.faces.http import Handler, add_route_table, chat_id_header, flag_header
from chatproxy.faces.items import (
    ItemError,
    answer_items,
    input_to_messages,
    message_items,
    messages_to_input,
)
from chatproxy.faces.responses.dialect import upstream_dialect
from chatproxy.faces.responses.events import response_object, responses_usage
from chatproxy.faces.responses.render import (
    NativeEvents,
    Outcome,
    ResponseContext,
    TranslatedEvents,
    WholeResponse,
    response_status,
)
from chatproxy.faces.responses.translate import chat_request, validate_request
from chatproxy.ids import check_id, new_message_id, unknown_id
from chatproxy.offload import LARGE_BODY, offload
from chatproxy.store import history
from chatproxy.store.models import Message, Status
from chatproxy.store.store import Turn, utcnow

__all__ = ["add_routes"]

API = "responses"  # params["api"] of an answer made here
# What the proxy keeps to itself: never sent upstream.
_OWN_KEYS = ("previous_response_id", "conversation", "background")


def add_routes(router: web.UrlDispatcher) -> None:
    """Register the routes (before the pass-through catch-all)."""
    one = "/v1/responses/{response_id}"
    routes: dict[str, dict[str, Handler]] = {
        "/v1/responses": {"POST": create_response},
        one: {"GET": get_response, "DELETE": delete_response},
        one + "/input_items": {"GET": list_input_items},
        one + "/cancel": {"POST": cancel_response},
    }
    add_route_table(router, routes)


# -- POST /v1/responses ----------------------------------------------------------------------


def _parse(raw: bytes) -> dict[str, Any]:
    """The request body, checked."""
    body = json_object(raw)
    validate_request(body)
    return body


def _messages(value: Any) -> list[dict[str, Any]]:
    """The input as chat messages."""
    try:
        return input_to_messages(value, param="input")
    except ItemError as exc:
        code, param, message = exc.args
        raise InvalidRequest(message, code=code, param=param) from None


async def _resolved(request: web.Request, value: Any) -> Any:
    """The input with each ``item_reference`` replaced by the stored item it names (one of
    the caller's answers or messages: clients that store their responses send earlier output
    as references), so that it is threaded and sent upstream as what it stands for."""
    if not isinstance(value, list) or not any(
        isinstance(item, dict) and item.get("type") == "item_reference" for item in value
    ):
        return value
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            out.append(await _referenced(request, item.get("id"), f"input[{i}].id"))
        else:
            out.append(item)
    return out


async def _referenced(request: web.Request, item_id: Any, param: str) -> dict[str, Any]:
    item_id = check_id(item_id, what="item", param=param)
    store = request.app[STORE]
    # An item's id is its message's, or that with "_N" after it (or "rs_" before it).
    base = item_id.removeprefix("rs_")
    candidates = [base, *([base.rsplit("_", 1)[0]] if "_" in base else [])]
    for message_id in candidates:
        m = await store.get_message(message_id)
        if m is None:
            continue
        try:  # one the caller may not read names nothing, as an unknown one
            await chat_state(store, request[CALLER].user_id, m.chat_id, Need.READ)
        except APIError:
            break
        data = m.data if isinstance(m.data, dict) else {}
        items = answer_items(data, m.status, m.id) if m.role == "assistant" else message_items(m)
        for item in items:
            if item["id"] == item_id:
                return {k: v for k, v in item.items() if k not in ("id", "status")}
    raise unknown_id(item_id, what="item", param=param)


def _conversation_id(body: dict[str, Any]) -> str | None:
    conv = body.get("conversation")
    if isinstance(conv, dict):
        conv = conv.get("id")
    return None if conv is None else check_id(conv, what="chat", param="conversation")


def _input_items(value: Any) -> list[Any]:
    """The request's own input as items (a string is one user message)."""
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)


async def create_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: answer and store one response (streamed, whole or background)."""
    app = request.app
    settings, store, caller = app[SETTINGS], app[STORE], request[CALLER]
    raw = await request.read()
    body = await offload(len(raw) > LARGE_BODY, _parse, raw)
    body["input"] = await _resolved(request, body.get("input"))
    messages = _messages(body["input"])
    stored = body.get("store", True) is not False and flag_header(request, "X-Chat-Store", True)
    background = body.get("background") is True
    if background and not stored:
        raise InvalidRequest(
            "a background response is stored: 'store' must not be false",
            code="invalid_value",
            param="background",
        )
    previous = body.get("previous_response_id")
    conversation = _conversation_id(body)
    chat_id, branch_from = conversation, None
    if previous is not None:
        message, _ = await completion_for(
            request, previous, Need.READ, what="response", param="previous_response_id"
        )
        await continued_chat(store, caller.user_id, message.chat_id)
        chat_id, branch_from = message.chat_id, message.id
    elif conversation is not None:
        await continued_chat(store, caller.user_id, conversation, param="conversation")
    else:
        chat_id = chat_id_header(request, settings)
        if not messages:
            raise InvalidRequest(
                "'input' must contain at least one item (or name a previous_response_id)",
                code="empty_array",
                param="input",
            )
    await check_daily_quota(request)
    native = await upstream_dialect(app, caller) is RESPONSES
    dialect = RESPONSES if native else CHAT_COMPLETIONS
    # Stored with the answer: its request (but the input, stored as messages), and what the
    # proxy needs to serve it again (that it is a response; the dialect of its events).
    params = {k: v for k, v in body.items() if k != "input"} | {"api": API, "dialect": dialect.name}
    plan_body = {**params, "model": body.get("model")}

    async def start(turn: Turn | None, parent_hash: str, sent: list[dict[str, Any]]) -> Generation:
        up = _upstream_request(body, messages, sent, native=native, stored=stored)
        req = ChatRequest(
            orjson.dumps(up), up, messages, up.get("stream") is True, body.get("model")
        )
        return await launch(
            request,
            req,
            turn if stored else None,
            parent_hash,
            [],
            turn.parent_id if turn is not None and previous is not None else None,
            face="responses",
            dialect=dialect,
        )

    if previous is not None or conversation is not None:
        gen = await start(
            *await plan_server_history(
                store, settings, caller, plan_body, messages, chat_id, branch_from, reuse=True
            )
        )
    elif stored:

        async def plan() -> Plan:
            return await plan_client_history(store, settings, caller, plan_body, messages, chat_id)

        gen = await launch_threaded(request, chat_id, raw, plan, lambda p: start(*p))
    else:
        gen = await start(None, "", [])
    turn = gen.turn if stored else None
    ctx = ResponseContext(
        id=turn.assistant_id if turn is not None else new_message_id(),
        chat_id=turn.chat_id if turn is not None else "",
        created_at=int((turn.created_at if turn is not None else utcnow()).timestamp()),
        model=body.get("model"),
        params=params,
        previous_response_id=previous,
        background=background,
    )
    headers = {} if turn is None else {"X-Chat-Id": turn.chat_id, "X-Message-Id": turn.assistant_id}
    if background and body.get("stream") is not True:
        await gen.begun()
        return _json(_queued(ctx), headers)
    # A background answer runs on whatever its client does; another one, as on_disconnect says.
    feed = _Detached(gen) if background else LocalFeed(gen)
    if body.get("stream") is not True:
        return await write_feed(request, feed, WholeResponse(headers, ctx, native, gen))
    rendering = NativeEvents if native else TranslatedEvents
    return await write_feed(request, feed, rendering(headers, ctx, _outcome_of(gen)))


class _Detached(LocalFeed):
    """A feed whose reader leaving is never its client's leaving."""

    async def close(self, *, disconnected: bool) -> None:
        await super().close(disconnected=False)


def _upstream_request(
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    sent: list[dict[str, Any]],
    *,
    native: bool,
    stored: bool,
) -> dict[str, Any]:
    """What the upstream is asked: the client's request with the stored chain (``sent``)
    before its input, in the upstream's dialect. A background answer is always streamed, so
    that it can be followed."""
    background = body.get("background") is True
    if native:
        up = {k: v for k, v in body.items() if k not in _OWN_KEYS}
        if sent:
            up["input"] = [*messages_to_input(sent), *_input_items(body["input"])]
        if not stored:
            up["store"] = False
        if background:
            up["stream"] = True
        return up
    up = chat_request(body, [*sent, *messages])
    if background:
        up["stream"], up["stream_options"] = True, {"include_usage": True}
    return up


def _outcome_of(gen: Generation) -> Outcome:
    async def outcome() -> tuple[str, dict[str, Any] | None]:
        return gen.status, gen.error

    return outcome


def _queued(ctx: ResponseContext) -> dict[str, Any]:
    tr = ctx.translator()
    tr.start()
    return {**tr.response(), "status": "queued"}


def _json(body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


# -- the stored responses --------------------------------------------------------------------


async def _response(request: web.Request, need: Need = Need.READ) -> Message:
    """The stored response of the path, if the caller may use it as ``need``."""
    response_id = path_id(request, "response_id", "response")
    message, _ = await completion_for(
        request, response_id, need, what="response", param="response_id"
    )
    if not isinstance(message.params, dict) or message.params.get("api") != API:
        raise unknown_id(response_id, what="response", param="response_id")
    return message


def _request_params(m: Message) -> dict[str, Any]:
    """The client's request of a stored response (but its input)."""
    params = m.params if isinstance(m.params, dict) else {}
    return {k: v for k, v in params.items() if k not in ("api", "dialect")}


def stored_response(m: Message) -> dict[str, Any]:
    """A stored answer as the response object OpenAI returns for it."""
    params = _request_params(m)
    status = Status.IN_PROGRESS if m.status == Status.IN_PROGRESS else response_status(m.status)
    incomplete = None
    if m.status == Status.INCOMPLETE or m.finish_reason == "length":
        status, incomplete = Status.INCOMPLETE, {"reason": "max_output_tokens"}
    elif m.finish_reason == "content_filter":
        status, incomplete = Status.INCOMPLETE, {"reason": "content_filter"}
    return response_object(
        id=m.id,
        created_at=int(m.created_at.timestamp()),
        model=m.model or params.get("model"),
        status=status,
        output=answer_items(m.data if isinstance(m.data, dict) else {}, m.status, m.id),
        usage=responses_usage(m.usage) if isinstance(m.usage, dict) else None,
        params=params,
        error=m.error if status == Status.FAILED else None,
        incomplete_details=incomplete,
        previous_response_id=params.get("previous_response_id"),
        conversation=m.chat_id,
        background=params.get("background") is True,
        completed_at=(
            int(m.completed_at.timestamp())
            if m.completed_at is not None and status == Status.COMPLETED
            else None
        ),
    )


async def get_response(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: the stored response; ``?stream=true`` follows its events
    (from ``starting_after=N``: the events after sequence number N)."""
    m = await _response(request)
    stream, after = _choice(request, "stream"), _starting_after(request)
    if not stream:
        return _json(stored_response(m))
    params = m.params or {}
    ctx = ResponseContext(
        id=m.id,
        chat_id=m.chat_id,
        created_at=int(m.created_at.timestamp()),
        model=params.get("model"),
        params=_request_params(m),
        previous_response_id=params.get("previous_response_id"),
        background=params.get("background") is True,
    )
    headers = {"X-Chat-Id": m.chat_id, "X-Message-Id": m.id}
    feed = await find_feed(request.app, m.chat_id)
    if feed is not None and feed.message_id != m.id:
        await feed.close(disconnected=False)
        feed = None
    store = request.app[STORE]

    async def outcome() -> tuple[str, dict[str, Any] | None]:
        done = await store.get_message(m.id)
        return (done.status, done.error) if done is not None else (Status.FAILED, None)

    if feed is None:  # no live events: the stored answer, as one piece
        feed = LocalFeed(_replay_of(m))
        return await write_feed(request, feed, TranslatedEvents(headers, ctx, outcome, after))
    native = params.get("dialect") == RESPONSES.name
    rendering = NativeEvents if native else TranslatedEvents
    return await write_feed(request, feed, rendering(headers, ctx, outcome, after))


def _choice(request: web.Request, name: str) -> bool:
    return choice(request.query, name, ("true", "false"), "false") == "true"


def _starting_after(request: web.Request) -> int:
    value = request.query.get("starting_after", "-1")
    if value == "-1":
        return -1
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise InvalidRequest(
            "'starting_after' must be a non-negative sequence number",
            code="invalid_value",
            param="starting_after",
        )
    return int(value)


def _replay_of(m: Message) -> Replay:
    """A stored answer as the events of one chat-completions chunk (then ``[DONE]`` if it
    completed): what follows it once its live events are gone."""
    data = m.data if isinstance(m.data, dict) else {}
    delta: dict[str, Any] = {"role": "assistant"}
    for key in ("content", "reasoning_content", "refusal"):
        if data.get(key):
            delta[key] = data[key]
    calls = [c for c in data.get("tool_calls") or [] if isinstance(c, dict)]
    if calls:
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
    done = m.status == Status.COMPLETED
    choice_ = {"index": 0, "delta": delta, "finish_reason": m.finish_reason if done else None}
    chunk: dict[str, Any] = {"object": "chat.completion.chunk", "choices": [choice_]}
    if isinstance(m.usage, dict):
        chunk["usage"] = m.usage
    pieces = [orjson.dumps(chunk), *([b"[DONE]"] if done else [])]
    return Replay(m.chat_id, m.id, EventLog(pieces, done=True), 0)


async def delete_response(request: web.Request) -> web.Response:
    """``DELETE /v1/responses/{id}``: the stored response and everything that continued it
    (the answers below it on every branch), as deleting its conversation item does."""
    m = await _response(request, Need.WRITE)
    await ensure_not_busy(request, m.chat_id)
    if await history.delete_message(request.app[STORE], m.chat_id, m.id) is None:
        raise unknown_id(m.id, what="response", param="response_id")
    return _json({"id": m.id, "object": "response", "deleted": True})


async def cancel_response(request: web.Request) -> web.Response:
    """``POST /v1/responses/{id}/cancel``: stop a background response that is running on
    this instance (stored as ``cancelled``); a finished one is answered as it is."""
    m = await _response(request, Need.WRITE)
    params = m.params if isinstance(m.params, dict) else {}
    if params.get("background") is not True:
        raise InvalidRequest(
            "only a background response can be cancelled", code="invalid_request", param=None
        )
    gen = request.app[GENERATIONS].find(m.chat_id)
    if isinstance(gen, Generation) and gen.message_id == m.id:
        gen.abort()
        if gen.task is not None:
            await asyncio.wait([gen.task])
    elif m.status == Status.IN_PROGRESS and await request.app[GENERATIONS].busy_anywhere(m.chat_id):
        raise Conflict(
            "the response runs on another instance; cancel it there", code="response_elsewhere"
        )
    done = await request.app[STORE].get_message(m.id)
    return _json(stored_response(done if done is not None else m))


async def list_input_items(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}/input_items``: what the model was given for this response,
    the whole chain behind it (every message of its branch before it), as OpenAI lists it:
    cursor pagination by item id, ``order`` (default ``desc``)."""
    m = await _response(request)
    page = paging(request.query, order="desc")
    chain = await request.app[STORE].branch(m.chat_id, m.parent_id) if m.parent_id else []
    items = [item for entry in chain for item in message_items(entry)]
    if page.descending:
        items.reverse()
    start = 0
    if page.after is not None:
        ids = [item["id"] for item in items]
        if page.after not in ids:
            raise unknown_id(page.after, what="cursor", param="after")
        start = ids.index(page.after) + 1
    data = items[start : start + page.limit]
    return _json(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + page.limit < len(items),
        }
    )
