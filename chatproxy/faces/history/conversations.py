"""Management API: conversations (SPEC §4), shaped like OpenAI's Conversations API so that
``client.conversations...`` of the official SDKs works unchanged, plus four extensions: the
list (``GET /v1/conversations``), ``/messages`` (chat-completions format), ``/export`` (a
download, as ``chatproxy export`` writes it) and votes.

Access is :mod:`chatproxy.access`'s rule: the owner reads and writes; a ``public`` chat may
be read by any authenticated user and voted on (a vote is feedback, :attr:`~Need.READ`), but
other writes by a non-owner are ``403 permission_denied``; another user's ``private`` chat is
``404 chat_not_found`` on every endpoint, exactly like a chat that does not exist. Writes that
change messages (adding or deleting items, deleting the chat) are ``409 chat_busy`` while an
answer is generated.

Items are the active branch, one or more per stored message
(:func:`chatproxy.faces.items.message_items`). An item's id is its message's id; the k-th
further item of one message (the tool calls of an answer with text, say) is
``{message_id}_{k}``. Deleting any item deletes its message.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from chatproxy import export
from chatproxy.access import (
    VISIBILITIES,
    Need,
    chat_for,
    choice,
    metadata_filter,
    metadata_value,
    paging,
    path_id,
    require,
)
from chatproxy.appkeys import CALLER, CHAT_ID, GENERATIONS, SETTINGS, STORE
from chatproxy.errors import APIError, Conflict, InvalidRequest, NotFoundError, json_object
from chatproxy.faces.http import Handler, add_route_table
from chatproxy.faces.items import ItemError, items_to_messages, message_items
from chatproxy.ids import unknown_id
from chatproxy.store import history
from chatproxy.store.history import ChatView
from chatproxy.store.models import TITLE_LENGTH_MAX, Chat, Message, refuse_nul

__all__ = ["add_routes", "delete_chat", "ensure_not_busy"]

MAX_TITLE = TITLE_LENGTH_MAX  # the column's size
MAX_QUERY = 1000
# format: (Content-Type, file extension) of GET .../export
EXPORTS = {"json": ("application/json", "json"), "markdown": ("text/markdown; charset=utf-8", "md")}
_ITEM_SUFFIX = re.compile(r"(.+)_([1-9][0-9]{0,3})")


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's routes (before the pass-through catch-all)."""
    chat = "/v1/conversations/{chat_id}"
    routes: dict[str, dict[str, Handler]] = {
        "/v1/conversations": {"POST": create_conversation, "GET": list_conversations},
        chat: {"GET": get_conversation, "POST": update_conversation, "DELETE": delete},
        chat + "/items": {"GET": list_items, "POST": create_items},
        chat + "/items/{item_id}": {"GET": get_item, "DELETE": delete_item},
        chat + "/messages": {"GET": list_messages},
        chat + "/export": {"GET": export_conversation},
        chat + "/messages/{message_id}/vote": {"PUT": vote},
    }
    add_route_table(router, routes)


# -- requests --------------------------------------------------------------------------------


def _invalid(message: str, code: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``); unknown keys are refused, and so
    is a NUL character anywhere in it (it could not be stored)."""
    raw = await request.read()
    body = json_object(raw, empty_ok=True)
    for key in body:
        if key not in allowed:
            raise _invalid(f"unknown parameter {key!r}", "unknown_parameter", key)
    refuse_nul(body, raw)
    return body


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The given ones of ``metadata`` (:func:`~chatproxy.access.metadata_value`: null clears
    it), ``title`` and ``visibility``, checked."""
    out: dict[str, Any] = {}
    if "metadata" in body:
        out["metadata"] = metadata_value(body["metadata"])
    if "title" in body:
        title = body["title"]
        if title is not None and not isinstance(title, str):
            raise _invalid("'title' must be a string or null", "invalid_type", "title")
        if title is not None and len(title) > MAX_TITLE:
            raise _invalid("'title' is longer than 256 characters", "invalid_value", "title")
        out["title"] = title or None
    if "visibility" in body:
        visibility = body["visibility"]
        if not isinstance(visibility, str):
            raise _invalid("'visibility' must be a string", "invalid_type", "visibility")
        if visibility not in VISIBILITIES:
            raise _invalid("'visibility' must be private or public", "invalid_value", "visibility")
        out["visibility"] = visibility
    return out


def _messages(body: dict[str, Any], *, required: bool) -> list[dict[str, Any]]:
    if body.get("items") is None and required:
        raise _invalid("'items' is required", "missing_required_parameter", "items")
    try:
        return items_to_messages(body.get("items") or [])
    except ItemError as exc:
        code, param, message = exc.args
        raise _invalid(message, code, param) from None


# -- access ----------------------------------------------------------------------------------


async def _chat(request: web.Request, need: Need = Need.READ) -> Chat:
    """The chat of the path, if the caller may use it as ``need``."""
    return await chat_for(request, path_id(request, "chat_id", "chat"), need)


def _no_chat(chat_id: str) -> APIError:
    return unknown_id(chat_id, what="chat")


def _no_item(item_id: str) -> APIError:
    return unknown_id(item_id, what="item")


async def ensure_not_busy(request: web.Request, chat_id: str) -> None:
    """Refuse (409 ``chat_busy``) to change a chat whose answer runs, on any instance."""
    if await request.app[GENERATIONS].busy_anywhere(chat_id):
        raise Conflict(
            "an answer is being generated in this chat; change it once it is done",
            code="chat_busy",
        )


async def delete_chat(request: web.Request, chat_id: str) -> None:
    """Delete the chat (idle, checked by the caller as its owner's) with every message of every
    branch, its votes and its stream records."""
    await ensure_not_busy(request, chat_id)
    if not await history.delete_chat(request.app[STORE], chat_id):
        raise _no_chat(chat_id)
    await request.app[GENERATIONS].forget(chat_id)


# -- responses -------------------------------------------------------------------------------


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _conversation(view: ChatView) -> dict[str, Any]:
    chat = view.chat
    return {
        "id": chat.id,
        "object": "conversation",
        "created_at": int(chat.created_at.timestamp()),
        "metadata": chat.metadata or {},
        "title": chat.title,
        "updated_at": int(chat.updated_at.timestamp()),
        "visibility": chat.visibility,
        "message_count": view.message_count,
    }


def _list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {
        "object": "list",
        "data": data,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    }


# -- conversations ---------------------------------------------------------------------------


async def create_conversation(request: web.Request) -> web.Response:
    """``POST /v1/conversations`` ``{metadata?, items?, title?, visibility?}``."""
    body = await _body(request, ("metadata", "items", "title", "visibility"))
    settings = _settings(body)
    messages = _messages(body, required=False)
    title = settings.get("title")
    if title is None and request.app[SETTINGS].chats.title != "none":
        title = history.default_title(messages)
    view = await history.create_chat(
        request.app[STORE],
        request[CALLER].user_id,
        messages,
        title=title,
        visibility=settings.get("visibility", "private"),
        metadata=settings.get("metadata"),
    )
    request[CHAT_ID] = view.chat.id
    return _json(_conversation(view))


async def list_conversations(request: web.Request) -> web.Response:
    """``GET /v1/conversations``: the caller's own chats, newest first (extension)."""
    page = paging(request.query, order=None)
    q = request.query.get("q") or None
    if q is not None and len(q) > MAX_QUERY:
        raise _invalid("'q' is longer than 1000 characters", "invalid_value", "q")
    metadata = list(metadata_filter(request.query).items())
    user = request[CALLER].user_id
    views, has_more = await history.list_chats(
        request.app[STORE], user, limit=page.limit, after=page.after, metadata=metadata, q=q
    )
    return _json(_list([_conversation(v) for v in views], has_more))


async def get_conversation(request: web.Request) -> web.Response:
    chat = await _chat(request)
    return _json(
        _conversation(ChatView(chat, await history.message_count(request.app[STORE], chat)))
    )


async def update_conversation(request: web.Request) -> web.Response:
    """``POST /v1/conversations/{id}``: ``metadata`` (replaced whole, as OpenAI does),
    ``title``, ``visibility``; what is left out stays as it is."""
    chat = await _chat(request, Need.WRITE)
    changes = _settings(await _body(request, ("metadata", "title", "visibility")))
    updated = await history.update_chat(request.app[STORE], chat.id, changes)
    if updated is None:
        raise _no_chat(chat.id)
    return _json(_conversation(updated))


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v1/conversations/{id}``: the chat, every message of every branch, votes."""
    chat = await _chat(request, Need.WRITE)
    await delete_chat(request, chat.id)
    return _json({"id": chat.id, "object": "conversation.deleted", "deleted": True})


# -- items -----------------------------------------------------------------------------------


async def list_items(request: web.Request) -> web.Response:
    """``GET .../items``: the active branch, newest first unless ``order=asc``."""
    chat = await _chat(request)
    page = paging(request.query, order="desc")
    tree = await history.chat_tree(request.app[STORE], chat.id)
    items = [i for m in history.branch(tree, chat.head_id) for i in message_items(m)]
    if page.descending:
        items.reverse()
    ids = [item["id"] for item in items]
    if page.after is not None and page.after not in ids:
        raise unknown_id(page.after, what="cursor", param="after")
    start = ids.index(page.after) + 1 if page.after is not None else 0
    end = start + page.limit
    return _json(_list(items[start:end], end < len(items)))


async def create_items(request: web.Request) -> web.Response:
    """``POST .../items`` ``{items}``: appended to the active branch; answers the new items."""
    chat = await _chat(request, Need.WRITE)
    messages = _messages(await _body(request, ("items",)), required=True)
    await ensure_not_busy(request, chat.id)
    created = await history.append_messages(request.app[STORE], chat.id, messages)
    if created is None:
        raise _no_chat(chat.id)
    return _json(_list([item for m in created for item in message_items(m)], False))


async def _item(request: web.Request, chat_id: str) -> tuple[Message, dict[str, Any]]:
    """The item of the path (on any branch of the chat) and its message."""
    item_id = path_id(request, "item_id", "item")
    suffixed = _ITEM_SUFFIX.fullmatch(item_id)
    for message_id in [item_id, suffixed.group(1)] if suffixed else [item_id]:
        m = await request.app[STORE].get_message(message_id)
        found = [i for i in message_items(m) if i["id"] == item_id] if m else []
        if m is not None and m.chat_id == chat_id and found:
            return m, found[0]
    raise _no_item(item_id)


async def get_item(request: web.Request) -> web.Response:
    chat = await _chat(request)
    return _json((await _item(request, chat.id))[1])


async def delete_item(request: web.Request) -> web.Response:
    """``DELETE .../items/{item_id}``: the item's message and everything below it; answers the
    conversation, as OpenAI does."""
    chat = await _chat(request, Need.WRITE)
    m, item = await _item(request, chat.id)
    await ensure_not_busy(request, chat.id)
    updated = await history.delete_message(request.app[STORE], chat.id, m.id)
    if updated is None:
        raise _no_item(item["id"])
    return _json(_conversation(updated))


# -- extensions ------------------------------------------------------------------------------


async def list_messages(request: web.Request) -> web.Response:
    """``GET .../messages``: the active branch in chat-completions format, ready to send back
    upstream (as ``chatproxy export --format openai``: no reasoning, no answer that failed
    before it said anything); ``?all=true``: every message of every branch, oldest first, as
    stored, with ``id``, ``parent_id``, ``status`` and, for a failed answer, ``error``."""
    chat = await _chat(request)
    every = choice(request.query, "all", ("true", "false", "1", "0"), "false") in ("true", "1")
    tree = await history.chat_tree(request.app[STORE], chat.id)
    if every:
        data = [_stored(m) for m in tree]
    else:
        branch = history.branch(tree, chat.head_id)
        data = [
            {k: v for k, v in m.data.items() if k != "reasoning_content"}
            for m in branch
            if history.replayable(m)
        ]
    return _json({"object": "list", "data": data, "head_id": chat.head_id})


def _stored(m: Message) -> dict[str, Any]:
    row = {**m.data, "id": m.id, "parent_id": m.parent_id, "status": m.status}
    return row | {"error": m.error} if m.error else row


async def export_conversation(request: web.Request) -> web.Response:
    """``GET .../export?format=json|markdown``: the file ``chatproxy export`` writes, as a
    download: ``json`` is lossless (every branch; ``chatproxy import`` reads it) and its owner's
    only, ``markdown`` the active branch, for anyone who may read the chat."""
    chat = await _chat(request)
    fmt = choice(request.query, "format", tuple(EXPORTS), "json")
    if fmt == "json":
        # The lossless file holds what only the owner sees (request parameters, metadata).
        user = request[CALLER].user_id
        hint = "; only its owner may export it as json, format=markdown is open to its readers"
        require(user, chat.owner_id, chat.visibility, Need.WRITE, chat.id, hint=hint)
    try:
        body = await export.export_chat(request.app[STORE], chat.id, fmt)
    except NotFoundError:  # deleted meanwhile
        raise _no_chat(chat.id) from None
    content_type, extension = EXPORTS[fmt]
    disposition = f'attachment; filename="{chat.id}.{extension}"'
    return web.Response(
        body=body, headers={"Content-Type": content_type, "Content-Disposition": disposition}
    )


async def vote(request: web.Request) -> web.Response:
    """``PUT .../messages/{message_id}/vote`` ``{"up": bool}``: the caller's vote, replacing
    an earlier one; anyone who may read the chat may vote."""
    chat = await _chat(request)
    message_id = path_id(request, "message_id", "message")
    body = await _body(request, ("up",))
    if not isinstance(body.get("up"), bool):
        code = "missing_required_parameter" if body.get("up") is None else "invalid_type"
        raise _invalid("'up' is required and must be true or false", code, "up")
    user = request[CALLER].user_id
    if not await history.set_vote(request.app[STORE], chat.id, message_id, user, body["up"]):
        raise unknown_id(message_id, what="message")
    return _json({"id": message_id, "object": "vote", "up": body["up"], "user_id": user})
