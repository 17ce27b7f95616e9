"""The CLI and plugins (SPEC §10, §13): ``chatproxy plugins``, commands and export formats a
plugin adds, and a plugin that cannot load stopping every command that loads plugins (one
line, exit 2, no traceback), ``chatproxy serve`` included."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner, Result

from chatproxy.cli import main
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply
from tests.plugin_util import write_plugin

StartProxy = Callable[..., Awaitable[ProxyServer]]

GREETER = """
import click
from chatproxy import hookimpl

class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting

    @hookimpl
    def register_commands(self, cli):
        @cli.command()
        @click.argument("who")
        def greet(who):
            \"\"\"Greet WHO with the configured greeting.\"\"\"
            click.echo(f"{self.greeting}, {who}!")

        @cli.group()
        def tools():
            \"\"\"A group of the plugin's.\"\"\"

        @tools.command()
        def ping():
            click.echo("pong")

def plugin(config):
    return Greeter(config.get("greeting", "Hello"))
"""

CSV = """
from chatproxy import hookimpl
from chatproxy.plugins import Exporter

def render(doc):
    rows = [f"{m['role']},{m['status'] or ''}" for m in doc["messages"]]
    return ("# " + doc["chat"]["id"] + "\\n" + "\\n".join(rows) + "\\n").encode()

@hookimpl
def register_exporters():
    return [Exporter("csv", render, extension="csv", description="role and status per message")]
"""

pytestmark = pytest.mark.usefixtures("example_plugin")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CHATPROXY_")}
    env.update(extra or {})
    return env


def invoke(args: list[str], env: Mapping[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=clean_env(env), catch_exceptions=True)


async def cli(*args: str, env: Mapping[str, str] | None = None) -> Result:
    return await asyncio.to_thread(invoke, list(args), env)


def one_line_error(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatproxy: ")
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    return directory


# -- chatproxy plugins --------------------------------------------------------------------------


def test_plugins_lists_each_loaded_plugin_with_its_origin_and_hooks(plugin_dir: Path) -> None:
    name = write_plugin(plugin_dir, GREETER)
    result = invoke(["plugins"], env={"CHATPROXY_PLUGINS": name})
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert (
        "example  (chatproxy-plugin-example 0.1.0)  hooks: register_commands, register_routes"
        in lines
    )
    assert f"{name}  (config)  hooks: register_commands" in lines
    assert lines.index(f"{name}  (config)  hooks: register_commands") > lines.index(
        "example  (chatproxy-plugin-example 0.1.0)  hooks: register_commands, register_routes"
    )


def test_plugins_json_is_one_object_per_plugin(plugin_dir: Path, tmp_path: Path) -> None:
    name = write_plugin(plugin_dir, CSV)
    config = tmp_path / "chatproxy.toml"
    config.write_text(f'plugins = ["{name}"]\n\n[plugin.example]\ndeny_models = ["gpt-4"]\n')
    result = invoke(["plugins", "--json", "-c", str(config)])
    assert result.exit_code == 0, (result.output, result.exception)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records == [
        {
            "name": "example",
            "origin": "chatproxy-plugin-example 0.1.0",
            "hooks": ["before_upstream", "register_commands", "register_routes"],
        },
        {"name": name, "origin": "config", "hooks": ["register_exporters"]},
    ]


def test_plugins_help_says_what_it_lists() -> None:
    result = invoke(["plugins", "--help"])
    assert result.exit_code == 0
    assert "hooks each implements" in result.stdout
    assert "--json" in result.stdout and "-c, --config" in result.stdout


# -- commands -----------------------------------------------------------------------------------


def test_a_plugin_command_runs_with_its_plugin_configured_from_the_file(
    plugin_dir: Path, tmp_path: Path
) -> None:
    name = write_plugin(plugin_dir, GREETER)
    config = tmp_path / "chatproxy.toml"
    config.write_text(f'plugins = ["{name}"]\n\n[plugin.{name}]\ngreeting = "Bonjour"\n')
    result = invoke(["greet", "Ada", "-c", str(config)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == "Bonjour, Ada!\n"
    for args in (["-c", str(config), "greet", "Ada"], [f"--config={config}", "greet", "Ada"]):
        # -c is a command's option, not the group's: click refuses it before the command.
        assert invoke(args).exit_code == 2
    assert invoke(["greet", "Ada", f"--config={config}"]).stdout == "Bonjour, Ada!\n"


def test_a_plugin_command_and_group_run_with_the_plugin_from_the_environment(
    plugin_dir: Path, tmp_path: Path
) -> None:
    name = write_plugin(plugin_dir, GREETER)
    env = {"CHATPROXY_PLUGINS": name, f"CHATPROXY_PLUGIN__{name.upper()}__GREETING": "Hi"}
    assert invoke(["greet", "Bob"], env=env).stdout == "Hi, Bob!\n"
    assert invoke(["tools", "ping"], env=env).stdout == "pong\n"
    config = tmp_path / "c.toml"
    config.write_text(f'plugins = ["{name}"]\n')
    assert invoke(["tools", "ping", "-c", str(config)]).stdout == "pong\n"
    assert invoke(["greet", "Cy"], env={"CHATPROXY_CONFIG": str(config)}).stdout == "Hello, Cy!\n"


def test_plugin_commands_are_listed_in_help_and_gone_without_the_plugin(plugin_dir: Path) -> None:
    name = write_plugin(plugin_dir, GREETER)
    with_plugin = invoke(["--help"], env={"CHATPROXY_PLUGINS": name})
    assert with_plugin.exit_code == 0
    assert re.search(
        r"^  greet +Greet WHO with the configured greeting\.$", with_plugin.stdout, re.M
    )
    assert "example-policy" in with_plugin.stdout  # the installed example's
    without = invoke(["--help"])
    assert "greet" not in without.stdout
    assert "No such command 'greet'" in invoke(["greet", "x"]).stderr


def test_the_installed_example_command_runs_as_a_real_script() -> None:
    script = Path(sys.executable).parent / "chatproxy"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["CHATPROXY_PLUGIN__EXAMPLE__DENY_MODELS"] = '["gpt-4", "o1"]'
    proc = subprocess.run(
        [str(script), "example-policy", "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"deny_models": ["gpt-4", "o1"]}


def test_a_plugin_command_named_as_a_built_in_one_stops_the_cli(plugin_dir: Path) -> None:
    name = write_plugin(
        plugin_dir,
        """
        import click
        from chatproxy import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def export():
                click.echo("hijacked")
        """,
    )
    line = one_line_error(invoke(["--help"], env={"CHATPROXY_PLUGINS": name}))
    assert line == f"chatproxy: plugin {name!r} adds the command 'export', which chatproxy has"


def test_a_plugin_failing_in_register_commands_stops_the_cli_naming_it(plugin_dir: Path) -> None:
    name = write_plugin(
        plugin_dir,
        "from chatproxy import hookimpl\n@hookimpl\ndef register_commands(cli):\n"
        "    raise KeyError('oops')\n",
    )
    line = one_line_error(invoke(["nonsense"], env={"CHATPROXY_PLUGINS": name}))
    assert f"plugin {name!r} failed in register_commands: KeyError: 'oops'" in line


# -- start-up errors ----------------------------------------------------------------------------


def test_a_plugin_that_fails_to_import_stops_commands_that_load_plugins(plugin_dir: Path) -> None:
    name = write_plugin(plugin_dir, "raise ImportError('needs libfoo')\n")
    env = {"CHATPROXY_PLUGINS": name}
    expected = f"chatproxy: plugin {name!r} cannot be loaded: ImportError: needs libfoo"
    for args in (["plugins"], ["--help"], ["some-plugin-command"], ["export", "c", "-f", "x"]):
        assert one_line_error(invoke(args, env=env)) == expected, args


async def test_serve_stops_with_one_line_naming_a_plugin_that_cannot_be_imported(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["CHATPROXY_PLUGINS"] = "chatproxy_no_such_plugin"
    command = [sys.executable, "-m", "chatproxy", "serve", "--port", "0"]
    command += ["--db", f"sqlite://{tmp_path / 'x.db'}"]
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert stdout == b""
    assert stderr.decode().splitlines() == [
        "chatproxy: plugin 'chatproxy_no_such_plugin' cannot be loaded: ModuleNotFoundError: "
        "No module named 'chatproxy_no_such_plugin'"
    ]
    assert not (tmp_path / "x.db").exists()  # stopped before opening the store


async def test_serve_stops_naming_a_plugin_whose_routes_fail(tmp_path: Path) -> None:
    source = (
        "from chatproxy import hookimpl\n@hookimpl\ndef register_routes(router):\n"
        "    router.add_get('no-slash', None)\n"
    )
    name = write_plugin(tmp_path, source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env.update(CHATPROXY_PLUGINS=name, PYTHONPATH=str(tmp_path))
    command = [sys.executable, "-m", "chatproxy", "serve", "--port", "0"]
    command += ["--db", f"sqlite://{tmp_path / 'x.db'}"]
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    (line,) = stderr.decode().splitlines()
    assert line.startswith(f"chatproxy: plugin {name!r} failed in register_routes: ")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('plugins = ["../../etc/passwd"]\n', "plugins: expected a list of built-in plugin names"),
        ('plugins = ["/tmp/evil.py"]\n', "plugins: expected a list of built-in plugin names"),
        ('plugins = "redact"\n', "plugins: expected a list of strings, got 'redact'"),
        ("plugins = 3\n", "plugins: expected a list of strings, got 3"),
        ('plugin = "x"\n', "plugin: expected a table of [plugin.NAME] tables"),
        ("[plugin.nobody]\nx = 1\n", "plugin.nobody: expected the name of a loaded plugin"),
    ],
)
def test_hostile_plugin_configuration_is_one_line_exit_2_naming_the_key(
    tmp_path: Path, toml: str, needle: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    for args in (["plugins", "-c", str(config)], ["serve", "-c", str(config)]):
        assert needle in one_line_error(invoke(args)), args


def test_a_hostile_plugins_variable_is_refused_naming_it() -> None:
    line = one_line_error(invoke(["plugins"], env={"CHATPROXY_PLUGINS": "os;../x"}))
    assert line.startswith("chatproxy: plugins (from CHATPROXY_PLUGINS): expected a list of")


# -- export formats -----------------------------------------------------------------------------


async def make_chat(start_proxy: StartProxy, upstream: FakeUpstream) -> str:
    proxy = await start_proxy()
    upstream.enqueue(Reply(content="Paris."), Reply(content="Lyon."))
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-x", max_retries=0) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "Capital of France?"}]
        )
        await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Second city?"}],
            extra_headers={"X-Chat-Id": "chat_second"},
        )
    await proxy.stop()
    return first.headers["x-chat-id"]


async def test_a_plugin_export_format_works_for_one_chat_and_for_all(
    start_proxy: StartProxy, upstream: FakeUpstream, db_url: str, plugin_dir: Path, tmp_path: Path
) -> None:
    chat_id = await make_chat(start_proxy, upstream)
    env = {"CHATPROXY_PLUGINS": write_plugin(plugin_dir, CSV)}
    one = await cli("export", chat_id, "--db", db_url, "--format", "csv", env=env)
    assert one.exit_code == 0, (one.output, one.exception)
    assert one.stdout == f"# {chat_id}\nuser,completed\nassistant,completed\n"
    out = tmp_path / "all.csv"
    every = await cli("export", "--all", "--db", db_url, "-f", "csv", "-o", str(out), env=env)
    assert every.exit_code == 0, (every.output, every.exception)
    assert every.stderr == "exported 2 chat(s)\n"
    expected = {chat_id: "user,completed\nassistant,completed\n"}
    expected["chat_second"] = "user,completed\nassistant,completed\n"
    chats = [c for c in out.read_text().split("# ") if c]
    assert {c.split("\n", 1)[0]: c.split("\n", 1)[1] for c in chats} == expected
    # The built-in formats are as they were, and --all still refuses them.
    assert (await cli("export", "--all", "--db", db_url, "-f", "markdown", env=env)).exit_code == 2


async def test_a_plugin_format_renders_a_chat_larger_than_a_page(
    start_proxy: StartProxy, upstream: FakeUpstream, db_url: str
) -> None:
    from chatproxy.export import PluginFormat, export_all
    from chatproxy.plugins import Exporter
    from chatproxy.store.store import Store

    chat_id = await make_chat(start_proxy, upstream)
    seen: list[dict] = []

    def render(doc: dict) -> bytes:
        seen.append(doc)
        return f"{doc['chat']['id']}:{len(doc['messages'])}:{len(doc['votes'])}\n".encode()

    store = Store(db_url)
    await store.open(migrate=False)
    try:
        import io

        out = io.BytesIO()
        fmt = PluginFormat("test", Exporter("count", render))
        stats = await export_all(store, out, page_messages=1, fmt=fmt)
    finally:
        await store.close()
    assert stats.chats == 2
    assert sorted(out.getvalue().decode().splitlines()) == sorted(
        [f"{chat_id}:2:0", "chat_second:2:0"]
    )
    assert all(doc["format"] == "chatproxy.chat" for doc in seen)


def test_plugin_formats_are_listed_in_export_help(plugin_dir: Path) -> None:
    result = invoke(["export", "--help"], env={"CHATPROXY_PLUGINS": write_plugin(plugin_dir, CSV)})
    assert result.exit_code == 0
    assert "[json|jsonl|markdown|openai|csv]" in result.stdout
    assert "csv: role and status per" in result.stdout
    assert "csv" not in invoke(["export", "--help"]).stdout


def test_an_unknown_format_names_the_plugin_formats_too(plugin_dir: Path, tmp_path: Path) -> None:
    env = {"CHATPROXY_PLUGINS": write_plugin(plugin_dir, CSV)}
    db = f"sqlite://{tmp_path / 'x.db'}"
    line = one_line_error(invoke(["export", "c", "--db", db, "--format", "xml"], env=env))
    assert "'xml' is not one of 'json', 'jsonl', 'markdown', 'openai', 'csv'" in line
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ('Exporter("json", render)', "adds the export format 'json', which is built in"),
        ('Exporter("../x", render)', "adds an export format named '../x'"),
        ('"csv"', "register_exporters answered str, no Exporter"),
    ],
)
def test_a_bad_export_format_stops_the_export_naming_the_plugin(
    plugin_dir: Path, tmp_path: Path, answer: str, problem: str
) -> None:
    source = (
        "from chatproxy import hookimpl\nfrom chatproxy.plugins import Exporter\n"
        "def render(doc):\n    return b''\n"
        f"@hookimpl\ndef register_exporters():\n    return {answer}\n"
    )
    name = write_plugin(plugin_dir, source)
    db = f"sqlite://{tmp_path / 'x.db'}"
    args = ["export", "c", "--db", db, "--format", "yaml"]
    line = one_line_error(invoke(args, env={"CHATPROXY_PLUGINS": name}))
    assert line.startswith(f"chatproxy: plugin {name!r} {problem}")


async def test_a_format_that_fails_to_render_is_exit_1_naming_the_plugin(
    start_proxy: StartProxy, upstream: FakeUpstream, db_url: str, plugin_dir: Path
) -> None:
    chat_id = await make_chat(start_proxy, upstream)
    source = (
        "from chatproxy import hookimpl\nfrom chatproxy.plugins import Exporter\n"
        "def render(doc):\n    raise ValueError('cannot')\n"
        "@hookimpl\ndef register_exporters():\n    return Exporter('bad', render)\n"
    )
    env = {"CHATPROXY_PLUGINS": write_plugin(plugin_dir, source)}
    result = await cli("export", chat_id, "--db", db_url, "--format", "bad", env=env)
    line = one_line_error(result, 1)
    assert "failed to render format 'bad': ValueError: cannot" in line
