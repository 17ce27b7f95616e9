"""Settings: one frozen object built once from TOML, then environment, then CLI flags.

Each layer overrides the one before. Environment variables are named
``CHATPROXY_SECTION__KEY`` (``CHATPROXY_UPSTREAM__URL``); nested tables add more
``__`` parts (``CHATPROXY_LIMITS__TIERS__FREE__MESSAGES_PER_DAY``). Any unknown key or bad
value raises :class:`SettingsError` naming the key and what was expected. Nothing reads
``os.environ`` after :func:`load_settings` returns, except secrets named by ``*_env`` keys,
which are resolved here too.

The ``[plugin.NAME]`` tables are free-form (each plugin checks its own); an environment value
for one (``CHATPROXY_PLUGIN__NAME__KEY``) is read as a TOML value when it is one (``30``,
``true``, ``'["a", "b"]'``), and as text otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatproxy.cors import ORIGIN_RE
from chatproxy.errors import SettingsError

__all__ = [
    "AuthSettings",
    "ChatsSettings",
    "HeadersSettings",
    "LimitsSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "TierSettings",
    "UpstreamSettings",
    "load_settings",
    "parse_rate",
]

ENV_PREFIX = "CHATPROXY_"

_RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$")


def parse_rate(value: str) -> tuple[int, float] | None:
    """Parse ``"120/minute"`` into ``(120, 60.0)``; ``"0"`` (disabled) gives ``None``."""
    if value.strip() == "0":
        return None
    m = _RATE_RE.match(value)
    if not m:
        raise ValueError("a rate like '120/minute' (second, minute, hour, day) or '0'")
    return int(m.group(1)), _RATE_UNITS[m.group(2)]


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "a number greater than 0"


def _check_non_negative(value: float) -> str | None:
    return None if value >= 0 else "a number >= 0"


def _check_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "a port number 0..65535"


def _check_cidrs(value: list[str]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"a list of CIDRs ({item!r} is not one)"
    return None


def _check_origins(value: list[str]) -> str | None:
    for item in value:
        if not ORIGIN_RE.fullmatch(item):
            return f'a list of origins like "https://app.example.com" or "*" ({item!r} is not one)'
    return None


def _check_rate(value: str) -> str | None:
    try:
        parse_rate(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_storage_url(value: str) -> str | None:
    schemes = ("sqlite://", "postgres://", "postgresql://", "asyncpg://")
    return None if value.startswith(schemes) else "a sqlite:// or postgres:// URL"


def _check_http_url(value: str) -> str | None:
    return None if value.startswith(("http://", "https://")) else "an http:// or https:// URL"


def _check_redis_url(value: str) -> str | None:
    ok = value == "" or value.startswith(("redis://", "rediss://", "unix://"))
    return None if ok else "empty, or a redis:// URL"


_PLUGIN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _check_plugin_names(value: list[str]) -> str | None:
    for item in value:
        if len(item) > 200 or not _PLUGIN_NAME_RE.fullmatch(item):
            shown = repr(item) if len(item) <= 40 else f"{item[:40]!r}..."
            return (
                'a list of built-in plugin names ("redact", "webhook") or module paths '
                f'("package.module") ({shown} is neither)'
            )
    return None


def _meta(check: Any = None, doc: str = "") -> dict[str, Any]:
    return {"check": check, "doc": doc}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = field(default=8787, metadata=_meta(_check_port))
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata=_meta(_check_positive))
    trusted_proxies: list[str] = field(default_factory=list, metadata=_meta(_check_cidrs))
    instance_id: str = ""  # empty: "<hostname>:<port>"
    # Browser origins allowed to call /v1/* and /api/chat* (CORS); empty: none, "*": any.
    cors_origins: list[str] = field(default_factory=list, metadata=_meta(_check_origins))
    # Each instance records that it is alive this often; one silent for heartbeat_timeout is
    # taken for dead and its in-progress answers are marked interrupted.
    heartbeat_interval: float = field(default=5.0, metadata=_meta(_check_positive))
    heartbeat_timeout: float = field(default=30.0, metadata=_meta(_check_positive))


def _check_header_names(value: list[str]) -> str | None:
    ok = value and all(re.fullmatch(r"[A-Za-z0-9-]+", v) for v in value)
    return None if ok else "a non-empty list of HTTP header names"


@dataclass(frozen=True, slots=True)
class HeadersSettings:
    """Request header aliases, first match wins."""

    chat_id: list[str] = field(
        default_factory=lambda: [
            "X-Chat-Id",
            "X-OpenWebUI-Chat-Id",
            "x-litellm-session-id",
            "Helicone-Session-Id",
        ],
        metadata=_meta(_check_header_names),
    )
    user_id: list[str] = field(
        default_factory=lambda: ["X-User-Id", "X-OpenWebUI-User-Id", "Helicone-User-Id"],
        metadata=_meta(_check_header_names),
    )


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = field(default="https://api.openai.com/v1", metadata=_meta(_check_http_url))
    api_key_env: str = "OPENAI_API_KEY"
    api_key: str = ""
    connect_timeout: float = field(default=10.0, metadata=_meta(_check_positive))
    first_byte_timeout: float = field(default=120.0, metadata=_meta(_check_positive))
    idle_timeout: float = field(default=120.0, metadata=_meta(_check_positive))
    max_duration: float = field(default=600.0, metadata=_meta(_check_positive))
    retries: int = field(default=2, metadata=_meta(_check_non_negative))
    backoff_initial: float = field(default=0.5, metadata=_meta(_check_non_negative))
    backoff_max: float = field(default=8.0, metadata=_meta(_check_non_negative))
    # How /v1/responses reaches the upstream: its own /v1/responses ("native"), chat
    # completions converted both ways ("translate"), or whichever it answers ("auto").
    responses: Literal["auto", "native", "translate"] = "auto"

    @property
    def base_url(self) -> str:
        """The upstream URL without a trailing slash."""
        return self.url.rstrip("/")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    url: str = field(default="sqlite://chatproxy.db", metadata=_meta(_check_storage_url))
    checkpoint_interval: float = field(default=1.0, metadata=_meta(_check_positive))


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = field(default="", metadata=_meta(_check_redis_url))
    prefix: str = "chatproxy:"  # every key chatproxy writes starts with this
    # The most events a live generation keeps in its Redis stream (older ones are trimmed).
    stream_maxlen: int = field(default=100_000, metadata=_meta(_check_positive))


@dataclass(frozen=True, slots=True)
class AuthSettings:
    mode: Literal["none", "keys", "passthrough", "header"] = "none"
    # The HMAC secret that turns a passthrough credential into a user id; empty: one is
    # generated at first start and kept in the database.
    secret: str = ""
    secret_env: str = ""
    # How long a proxy key's state is cached: a revocation takes effect within this time.
    key_cache_seconds: float = field(default=10.0, metadata=_meta(_check_non_negative))


@dataclass(frozen=True, slots=True)
class ChatsSettings:
    history: Literal["client", "server"] = "client"
    on_disconnect: Literal["finish", "abort"] = "finish"
    title: Literal["first-message", "upstream", "none"] = "first-message"
    drain_timeout: float = field(default=30.0, metadata=_meta(_check_non_negative))
    resume_grace: float = field(default=30.0, metadata=_meta(_check_non_negative))
    # An exact resend of a stored history ending in a user message is a regenerate (a sibling
    # answer in the same chat) within this many seconds of the stored answer; later, it is an
    # agent running the same task again: a new chat. 0: always a new chat.
    regenerate_window: float = field(default=300.0, metadata=_meta(_check_non_negative))


@dataclass(frozen=True, slots=True)
class AISDKSettings:
    """``/api/chat``, the Vercel AI SDK chat backend."""

    default_model: str = ""  # for bodies without "model"; empty: "model" is required
    # The models a body may name (the Chat SDK's selectedChatModel, or "model"); empty: any.
    models: list[str] = field(default_factory=list)
    # The finish part's finishReason (AI SDK 6 and later); false for AI SDK 5 clients, whose
    # stream reader refuses the field.
    finish_reason: bool = True


@dataclass(frozen=True, slots=True)
class TierSettings:
    messages_per_day: int = field(default=200, metadata=_meta(_check_non_negative))
    tokens_per_day: int = field(default=0, metadata=_meta(_check_non_negative))


def _default_tiers() -> dict[str, TierSettings]:
    return {"free": TierSettings()}


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    ip_rate: str = field(default="120/minute", metadata=_meta(_check_rate))
    ip_burst: int = field(default=30, metadata=_meta(_check_non_negative))
    default_tier: str = "free"
    tiers: dict[str, TierSettings] = field(default_factory=_default_tiers)
    # Set by the loader, not a key: the tiers whose quotas the configuration sets (in auth mode
    # "none" only those have a daily quota).
    quota_tiers: frozenset[str] = field(
        default=frozenset(), compare=False, repr=False, metadata={"internal": True}
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration. Build it with :func:`load_settings`."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    chats: ChatsSettings = field(default_factory=ChatsSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    headers: HeadersSettings = field(default_factory=HeadersSettings)
    aisdk: AISDKSettings = field(default_factory=AISDKSettings)
    # Plugins to load besides the installed ones (entry points): built-in short names or
    # module paths; and each plugin's own table, [plugin.NAME].
    plugins: list[str] = field(default_factory=list, metadata=_meta(_check_plugin_names))
    plugin: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"tables": True})
    demo: bool = False

    def replace(self, **sections: Any) -> Settings:
        """A copy with some sections replaced (``settings.replace(chats=...)``)."""
        return dataclasses.replace(self, **sections)


def _coerce(key: str, tp: Any, value: Any, from_env: bool) -> Any:
    """Check (and, for environment strings, convert) one value against its declared type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SettingsError(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return value
    if tp is bool:
        if from_env and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
        if isinstance(value, bool):
            return value
        raise SettingsError(key, "true or false", value)
    if tp is int or tp is float:
        expected = "an integer" if tp is int else "a number"
        accepted = int if tp is int else int | float
        if from_env and isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                raise SettingsError(key, expected, value) from None
        if isinstance(value, accepted) and not isinstance(value, bool):
            return tp(value)
        raise SettingsError(key, expected, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingsError(key, "a string", value)
    if origin is list:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise SettingsError(key, "a list of strings", value)
    raise SettingsError(key, f"a value of type {tp}", value)  # pragma: no cover


def _build_dataclass(
    cls: type, raw: Mapping[str, Any], prefix: str, from_env: Mapping[str, str]
) -> Any:
    if not isinstance(raw, Mapping):
        raise SettingsError(prefix, "a table", raw)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields or fields[name].metadata.get("internal"):
            where = f"{key} (from {from_env[key]})" if key in from_env else key
            raise SettingsError(where, "a known key (see config.example.toml)", None, unknown=True)
        tp = hints[name]
        if fields[name].metadata.get("tables"):  # plugin: one free-form table per plugin
            values[name] = _free_tables(key, value, from_env)
            continue
        if typing.get_origin(tp) is dict:  # limits.tiers
            _, item_tp = typing.get_args(tp)
            if not isinstance(value, Mapping):
                raise SettingsError(key, "a table", value)
            # Tiers a configuration names are added to the built-in ones (or replace them).
            values[name] = {
                **_default_tiers(),
                **{
                    str(k): _build_dataclass(item_tp, v, f"{key}.{k}", from_env)
                    for k, v in value.items()
                },
            }
            values["quota_tiers"] = frozenset(
                str(k)
                for k, v in value.items()
                if isinstance(v, Mapping) and {"messages_per_day", "tokens_per_day"} & set(v)
            )
            continue
        if dataclasses.is_dataclass(tp):
            values[name] = _build_dataclass(tp, value, key, from_env)
            continue
        label = f"{key} (from {from_env[key]})" if key in from_env else key
        coerced = _coerce(label, tp, value, key in from_env)
        check = fields[name].metadata.get("check")
        if check is not None:
            problem = check(coerced)
            if problem:
                raise SettingsError(label, problem, value)
        values[name] = coerced
    return cls(**values)


def _labelled(key: str, from_env: Mapping[str, str]) -> str:
    return f"{key} (from {from_env[key]})" if key in from_env else key


def _env_value(text: str) -> Any:
    """An environment string for a free-form table: the TOML value it spells, else itself."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["value"] if len(parsed) == 1 else text


def _free_table(key: str, table: Mapping[str, Any], from_env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        dotted = f"{key}.{name}"
        if isinstance(value, Mapping):
            out[str(name)] = _free_table(dotted, value, from_env)
        elif dotted in from_env and isinstance(value, str):
            out[str(name)] = _env_value(value)
        else:
            out[str(name)] = value
    return out


def _free_tables(key: str, value: Any, from_env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``[plugin.NAME]`` tables: a table of tables, their contents left to each plugin."""
    if not isinstance(value, Mapping):
        raise SettingsError(_labelled(key, from_env), "a table of [plugin.NAME] tables", value)
    tables: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        dotted = f"{key}.{name}"
        if not isinstance(table, Mapping):
            raise SettingsError(_labelled(dotted, from_env), f"a table ([{dotted}])", table)
        tables[str(name)] = _free_table(dotted, table, from_env)
    return tables


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# Variables with the prefix that are not settings: the config file, and the test suite's.
ENV_NOT_SETTINGS = frozenset(
    {"CHATPROXY_CONFIG", "CHATPROXY_TEST_POSTGRES_URL", "CHATPROXY_TEST_REDIS_URL"}
)


def _env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``CHATPROXY_*`` variables as a nested table, and each dotted key's variable name."""
    layer: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_SETTINGS:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            raise SettingsError(name, "CHATPROXY_SECTION__KEY", None, unknown=True)
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(name, "not to clash with another variable", value)
        node[parts[-1]] = value
        keys[".".join(parts)] = name
    return layer, keys


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError("-c", "an existing config file", str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), f"valid TOML ({exc})", None) from None
    except UnicodeDecodeError:
        raise SettingsError(str(path), "a UTF-8 TOML file", None) from None
    except OSError as exc:  # a directory, unreadable
        raise SettingsError(str(path), f"a readable config file ({exc.strerror})", None) from None


def _resolve_secrets(settings: Settings, env: Mapping[str, str]) -> Settings:
    upstream, auth = settings.upstream, settings.auth
    if not upstream.api_key and upstream.api_key_env:
        upstream = dataclasses.replace(upstream, api_key=env.get(upstream.api_key_env, ""))
    if not auth.secret and auth.secret_env:
        auth = dataclasses.replace(auth, secret=env.get(auth.secret_env, ""))
    return settings.replace(upstream=upstream, auth=auth)


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: TOML file, then ``CHATPROXY_*`` environment, then ``overrides``.

    ``overrides`` maps dotted keys (``"server.port"``) to already-typed values, as CLI flags
    give them; ``None`` values are ignored.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if config_file is None and env.get("CHATPROXY_CONFIG"):
        config_file = env["CHATPROXY_CONFIG"]
    if config_file is not None:
        raw = _read_toml(Path(config_file))
    env_layer, env_keys = _env_layer(env)
    raw = _merge(raw, env_layer)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    settings = _build_dataclass(Settings, raw, "", env_keys)
    if settings.limits.default_tier not in settings.limits.tiers:
        raise SettingsError(
            "limits.default_tier",
            "the name of a [limits.tiers.NAME] table",
            settings.limits.default_tier,
        )
    return _resolve_secrets(settings, env)
