"""The example third-party plugin (examples/chatproxy-plugin-example, installed by pip in
these tests) end to end, and plugin routes in general: behind the proxy's authentication
and limits, ahead of the ``/v1`` pass-through, a crash answered as a clean 500."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest
from click.testing import CliRunner

from chatproxy.appkeys import STORE
from chatproxy.auth import new_api_key
from chatproxy.cli import main
from chatproxy.errors import InvalidRequest
from chatproxy.plugins import UpstreamCall, load_plugins
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.testing import FakeUpstream
from tests.plugin_util import write_plugin

StartProxy = Callable[..., Awaitable[ProxyServer]]
pytestmark = pytest.mark.usefixtures("example_plugin")


def no_chatproxy_env() -> dict[str, str | None]:
    return {k: None for k in os.environ if k.startswith("CHATPROXY_")}


def base(proxy: ProxyServer) -> str:
    return proxy.url.removesuffix("/v1")


async def make_key(proxy: ProxyServer, user: str, tier: str | None = None) -> str:
    key_id, key, key_hash, prefix = new_api_key()
    await proxy.app[STORE].add_api_key(key_id, (user, user, tier), key_hash, prefix)
    return key


@pytest.fixture
async def keys_proxy(start_proxy: StartProxy) -> ProxyServer:
    return await start_proxy(
        **{
            "auth.mode": "keys",
            "limits.ip_rate": "4/minute",
            "limits.ip_burst": 4,
            "plugin.example.deny_models": ["gpt-4"],
            "limits.tiers.pro.messages_per_day": 5,
        }
    )


async def test_the_example_route_runs_behind_auth_and_the_ip_limit(
    keys_proxy: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    url = f"{base(keys_proxy)}/v1/example/whoami"
    key = await make_key(keys_proxy, "alice", "pro")
    async with http.get(url) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["code"] == "invalid_api_key"
        assert resp.headers["x-ratelimit-limit-requests"] == "4"
    remaining = []
    for _ in range(3):
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"user": "alice", "tier": "pro", "deny_models": ["gpt-4"]}
            assert resp.headers["X-Request-Id"].startswith("req_")
            remaining.append(int(resp.headers["x-ratelimit-remaining-requests"]))
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
        assert int(resp.headers["Retry-After"]) >= 1
    # Answered by the plugin, not passed through to the upstream.
    assert [r.path for r in upstream.requests] == []


async def test_a_plugin_route_wins_over_the_pass_through_for_its_path_only(
    proxy: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    async with http.get(f"{base(proxy)}/v1/example/whoami") as resp:
        assert resp.status == 200
        assert (await resp.json())["user"] == "local"
    async with http.get(f"{base(proxy)}/v1/models") as resp:
        assert resp.status == 200
    assert [r.path for r in upstream.requests] == ["/v1/models"]
    async with http.get(f"{base(proxy)}/metrics") as resp:
        assert 'route="/v1/example/whoami",status="200"' in await resp.text()


async def test_the_example_rule_refuses_a_denied_model_through_the_proxy_storing_nothing(
    start_proxy: StartProxy, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    keys_proxy = await start_proxy(**{"auth.mode": "keys", "plugin.example.deny_models": ["gpt-4"]})
    key = await make_key(keys_proxy, "alice")
    client = openai.AsyncOpenAI(base_url=keys_proxy.url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-4", messages=messages, stream=stream)
        assert info.value.status_code == 400
        assert info.value.body == {
            "message": "the model 'gpt-4' is not allowed on this proxy",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_allowed",
        }
    assert upstream.chat_requests == []
    headers = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{keys_proxy.url}/conversations", headers=headers) as resp:
        assert (await resp.json())["data"] == []
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert answer.choices[0].message.content
    assert len(upstream.chat_requests) == 1
    async with http.get(f"{keys_proxy.url}/conversations", headers=headers) as resp:
        assert len((await resp.json())["data"]) == 1
    await client.close()


def test_the_example_command_prints_its_configured_policy(tmp_path: Path) -> None:
    config = tmp_path / "chatproxy.toml"
    config.write_text('[plugin.example]\ndeny_models = ["gpt-4", "o1"]\n')
    result = CliRunner().invoke(main, ["example-policy", "-c", str(config)], env=no_chatproxy_env())
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == "refused models: gpt-4, o1\n"
    result = CliRunner().invoke(main, ["example-policy", "--json"], env=no_chatproxy_env())
    assert json.loads(result.stdout) == {"deny_models": []}


def test_the_example_refuses_a_bad_table_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "chatproxy.toml"
    config.write_text('[plugin.example]\ndeny_modles = ["gpt-4"]\n')
    result = CliRunner().invoke(main, ["example-policy", "-c", str(config)], env=no_chatproxy_env())
    assert result.exit_code == 2
    assert (
        result.stderr
        == "chatproxy: plugin.example.deny_modles: expected a known key (deny_models)\n"
    )


async def test_the_example_rule_refuses_a_denied_model_with_an_openai_shaped_400() -> None:
    # The rule on its own; the engine's call of before_upstream is tested with the engine.
    plugins = load_plugins(
        load_settings(None, env={}, overrides={"plugin.example.deny_models": ["gpt-4"]})
    )
    call = UpstreamCall(
        face="chat.completions",
        user_id="u",
        tier=None,
        chat_id="chat_x",
        model="gpt-4",
        path="/chat/completions",
        body={"model": "gpt-4", "messages": []},
        headers={},
        upstream_url="http://127.0.0.1:9/v1",
    )
    with pytest.raises(InvalidRequest) as info:
        await plugins.run("before_upstream", call=call)
    assert info.value.status == 400
    assert info.value.body()["error"] == {
        "message": "the model 'gpt-4' is not allowed on this proxy",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    call.model = "gpt-4o-mini"
    assert await plugins.run("before_upstream", call=call) == []


# -- any plugin's routes ------------------------------------------------------------------------

ROUTES = """
from aiohttp import web
from chatproxy import hookimpl
from chatproxy.errors import PermissionDenied


async def hello(request):
    return web.json_response({"hello": request.match_info["who"]})


async def refuse(request):
    raise PermissionDenied("not for you", code="nope")


async def crash(request):
    raise RuntimeError("db password is hunter2")


async def completions(request):
    return web.json_response({"hijacked": True})


@hookimpl
def register_routes(router):
    router.add_get("/hooks/hello/{who}", hello)
    router.add_get("/hooks/refuse", refuse)
    router.add_get("/hooks/crash", crash)
    router.add_post("/v1/chat/completions", completions)  # built-in: never reached
"""


@pytest.fixture
def routes_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return write_plugin(tmp_path, ROUTES, monkeypatch, prefix="routes")


async def test_a_plugin_route_outside_v1_is_guarded_too(
    start_proxy: StartProxy, routes_plugin: str, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"auth.mode": "keys", "plugins": [routes_plugin]})
    key = await make_key(proxy, "bob")
    url = f"{base(proxy)}/hooks/hello/world"
    async with http.get(url) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"hello": "world"}
        assert "x-ratelimit-limit-requests" in resp.headers
    async with http.get(
        f"{base(proxy)}/hooks/refuse", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "nope"
    async with http.get(f"{base(proxy)}/healthz") as resp:  # built-in, unguarded: unchanged
        assert resp.status == 200


async def test_a_crashing_plugin_route_is_a_clean_500_naming_the_plugin(
    start_proxy: StartProxy,
    routes_plugin: str,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(plugins=[routes_plugin])
    with caplog.at_level(logging.ERROR, logger="chatproxy.plugins"):
        async with http.get(f"{base(proxy)}/hooks/crash") as resp:
            assert resp.status == 500
            raw = await resp.read()
    assert json.loads(raw)["error"] == {
        "message": f"plugin {routes_plugin!r} failed in route",
        "type": "server_error",
        "param": None,
        "code": "plugin_error",
    }
    assert b"hunter2" not in raw
    assert any(routes_plugin in r.getMessage() for r in caplog.records)
    async with http.get(f"{base(proxy)}/metrics") as resp:
        text = await resp.text()
    assert f'chatproxy_plugin_errors_total{{hook="route",plugin="{routes_plugin}"}} 1.0' in text


async def test_a_plugin_cannot_take_over_a_built_in_route(
    start_proxy: StartProxy, routes_plugin: str, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(plugins=[routes_plugin])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert "hijacked" not in await resp.json()
