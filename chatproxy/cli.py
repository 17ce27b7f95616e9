"""The ``chatproxy`` command line: parse, build Settings, call. No logic lives here.

Exit codes: 0 ok, 1 runtime failure, 2 usage error (bad flags or configuration), always with a
one-line message on stderr and no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from chatproxy.errors import ChatProxyError, SettingsError
from chatproxy.settings import Settings, load_settings

__all__ = ["main", "run"]

T = TypeVar("T")

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (default: $CHATPROXY_CONFIG, else built-in defaults).",
)
DB_OPTION = click.option("--db", "db_url", default=None, help="Storage URL (storage.url).")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"chatproxy: {message}", err=True)
    sys.exit(code)


def _settings(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file, overrides=overrides)
    except SettingsError as exc:
        _fail(str(exc), 2)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows, or not installed: the standard loop
        return None
    return uvloop.new_event_loop


def _run(main: Callable[[], Awaitable[T]]) -> T:
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(main())
    except SettingsError as exc:
        _fail(str(exc), 2)
    except ChatProxyError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(str(exc), 1)


async def _with_store(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from chatproxy.app import instance_id
    from chatproxy.store.store import Store

    store = Store(settings.storage.url, instance_id=instance_id(settings))
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chatproxy")
def main() -> None:
    """chatproxy: durable chat history for any OpenAI-compatible endpoint.

    Point an app's OPENAI_BASE_URL at the proxy; every conversation is stored, threaded and
    exportable.
    """


@main.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Address to bind (server.host).")
@click.option("--port", type=int, default=None, help="Port to bind (server.port).")
@click.option("--upstream", "upstream_url", default=None, help="Upstream base URL (upstream.url).")
@DB_OPTION
@click.option("--redis", "redis_url", default=None, help="Redis URL (redis.url).")
@click.option("--demo", is_flag=True, default=False, help="Use a built-in fake upstream.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    upstream_url: str | None,
    db_url: str | None,
    redis_url: str | None,
    demo: bool,
    log_level: str,
) -> None:
    """Run the proxy (applies database migrations first)."""
    settings = _settings(
        config_file,
        **{
            "server.host": host,
            "server.port": port,
            "upstream.url": upstream_url,
            "storage.url": db_url,
            "redis.url": redis_url,
            "demo": demo or None,
        },
    )
    if settings.auth.mode != "none":
        _fail(f"auth.mode {settings.auth.mode!r} is not available in this version", 2)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    from chatproxy.server import serve as run_server

    _run(lambda: run_server(settings))


@main.command()
@click.argument("chat_id")
@CONFIG_OPTION
@DB_OPTION
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["json", "jsonl", "markdown", "openai"]),
    default="json",
    show_default=True,
    help="json: lossless, re-importable; markdown: readable; openai: {'messages': [...]}.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
def export(
    chat_id: str, config_file: Path | None, db_url: str | None, fmt: str, output: Path | None
) -> None:
    """Export one chat."""
    from chatproxy.export import export_chat

    settings = _settings(config_file, **{"storage.url": db_url})
    data = _run(lambda: _with_store(settings, lambda store: export_chat(store, chat_id, fmt)))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            output.write_bytes(data)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror}", 1)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@CONFIG_OPTION
@DB_OPTION
def upgrade(config_file: Path | None, db_url: str | None) -> None:
    """Apply every pending migration."""
    settings = _settings(config_file, **{"storage.url": db_url})

    async def noop(store: Any) -> None:
        return None

    _run(lambda: _with_store(settings, noop))
    click.echo(f"database is up to date: {settings.storage.url}")


def run() -> None:
    """The console script: like ``main``, but usage errors are one line too."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(0)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 1)
