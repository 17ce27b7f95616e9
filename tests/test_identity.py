"""Identity (SPEC §5) and chat ownership: every auth mode end to end, cross-user isolation, and
no secret in error bodies or logs."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest
from click.testing import CliRunner

from chatproxy.appkeys import STORE
from chatproxy.auth import new_api_key
from chatproxy.cli import main
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.util import all_chats, all_messages

USER = {"role": "user", "content": "What is my name?"}
BODY = {"model": "m", "messages": [USER]}


async def make_key(store: Store, user: str, tier: str | None = None) -> tuple[str, str]:
    key_id, key, key_hash, prefix = new_api_key()
    await store.add_api_key(key_id, (user, user, tier), key_hash, prefix)
    return key_id, key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(
    http: aiohttp.ClientSession, proxy: ProxyServer, headers: dict[str, str], body: dict = BODY
) -> tuple[int, dict, aiohttp.typedefs.LooseHeaders]:
    async with http.post(f"{proxy.url}/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


@pytest.fixture
async def keys_proxy(start_proxy) -> ProxyServer:
    return await start_proxy(**{"auth.mode": "keys", "auth.key_cache_seconds": 0.2})


async def test_keys_mode_accepts_a_valid_key_with_the_sdk_and_stores_under_its_user(
    keys_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    store = keys_proxy.app[STORE]
    _, key = await make_key(store, "alice", "free")
    async with openai.AsyncOpenAI(base_url=keys_proxy.url, api_key=key, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=[USER])
    assert raw.parse().choices[0].message.content
    assert {m.user_id for m in await all_messages(store)} == {"alice"}
    assert (await all_chats(store))[0].owner_id == "alice"
    # The proxy key never reaches the upstream: the proxy's own key does.
    assert upstream.chat_requests[0].headers["Authorization"] == "Bearer sk-upstream-secret"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer cp-not-a-real-key"},
        {"Authorization": "Bearer sk-openai-looking-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
async def test_keys_mode_refuses_missing_and_wrong_keys_with_401_and_stores_nothing(
    keys_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, headers: dict
) -> None:
    status, body, resp_headers = await post(http, keys_proxy, headers)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "authentication_error"
    assert resp_headers["WWW-Authenticate"] == "Bearer"
    assert await all_messages(keys_proxy.app[STORE]) == []
    assert upstream.requests == []


async def test_revoked_key_stops_working_within_the_cache_time(
    keys_proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    store = keys_proxy.app[STORE]
    key_id, key = await make_key(store, "bob")
    assert (await post(http, keys_proxy, bearer(key)))[0] == 200
    assert await store.revoke_api_key(key_id) is True
    await asyncio.sleep(0.3)  # auth.key_cache_seconds = 0.2 in this test
    status, body, _ = await post(http, keys_proxy, bearer(key))
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert await store.revoke_api_key(key_id) is False


async def test_pass_through_endpoints_need_a_key_too(
    keys_proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{keys_proxy.url}/models") as resp:
        assert resp.status == 401
    _, key = await make_key(keys_proxy.app[STORE], "carol")
    async with http.get(f"{keys_proxy.url}/models", headers=bearer(key)) as resp:
        assert resp.status == 200
    assert [r.path for r in upstream.requests] == ["/v1/models"]


async def test_passthrough_forwards_the_exact_credential_and_two_credentials_are_two_users(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**{"auth.mode": "passthrough"})
    store = proxy.app[STORE]
    for credential in ("Bearer sk-user-one", "Bearer sk-user-two"):
        status, _, _ = await post(http, proxy, {"Authorization": credential})
        assert status == 200
    assert [r.headers["Authorization"] for r in upstream.chat_requests] == [
        "Bearer sk-user-one",
        "Bearer sk-user-two",
    ]
    chats = await all_chats(store)
    assert len(chats) == 2  # identical messages, two users: two chats
    owners = {c.owner_id for c in chats}
    assert len(owners) == 2
    assert all(o.startswith("cred_") and "sk-user" not in o for o in owners)
    status, body, _ = await post(http, proxy, {})
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


async def test_passthrough_user_ids_are_stable_across_restarts(
    make_settings, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    owners = []
    for _ in range(2):
        proxy = ProxyServer(make_settings(**{"auth.mode": "passthrough"}))
        await proxy.start()
        try:
            await post(http, proxy, {"Authorization": "Bearer sk-same"})
            owners.append({c.owner_id for c in await all_chats(proxy.app[STORE])})
        finally:
            await proxy.stop()
    assert owners[0] == owners[1] and len(owners[0]) == 1


async def test_header_mode_believes_x_user_id_only_from_a_trusted_proxy(
    start_proxy, http: aiohttp.ClientSession
) -> None:
    trusted = await start_proxy(
        **{"auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]}
    )
    status, _, _ = await post(http, trusted, {"X-User-Id": "dana"})
    assert status == 200
    status, _, _ = await post(http, trusted, {"X-OpenWebUI-User-Id": "erin"})
    assert status == 200
    assert {c.owner_id for c in await all_chats(trusted.app[STORE])} == {"dana", "erin"}
    status, body, _ = await post(http, trusted, {})
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    status, _, _ = await post(http, trusted, {"X-User-Id": "bad id with spaces"})
    assert status == 401

    untrusted = await start_proxy(
        **{"auth.mode": "header", "server.trusted_proxies": ["10.0.0.0/8"]}
    )
    status, body, _ = await post(http, untrusted, {"X-User-Id": "dana"})
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


async def test_another_users_chat_id_is_403_and_nothing_is_stored(
    keys_proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    store = keys_proxy.app[STORE]
    _, alice = await make_key(store, "alice")
    _, mallory = await make_key(store, "mallory")
    status, _, _ = await post(http, keys_proxy, {**bearer(alice), "X-Chat-Id": "alices-chat"})
    assert status == 200
    before = len(await all_messages(store))
    status, body, _ = await post(http, keys_proxy, {**bearer(mallory), "X-Chat-Id": "alices-chat"})
    assert status == 403
    assert body["error"]["code"] == "chat_forbidden"
    assert len(await all_messages(store)) == before


async def test_identical_messages_from_two_users_thread_into_two_chats(
    keys_proxy: ProxyServer, http: aiohttp.ClientSession
) -> None:
    store = keys_proxy.app[STORE]
    _, alice = await make_key(store, "alice")
    _, bob = await make_key(store, "bob")
    chat_ids = set()
    for key in (alice, bob, alice):
        _, _, headers = await post(http, keys_proxy, bearer(key))
        chat_ids.add(headers["X-Chat-Id"])
    assert len(chat_ids) == 2  # alice's second request threads into her own chat
    assert sorted(c.owner_id for c in await all_chats(store)) == ["alice", "bob"]


async def test_no_secret_reaches_error_bodies_or_logs(
    start_proxy,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    keys_proxy = await start_proxy(**{"auth.mode": "keys"})
    _, key = await make_key(keys_proxy.app[STORE], "alice")
    pass_proxy = await start_proxy(**{"auth.mode": "passthrough"})
    bodies = []
    for proxy, headers in (
        (keys_proxy, bearer(key)),
        (keys_proxy, bearer(key + "x")),
        (keys_proxy, {"Authorization": "Bearer cp-guessed-secret"}),
        (pass_proxy, {"Authorization": "Bearer sk-client-secret"}),
        (pass_proxy, {"Authorization": "Bearer sk-client-secret", "X-Chat-Id": "bad id"}),
    ):
        async with http.post(f"{proxy.url}/chat/completions", json=BODY, headers=headers) as r:
            bodies.append(await r.text())
    text = caplog.text + "".join(bodies)
    for secret in (key, "cp-guessed-secret", "sk-client-secret", "sk-upstream-secret"):
        assert secret not in text


def test_keys_cli_creates_lists_and_revokes(tmp_path) -> None:
    db = f"sqlite://{tmp_path / 'keys.db'}"
    runner = CliRunner()
    created = runner.invoke(
        main, ["keys", "create", "--user", "alice", "--tier", "free", "--db", db]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cp-") and len(key) > 40
    listed = runner.invoke(main, ["keys", "list", "--json", "--db", db])
    assert listed.exit_code == 0
    assert key not in listed.stdout
    import orjson

    (record,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert (record["user"], record["tier"], record["revoked"]) == ("alice", "free", None)
    assert key.startswith(record["prefix"])
    revoked = runner.invoke(main, ["keys", "revoke", record["id"], "--db", db])
    assert revoked.exit_code == 0
    again = runner.invoke(main, ["keys", "revoke", record["id"], "--db", db])
    assert again.exit_code == 1
    bad_tier = runner.invoke(main, ["keys", "create", "--user", "x", "--tier", "gold", "--db", db])
    assert bad_tier.exit_code == 2
