"""The plugin manager (SPEC §13): discovery through entry points and the ``plugins`` key, each
plugin's table, start-up errors naming the plugin, and how hooks are called (order, async,
refusals against failures, the cost when nothing is loaded)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import chatproxy
from chatproxy.errors import InvalidRequest, SettingsError
from chatproxy.metrics import Metrics
from chatproxy.plugins import NO_PLUGINS, PluginFailed, PluginLoadError, Plugins, load_plugins
from chatproxy.plugins.hookspecs import hookimpl
from chatproxy.settings import Settings, load_settings
from tests.plugin_util import write_plugin

EXAMPLE = "example"  # examples/chatproxy-plugin-example, installed by the example_plugin fixture

pytestmark = pytest.mark.usefixtures("example_plugin")


def settings(**overrides: Any) -> Settings:
    return load_settings(None, env={}, overrides=overrides)


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *sources: str, **extra: Any) -> Plugins:
    names = [write_plugin(tmp_path, s, monkeypatch) for s in sources]
    return load_plugins(settings(plugins=names, **extra))


def test_hookimpl_is_importable_from_the_package_as_llm_plugins_do() -> None:
    assert chatproxy.hookimpl is hookimpl
    assert "hookimpl" in chatproxy.__all__


def test_an_installed_package_with_an_entry_point_loads_by_itself() -> None:
    plugins = load_plugins(Settings())
    assert EXAMPLE in plugins.names, "the example_plugin fixture installs it"
    assert plugins.origin(EXAMPLE) == "chatproxy-plugin-example 0.1.0"
    # Without deny_models the example has no rule, so it implements no before_upstream.
    assert plugins.hooks(EXAMPLE) == ["register_commands", "register_routes"]
    assert not plugins.implements("before_upstream")


def test_an_entry_point_plugin_is_configured_by_its_table_and_env() -> None:
    plugins = load_plugins(settings(**{"plugin.example.deny_models": ["gpt-4"]}))
    assert plugins.config(EXAMPLE) == {"deny_models": ["gpt-4"]}
    assert "before_upstream" in plugins.hooks(EXAMPLE)
    env = {"CHATPROXY_PLUGIN__EXAMPLE__DENY_MODELS": '["o1", "gpt-4"]'}
    from_env = load_plugins(load_settings(None, env=env))
    assert from_env.config(EXAMPLE) == {"deny_models": ["o1", "gpt-4"]}
    assert from_env.implements("before_upstream")


def test_a_plugin_refusing_its_table_stops_start_up_naming_the_key() -> None:
    with pytest.raises(SettingsError, match=r"plugin\.example\.deny_models"):
        load_plugins(settings(**{"plugin.example.deny_models": "gpt-4"}))


def test_a_module_named_by_the_plugins_key_loads_with_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_plugin(
        tmp_path,
        """
        from chatproxy import hookimpl

        @hookimpl
        def register_exporters():
            return None
        """,
        monkeypatch,
    )
    plugins = load_plugins(settings(plugins=[name], **{f"plugin.{name}.colour": "blue"}))
    assert plugins.names[-1] == name
    assert plugins.origin(name) == "config"
    assert plugins.hooks(name) == ["register_exporters"]
    assert plugins.config(name) == {"colour": "blue"}
    assert plugins.config("nobody") == {}


def test_a_plugin_factory_gets_its_table_and_its_object_is_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_plugin(
        tmp_path,
        """
        from chatproxy import hookimpl

        @hookimpl
        def register_commands(cli):  # not used: the factory's object is the plugin
            raise AssertionError

        class Greeter:
            def __init__(self, greeting):
                self.greeting = greeting

            @hookimpl
            def register_exporters(self):
                return None

        def plugin(config):
            return Greeter(config.get("greeting", "hi"))
        """,
        monkeypatch,
    )
    plugins = load_plugins(settings(plugins=[name], **{f"plugin.{name}.greeting": "hello"}))
    assert plugins.hooks(name) == ["register_exporters"]
    ((_, call),) = [(n, c) for n, c in plugins.implementations("register_exporters")]
    assert call() is None
    assert plugins.pm is not None
    assert plugins.pm.get_plugin(name).greeting == "hello"


def test_a_factory_answering_none_is_a_plugin_with_no_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = load(tmp_path, monkeypatch, "def plugin(config):\n    return None\n")
    assert plugins.hooks(plugins.names[-1]) == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
        ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
        ("def broken(:\n", "SyntaxError"),
        ("def plugin(config):\n    raise ValueError('no good')\n", "cannot be configured"),
        (
            "from chatproxy import hookimpl\n@hookimpl\ndef register_route(router): ...\n",
            "implements unknown hooks (register_route",
        ),
        (
            "from chatproxy import hookimpl\n@hookimpl\ndef identify(req): ...\n",
            "cannot be registered",
        ),
        (
            "from chatproxy import hookimpl\n@hookimpl(wrapper=True)\ndef identify(request):\n"
            "    return (yield)\n",
            "hook wrappers are not supported",
        ),
    ],
)
def test_a_plugin_that_fails_to_load_stops_start_up_naming_it_and_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, problem: str
) -> None:
    name = write_plugin(tmp_path, source, monkeypatch)
    with pytest.raises(PluginLoadError) as info:
        load_plugins(settings(plugins=[name]))
    message = str(info.value)
    assert f"plugin {name!r}" in message
    assert problem in message
    assert "\n" not in message
    assert isinstance(info.value, SettingsError)  # the CLI's exit 2


def test_a_missing_plugin_module_is_named() -> None:
    with pytest.raises(PluginLoadError, match=r"plugin 'no_such_plugin_xyz' cannot be loaded"):
        load_plugins(settings(plugins=["no_such_plugin_xyz"]))


@pytest.mark.parametrize(
    "entry",
    ["../../etc/passwd", "/etc/passwd", "pkg/module", "a..b", "os.path;rm", "", "x" * 300, "é"],
)
def test_a_plugin_name_with_path_characters_is_refused_naming_the_key(entry: str) -> None:
    with pytest.raises(SettingsError, match=r"^plugins: ") as info:
        settings(plugins=[entry])
    assert "module paths" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"plugins": "redact"}, "plugins"),
        ({"plugins": [1, 2]}, "plugins"),
        ({"plugins": {"redact": True}}, "plugins"),
        ({"plugin": ["redact"]}, "plugin"),
        ({"plugin.redact": "on"}, "plugin.redact"),
    ],
)
def test_plugin_keys_of_the_wrong_type_are_refused_naming_the_key(
    overrides: dict[str, Any], key: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings(**overrides)
    assert str(info.value).startswith(f"{key}: expected ")


def test_the_plugins_key_reads_a_comma_list_from_the_environment() -> None:
    loaded = load_settings(None, env={"CHATPROXY_PLUGINS": "redact, pkg.mod"})
    assert loaded.plugins == ["redact", "pkg.mod"]


def test_plugin_tables_from_the_environment_read_toml_values_else_text() -> None:
    env = {
        "CHATPROXY_PLUGIN__X__LIST": '["a", "b"]',
        "CHATPROXY_PLUGIN__X__COUNT": "30",
        "CHATPROXY_PLUGIN__X__ON": "true",
        "CHATPROXY_PLUGIN__X__URL": "https://hooks.example.com/in",
        "CHATPROXY_PLUGIN__X__TWO": "1\nother = 2",
        "CHATPROXY_PLUGIN__X__NESTED__KEY": "v",
    }
    assert load_settings(None, env=env).plugin["x"] == {
        "list": ["a", "b"],
        "count": 30,
        "on": True,
        "url": "https://hooks.example.com/in",
        "two": "1\nother = 2",
        "nested": {"key": "v"},
    }


def test_a_table_for_a_plugin_that_is_not_loaded_is_refused_naming_it() -> None:
    with pytest.raises(SettingsError, match=r"plugin\.exmaple: expected the name of a loaded"):
        load_plugins(settings(**{"plugin.exmaple.deny_models": []}))


def test_a_plugin_listed_twice_or_also_installed_loads_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_plugin(
        tmp_path, "from chatproxy import hookimpl\n@hookimpl\ndef identify(request): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = load_plugins(settings(plugins=[name, name, "example", "chatproxy_plugin_example"]))
    assert plugins.names.count(name) == 1
    assert plugins.names.count(EXAMPLE) == 1
    assert "chatproxy_plugin_example" not in plugins.names  # the example's module, loaded
    assert len(plugins.implementations("identify")) == 1


# -- calling hooks ------------------------------------------------------------------------------

ORDERED = """
from chatproxy import hookimpl

@hookimpl{mark}
def identify(request):
    request.append({tag!r})
"""


async def test_implementations_run_in_load_order_with_tryfirst_and_trylast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = load(
        tmp_path,
        monkeypatch,
        ORDERED.format(mark="", tag="a"),
        ORDERED.format(mark="(trylast=True)", tag="last"),
        ORDERED.format(mark="", tag="b"),
        ORDERED.format(mark="(tryfirst=True)", tag="first"),
    )
    seen: list[str] = []
    assert await plugins.run("identify", request=seen) == []
    assert seen == ["first", "a", "b", "last"]


async def test_run_awaits_async_implementations_and_keeps_answers_that_are_not_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = load(
        tmp_path,
        monkeypatch,
        "from chatproxy import hookimpl\n@hookimpl\nasync def identify(request):\n"
        "    return 'async'\n",
        "from chatproxy import hookimpl\n@hookimpl\ndef identify(request):\n    return None\n",
        "from chatproxy import hookimpl\n@hookimpl\ndef identify():\n    return 'no args'\n",
    )
    assert await plugins.run("identify", request=object()) == ["async", "no args"]


async def test_first_stops_at_the_first_answer_and_names_its_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [
        "from chatproxy import hookimpl\n@hookimpl\nasync def identify(request):\n"
        "    request.append('none'); return None\n",
        "from chatproxy import hookimpl\n@hookimpl\nasync def identify(request):\n"
        "    request.append('answer'); return 'who'\n",
        "from chatproxy import hookimpl\n@hookimpl\ndef identify(request):\n"
        "    request.append('never'); return 'other'\n",
    ]
    names = [write_plugin(tmp_path, s, monkeypatch) for s in sources]
    plugins = load_plugins(settings(plugins=names))
    seen: list[str] = []
    assert await plugins.first_answer("identify", request=seen) == (names[1], "who")
    assert seen == ["none", "answer"]
    assert await plugins.first("identify", request=[]) == "who"
    assert await NO_PLUGINS.first("identify", request=[]) is None


async def test_a_refusal_propagates_as_it_is_and_is_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_plugin(
        tmp_path,
        """
        from chatproxy import hookimpl
        from chatproxy.errors import InvalidRequest

        @hookimpl
        def before_upstream(call):
            raise InvalidRequest("not this model", code="model_not_allowed")
        """,
        monkeypatch,
    )
    metrics = Metrics()
    plugins = load_plugins(settings(plugins=[name]), metrics)
    with pytest.raises(InvalidRequest) as info:
        await plugins.run("before_upstream", call=None)
    assert info.value.code == "model_not_allowed"
    assert metrics.registry.get_sample_value(
        "chatproxy_plugin_errors_total", {"plugin": name, "hook": "before_upstream"}
    ) in (None, 0.0)


async def test_a_crash_is_logged_with_the_plugin_counted_and_raised_without_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = write_plugin(
        tmp_path,
        """
        from chatproxy import hookimpl

        @hookimpl
        async def before_upstream(call):
            raise RuntimeError("token sk-live-0123456789 leaked")
        """,
        monkeypatch,
    )
    metrics = Metrics()
    plugins = load_plugins(settings(plugins=[name]), metrics)
    with caplog.at_level(logging.ERROR, "chatproxy.plugins"), pytest.raises(PluginFailed) as info:
        await plugins.run("before_upstream", call=None)
    failure = info.value
    assert (failure.status, failure.type, failure.code) == (500, "server_error", "plugin_error")
    assert (failure.plugin, failure.hook) == (name, "before_upstream")
    assert failure.message == f"plugin {name!r} failed in before_upstream"
    assert "sk-live" not in str(failure.body())
    assert (
        metrics.registry.get_sample_value(
            "chatproxy_plugin_errors_total", {"plugin": name, "hook": "before_upstream"}
        )
        == 1.0
    )
    (record,) = [r for r in caplog.records if r.name == "chatproxy.plugins"]
    assert name in record.getMessage() and "before_upstream" in record.getMessage()
    assert record.exc_info is not None  # the traceback is the operator's, in the log


def test_run_sync_refuses_an_async_implementation_as_the_plugins_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = load(
        tmp_path,
        monkeypatch,
        "from chatproxy import hookimpl\n@hookimpl\nasync def before_store(record):\n    pass\n",
    )
    with pytest.raises(PluginFailed, match="failed in before_store"):
        plugins.run_sync("before_store", record=None)


def test_run_sync_calls_in_order_and_passes_refusals_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = load(
        tmp_path,
        monkeypatch,
        "from chatproxy import hookimpl\n@hookimpl\ndef before_store(record):\n"
        "    record.append(1)\n",
        "from chatproxy import hookimpl\nfrom chatproxy.errors import PermissionDenied\n"
        "@hookimpl\ndef before_store(record):\n    raise PermissionDenied('no')\n",
    )
    seen: list[int] = []
    with pytest.raises(chatproxy.errors.PermissionDenied):
        plugins.run_sync("before_store", record=seen)
    assert seen == [1]


def test_nothing_loaded_implements_nothing() -> None:
    from chatproxy.plugins.manager import HOOKS

    assert set(HOOKS) == {
        "register_commands",
        "register_routes",
        "identify",
        "before_upstream",
        "before_store",
        "on_event",
        "register_exporters",
    }
    for hook in HOOKS:
        assert not NO_PLUGINS.implements(hook)
        assert NO_PLUGINS.implementations(hook) == []
        assert NO_PLUGINS.run_sync(hook) == []
    assert NO_PLUGINS.names == []


def test_implements_is_precomputed_and_answers_without_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    plugins = load(
        tmp_path, monkeypatch, "from chatproxy import hookimpl\n@hookimpl\ndef on_event(): ...\n"
    )
    assert plugins.implements("on_event") and not plugins.implements("before_store")
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(10_000):
            NO_PLUGINS.implements("before_upstream")
            plugins.implements("before_store")
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    from chatproxy.plugins import manager

    grown = [
        s
        for s in after.compare_to(before, "filename")
        if s.traceback[0].filename == manager.__file__
    ]
    assert all(s.size_diff <= 0 for s in grown), grown


def test_implementations_keep_a_coroutine_function_a_coroutine_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspect

    plugins = load(
        tmp_path,
        monkeypatch,
        "from chatproxy import hookimpl\n@hookimpl\nasync def on_event(event):\n    pass\n",
        "from chatproxy import hookimpl\n@hookimpl\nasync def on_event():\n    pass\n",
        "from chatproxy import hookimpl\n@hookimpl\ndef on_event():\n    pass\n",
    )
    kinds = [inspect.iscoroutinefunction(fn) for _, fn in plugins.implementations("on_event")]
    assert kinds == [True, True, False]
