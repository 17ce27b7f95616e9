"""Chat titles from the upstream model (``[chats] title = "upstream"``).

A new chat gets its first-message title at once. With ``title = "upstream"``, once its first
answer has finished the proxy asks the upstream for a short title and replaces it. The request
goes through the proxy's one upstream client (:class:`~chatproxy.upstream.client.Upstream`),
like the answer: the same credential, timeouts and retries, counted in the same metric. It
never touches the user's stream, and on any failure the first-message title stays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from chatproxy.store.models import TITLE_LENGTH_MAX, Chat, storable_text
from chatproxy.store.store import Store

if TYPE_CHECKING:
    from chatproxy.upstream.client import Upstream

__all__ = ["TITLE_PROMPT", "Titler"]

log = logging.getLogger("chatproxy.engine.titles")

TITLE_PROMPT = (
    "Write a title of at most six words for a conversation that starts with the user's "
    "message below. Answer with the title only, no quotes, no final period."
)
MAX_TITLE = 80


def clean_title(text: str | None) -> str | None:
    """The model's answer as a one-line title, or ``None`` if nothing usable is left."""
    if not text:
        return None
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    quotes = "\"'\u201c\u201d\u2018\u2019 "
    line = line.strip(quotes).removeprefix("Title:").strip().strip(quotes).rstrip(".")
    return line[:MAX_TITLE] or None


def _answer_text(answer: Any) -> str | None:
    """The text of a chat completion (``choices[0].message.content``), if it has one."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class Titler:
    """Background title requests through the proxy's upstream client, tracked so that
    shutdown can wait for them (before that client is closed)."""

    def __init__(self, store: Store, upstream: Upstream) -> None:
        self._store = store
        self._upstream = upstream
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self,
        chat_id: str,
        first_message: str,
        model: str | None,
        authorization: str | None,
        *,
        request_id: str = "",
    ) -> None:
        """Ask for a title in the background, with the caller's upstream ``authorization`` (as
        its answer was asked for); ``request_id``: the answer's request, for the log."""
        task = asyncio.create_task(
            self._title(chat_id, first_message, model, authorization, request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _title(
        self,
        chat_id: str,
        first_message: str,
        model: str | None,
        authorization: str | None,
        request_id: str,
    ) -> None:
        body = {
            "model": model or "default",
            "messages": [
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": first_message[:4000]},
            ],
            "max_tokens": 24,
        }
        try:
            upstream = self._upstream
            answer = await upstream.post_json(
                "/chat/completions",
                body,
                headers=upstream.auth_headers(authorization),
                request_id=request_id,
            )
        except Exception as exc:  # any failure keeps the first-message title
            reason = getattr(exc, "code", None) or type(exc).__name__
            log.info("no title from the upstream for %s (%s)", chat_id, reason)
            return
        title = storable_text(clean_title(_answer_text(answer)), TITLE_LENGTH_MAX)
        if title is None:
            return
        try:
            await self._store.write(lambda: Chat.filter(id=chat_id).update(title=title))
        except Exception:
            log.warning("could not store the title of %s", chat_id, exc_info=True)

    async def close(self) -> None:
        """Wait briefly for titles under way, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
            for task in self._tasks:
                task.cancel()
