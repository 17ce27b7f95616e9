"""The deployment examples in deploy/ (docs/deployment.md) hold valid settings and commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from chatproxy.cli import main
from chatproxy.settings import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_shared_config_file_is_a_scale_out_configuration() -> None:
    settings = load_settings(DEPLOY / "chatproxy.toml", env={})
    assert settings.storage.url.startswith("postgres://")
    assert settings.redis.url.startswith("redis://")
    assert settings.server.heartbeat_timeout > 3 * settings.server.heartbeat_interval


def test_the_systemd_unit_runs_a_valid_serve_command() -> None:
    unit = (DEPLOY / "chatproxy@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert exec_start is not None
    argv = shlex.split(exec_start.group(1).replace("%i", "8788"))
    assert argv[0].endswith("/chatproxy") and argv[1] == "serve"
    ctx = main.commands["serve"].make_context("serve", argv[2:])
    assert ctx.params["port"] == 8788
    assert ctx.params["log_format"] == "json"
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    drain = load_settings(DEPLOY / "chatproxy.toml", env={}).chats.drain_timeout
    assert stop > drain  # systemd must not kill a draining instance


def _services() -> dict[str, Any]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return dict(compose["services"])


def test_the_compose_instances_share_one_store_and_redis_with_valid_settings() -> None:
    services = _services()
    instances = {name: s for name, s in services.items() if name.startswith("chatproxy")}
    assert len(instances) == 2
    loaded = []
    for service in instances.values():
        env = {k: str(v) for k, v in service["environment"].items() if k.startswith("CHATPROXY_")}
        loaded.append(load_settings(None, env=env))
    a, b = loaded
    assert a.storage.url == b.storage.url and a.storage.url.startswith("postgres://")
    assert a.redis.url == b.redis.url and a.redis.url.startswith("redis://")
    assert a.server.instance_id != b.server.instance_id
    assert {"postgres", "redis"} <= set(services["chatproxy-a"]["depends_on"])


def test_the_compose_load_balancer_points_at_both_instances() -> None:
    conf = (DEPLOY / "nginx-compose.conf").read_text()
    backends = re.findall(r"^\s*server (\S+):(\d+)", conf, re.M)
    instances = sorted(n for n in _services() if n.startswith("chatproxy"))
    assert sorted(host for host, _ in backends) == instances
    assert all(port == "8787" for _, port in backends)
    for text in (conf, (DEPLOY / "nginx.conf").read_text()):
        assert "proxy_buffering off;" in text  # SSE events must not wait in nginx
