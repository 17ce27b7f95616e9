"""Opening the database: Tortoise configuration, a context of our own, migrations."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tortoise.context import TortoiseContext
from tortoise.migrations.executor import MigrationExecutor

__all__ = ["APP_LABEL", "open_database", "tortoise_config"]

APP_LABEL = "models"
_APP = {"models": ["chatproxy.store.models"], "migrations": "chatproxy.store.migrations"}
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _connection(url: str) -> dict[str, Any] | str:
    if not url.startswith("sqlite://"):
        return url.replace("postgresql://", "postgres://", 1)
    parts = urlsplit(url)
    path = url[len("sqlite://") :].split("?", 1)[0]
    credentials: dict[str, Any] = {
        "file_path": path,
        "journal_mode": "WAL",
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
        "synchronous": "NORMAL",
        "foreign_keys": "ON",
    }
    credentials.update(dict(parse_qsl(parts.query)))
    return {"engine": "tortoise.backends.sqlite", "credentials": credentials}


def tortoise_config(url: str) -> dict[str, Any]:
    """The Tortoise configuration for a ``storage.url``."""
    return {
        "connections": {"default": _connection(url)},
        "apps": {APP_LABEL: dict(_APP, default_connection="default")},
        "use_tz": True,
        "timezone": "UTC",
    }


async def open_database(url: str, *, migrate: bool = True) -> TortoiseContext:
    """A Tortoise context connected to ``url``, with every migration applied when asked.

    The context is ours alone (several stores can live in one process, as tests do); callers
    activate it with ``with ctx:`` around ORM calls.
    """
    config = tortoise_config(url)
    ctx = TortoiseContext()
    with ctx:
        await ctx.init(config=config)
        if migrate:
            executor = MigrationExecutor(ctx.db("default"), {APP_LABEL: config["apps"][APP_LABEL]})
            await executor.migrate()
    return ctx
