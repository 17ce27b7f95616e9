"""The ``chatproxy`` command line: parse, build Settings, call. No logic lives here.

Exit codes: 0 ok, 1 runtime failure (nothing with that id, a file that cannot be read or holds
no export, the database refusing), 2 usage error (bad flags, dates, durations or
configuration, a plugin that cannot be loaded), always with one line on stderr
(``chatproxy: ...``) and no traceback: under click's ``CliRunner`` as in the console script.

Plugins add commands (``register_commands``) and export formats (``register_exporters``).
Their commands are looked up when a name is not a built-in command (and listed by ``--help``):
the plugins are loaded then from the configuration the command line names (``-c FILE``, found
before click parses it, else ``$CHATPROXY_CONFIG``) and the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar

import click

from chatproxy.errors import ChatProxyError, SettingsError
from chatproxy.ids import is_id
from chatproxy.settings import Settings, load_settings

if TYPE_CHECKING:
    from chatproxy.export import PluginFormat
    from chatproxy.plugins.manager import Plugins

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


class _UserId(click.ParamType):
    """A ``--user`` value: anything but a user id is a usage error."""

    name = "user"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from chatproxy.auth import USER_ID_RE

        if not USER_ID_RE.fullmatch(value):
            expected = "a user id (1 to 128 of A-Z a-z 0-9 _ . @ : -)"
            self.fail(f"expected {expected}, got {_shown(value)}", param, ctx)
        return value


USER = _UserId()


def _user_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--user", "user", type=USER, default=None, help=help)


def _shown(value: str, limit: int = 40) -> str:
    """``value`` quoted for a message, cut short when long."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"chatproxy: {message}", err=True)
    sys.exit(code)


def _settings(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file, overrides=overrides)
    except SettingsError as exc:
        _fail(str(exc), 2)
    except (OSError, UnicodeDecodeError) as exc:  # a config file that is not readable TOML
        path = config_file or os.environ.get("CHATPROXY_CONFIG")
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        _fail(f"{path}: expected a readable TOML file ({reason})", 2)


# What one invocation keeps in click's context (shared by its nested contexts).
_ARGV = "chatproxy.argv"
_PLUGINS = "chatproxy.plugins"
_COMMANDS = "chatproxy.plugin_commands"
_FORMATS = "chatproxy.plugin_formats"


def _plugins(settings: Settings) -> Plugins:
    """The plugins of this invocation, loaded once; one that cannot be loaded: exit 2."""
    from chatproxy.plugins.manager import load_plugins

    ctx = click.get_current_context(silent=True)
    meta: dict[str, Any] = ctx.meta if ctx is not None else {}
    key = (settings.plugins, settings.plugin)
    cached = meta.get(_PLUGINS)
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[no-any-return]
    try:
        plugins = load_plugins(settings)
    except SettingsError as exc:
        _fail(str(exc), 2)
    meta[_PLUGINS] = (key, plugins)
    return plugins


def _config_in(args: list[str]) -> Path | None:
    """The ``-c FILE`` of a command line, before click parses it (the last one given)."""
    found: str | None = None
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            break
        if arg in ("-c", "--config"):
            found = next(rest, None)
        elif arg.startswith("--config="):
            found = arg.partition("=")[2]
        elif arg.startswith("-c") and not arg.startswith("--"):
            found = arg[2:]
    return Path(found) if found else None


def _invocation_plugins(ctx: click.Context) -> Plugins:
    """The plugins of the configuration this command line names (for what is decided before
    a command runs: plugin commands, formats in ``--help``)."""
    return _plugins(_settings(_config_in(ctx.meta.get(_ARGV, []))))


def _with_config_option(command: click.Command) -> None:
    """Give a plugin's command (and its subcommands) ``-c FILE`` if it has none: the file is
    the one its plugins were loaded from."""
    if not any(
        isinstance(p, click.Option) and {"-c", "--config"} & set(p.opts) for p in command.params
    ):
        command.params.append(
            click.Option(
                ["-c", "--config"],
                type=click.Path(dir_okay=False, path_type=Path),
                expose_value=False,
                help="TOML configuration file (default: $CHATPROXY_CONFIG).",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_config_option(sub)


def _plugin_commands(ctx: click.Context, builtin: Mapping[str, click.Command]) -> dict[str, Any]:
    """The commands the plugins add (``register_commands``), by name; one that a built-in
    command or another plugin has: exit 2."""
    from chatproxy.plugins.manager import PluginLoadError

    meta = ctx.meta
    if _COMMANDS in meta:
        return meta[_COMMANDS]  # type: ignore[no-any-return]
    plugins = _invocation_plugins(ctx)
    group = click.Group("chatproxy")
    commands: dict[str, click.Command] = {}
    owners: dict[str, str] = {}
    for plugin, register in plugins.implementations("register_commands"):
        try:
            register(cli=group)
        except Exception as exc:
            _fail(str(PluginLoadError(plugin, "failed in register_commands", exc)), 2)
        for name, command in group.commands.items():
            if commands.get(name) is command:
                continue
            if name in builtin:
                _fail(f"plugin {plugin!r} adds the command {name!r}, which chatproxy has", 2)
            if name in owners:
                _fail(f"plugin {plugin!r} adds the command {name!r}, as {owners[name]!r} does", 2)
            _with_config_option(command)
            commands[name], owners[name] = command, plugin
    meta[_COMMANDS] = commands
    return commands


def _formats(settings: Settings | None = None) -> dict[str, PluginFormat]:
    """The export formats the plugins add: of ``settings``, or of the command line's
    configuration. A plugin that fails: exit 2."""
    from chatproxy.export import plugin_formats
    from chatproxy.plugins.manager import PluginLoadError

    ctx = click.get_current_context()
    plugins = _plugins(settings) if settings is not None else _invocation_plugins(ctx)
    cached = ctx.meta.get(_FORMATS)
    if cached is not None and cached[0] is plugins:
        return cached[1]  # type: ignore[no-any-return]
    try:
        formats = plugin_formats(plugins)
    except PluginLoadError as exc:
        _fail(str(exc), 2)
    ctx.meta[_FORMATS] = (plugins, formats)
    return formats


class _Format(click.ParamType):
    """An export format: a built-in one, or one a plugin adds."""

    name = "format"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from chatproxy.export import FORMATS

        if value in FORMATS or value in _formats():
            return value
        choices = ", ".join(repr(f) for f in (*FORMATS, *_formats()))
        self.fail(f"{_shown(value)} is not one of {choices}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        from chatproxy.export import FORMATS

        return "[" + "|".join((*FORMATS, *_formats())) + "]"


class _FormatOption(click.Option):
    """``--format``, whose help lists the plugins' formats too."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        extra = _formats()
        if record is None or not extra:
            return record
        more = "; ".join(
            f"{name}: {fmt.exporter.description or 'from the plugin ' + repr(fmt.plugin)}"
            for name, fmt in extra.items()
        )
        return record[0], f"{record[1]} Plugins' formats: {more}."


def _chat_id(chat_id: str) -> str:
    """A CHAT_ID argument: one that cannot be an id names no chat (exit 1, as an unknown one)."""
    if not is_id(chat_id):
        _fail(f"no chat with id {_shown(chat_id)} (ids are 1 to 128 of A-Z a-z 0-9 _ -)", 1)
    return chat_id


def _age(text: str, flag: str) -> timedelta:
    """A duration flag (``90d``); anything else is a usage error."""
    from chatproxy.store.maintenance import parse_age
    from chatproxy.store.store import utcnow

    try:
        age = parse_age(text)
        utcnow() - age
    except ValueError:
        _fail(f"{flag}: expected an age such as 90d, 12h, 4w or 6m, got {_shown(text)}", 2)
    except OverflowError:
        _fail(f"{flag}: {_shown(text)} reaches back before the year 1", 2)
    return age


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows, or not installed: the standard loop
        return None
    return uvloop.new_event_loop


def _run(main: Callable[[], Awaitable[T]]) -> T:
    from tortoise.exceptions import BaseORMException

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(main())
    except SettingsError as exc:
        _fail(str(exc), 2)
    except ChatProxyError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(str(exc), 1)
    except (BaseORMException, sqlite3.Error) as exc:
        _fail(f"the database refused: {exc}", 1)


async def _with_store(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from chatproxy.app import instance_id
    from chatproxy.store.store import Store

    store = Store(settings.storage.url, instance_id=instance_id(settings))
    store.attach_plugins(_plugins(settings), deliver=False)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


class _Main(click.Group):
    """The ``chatproxy`` group: a usage error is one line too, whoever runs it (the console
    script, ``python -m chatproxy``, click's ``CliRunner``); the plugins' commands are its
    commands too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)  # where the plugins' configuration is found
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugin_commands(ctx, self.commands)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        return _plugin_commands(ctx, self.commands).get(cmd_name)  # type: ignore[no-any-return]

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            _fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line, access lines with their fields as keys.",
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
    log_format: str,
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
    from chatproxy.logformat import configure

    configure(log_level, log_format)
    from chatproxy.server import serve as run_server

    _run(lambda: run_server(settings))


@main.command()
@click.argument("chat_id", required=False)
@CONFIG_OPTION
@DB_OPTION
@click.option(
    "-f",
    "--format",
    "fmt",
    cls=_FormatOption,
    type=_Format(),
    default=None,
    help="json (default): lossless, re-importable; jsonl: the same on one line (--all: always, "
    "or a plugin's format); markdown: readable; openai: {'messages': [...]}.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
@click.option("--all", "everything", is_flag=True, help="Every chat, as JSON lines (a backup).")
@_user_option("With --all: only this user's chats.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="With --all: only chats updated since this date (UTC).",
)
def export(
    chat_id: str | None,
    config_file: Path | None,
    db_url: str | None,
    fmt: str | None,
    output: Path | None,
    everything: bool,
    user: str | None,
    since: datetime | None,
) -> None:
    """Export one chat, or every chat with --all."""
    from chatproxy.export import export_all, export_chat

    settings = _settings(config_file, **{"storage.url": db_url})
    if everything == (chat_id is not None):
        _fail("give a CHAT_ID or --all", 2)
    if not everything and (user or since):
        _fail("--user and --since go with --all", 2)
    from chatproxy.export import FORMATS

    formats = _formats(settings) if fmt is not None and fmt not in FORMATS else {}
    if everything:
        if fmt not in (None, "jsonl", *formats):
            _fail("--all writes jsonl (or a plugin's format)", 2)
        since_utc = since.replace(tzinfo=UTC) if since else None
        with _open_output(output) as out, _progress("exporting") as bar:
            progress = None
            if bar is not None:

                def progress(chats: int, total: int, messages: int) -> None:
                    bar(chats, total, messages)

            stats = _run(
                lambda: _with_store(
                    settings,
                    lambda store: export_all(
                        store,
                        out,
                        user_id=user,
                        since=since_utc,
                        progress=progress,
                        fmt=formats.get(fmt or ""),
                    ),
                )
            )
        click.echo(f"exported {stats.chats} chat(s)", err=True)
        return
    assert chat_id is not None
    _chat_id(chat_id)
    data = _run(
        lambda: _with_store(
            settings, lambda store: export_chat(store, chat_id, fmt or "json", formats)
        )
    )
    with _open_output(output) as out:
        out.write(data)


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[BinaryIO]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    try:
        with path.open("wb") as out:
            yield out
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}", 1)


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int | None, int], None] | None]:
    """A progress bar on a terminal (stderr): ``update(done, total, messages)``, shown with
    the messages per second; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    started = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[messages]:,} messages, {task.fields[rate]:,.0f}/s"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None, messages=0, rate=0.0)

        def update(done: int, total: int | None, messages: int) -> None:
            rate = messages / max(time.perf_counter() - started, 1e-6)
            # Rich redraws ten times a second by itself; a short run would show nothing.
            bar.update(task, completed=done, total=total, messages=messages, rate=rate)
            bar.refresh()

        yield update


@main.command(name="import")
@click.argument("file", type=click.Path(path_type=Path))
@CONFIG_OPTION
@DB_OPTION
def import_(file: Path, config_file: Path | None, db_url: str | None) -> None:
    """Restore a json or jsonl export (every branch, status, vote and timestamp; prefix
    hashes, depths, heads and titles left out are derived). Ids already stored are skipped:
    importing twice adds nothing. Documents go in in file order, each whole or not at all: on
    an invalid one, the error names its line and field, nothing of it is stored and the
    documents before it stay imported (importing the fixed file again skips them)."""
    from chatproxy.importing import ImportFailed, import_file

    settings = _settings(config_file, **{"storage.url": db_url})
    try:
        source = file.open("rb")
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}", 1)
    size = max(1, file.stat().st_size)
    with source, _progress("importing") as bar:
        progress = None
        if bar is not None:

            def progress(stats: Any) -> None:
                bar(source.tell(), size, stats.messages)

        try:
            stats = _run(
                lambda: _with_store(
                    settings,
                    lambda s: import_file(
                        s,
                        source,
                        progress=progress,
                        heartbeat_timeout=settings.server.heartbeat_timeout,
                    ),
                )
            )
        except ImportFailed as exc:
            kept = exc.stats
            before = ""
            if kept.chats or kept.messages:
                before = (
                    f" (the {kept.chats} chat(s) and {kept.messages} message(s) before it"
                    " are imported)"
                )
            _fail(f"{file}: {exc}{before}", 1)
    click.echo(f"imported {stats.chats} chat(s) and {stats.messages} message(s) from {file}")


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
    """The console script."""
    main.main(prog_name="chatproxy")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per plugin.")
@CONFIG_OPTION
def plugins_(as_json: bool, config_file: Path | None) -> None:
    """List the loaded plugins (installed ones and the `plugins` key's), where each comes
    from, and the hooks each implements."""
    import orjson

    loaded = _plugins(_settings(config_file))
    if not loaded.names and not as_json:
        click.echo("no plugins loaded")
    for name in loaded.names:
        hooks = loaded.hooks(name)
        if as_json:
            record = {"name": name, "origin": loaded.origin(name), "hooks": hooks}
            click.echo(orjson.dumps(record).decode())
        else:
            click.echo(f"{name}  ({loaded.origin(name)})  hooks: {', '.join(hooks) or '-'}")


@main.group()
def keys() -> None:
    """Proxy keys for [auth] mode = "keys"."""


@keys.command("create")
@click.option(
    "--user", "user", type=USER, required=True, help="The user the key belongs to (created if new)."
)
@click.option("--tier", default=None, help="Set the user's tier (a [limits.tiers.NAME] table).")
@CONFIG_OPTION
@DB_OPTION
def keys_create(user: str, tier: str | None, config_file: Path | None, db_url: str | None) -> None:
    """Create a key; it is printed once, alone on the last line, and never shown again."""
    from chatproxy.auth import new_api_key

    settings = _settings(config_file, **{"storage.url": db_url})
    if tier is not None and tier not in settings.limits.tiers:
        tiers = ", ".join(settings.limits.tiers)
        _fail(f"--tier {_shown(tier)} is not a configured tier ({tiers})", 2)
    key_id, key, key_hash, prefix = new_api_key()
    _run(
        lambda: _with_store(
            settings, lambda s: s.add_api_key(key_id, (user, user, tier), key_hash, prefix)
        )
    )
    shown_tier = tier or "unchanged"
    click.echo(f"Created key {key_id} ({prefix}...) for user {user} (tier: {shown_tier}).")
    click.echo("Keep it now: it is shown only this once.")
    click.echo(key)


@keys.command("list")
@_user_option("Only this user's keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@CONFIG_OPTION
@DB_OPTION
def keys_list(
    user: str | None, as_json: bool, config_file: Path | None, db_url: str | None
) -> None:
    """List keys (never the keys themselves: their id and prefix)."""
    import orjson

    settings = _settings(config_file, **{"storage.url": db_url})
    rows = _run(lambda: _with_store(settings, lambda s: s.api_keys(user)))

    def when(value: Any) -> str | None:
        return value.isoformat(timespec="seconds") if value is not None else None

    for key, tier in rows:
        record = {
            "id": key.id,
            "prefix": key.prefix,
            "user": key.user_id,
            "tier": tier or settings.limits.default_tier,
            "created": when(key.created_at),
            "last_used": when(key.last_used_at),
            "revoked": when(key.revoked_at),
        }
        if as_json:
            click.echo(orjson.dumps(record).decode())
        else:
            click.echo("  ".join(f"{k}={v if v is not None else '-'}" for k, v in record.items()))


@keys.command("revoke")
@click.argument("key")
@CONFIG_OPTION
@DB_OPTION
def keys_revoke(key: str, config_file: Path | None, db_url: str | None) -> None:
    """Revoke KEY: its id, its prefix as `keys list` shows it, or the key itself.

    With redis.url set, running proxies are told at once; otherwise they stop accepting it
    within auth.key_cache_seconds.
    """
    from chatproxy.auth import announce_revocation, revoke_key

    settings = _settings(config_file, **{"storage.url": db_url})
    key_id, prefix = _run(lambda: _with_store(settings, lambda s: revoke_key(s, key)))
    click.echo(f"Revoked {key_id} ({prefix}...).")
    window = f"within auth.key_cache_seconds ({settings.auth.key_cache_seconds:g} s)"
    if not settings.redis.url:
        click.echo(f"Running proxies stop accepting it {window}.")
        return
    problem = _run(lambda: announce_revocation(settings, key_id))
    if problem is None:
        click.echo("Running proxies were told through Redis.")
    else:
        click.echo(
            f"chatproxy: warning: running proxies could not be told through Redis ({problem}); "
            f"they stop accepting it {window}",
            err=True,
        )


@main.group()
def chats() -> None:
    """Look through, search and delete stored chats (every user's, or --user's)."""


def _print_chats(views: list[Any], as_json: bool) -> None:
    import orjson

    for view in views:
        chat = view.chat
        record = {
            "id": chat.id,
            "user": chat.owner_id,
            "title": chat.title,
            "messages": view.message_count,
            "visibility": chat.visibility,
            "updated": chat.updated_at.isoformat(timespec="seconds"),
        }
        if as_json:
            click.echo(orjson.dumps(record).decode())
        else:
            click.echo(
                f"{chat.id}  {record['updated']}  {chat.owner_id}  "
                f"{view.message_count:>4} msg  {chat.title or '-'}"
            )


def _list(settings: Settings, user: str | None, limit: int, q: str | None) -> list[Any]:
    from chatproxy.store.history import list_chats

    async def go(store: Any) -> list[Any]:
        views, _ = await list_chats(store, user, limit=limit, q=q)
        return views

    return _run(lambda: _with_store(settings, go))


LIMIT_OPTION = click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True
)


@chats.command("list")
@_user_option("Only this user's chats.")
@LIMIT_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per chat.")
@CONFIG_OPTION
@DB_OPTION
def chats_list(
    user: str | None, limit: int, as_json: bool, config_file: Path | None, db_url: str | None
) -> None:
    """Chats, newest first."""
    settings = _settings(config_file, **{"storage.url": db_url})
    _print_chats(_list(settings, user, limit, None), as_json)


@chats.command("search")
@click.argument("query")
@_user_option("Only this user's chats.")
@LIMIT_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per chat.")
@CONFIG_OPTION
@DB_OPTION
def chats_search(
    query: str,
    user: str | None,
    limit: int,
    as_json: bool,
    config_file: Path | None,
    db_url: str | None,
) -> None:
    """Chats whose title or one message holds every word of QUERY (the README's search rule:
    whole words, any case, `word*` prefixes, "quoted phrases")."""
    if "\x00" in query:  # no stored text holds one (a NUL is stored as U+FFFD)
        _fail("QUERY: expected text without NUL characters", 2)
    settings = _settings(config_file, **{"storage.url": db_url})
    _print_chats(_list(settings, user, limit, query), as_json)


@chats.command("show")
@click.argument("chat_id")
@CONFIG_OPTION
@DB_OPTION
def chats_show(chat_id: str, config_file: Path | None, db_url: str | None) -> None:
    """The chat's active branch, readable (as `export --format markdown`)."""
    from chatproxy.export import export_chat

    settings = _settings(config_file, **{"storage.url": db_url})
    _chat_id(chat_id)
    data = _run(lambda: _with_store(settings, lambda s: export_chat(s, chat_id, "markdown")))
    click.echo(data.decode())


@chats.command("rm")
@click.argument("chat_id")
@CONFIG_OPTION
@DB_OPTION
def chats_rm(chat_id: str, config_file: Path | None, db_url: str | None) -> None:
    """Delete a chat with every message and vote of it."""
    from chatproxy.store.history import delete_chat

    settings = _settings(config_file, **{"storage.url": db_url})
    _chat_id(chat_id)
    if not _run(lambda: _with_store(settings, lambda s: delete_chat(s, chat_id))):
        _fail(f"no chat with id {chat_id!r}", 1)
    click.echo(f"Deleted {chat_id}.")


@db.command()
@click.option("--older-than", "older_than", required=True, help="An age: 90d, 12h, 4w, 6m.")
@_user_option("Only this user's chats.")
@CONFIG_OPTION
@DB_OPTION
def prune(older_than: str, user: str | None, config_file: Path | None, db_url: str | None) -> None:
    """Delete chats not updated for a while (with their messages and votes), reclaim space."""
    from chatproxy.store.maintenance import prune as prune_chats

    age = _age(older_than, "--older-than")
    settings = _settings(config_file, **{"storage.url": db_url})
    n = _run(lambda: _with_store(settings, lambda s: prune_chats(s, age, user)))
    click.echo(f"deleted {n} chat(s) not updated for {older_than}")


@main.command()
@click.option("--since", "period", default="30d", show_default=True, help="A period: 30d, 24h.")
@_user_option("Only this user.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row.")
@CONFIG_OPTION
@DB_OPTION
def stats(
    period: str, user: str | None, as_json: bool, config_file: Path | None, db_url: str | None
) -> None:
    """Answers, tokens and errors per user and model over a period."""
    import orjson

    from chatproxy.store.maintenance import usage
    from chatproxy.store.store import utcnow

    age = _age(period, "--since")
    settings = _settings(config_file, **{"storage.url": db_url})
    rows = _run(lambda: _with_store(settings, lambda s: usage(s, utcnow() - age, user)))
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(dataclasses.asdict(row)).decode())
        return
    click.echo(
        f"{'user':<24} {'model':<24} {'messages':>9} {'tokens in':>10} "
        f"{'tokens out':>10} {'errors':>7}"
    )
    for row in rows:
        click.echo(
            f"{row.user:<24} {row.model:<24} {row.messages:>9} {row.prompt_tokens:>10} "
            f"{row.completion_tokens:>10} {row.errors:>7}"
        )
