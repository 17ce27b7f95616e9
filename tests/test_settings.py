"""Configuration: TOML, then ``CHATPROXY_SECTION__KEY`` environment, then CLI flags (SPEC §11).

Every assertion is on what an operator sees: the value a setting ends up with, or the
``SettingsError`` (and the dotted key it names) that stops start-up.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chatproxy.errors import SettingsError
from chatproxy.settings import Settings, TierSettings, load_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "config.example.toml"

# SPEC §11, verbatim: "These keys exist with these names".
SPEC_DEFAULTS: dict[str, Any] = {
    "server.host": "127.0.0.1",
    "server.port": 8787,
    "server.max_body_bytes": 8388608,
    "server.trusted_proxies": [],
    "upstream.url": "https://api.openai.com/v1",
    "upstream.api_key_env": "OPENAI_API_KEY",
    "upstream.connect_timeout": 10.0,
    "upstream.first_byte_timeout": 120.0,
    "upstream.idle_timeout": 120.0,
    "upstream.max_duration": 600.0,
    "upstream.retries": 2,
    "upstream.backoff_initial": 0.5,
    "upstream.backoff_max": 8.0,
    "storage.url": "sqlite://chatproxy.db",
    "storage.checkpoint_interval": 1.0,
    "redis.url": "",
    "auth.mode": "none",
    "chats.history": "client",
    "chats.on_disconnect": "finish",
    "chats.title": "first-message",
    "chats.drain_timeout": 30.0,
    "limits.ip_rate": "120/minute",
    "limits.ip_burst": 30,
    "limits.default_tier": "free",
}


def write_toml(tmp_path: Path, text: str, name: str = "chatproxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def lookup(settings: Settings, dotted: str) -> Any:
    node: Any = settings
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def settings_keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a settings object, dotted, with its value."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):  # set by the loader, never a key
            continue
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(settings_keys(value, dotted))
        elif isinstance(value, dict):
            for name, item in value.items():
                out.update(settings_keys(item, f"{dotted}.{name}"))
        else:
            out[dotted] = value
    return out


def expect_error(key: str, **kwargs: Any) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_settings(**kwargs)
    assert key in str(info.value), f"{key!r} not named in {str(info.value)!r}"
    return info.value


# -- defaults -----------------------------------------------------------------------------------


def test_defaults_are_the_values_documented_in_spec() -> None:
    settings = load_settings(None, env={})
    for dotted, expected in SPEC_DEFAULTS.items():
        assert lookup(settings, dotted) == expected, dotted
    assert settings.limits.tiers == {"free": TierSettings(messages_per_day=200, tokens_per_day=0)}


def test_load_settings_without_file_env_or_flags_equals_settings_defaults() -> None:
    assert load_settings(None, env={}) == Settings()


def test_default_timeouts_are_floats_and_counts_are_ints() -> None:
    settings = load_settings(None, env={})
    assert isinstance(settings.upstream.connect_timeout, float)
    assert isinstance(settings.server.port, int)
    assert isinstance(settings.limits.tiers["free"].messages_per_day, int)


# -- layers -------------------------------------------------------------------------------------


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [server]
        port = 9000
        trusted_proxies = ["10.0.0.0/8"]

        [upstream]
        url = "http://llm.internal:8000/v1"
        idle_timeout = 5

        [chats]
        on_disconnect = "abort"

        [limits.tiers.free]
        messages_per_day = 10

        [limits.tiers.pro]
        messages_per_day = 0
        tokens_per_day = 1000000
        """,
    )
    settings = load_settings(path, env={})
    assert settings.server.port == 9000
    assert settings.server.trusted_proxies == ["10.0.0.0/8"]
    assert settings.upstream.url == "http://llm.internal:8000/v1"
    assert settings.upstream.idle_timeout == 5.0
    assert isinstance(settings.upstream.idle_timeout, float)  # a TOML integer is a number too
    assert settings.chats.on_disconnect == "abort"
    assert settings.limits.tiers == {
        "free": TierSettings(messages_per_day=10, tokens_per_day=0),
        "pro": TierSettings(messages_per_day=0, tokens_per_day=1000000),
    }
    # Keys the file does not mention keep their defaults.
    assert settings.server.host == "127.0.0.1"
    assert settings.upstream.retries == 2
    assert settings.storage == Settings().storage


def test_config_file_may_be_given_as_a_string_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 9001\n")
    assert load_settings(str(path), env={}).server.port == 9001


def test_chatproxy_config_env_names_the_config_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 9002\n")
    assert load_settings(None, env={"CHATPROXY_CONFIG": str(path)}).server.port == 9002


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\n')
    settings = load_settings(path, env={"CHATPROXY_SERVER__PORT": "9100"})
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"  # untouched by the environment


def test_env_strings_are_coerced_to_int_float_and_list() -> None:
    settings = load_settings(
        None,
        env={
            "CHATPROXY_SERVER__PORT": " 9100 ",
            "CHATPROXY_UPSTREAM__RETRIES": "5",
            "CHATPROXY_UPSTREAM__CONNECT_TIMEOUT": "2.5",
            "CHATPROXY_UPSTREAM__MAX_DURATION": "30",
            "CHATPROXY_SERVER__TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.0/24,,",
            "CHATPROXY_HEADERS__CHAT_ID": "X-Conversation-Id",
        },
    )
    assert settings.server.port == 9100
    assert settings.upstream.retries == 5
    assert settings.upstream.connect_timeout == 2.5
    assert settings.upstream.max_duration == 30.0
    assert isinstance(settings.upstream.max_duration, float)
    assert settings.server.trusted_proxies == ["10.0.0.0/8", "192.168.1.0/24"]
    assert settings.headers.chat_id == ["X-Conversation-Id"]


def test_env_empty_string_clears_a_string_and_a_list() -> None:
    settings = load_settings(
        None, env={"CHATPROXY_REDIS__URL": "", "CHATPROXY_SERVER__TRUSTED_PROXIES": ""}
    )
    assert settings.redis.url == ""
    assert settings.server.trusted_proxies == []


def test_bool_key_accepts_toml_booleans_and_cli_flags(tmp_path: Path) -> None:
    # ``demo`` is the only boolean key; it is top-level, so no CHATPROXY_SECTION__KEY reaches it.
    assert load_settings(write_toml(tmp_path, "demo = true\n"), env={}).demo is True
    assert load_settings(None, env={}, overrides={"demo": True}).demo is True
    expect_error("demo", config_file=write_toml(tmp_path, 'demo = "yes"\n', "b.toml"), env={})


def test_env_reaches_nested_tier_tables(tmp_path: Path) -> None:
    settings = load_settings(None, env={"CHATPROXY_LIMITS__TIERS__FREE__MESSAGES_PER_DAY": "50"})
    assert settings.limits.tiers["free"] == TierSettings(messages_per_day=50, tokens_per_day=0)

    path = write_toml(
        tmp_path,
        "[limits.tiers.free]\nmessages_per_day = 100\ntokens_per_day = 5000\n",
    )
    settings = load_settings(path, env={"CHATPROXY_LIMITS__TIERS__FREE__MESSAGES_PER_DAY": "7"})
    # Only the key the variable names changes; the rest of the TOML table stays.
    assert settings.limits.tiers["free"] == TierSettings(messages_per_day=7, tokens_per_day=5000)


def test_env_variables_without_the_prefix_are_ignored() -> None:
    settings = load_settings(None, env={"SERVER__PORT": "1", "OTHER_SERVER__PORT": "2"})
    assert settings.server.port == 8787


@pytest.mark.parametrize("name", ["CHATPROXY_SERVER_PORT", "CHATPROXY_LOG", "CHATPROXY_SERVER__"])
def test_a_chatproxy_variable_that_is_no_setting_stops_start_up_naming_it(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(None, env={name: "1"})


def test_top_level_demo_can_be_set_from_the_environment() -> None:
    assert load_settings(None, env={"CHATPROXY_DEMO": "true"}).demo is True


def test_configured_tiers_are_added_to_the_built_in_free_tier() -> None:
    settings = load_settings(None, env={"CHATPROXY_LIMITS__TIERS__PRO__MESSAGES_PER_DAY": "5"})
    assert settings.limits.tiers["pro"].messages_per_day == 5
    assert settings.limits.tiers["free"].messages_per_day == 200


def test_cli_overrides_beat_env_and_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nport = 9000\n[upstream]\nurl = "http://a/v1"\n')
    settings = load_settings(
        path,
        env={"CHATPROXY_SERVER__PORT": "9100", "CHATPROXY_UPSTREAM__URL": "http://b/v1"},
        overrides={"server.port": 9200, "upstream.url": "http://c/v1"},
    )
    assert settings.server.port == 9200
    assert settings.upstream.url == "http://c/v1"


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 9000\n")
    settings = load_settings(
        path,
        env={"CHATPROXY_UPSTREAM__URL": "http://b/v1"},
        overrides={"server.port": None, "upstream.url": None, "storage.url": None, "demo": None},
    )
    assert settings.server.port == 9000
    assert settings.upstream.url == "http://b/v1"
    assert settings.storage.url == "sqlite://chatproxy.db"
    assert settings.demo is False


def test_settings_are_frozen() -> None:
    settings = load_settings(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


# -- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[servr]\nport = 1\n", "servr"),
        ("colour = 1\n", "colour"),
        ("[limits.tiers.free]\nmessages_per_week = 1\n", "limits.tiers.free.messages_per_week"),
    ],
)
def test_unknown_toml_key_is_refused_by_name(tmp_path: Path, toml: str, key: str) -> None:
    error = expect_error(key, config_file=write_toml(tmp_path, toml), env={})
    assert "unknown" in str(error)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("CHATPROXY_SERVER__PROT", "server.prot"),
        ("CHATPROXY_SERVR__PORT", "servr"),
        ("CHATPROXY_LIMITS__TIERS__FREE__MESSAGES_PER_WEEK", "limits.tiers.free.messages_per_week"),
    ],
)
def test_unknown_env_key_is_refused_by_name(name: str, key: str) -> None:
    error = expect_error(key, env={name: "1"})
    assert "unknown" in str(error)


def test_unknown_override_key_is_refused_by_name() -> None:
    expect_error("server.prot", env={}, overrides={"server.prot": 1})


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[server]\nport = "abc"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nport = -1\n", "server.port"),
        ("[server]\nport = 80.5\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
        ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "server.trusted_proxies"),
        ('[server]\ntrusted_proxies = ["not-an-ip"]\n', "server.trusted_proxies"),
        ('[server]\ntrusted_proxies = "10.0.0.0/8"\n', "server.trusted_proxies"),
        ('[server]\nhost = ["a"]\n', "server.host"),
        ("[upstream]\nconnect_timeout = -1.0\n", "upstream.connect_timeout"),
        ("[upstream]\nidle_timeout = 0\n", "upstream.idle_timeout"),
        ("[upstream]\nfirst_byte_timeout = -5\n", "upstream.first_byte_timeout"),
        ("[upstream]\nmax_duration = -1\n", "upstream.max_duration"),
        ("[upstream]\nretries = -1\n", "upstream.retries"),
        ('[upstream]\nretries = "2"\n', "upstream.retries"),
        ('[upstream]\nurl = "ftp://example.com"\n', "upstream.url"),
        ('[storage]\nurl = "mysql://"\n', "storage.url"),
        ("[storage]\ncheckpoint_interval = 0\n", "storage.checkpoint_interval"),
        ('[redis]\nurl = "http://localhost:6379"\n', "redis.url"),
        ('[auth]\nmode = "password"\n', "auth.mode"),
        ('[chats]\non_disconnect = "maybe"\n', "chats.on_disconnect"),
        ('[chats]\nhistory = "both"\n', "chats.history"),
        ('[chats]\ntitle = "last-message"\n', "chats.title"),
        ("[chats]\ndrain_timeout = -1\n", "chats.drain_timeout"),
        ('[limits]\nip_rate = "fast"\n', "limits.ip_rate"),
        ('[limits]\nip_rate = "120/fortnight"\n', "limits.ip_rate"),
        ("[limits]\nip_rate = 120\n", "limits.ip_rate"),
        ("[limits]\nip_burst = -1\n", "limits.ip_burst"),
        ('[limits]\ndefault_tier = "pro"\n', "limits.default_tier"),
        ("[limits.tiers.free]\nmessages_per_day = -1\n", "limits.tiers.free.messages_per_day"),
        ("[limits]\ntiers = 3\n", "limits.tiers"),
        ("[headers]\nchat_id = []\n", "headers.chat_id"),
        ('[headers]\nchat_id = ["X Chat"]\n', "headers.chat_id"),
        ("server = 1\n", "server"),
    ],
)
def test_bad_toml_value_is_refused_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    error = expect_error(key, config_file=write_toml(tmp_path, toml), env={})
    assert "expected" in str(error)  # and what was expected


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("CHATPROXY_SERVER__PORT", "abc", "server.port"),
        ("CHATPROXY_SERVER__PORT", "8787.0", "server.port"),
        ("CHATPROXY_UPSTREAM__CONNECT_TIMEOUT", "-1", "upstream.connect_timeout"),
        ("CHATPROXY_UPSTREAM__IDLE_TIMEOUT", "soon", "upstream.idle_timeout"),
        ("CHATPROXY_CHATS__ON_DISCONNECT", "maybe", "chats.on_disconnect"),
        ("CHATPROXY_LIMITS__IP_RATE", "lots", "limits.ip_rate"),
        ("CHATPROXY_SERVER__TRUSTED_PROXIES", "10.0.0.0/8,300.1.1.1", "server.trusted_proxies"),
        ("CHATPROXY_STORAGE__URL", "mysql://", "storage.url"),
        ("CHATPROXY_LIMITS__DEFAULT_TIER", "gold", "limits.default_tier"),
        (
            "CHATPROXY_LIMITS__TIERS__FREE__TOKENS_PER_DAY",
            "many",
            "limits.tiers.free.tokens_per_day",
        ),
        ("CHATPROXY_LIMITS__TIERS", "free", "limits.tiers"),
    ],
)
def test_bad_env_value_is_refused_naming_the_key(name: str, value: str, key: str) -> None:
    error = expect_error(key, env={name: value})
    assert value in str(error) or "expected" in str(error)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("server.port", 70000),
        ("upstream.url", "localhost:8000"),
        ("storage.url", "mysql://db"),
        ("redis.url", "localhost"),
    ],
)
def test_bad_cli_override_is_refused_naming_the_key(dotted: str, value: Any) -> None:
    expect_error(dotted, env={}, overrides={dotted: value})


def test_good_rates_and_cidrs_are_accepted(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [server]
        trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]
        [limits]
        ip_rate = "0"
        """,
    )
    settings = load_settings(path, env={})
    assert settings.server.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]
    assert settings.limits.ip_rate == "0"
    for rate in ("10/second", "5/hours", "1 / day"):
        assert load_settings(None, env={"CHATPROXY_LIMITS__IP_RATE": rate}).limits.ip_rate == rate


def test_storage_url_accepts_sqlite_and_postgres() -> None:
    for url in (
        "sqlite:///var/lib/chatproxy/chat.db",
        "postgres://u:p@db:5432/chatproxy",
        "postgresql://u@db/chatproxy",
    ):
        assert load_settings(None, env={"CHATPROXY_STORAGE__URL": url}).storage.url == url


def test_default_tier_may_name_a_tier_defined_in_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, '[limits]\ndefault_tier = "pro"\n[limits.tiers.pro]\nmessages_per_day = 5\n'
    )
    settings = load_settings(path, env={})
    assert settings.limits.default_tier == "pro"
    assert settings.limits.tiers["pro"].messages_per_day == 5


# -- secrets ------------------------------------------------------------------------------------


def test_upstream_key_is_read_from_the_variable_named_by_api_key_env() -> None:
    settings = load_settings(
        None,
        env={"CHATPROXY_UPSTREAM__API_KEY_ENV": "MY_LLM_KEY", "MY_LLM_KEY": "sk-from-env"},
    )
    assert settings.upstream.api_key == "sk-from-env"


def test_upstream_key_defaults_to_openai_api_key() -> None:
    settings = load_settings(None, env={"OPENAI_API_KEY": "sk-openai"})
    assert settings.upstream.api_key == "sk-openai"


def test_upstream_key_is_empty_when_the_named_variable_is_unset() -> None:
    assert load_settings(None, env={}).upstream.api_key == ""


def test_literal_upstream_key_wins_over_api_key_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[upstream]\napi_key = "sk-literal"\n')
    settings = load_settings(path, env={"OPENAI_API_KEY": "sk-openai"})
    assert settings.upstream.api_key == "sk-literal"


def test_secrets_come_from_the_given_env_mapping_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-process-env")
    assert load_settings(None, env={}).upstream.api_key == ""
    assert load_settings(None, env={"OPENAI_API_KEY": "sk-given"}).upstream.api_key == "sk-given"


# -- the file itself ----------------------------------------------------------------------------


def test_invalid_toml_is_a_settings_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server\nport = 1\n")
    expect_error(str(path), config_file=path, env={})


def test_missing_config_file_is_a_settings_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    expect_error(str(missing), config_file=missing, env={})


def test_missing_config_file_named_by_chatproxy_config_is_a_settings_error(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope.toml"
    expect_error(str(missing), env={"CHATPROXY_CONFIG": str(missing)})


# -- config.example.toml ------------------------------------------------------------------------


needs_example = pytest.mark.skipif(
    not EXAMPLE_CONFIG.exists(), reason="config.example.toml is not written yet"
)


@needs_example
def test_config_example_loads_to_exactly_the_defaults() -> None:
    assert load_settings(EXAMPLE_CONFIG, env={}) == Settings()


@needs_example
def test_config_example_values_are_the_real_defaults() -> None:
    with EXAMPLE_CONFIG.open("rb") as fh:
        documented = flatten(tomllib.load(fh))
    defaults = settings_keys(Settings())
    for dotted, value in documented.items():
        assert dotted in defaults, f"config.example.toml documents unknown key {dotted}"
        assert value == defaults[dotted], f"{dotted}: example says {value!r}"
        assert type(value) is type(defaults[dotted]), dotted


@needs_example
def test_config_example_documents_every_spec_key() -> None:
    with EXAMPLE_CONFIG.open("rb") as fh:
        documented = flatten(tomllib.load(fh))
    missing = sorted(set(SPEC_DEFAULTS) - set(documented))
    assert not missing, f"config.example.toml lacks {missing}"
    assert documented["limits.tiers.free.messages_per_day"] == 200
    assert documented["limits.tiers.free.tokens_per_day"] == 0


@needs_example
def test_config_example_documents_every_configuration_key() -> None:
    with EXAMPLE_CONFIG.open("rb") as fh:
        documented = flatten(tomllib.load(fh))
    missing = sorted(set(settings_keys(Settings())) - set(documented))
    assert not missing, f"keys load_settings accepts but config.example.toml omits: {missing}"
