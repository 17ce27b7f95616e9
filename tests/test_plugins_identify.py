"""``identify(request)`` (SPEC §5, §13): a plugin that checks a JWT-like bearer token decides
the caller before the built-in mode; its refusals are 401/403 in OpenAI's shape, its crash a
clean 500 naming the plugin and no secret, and the caller it names is stored and limited as
any other."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatproxy.appkeys import STORE
from chatproxy.auth import new_api_key
from chatproxy.server import ProxyServer
from chatproxy.store.models import User
from chatproxy.testing import FakeUpstream
from tests.plugin_util import write_plugin
from tests.util import all_chats, all_messages

StartProxy = Callable[..., Awaitable[ProxyServer]]

SECRET = "jwt-signing-secret-s3cr3t"
BODY = {"model": "m", "messages": [{"role": "user", "content": "Hello?"}]}

JWT_PLUGIN = """
import base64, hashlib, hmac, json

from chatproxy import hookimpl
from chatproxy.errors import AuthenticationError, PermissionDenied
from chatproxy.plugins import Identity


def _decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class JWT:
    def __init__(self, secret):
        self.secret = secret

    @hookimpl
    async def identify(self, request):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return None  # not a JWT: the built-in mode decides (a proxy key, say)
        header, payload, signature = token.split(".")
        expected = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), _decode(signature)):
            raise AuthenticationError("the token's signature is not valid", code="invalid_token")
        claims = json.loads(_decode(payload))
        if claims.get("crash"):
            raise RuntimeError(f"claims decoder broke on {token} (key {self.secret!r})")
        if claims.get("banned"):
            raise PermissionDenied("this account is suspended", code="account_suspended")
        if claims.get("weird"):
            return {"user_id": claims["sub"]}
        return Identity(claims["sub"], tier=claims.get("tier"), name=claims.get("name"))


def plugin(config):
    return JWT(config["secret"].encode())
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict[str, Any], secret: str = SECRET) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def jwt_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return write_plugin(tmp_path, JWT_PLUGIN, monkeypatch, prefix="jwt")


@pytest.fixture
async def proxy(start_proxy: StartProxy, jwt_plugin: str) -> ProxyServer:
    return await start_proxy(
        **{
            "auth.mode": "keys",
            "plugins": [jwt_plugin],
            f"plugin.{jwt_plugin}.secret": SECRET,
            "limits.tiers.pro.messages_per_day": 1,
        }
    )


async def post(
    http: aiohttp.ClientSession, proxy: ProxyServer, headers: dict[str, str]
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_valid_token_identifies_the_caller_who_is_stored_and_owns_the_chat(
    proxy: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    token = jwt({"sub": "alice@example.com", "name": "Alice Liddell"})
    status, body, _ = await post(http, proxy, bearer(token))
    assert status == 200, body
    store = proxy.app[STORE]
    assert [c.owner_id for c in await all_chats(store)] == ["alice@example.com"]
    assert {m.user_id for m in await all_messages(store)} == {"alice@example.com"}
    user = await store.read(lambda: User.get(id="alice@example.com"))
    assert user.name == "Alice Liddell"
    # The token is the plugin's, not the upstream's: the proxy's key goes upstream.
    assert upstream.chat_requests[0].headers["Authorization"] == "Bearer sk-upstream-secret"


async def test_the_tier_a_plugin_gives_decides_the_limits_and_an_unknown_one_is_the_default(
    proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    pro = bearer(jwt({"sub": "pat", "tier": "pro"}))  # pro: 1 message a day
    assert (await post(http, proxy, pro))[0] == 200
    status, body, headers = await post(http, proxy, pro)
    assert status == 429
    assert body["error"]["code"] == "daily_limit_exceeded"
    assert headers["x-should-retry"] == "false"
    unknown = bearer(jwt({"sub": "uma", "tier": "platinum"}))  # free: 200 a day
    for _ in range(2):
        assert (await post(http, proxy, unknown))[0] == 200


async def test_a_request_without_a_token_falls_through_to_the_built_in_mode(
    proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    key_id, key, key_hash, prefix = new_api_key()
    await proxy.app[STORE].add_api_key(key_id, ("kim", "kim", None), key_hash, prefix)
    assert (await post(http, proxy, bearer(key)))[0] == 200
    status, body, _ = await post(http, proxy, {})
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert {c.owner_id for c in await all_chats(proxy.app[STORE])} == {"kim"}


@pytest.mark.parametrize(
    ("token", "status", "type_", "code"),
    [
        (jwt({"sub": "eve"}, secret="wrong-secret"), 401, "authentication_error", "invalid_token"),
        (jwt({"sub": "mallory", "banned": True}), 403, "permission_error", "account_suspended"),
        (jwt({"sub": "no spaces allowed!"}), 401, "authentication_error", "invalid_user_id"),
        (jwt({"sub": "x" * 129}), 401, "authentication_error", "invalid_user_id"),
    ],
)
async def test_a_refusal_is_an_openai_shaped_401_or_403_and_stores_nothing(
    proxy: ProxyServer,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
    token: str,
    status: int,
    type_: str,
    code: str,
) -> None:
    got, body, _ = await post(http, proxy, bearer(token))
    assert got == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (type_, code)
    assert "no spaces allowed" not in body["error"]["message"]  # the claim is not echoed
    assert upstream.chat_requests == []
    assert await all_messages(proxy.app[STORE]) == []
    assert await proxy.app[STORE].read(lambda: User.all().count()) == 0


async def test_a_crash_is_a_clean_500_naming_the_plugin_logged_and_counted(
    proxy: ProxyServer,
    http: aiohttp.ClientSession,
    upstream: FakeUpstream,
    jwt_plugin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = jwt({"sub": "carl", "crash": True})
    with caplog.at_level(logging.ERROR, logger="chatproxy.plugins"):
        async with http.post(
            f"{proxy.url}/chat/completions", json=BODY, headers=bearer(token)
        ) as r:
            status, raw = r.status, await r.read()
    assert status == 500
    body = json.loads(raw)
    assert body == {
        "error": {
            "message": f"plugin {jwt_plugin!r} failed in identify",
            "type": "server_error",
            "param": None,
            "code": "plugin_error",
        }
    }
    for secret in (SECRET.encode(), token.encode(), b"Traceback", b"RuntimeError"):
        assert secret not in raw
    assert upstream.chat_requests == []
    logged = [r for r in caplog.records if r.name == "chatproxy.plugins"]
    assert len(logged) == 1 and jwt_plugin in logged[0].getMessage()
    async with http.get(proxy.url.removesuffix("/v1") + "/metrics") as resp:
        metrics = await resp.text()
    assert f'chatproxy_plugin_errors_total{{hook="identify",plugin="{jwt_plugin}"}} 1.0' in metrics


async def test_an_answer_that_is_not_an_identity_is_the_plugins_failure(
    proxy: ProxyServer, http: aiohttp.ClientSession, jwt_plugin: str
) -> None:
    status, body, _ = await post(http, proxy, bearer(jwt({"sub": "w", "weird": True})))
    assert status == 500
    assert body["error"]["message"] == f"plugin {jwt_plugin!r} failed in identify"


async def test_identify_comes_before_mode_none_too(
    start_proxy: StartProxy, jwt_plugin: str, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"plugins": [jwt_plugin], f"plugin.{jwt_plugin}.secret": SECRET})
    assert (await post(http, proxy, bearer(jwt({"sub": "nina"}))))[0] == 200
    assert (await post(http, proxy, {}))[0] == 200
    owners = sorted(c.owner_id for c in await all_chats(proxy.app[STORE]))
    assert owners == ["local", "nina"]
