"""The built-in ``webhook`` plugin against a real HTTP receiver in the test: signed deliveries
the receiver verifies as docs/plugins.md shows, retries inside one delivery, a receiver that is
down for a while and then gets every event, and ``kill -9`` of ``chatproxy serve`` while the
receiver is slow: after a restart every event arrives, each with the id it had."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from chatproxy.appkeys import STORE
from chatproxy.errors import SettingsError
from chatproxy.plugins import Event, load_plugins
from chatproxy.plugins.webhook import WebhookFailed, plugin
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.store.store import Store, utcnow
from chatproxy.testing import FakeUpstream, Reply
from tests.serve import Serve, free_port
from tests.util import eventually

SECRET = "whsec-test-3f9a1c"


def verify(secret: bytes, body: bytes, header: str, tolerance: int = 300) -> bool:
    """The receiver's check, as docs/plugins.md gives it."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


class Receiver:
    """A webhook endpoint: verifies each delivery, keeps the events; ``statuses`` answers the
    next requests with those statuses first, and a closed ``gate`` holds requests."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.events: list[dict[str, Any]] = []  # verified deliveries, in arrival order
        self.arrived: list[str] = []  # the Idempotency-Key of every request, on arrival
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrived.append(request.headers["Idempotency-Key"])
        await self.gate.wait()
        if self.statuses:
            return web.Response(status=self.statuses.pop(0))
        if not verify(self.secret, body, request.headers["Chatproxy-Signature"]):
            return web.Response(status=400, text="bad signature")
        self.headers.append(dict(request.headers))
        self.events.append(orjson.loads(body))
        return web.Response(status=204)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> set[str]:
        return {e["id"] for e in self.events}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def _webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "plugins": ["webhook"],
        "plugin": {"webhook": {"urls": [url], "secret": SECRET, "timeout": 5, **extra}},
    }


async def _ask(http: aiohttp.ClientSession, base: str, content: str = "hi") -> dict[str, str]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
    async with http.post(f"{base}/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        return dict(resp.headers)


async def _outbox_ids(store: Store) -> set[str]:
    rows = await store.read(lambda: store.conn.execute_query_dict("SELECT id FROM outbox"))
    return {r["id"] for r in rows}


async def test_events_arrive_signed_with_their_id_and_the_receiver_verifies_them(
    start_proxy: Any, upstream: FakeUpstream, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    proxy: ProxyServer = await start_proxy(**_webhook(receiver.url))
    upstream.enqueue(Reply(content="hello"))
    headers = await _ask(http, proxy.url)
    chat_id = headers["X-Chat-Id"]
    async with http.delete(f"{proxy.url}/conversations/{chat_id}") as resp:
        assert resp.status == 200

    async def all_three() -> bool:
        return len(receiver.events) == 3

    await eventually(all_three)
    assert [e["type"] for e in receiver.events] == [
        "chat.created",
        "answer.completed",
        "chat.deleted",
    ]
    created, answer, _ = receiver.events
    assert created["chat_id"] == answer["chat_id"] == chat_id
    assert (created["user_id"], created["message_id"], created["data"]) == (
        "local",
        None,
        {"title": "hi"},
    )
    assert answer["message_id"] == headers["X-Message-Id"]
    assert answer["data"]["status"] == "completed" and answer["data"]["finish_reason"] == "stop"
    assert created["created_at"].endswith("Z")
    for event, sent in zip(receiver.events, receiver.headers, strict=True):
        assert sent["Idempotency-Key"] == sent["Chatproxy-Event-Id"] == event["id"]
        assert sent["Chatproxy-Event-Type"] == event["type"]
        assert sent["Content-Type"] == "application/json"
    assert proxy.app is not None
    assert receiver.ids() == await _outbox_ids(proxy.app[STORE])


def _event(n: int = 1) -> Event:
    return Event(id=f"evt_{n}", type="chat.created", created_at=utcnow(), user_id="u", chat_id="c")


async def test_a_failing_receiver_is_tried_again_within_the_delivery(receiver: Receiver) -> None:
    hook = plugin({"urls": [receiver.url], "secret": SECRET, "attempts": 3})
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    hook.sleep = sleep
    receiver.statuses = [503, 429]
    await hook.on_event(_event())
    assert receiver.arrived == ["evt_1"] * 3 and receiver.ids() == {"evt_1"}
    assert waits == [0.5, 1.0]

    receiver.statuses = [500, 500, 500]
    with pytest.raises(WebhookFailed) as failed:
        await hook.on_event(_event(2))
    assert str(failed.value) == f"POST {receiver.url} answered 500"
    assert SECRET not in repr(hook) and SECRET not in str(failed.value)

    receiver.statuses = [404]  # not worth another try now: the outbox tries later
    with pytest.raises(WebhookFailed):
        await hook.on_event(_event(3))
    assert receiver.arrived.count("evt_3") == 1
    await hook.aclose()  # its HTTP client, kept between events


async def test_a_signature_made_with_another_secret_does_not_verify(receiver: Receiver) -> None:
    hook = plugin({"urls": [receiver.url], "secret": "not-the-receivers", "attempts": 1})
    with pytest.raises(WebhookFailed):
        await hook.on_event(_event())
    assert receiver.events == [] and receiver.arrived == ["evt_1"]
    await hook.aclose()


async def test_a_receiver_down_for_a_while_gets_every_event(
    start_proxy: Any, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    late = Receiver()
    proxy: ProxyServer = await start_proxy(
        **_webhook(f"http://127.0.0.1:{port}/hook", attempts=2, timeout=1)
    )
    assert proxy.app is not None
    store: Store = proxy.app[STORE]
    delivery = store.delivery
    assert delivery is not None
    delivery.retry_first, delivery.retry_longest = 0.2, 0.5
    upstream.enqueue(*(Reply(content=f"answer {i}") for i in range(4)))
    for i in range(4):
        await _ask(http, proxy.url, f"question {i}")
    await asyncio.sleep(1.0)  # deliveries fail meanwhile
    await late.start(port)
    try:
        expected = await _outbox_ids(store)
        assert len(expected) == 8

        async def everything() -> bool:
            return late.ids() == expected

        await eventually(everything, within=20)
    finally:
        await late.stop()


async def test_the_configuration_is_checked_and_names_the_key(monkeypatch: Any) -> None:
    def load(table: dict[str, Any]) -> None:
        settings = load_settings(
            None, env={}, overrides={"plugins": ["webhook"], "plugin": {"webhook": table}}
        )
        load_plugins(settings)

    url = "http://127.0.0.1:9/hook"
    cases = [
        ({"secret": SECRET}, "plugin.webhook.urls"),
        ({"urls": ["ftp://x/y"], "secret": SECRET}, "plugin.webhook.urls[0]"),
        ({"urls": [url]}, "plugin.webhook.secret"),
        ({"urls": [url], "secret": SECRET, "secret_env": "X"}, "plugin.webhook.secret"),
        ({"urls": [url], "secret_env": "CHATPROXY_TEST_UNSET"}, "plugin.webhook.secret_env"),
        ({"urls": [url], "secret": SECRET, "timeout": 0}, "plugin.webhook.timeout"),
        ({"urls": [url], "secret": SECRET, "attempts": 0}, "plugin.webhook.attempts"),
        ({"urls": [url], "secret": SECRET, "events": ["chat.made"]}, "plugin.webhook.events"),
        ({"urls": [url], "secret": SECRET, "retries": 3}, "plugin.webhook.retries"),
    ]
    monkeypatch.delenv("CHATPROXY_TEST_UNSET", raising=False)
    for table, key in cases:
        with pytest.raises(SettingsError) as refused:
            load(table)
        assert refused.value.key == key, (table, str(refused.value))
        assert SECRET not in str(refused.value)
    monkeypatch.setenv("CHATPROXY_TEST_HOOK_SECRET", SECRET)
    hook = plugin({"urls": [url], "secret_env": "CHATPROXY_TEST_HOOK_SECRET"})
    assert hook.urls == (url,)


def _stored_ids(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM outbox")}


async def test_kill_9_with_a_slow_receiver_then_a_restart_delivers_every_event(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "crash.db"
    config = tmp_path / "chatproxy.toml"
    config.write_text(
        'plugins = ["webhook"]\n[plugin.webhook]\n'
        f'urls = ["{receiver.url}"]\nsecret_env = "HOOK_SECRET"\ntimeout = 30\nattempts = 1\n'
    )
    receiver.gate.clear()  # slow: every delivery waits
    env = {"HOOK_SECRET": SECRET}
    async with FakeUpstream() as fake, aiohttp.ClientSession() as http:
        fake.enqueue(*(Reply(content=f"answer {i}") for i in range(3)))
        server = Serve(
            "--upstream", fake.url, "--config", str(config), db=f"sqlite://{db}", env=env
        )
        await server.start()
        for i in range(3):
            await _ask(http, f"{server.base}/v1", f"question {i}")

        async def in_flight() -> bool:
            return len(receiver.arrived) >= 1

        await eventually(in_flight)
        assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
        before = set(receiver.arrived)
        receiver.gate.set()  # the receiver is fast again

        # The same instance (same port, so the same instance id) starts again.
        restarted = Serve("--upstream", fake.url, db=f"sqlite://{db}", env=env)
        restarted.port, restarted.base, restarted.argv = server.port, server.base, server.argv
        await restarted.start()
        try:
            expected = _stored_ids(db)
            assert len(expected) == 6

            async def everything() -> bool:
                return expected <= receiver.ids()

            await eventually(everything, within=30)
        finally:
            assert await restarted.stop() == 0
    # What was in flight when the process died came again, with the id it had.
    assert before <= expected
    assert all(receiver.arrived.count(event_id) >= 2 for event_id in before)
    assert {e["type"] for e in receiver.events} == {"chat.created", "answer.completed"}
