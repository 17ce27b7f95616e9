"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from tortoise.context import TortoiseContext
from tortoise.migrations.executor import MigrationExecutor, MigrationTarget

from chatproxy.store.db import APP_LABEL, tortoise_config
from chatproxy.store.models import Chat, Message
from chatproxy.store.store import Store

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns something truthy (for outcomes that happen after a
    client has gone away); fails the test after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s (last: {result!r})")
        await asyncio.sleep(interval)


async def all_messages(store: Store) -> list[Message]:
    return await store.read(lambda: Message.all().order_by("created_at", "id"))


async def all_chats(store: Store) -> list[Chat]:
    return await store.read(lambda: Chat.all())


async def message(store: Store, message_id: str) -> Message:
    found = await store.get_message(message_id)
    assert found is not None, f"message {message_id} is not stored"
    return found


async def post_stream(
    http: aiohttp.ClientSession, base_url: str, body: dict[str, Any]
) -> tuple[bytes, list[bytes], str]:
    """POST a chat completion over raw HTTP: the whole body, its SSE events (without the blank
    lines), and the ``X-Message-Id`` header."""
    async with http.post(f"{base_url}/chat/completions", json=body) as resp:
        raw = await resp.read()
        message_id = resp.headers["X-Message-Id"]
    return raw, [e for e in raw.split(b"\n\n") if e], message_id


async def settled(store: Store, message_id: str) -> Message:
    """The message once it is no longer ``in_progress`` (after its client went away)."""

    async def check() -> Message | None:
        m = await message(store, message_id)
        return m if m.status != "in_progress" else None

    return await eventually(check)


@contextlib.asynccontextmanager
async def store_at(url: str, migration: str) -> AsyncIterator[TortoiseContext]:
    """The store at ``url`` migrated up to ``migration`` only (what an earlier release left),
    its ORM context active inside the block (write rows as that release did), closed after."""
    config = tortoise_config(url)
    ctx = TortoiseContext()
    with ctx:
        await ctx.init(config=config)
        executor = MigrationExecutor(ctx.db("default"), {APP_LABEL: config["apps"][APP_LABEL]})
        await executor.migrate([MigrationTarget(app_label=APP_LABEL, name=migration)])
        try:
            yield ctx
        finally:
            await ctx.close_connections()
