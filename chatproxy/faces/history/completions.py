"""Stored completions (SPEC §4), in OpenAI's shapes, so that the official SDKs'
``client.chat.completions.list / retrieve / update / delete / messages.list`` work unchanged.

One stored completion per assistant message the proxy generated; its id is the message id.

- ``GET /v1/chat/completions``: the caller's own, ``model``, ``metadata[k]=v``, ``after``,
  ``limit`` (1..100, default 20), ``order`` (``asc``, the default as OpenAI's, or ``desc``).
- ``GET /v1/chat/completions/{id}``: a ``chat.completion``, plus ``chat_id`` and ``status``.
- ``GET /v1/chat/completions/{id}/messages``: the messages it answered, oldest first.
- ``POST /v1/chat/completions/{id}`` ``{"metadata": {...}}``: replaces its metadata.
- ``DELETE /v1/chat/completions/{id}``: deletes it and everything that continues from it.

Access is :mod:`chatproxy.access`'s rule, of the completion's chat. Reading: the owner, and
anyone for a chat whose visibility is ``public``; anyone else gets ``404`` (the completion's
existence is not revealed). Writing: the owner only; ``403`` for a public chat's completion,
``404`` otherwise.

``finish_reason``: the SDKs type it as one of ``stop | length | tool_calls | content_filter |
function_call``. The upstream's value is returned as stored; when none was received, a
``completed`` answer says ``stop`` and any other (``incomplete``, ``failed``, ``cancelled``,
``interrupted``, ``in_progress``) says ``length``: the answer is cut short. ``status`` says why.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatproxy.access import (
    Need,
    completion_for,
    metadata_filter,
    metadata_value,
    paging,
    path_id,
)
from chatproxy.appkeys import CALLER, STORE
from chatproxy.errors import APIError, InvalidRequest, json_object
from chatproxy.ids import unknown_id
from chatproxy.store import completions as stored
from chatproxy.store.models import Chat, Message, Status, refuse_nul
from chatproxy.store.threading import message_text

__all__ = ["add_routes"]


def add_routes(router: web.UrlDispatcher) -> None:
    """Register this module's routes (before the pass-through catch-all)."""
    router.add_get("/v1/chat/completions", list_completions)
    router.add_get("/v1/chat/completions/{completion_id}", retrieve_completion)
    router.add_post("/v1/chat/completions/{completion_id}", update_completion)
    router.add_delete("/v1/chat/completions/{completion_id}", delete_completion)
    router.add_get("/v1/chat/completions/{completion_id}/messages", list_messages)


# -- handlers --------------------------------------------------------------------------------


async def list_completions(request: web.Request) -> web.Response:
    query = request.query
    paged = paging(query, order="asc")
    metadata = metadata_filter(query)
    try:
        page = await stored.list_completions(
            request.app[STORE],
            request[CALLER].user_id,
            model=query.get("model"),
            metadata=metadata,
            after=paged.after,
            limit=paged.limit,
            descending=paged.descending,
        )
    except stored.UnknownCursor:
        raise _bad_cursor(paged.after) from None
    return _list([completion_object(m) for m in page.items], page.has_more)


async def retrieve_completion(request: web.Request) -> web.Response:
    message, _ = await _completion(request)
    return _json(completion_object(message))


async def update_completion(request: web.Request) -> web.Response:
    _completion_id(request)  # a malformed id is reported before a malformed body
    metadata = _metadata_body(await _body(request))
    message, _ = await _completion(request, Need.WRITE)
    updated = await stored.update_metadata(
        request.app[STORE], message.id, request[CALLER].user_id, metadata
    )
    if updated is None:  # deleted in the meantime
        raise _not_found(message.id)
    return _json(completion_object(updated))


async def delete_completion(request: web.Request) -> web.Response:
    message, _ = await _completion(request, Need.WRITE)
    if not await stored.delete_completion(request.app[STORE], message.id, request[CALLER].user_id):
        raise _not_found(message.id)
    return _json({"id": message.id, "object": "chat.completion.deleted", "deleted": True})


async def list_messages(request: web.Request) -> web.Response:
    paged = paging(request.query, order="asc")
    message, _ = await _completion(request)
    try:
        page = await stored.request_messages(
            request.app[STORE],
            message,
            after=paged.after,
            limit=paged.limit,
            descending=paged.descending,
        )
    except stored.UnknownCursor:
        raise _bad_cursor(paged.after) from None
    return _list([store_message(m) for m in page.items], page.has_more)


# -- shapes ----------------------------------------------------------------------------------


def completion_object(message: Message) -> dict[str, Any]:
    """The stored assistant message as a ``chat.completion``."""
    data = message.data if isinstance(message.data, dict) else {}
    choice_message = {**data, "role": "assistant", "content": data.get("content")}
    finish_reason = message.finish_reason or (
        "stop" if message.status == Status.COMPLETED else "length"
    )
    return {
        "id": message.id,
        "object": "chat.completion",
        "created": int(message.created_at.timestamp()),
        "model": message.model or "",
        "choices": [
            {
                "index": 0,
                "message": choice_message,
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(message),
        "metadata": stored.completion_metadata(message),
        "system_fingerprint": message.system_fingerprint,
        # Extensions.
        "chat_id": message.chat_id,
        "status": message.status,
    }


def _usage(message: Message) -> dict[str, Any] | None:
    if isinstance(message.usage, dict) and message.usage:
        return message.usage
    if message.total_tokens is None:
        return None
    return {
        "prompt_tokens": message.prompt_tokens or 0,
        "completion_tokens": message.completion_tokens or 0,
        "total_tokens": message.total_tokens,
    }


def store_message(message: Message) -> dict[str, Any]:
    """A request message as a ``ChatCompletionStoreMessage``: ``content`` as text, and a
    list of content parts also as ``content_parts``, as OpenAI returns them."""
    data = message.data if isinstance(message.data, dict) else {}
    content = data.get("content")
    parts = content if isinstance(content, list) else None
    return {
        **data,
        "id": message.id,
        "role": data.get("role", message.role),
        "content": message_text(content) if parts is not None else content,
        "content_parts": parts,
    }


def _list(data: list[dict[str, Any]], has_more: bool) -> web.Response:
    return _json(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# -- access ----------------------------------------------------------------------------------


async def _completion(request: web.Request, need: Need = Need.READ) -> tuple[Message, Chat]:
    """The completion named in the path, if the caller may use it as ``need``."""
    return await completion_for(request, _completion_id(request), need)


def _completion_id(request: web.Request) -> str:
    return path_id(request, "completion_id", "completion")


def _not_found(completion_id: str) -> APIError:
    return unknown_id(completion_id, what="completion", param="completion_id")


def _bad_cursor(after: str | None) -> APIError:
    return unknown_id(after or "", what="cursor", param="after")


# -- input -----------------------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body = json_object(raw)
    refuse_nul(body, raw)
    return body


def _metadata_body(body: dict[str, Any]) -> dict[str, str]:
    if "metadata" not in body:
        raise InvalidRequest(
            "'metadata' is required", code="missing_required_parameter", param="metadata"
        )
    return metadata_value(body["metadata"])  # null (the SDK's type allows it): no metadata
