"""``GET /v1/conversations/{chat_id}/stream``: follow a chat's generation from anywhere in it.

It replays the events produced so far, each with ``id: N`` (its number, from 1), then goes on
live and ends exactly as the original stream did. ``Last-Event-ID: N`` or ``?after=N`` resumes
after event N. Nothing running (and nothing that ended within ``chats.resume_grace``): 204.
"""

from __future__ import annotations

from aiohttp import web

from chatproxy.access import chat_state_for, path_id
from chatproxy.appkeys import GENERATIONS
from chatproxy.engine.feed import Feed, LocalFeed
from chatproxy.engine.relay import NumberedEvents, write_feed
from chatproxy.errors import InvalidRequest

__all__ = ["find_feed", "handle_resume"]


def _after(request: web.Request) -> int:
    value = request.headers.get("Last-Event-ID", request.query.get("after", "0"))
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise InvalidRequest(
            "Last-Event-ID / after must be a non-negative event number",
            code="invalid_value",
            param="after",
        )
    return int(value)


async def handle_resume(request: web.Request) -> web.StreamResponse:
    """Re-attach to the chat's running (or just finished) generation, if the caller may read
    the chat (:mod:`chatproxy.access`)."""
    chat_id = path_id(request, "chat_id", "chat")
    after = _after(request)
    await chat_state_for(request, chat_id)
    feed = await find_feed(request.app, chat_id, after)
    if feed is None:
        return web.Response(status=204)
    headers = {"X-Chat-Id": chat_id, "X-Message-Id": feed.message_id}
    return await write_feed(request, feed, NumberedEvents(headers))


async def find_feed(app: web.Application, chat_id: str, after: int = 0) -> Feed | None:
    """A feed of the chat's running (or just finished) streamed generation, from event
    ``after + 1`` on; ``None`` when there is none."""
    generations = app[GENERATIONS]
    gen = generations.find(chat_id)
    if gen is not None:
        return LocalFeed(gen, after) if gen.stream else None
    if generations.shared is not None:  # running on another instance?
        return await generations.shared.feed(chat_id, after)
    return None
