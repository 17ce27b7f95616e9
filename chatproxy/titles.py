"""Chat titles from the upstream model (``[chats] title = "upstream"``).

A new chat gets its first-message title at once. With ``title = "upstream"``, once its first
answer has finished the proxy asks the upstream (with the official ``openai`` SDK) for a short
title and replaces it; this never touches the user's stream, and on any failure the
first-message title stays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from chatproxy.settings import Settings
from chatproxy.store.models import TITLE_LENGTH_MAX, Chat, storable_text
from chatproxy.store.store import Store

if TYPE_CHECKING:
    import openai

__all__ = ["TITLE_PROMPT", "Titler"]

log = logging.getLogger("chatproxy.titles")

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


class Titler:
    """Background title requests, tracked so shutdown can wait for them."""

    def __init__(self, settings: Settings, store: Store) -> None:
        # Imported here: the SDK costs tens of megabytes, and only this option uses it.
        import openai

        self._store = store
        self._client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            base_url=settings.upstream.base_url,
            api_key=settings.upstream.api_key or "unused",
            max_retries=0,
            timeout=30.0,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self, chat_id: str, first_message: str, model: str | None, authorization: str | None
    ) -> None:
        """Ask for a title in the background."""
        task = asyncio.create_task(self._title(chat_id, first_message, model, authorization))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _title(
        self, chat_id: str, first_message: str, model: str | None, authorization: str | None
    ) -> None:
        headers = {"Authorization": authorization} if authorization else None
        try:
            response = await self._client.chat.completions.create(
                model=model or "default",
                messages=[
                    {"role": "system", "content": TITLE_PROMPT},
                    {"role": "user", "content": first_message[:4000]},
                ],
                max_tokens=24,
                extra_headers=headers,
            )
            title = clean_title(response.choices[0].message.content if response.choices else None)
        except Exception as exc:  # any failure keeps the first-message title
            log.info("no title from the upstream for %s (%s)", chat_id, type(exc).__name__)
            return
        title = storable_text(title, TITLE_LENGTH_MAX)
        if title is not None:
            await self._store.write(lambda: Chat.filter(id=chat_id).update(title=title))

    async def close(self) -> None:
        """Wait briefly for titles under way, then close the client."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
            for task in self._tasks:
                task.cancel()
        await self._client.close()
