"""``/api/chat``: chatproxy as the chat route of Vercel AI SDK (``useChat``) apps.

- ``POST /api/chat``: thread the body's messages (:mod:`chatproxy.engine.planning`), start the
  generation (:func:`~chatproxy.faces.chat_completions.launch`, as the OpenAI endpoint does),
  and answer its events as the UI message stream (:mod:`chatproxy.faces.aisdk.stream`).
- ``GET /api/chat/{id}/messages``: the chat's active branch as ``UIMessage[]``.
- ``GET /api/chat/{id}/stream``: the running (or just finished) answer again, from its start,
  in the UI message stream; ``204`` when there is none (``useChat({ resume: true })``).
- ``DELETE /api/chat?id=...``: the chat and everything in it.

Access is :mod:`chatproxy.access`'s rule, as in the conversations API: another user's private
chat is ``404``, deleting another user's public chat ``403 permission_denied``; posting into
another user's chat (or regenerating or editing in it) is ``403 chat_forbidden``, as with
``X-Chat-Id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

import orjson
from aiohttp import web

from chatproxy.access import Need, chat_for, chat_state, chat_state_for
from chatproxy.appkeys import CALLER, CHAT_ID, SETTINGS, STORE
from chatproxy.engine.feed import Feed, LocalFeed
from chatproxy.engine.planning import Plan, plan_client_history, plan_server_history
from chatproxy.engine.relay import write_feed
from chatproxy.engine.start import ChatRequest
from chatproxy.errors import InvalidRequest, ResourceNotFound
from chatproxy.faces.aisdk.body import ChatBody, parse_body
from chatproxy.faces.aisdk.messages import (
    UI_ID,
    answer_start,
    earlier_steps,
    for_upstream,
    stored_ui_id,
    to_ui,
)
from chatproxy.faces.aisdk.stream import UIMessageStream, UIParts
from chatproxy.faces.chat_completions import check_daily_quota, launch
from chatproxy.faces.history.conversations import delete_chat as delete_idle_chat
from chatproxy.faces.history.resume import find_feed
from chatproxy.ids import check_id
from chatproxy.store import history
from chatproxy.store.history import update_chat
from chatproxy.store.models import Message

__all__ = ["add_routes"]


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``/api/chat`` and the routes under it."""
    router.add_post("/api/chat", post_chat)
    router.add_delete("/api/chat", delete_chat)
    router.add_get("/api/chat/{chat_id}/messages", get_messages)
    router.add_get("/api/chat/{chat_id}/stream", resume_stream)


def _chat_id(value: str | None) -> str:
    """The chat id of a path or query string (the error names it ``id``, as the body's)."""
    return check_id(value, what="chat", param="id")


# -- POST /api/chat --------------------------------------------------------------------------


async def post_chat(request: web.Request) -> web.StreamResponse:
    """Answer the chat's new message (or answer again) as a UI message stream."""
    body = parse_body(await request.read())
    request[CHAT_ID] = body.chat_id
    aisdk = request.app[SETTINGS].aisdk
    model = body.model or aisdk.default_model
    if not model:
        raise InvalidRequest(
            "'model' is required (or set aisdk.default_model)",
            code="missing_required_parameter",
            param="model",
        )
    if aisdk.models and model not in aisdk.models:
        raise InvalidRequest(
            f"this chat offers the models {', '.join(aisdk.models)}",
            code="model_not_found",
            param="model",
        )
    await check_daily_quota(request)
    sent = {"model": model, **body.params, "messages": []}
    sent |= {"stream": True, "stream_options": {"include_usage": True}}
    (turn, parent_hash, stored), messages, branch_from = await _plan(request, body, sent)
    ui_ids = {id(m): c.id for c in body.messages for m in c.messages}
    for new in turn.new_messages:
        if id(new.data) in ui_ids:
            new.metadata = {UI_ID: ui_ids[id(new.data)]}
    sent["messages"] = [for_upstream(m) for m in messages]
    req = ChatRequest(orjson.dumps(sent), sent, sent["messages"], True, model)
    history = [for_upstream(m) for m in stored]
    gen = await launch(request, req, turn, parent_hash, history, branch_from, face="aisdk")
    if turn.chat_is_new and body.visibility not in (None, "private"):
        await gen.begun()  # the chat is written: the Chat SDK's selectedVisibilityType
        await update_chat(request.app[STORE], turn.chat_id, {"visibility": body.visibility})
    headers = {"X-Chat-Id": turn.chat_id, "X-Message-Id": turn.assistant_id}
    # After the client's tool outputs, the answer goes on in the client's assistant message.
    last = body.messages[-1]
    goes_on = body.trigger == "submit-message" and not body.single and last.role == "assistant"
    return await _stream(request, LocalFeed(gen), headers, last.id if goes_on else None)


async def _plan(
    request: web.Request, body: ChatBody, sent: dict[str, Any]
) -> tuple[Plan, list[dict[str, Any]], str | None]:
    """Where the body's messages go: the plan, the messages to send after the stored ones,
    and the branch point (for the one-answer-per-chat check)."""
    app, caller = request.app, request[CALLER]
    store, settings = app[STORE], app[SETTINGS]
    new = [m for c in body.messages for m in c.messages]
    if body.trigger == "regenerate-message":
        branch_from = await _regenerate_from(request, body)
        plan = await plan_server_history(
            store, settings, caller, sent, [], body.chat_id, branch_from
        )
        return plan, [], branch_from
    if not body.single:
        plan = await plan_client_history(store, settings, caller, sent, new, body.chat_id)
        return plan, new, None
    if body.messages[0].role == "assistant":
        raise InvalidRequest(
            "'message' must be a user or system message; send the whole history ('messages') "
            "to go on after tool results",
            code="invalid_value",
            param="message.role",
        )
    edited = await _edited(request, body)
    if edited is not None and edited.parent_id is None:  # the first message, edited
        plan = await plan_client_history(store, settings, caller, sent, new, body.chat_id)
        return plan, new, None
    branch_from = edited.parent_id if edited is not None else None
    plan = await plan_server_history(store, settings, caller, sent, new, body.chat_id, branch_from)
    return plan, new, branch_from


async def _stored(request: web.Request, chat_id: str, ui_id: str) -> Message | None:
    """The newest stored message of the caller's chat that the client knows as ``ui_id``."""
    if await chat_state(request.app[STORE], request[CALLER].user_id, chat_id, Need.POST) is None:
        return None
    found = None
    for m in await history.chat_tree(request.app[STORE], chat_id):
        if stored_ui_id(m) == ui_id or m.id == ui_id:
            found = m
    return found


async def _regenerate_from(request: web.Request, body: ChatBody) -> str:
    """The message to answer again: the one before the answer being regenerated (the whole
    UIMessage, which the client has dropped: an answer that went on after tool outputs is
    answered again from its prompt), or the user message named (``messageId``, else the body's
    last message)."""
    ui_id = body.message_id or body.messages[-1].id
    m = await _stored(request, body.chat_id, ui_id)
    if m is None:
        raise ResourceNotFound(
            f"no message {ui_id!r} in chat {body.chat_id!r} to regenerate",
            code="message_not_found",
            param="messageId",
        )
    if m.role not in ("assistant", "tool"):
        return m.id
    branch = await request.app[STORE].branch(body.chat_id, m.id)
    start = answer_start(branch)
    if not start:  # None (a tool result alone) or 0 (nothing before the answer)
        raise InvalidRequest(
            "this answer has no message before it", code="invalid_value", param="messageId"
        )
    return branch[start - 1].id


async def _edited(request: web.Request, body: ChatBody) -> Message | None:
    """The stored user message that the body's message replaces (``sendMessage`` with a
    ``messageId``), if any."""
    if body.message_id is None:
        return None
    m = await _stored(request, body.chat_id, body.message_id)
    return m if m is not None and m.role == "user" else None


# -- the stream ------------------------------------------------------------------------------


async def _stream(
    request: web.Request,
    feed: Feed,
    headers: Mapping[str, str],
    ui_id: str | None = None,
    earlier: bytes = b"",
) -> web.StreamResponse:
    """Write ``feed``'s events to the client as a UI message stream, from the start, in the
    UIMessage ``ui_id`` (default: the answer's own id), after the ``earlier`` steps of it."""
    store = request.app[STORE]
    finish_reason = request.app[SETTINGS].aisdk.finish_reason
    ui = UIMessageStream(ui_id or feed.message_id, finish_reason=finish_reason)

    async def status() -> str | None:
        stored = await store.get_message(feed.message_id)
        return None if stored is None else stored.status

    return await write_feed(request, feed, UIParts(headers, ui, status, earlier))


async def resume_stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/chat/{id}/stream``: the running answer from its start, or ``204``."""
    chat_id = _chat_id(request.match_info["chat_id"])
    await chat_state_for(request, chat_id)
    feed = await find_feed(request.app, chat_id)
    if feed is None:
        return web.Response(status=204)
    headers = {"X-Chat-Id": chat_id, "X-Message-Id": feed.message_id}
    ui_id, earlier = await _ui_message(request, chat_id, feed.message_id)
    return await _stream(request, feed, headers, ui_id, earlier)


async def _ui_message(request: web.Request, chat_id: str, answer_id: str) -> tuple[str, bytes]:
    """The UIMessage the stored answer ``answer_id`` is part of: its id (that of the first
    answer before the tool results it goes on after, the one the client was given), and the
    parts of the steps before it."""
    store = request.app[STORE]
    branch = await store.branch(chat_id, answer_id)
    start = answer_start(branch)
    if start is None or branch[start].id == answer_id:
        return answer_id, b""
    first = await store.get_message(branch[start].id)
    earlier = earlier_steps((m.role, m.data) for m in branch[start:-1])
    return (answer_id if first is None else stored_ui_id(first)), earlier


# -- history ---------------------------------------------------------------------------------


async def get_messages(request: web.Request) -> web.Response:
    """``GET /api/chat/{id}/messages``: the active branch as ``UIMessage[]``, for
    ``useChat({ messages })``. An answer that failed before it said anything is left out."""
    chat = await chat_for(request, _chat_id(request.match_info["chat_id"]))
    tree = await history.chat_tree(request.app[STORE], chat.id)
    branch = [m for m in history.branch(tree, chat.head_id) if history.replayable(m)]
    return web.Response(body=orjson.dumps(to_ui(branch)), content_type="application/json")


async def delete_chat(request: web.Request) -> web.Response:
    """``DELETE /api/chat?id=...``: the chat, every message of every branch, votes. The answer
    is the deleted chat as the Vercel Chat SDK's route gives it (``id``, ``title``,
    ``userId``, ``visibility``, ``createdAt``), and ``deleted: true``."""
    chat = await chat_for(request, _chat_id(request.query.get("id")), Need.WRITE)
    await delete_idle_chat(request, chat.id)
    created = chat.created_at.astimezone(UTC).isoformat(timespec="milliseconds")
    deleted = {
        "id": chat.id,
        "object": "chat.deleted",
        "deleted": True,
        "title": chat.title,
        "userId": chat.owner_id,
        "visibility": chat.visibility,
        "createdAt": created.replace("+00:00", "Z"),  # as JavaScript's Date gives it
    }
    return web.Response(body=orjson.dumps(deleted), content_type="application/json")
