"""``on_event`` from the outbox: every change an event reports writes its row in the same
transaction (a turn creating a chat, an answer's end however it ends, a chat deleted by the API,
the CLI or a prune, answers interrupted by recovery or reaping), and delivery, off the request
path, calls the plugins in order per chat, retries a failure later without holding other chats
back, never gives one row to two instances at once, and forgets delivered rows after a while.
Both stores."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from chatproxy.appkeys import STORE
from chatproxy.cli import main as cli_main
from chatproxy.plugins import load_plugins
from chatproxy.server import ProxyServer
from chatproxy.settings import load_settings
from chatproxy.store import maintenance, outbox
from chatproxy.store.batch import Answer, NewMessage, Turn
from chatproxy.store.db import sqlite_path
from chatproxy.store.models import Instance
from chatproxy.store.store import Store, utcnow
from chatproxy.testing import FakeUpstream, Reply
from tests import plugin_recorder
from tests.test_query_plans import Capture, capture  # noqa: F401 (the fixture)
from tests.util import eventually

PLUGIN = "tests.plugin_recorder"


@pytest.fixture(autouse=True)
def rules() -> Iterator[dict[str, Any]]:
    plugin_recorder.reset()
    yield plugin_recorder.RULES
    plugin_recorder.reset()


@pytest.fixture
async def proxy(start_proxy: Any) -> ProxyServer:
    server = await start_proxy(plugins=[PLUGIN])
    delivery = _store(server).delivery
    assert delivery is not None
    delivery.retry_first = delivery.retry_longest = 0.1  # failures come back within the test
    return server


def _store(proxy: ProxyServer) -> Store:
    assert proxy.app is not None
    return proxy.app[STORE]


async def _ask(
    http: aiohttp.ClientSession, proxy: ProxyServer, content: str = "hi", **headers: str
) -> dict[str, str]:
    """A streamed turn, which must end as every stream does."""
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body, headers=headers) as resp:
        raw = await resp.read()
        assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
        return dict(resp.headers)


def _types(chat_id: str) -> list[str]:
    return [e.type for e in plugin_recorder.EVENTS if e.chat_id == chat_id]


async def _reported(chat_id: str, *types: str) -> None:
    async def check() -> bool:
        return _types(chat_id) == list(types)

    await eventually(check)


_ROWS = "SELECT id, type, chat_id, delivered_at FROM outbox ORDER BY seq"  # the test's own


async def _outbox(store: Store) -> list[dict[str, Any]]:
    return await store.read(lambda: store.conn.execute_query_dict(_ROWS))


async def _delivered(store: Store, n: int) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        rows = await _outbox(store)
        done = len(rows) >= n and all(r["delivered_at"] is not None for r in rows)
        return rows if done else None

    return await eventually(check)


async def test_a_chat_s_life_is_reported_in_order_once_committed(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="first"), Reply(content="second"), Reply(status=500))
    first = await _ask(http, proxy)
    again = await _ask(http, proxy, "more", **{"X-Chat-Id": first["X-Chat-Id"]})
    body = {"model": "m", "messages": [{"role": "user", "content": "fails"}]}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 500
    chat_id = first["X-Chat-Id"]
    async with http.delete(f"{proxy.url}/conversations/{chat_id}") as resp:
        assert resp.status == 200, await resp.text()

    rows = await _delivered(_store(proxy), 6)
    assert len({r["id"] for r in rows}) == 6 and all(r["id"].startswith("evt_") for r in rows)
    ordered = ["chat.created", "answer.completed", "answer.completed", "chat.deleted"]
    assert _types(chat_id) == ordered
    failed = next(e for e in plugin_recorder.EVENTS if e.type == "answer.failed")
    assert _types(failed.chat_id) == ["chat.created", "answer.failed"]
    assert failed.data["status"] == "failed" and failed.data["error"]["type"]
    events = {e.id: e for e in plugin_recorder.EVENTS}
    assert sorted(events) == sorted(r["id"] for r in rows)  # each delivered once, same ids

    created, answer, second, deleted = [e for e in plugin_recorder.EVENTS if e.chat_id == chat_id]
    assert (created.user_id, created.message_id, dict(created.data)) == (
        "local",
        None,
        {"title": "hi"},
    )
    assert answer.message_id == first["X-Message-Id"] and second.message_id == again["X-Message-Id"]
    assert answer.data["status"] == "completed" and answer.data["model"] == "m"
    assert answer.data["finish_reason"] == "stop" and "usage" in answer.data
    assert answer.data["error"] is None
    assert (deleted.message_id, dict(deleted.data)) == (None, {})
    assert created.created_at <= answer.created_at <= deleted.created_at


async def test_chats_deleted_by_the_cli_and_by_a_prune_are_reported(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    db_url: str,
    tmp_path: Path,
) -> None:
    upstream.enqueue(Reply(content="a"), Reply(content="b"))
    gone_by_cli = (await _ask(http, proxy, "one"))["X-Chat-Id"]
    pruned = (await _ask(http, proxy, "two"))["X-Chat-Id"]
    config = tmp_path / "chatproxy.toml"
    config.write_text(f'plugins = ["{PLUGIN}"]\n')

    def rm() -> None:
        args = ["chats", "rm", gone_by_cli, "--config", str(config), "--db", db_url]
        result = CliRunner().invoke(cli_main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output

    life = ("chat.created", "answer.completed", "chat.deleted")
    await asyncio.to_thread(rm)
    # The CLI wrote its event; the serving proxy delivers it.
    await _reported(gone_by_cli, *life)
    assert await maintenance.prune(_store(proxy), timedelta(0)) == 1
    await _reported(pruned, *life)


async def _plugin_errors(http: aiohttp.ClientSession, proxy: ProxyServer) -> float:
    async with http.get(proxy.url.removesuffix("/v1") + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = (s.labels.get("plugin"), s.labels.get("hook"))
            if s.name == "chatproxy_plugin_errors_total" and labels == (PLUGIN, "on_event"):
                return s.value
    return 0.0


async def test_a_failing_plugin_is_logged_counted_and_retried_and_streams_go_on(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    rules: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules["fail"] = 3
    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(20)]), Reply(content="next"))
    with caplog.at_level(logging.ERROR):
        first = await _ask(http, proxy)  # the stream ends as always ([DONE] checked)
        await eventually(lambda: _plugin_errors(http, proxy))
        second = await _ask(http, proxy, "again")
        rows = await _delivered(_store(proxy), 4)
    assert await _plugin_errors(http, proxy) == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "chatproxy.plugins"]
    assert sum(PLUGIN in line and "on_event" in line for line in logged) == 3
    # Each event was delivered once it went through, with the id it had when it failed.
    assert sorted(e.id for e in plugin_recorder.EVENTS) == sorted(r["id"] for r in rows)
    assert set(plugin_recorder.CALLS) == {r["id"] for r in rows}
    assert len(plugin_recorder.CALLS) == 4 + 3
    for chat in (first["X-Chat-Id"], second["X-Chat-Id"]):
        assert _types(chat) == ["chat.created", "answer.completed"]


async def test_a_chat_whose_event_keeps_failing_holds_back_only_its_own_events(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession, rules: dict[str, Any]
) -> None:
    rules["refuse_chat"] = "chat-held"
    upstream.enqueue(Reply(content="a"), Reply(content="b"))
    await _ask(http, proxy, "held", **{"X-Chat-Id": "chat-held"})
    other = await _ask(http, proxy, "other")
    await _reported(other["X-Chat-Id"], "chat.created", "answer.completed")
    rows = await _outbox(_store(proxy))
    created, answered = [r["id"] for r in rows if r["chat_id"] == "chat-held"]

    async def retried() -> bool:
        return plugin_recorder.CALLS.count(created) >= 3

    await eventually(retried)
    # The held chat's answer waits behind its creation, which is being retried.
    assert answered not in plugin_recorder.CALLS and _types("chat-held") == []
    rules.pop("refuse_chat")
    await _reported("chat-held", "chat.created", "answer.completed")


# -- in the store ------------------------------------------------------------------------------


def _plugins(db_url: str) -> Any:
    settings = load_settings(None, env={}, overrides={"plugins": [PLUGIN], "storage.url": db_url})
    return load_plugins(settings)


def _turn(chat_id: str, instance: str) -> Turn:
    return Turn(
        user_id="u",
        chat_id=chat_id,
        chat_is_new=True,
        title="t",
        parent_id=None,
        new_messages=[
            NewMessage(f"m_{chat_id}", "user", {"role": "user", "content": "q"}, "q", "h")
        ],
        assistant_id=f"a_{chat_id}",
        params={},
        model="m",
        instance_id=instance,
        created_at=utcnow(),
    )


def _answer(status: str = "completed") -> Answer:
    return Answer(
        status=status,
        text="x",
        data={"role": "assistant", "content": "x"},
        prefix_hash="h2",
        error=None,
        model="m",
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        total_tokens=2,
        usage={"total_tokens": 2},
        upstream_id=None,
        system_fingerprint=None,
        client_disconnected=False,
        ttft_ms=1,
        duration_ms=2,
        completed_at=utcnow(),
    )


async def test_answers_interrupted_by_recovery_and_by_reaping_are_reported(db_url: str) -> None:
    plugins = _plugins(db_url)
    gone = Store(db_url, instance_id="gone")
    gone.attach_plugins(plugins, deliver=False)
    await gone.open()
    await gone.ensure_user("u", "u")
    await gone.begin_turn(_turn("chat-recovered", "me"))
    await gone.begin_turn(_turn("chat-reaped", "gone"))
    old = utcnow() - timedelta(minutes=5)
    await gone.write(lambda: Instance.create(id="gone", started_at=old, heartbeat_at=old))
    await gone.close()  # both answers left in progress, as after kill -9

    me = Store(db_url, instance_id="me")
    me.attach_plugins(plugins)
    await me.open()
    try:
        assert await me.recover_interrupted() == 1
        assert await me.reap_instances(60.0) == {"gone": 1}
        await _delivered(me, 4)
        for chat in ("chat-recovered", "chat-reaped"):
            assert _types(chat) == ["chat.created", "answer.interrupted"]
        interrupted = [e for e in plugin_recorder.EVENTS if e.type == "answer.interrupted"]
        assert {e.message_id for e in interrupted} == {"a_chat-recovered", "a_chat-reaped"}
        assert all(e.user_id == "u" and e.data["status"] == "interrupted" for e in interrupted)
    finally:
        await me.close()


async def test_events_a_reaped_instance_had_claimed_are_delivered_by_another(db_url: str) -> None:
    plugins = _plugins(db_url)
    store = Store(db_url, instance_id="me")
    store.attach_plugins(plugins, deliver=False)
    await store.open()
    try:
        await store.ensure_user("u", "u")
        await store.begin_turn(_turn("chat-claimed", "me"))
        seqs = await outbox.candidates(store, 10)
        # Another instance claims the event, and stops heartbeating before it delivers it.
        assert len(await outbox.claim(store, seqs, "dead", 600.0)) == 1
        assert await outbox.candidates(store, 10) == []
        old = utcnow() - timedelta(minutes=5)
        await store.write(lambda: Instance.create(id="dead", started_at=old, heartbeat_at=old))
        await store.reap_instances(60.0)
        assert await outbox.candidates(store, 10) == seqs
    finally:
        await store.close()


async def test_instances_on_one_database_never_deliver_the_same_event_at_once(
    db_url: str, rules: dict[str, Any]
) -> None:
    rules["delay"] = 0.02
    plugins = _plugins(db_url)
    stores = [Store(db_url, instance_id=f"i{n}") for n in range(3)]
    for s in stores:
        s.attach_plugins(plugins)
        await s.open()
    await stores[0].ensure_user("u", "u")
    try:
        for i in range(30):
            writer = stores[i % 3]
            await writer.begin_turn(_turn(f"chat-{i}", writer.instance_id))
            await writer.finish(f"a_chat-{i}", f"chat-{i}", _answer())
        rows = await _delivered(stores[0], 60)
    finally:
        for s in stores:
            await s.close()
    assert plugin_recorder.OVERLAPS == []
    assert sorted(plugin_recorder.CALLS) == sorted(r["id"] for r in rows)  # each once
    for i in range(30):
        assert _types(f"chat-{i}") == ["chat.created", "answer.completed"]


async def test_delivered_rows_are_deleted_after_a_while(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(content="a"))
    await _ask(http, proxy)
    store = _store(proxy)
    await _delivered(store, 2)
    delivery = store.delivery
    assert delivery is not None
    assert await delivery.purge() == 0  # delivered just now: kept
    delivery.keep_delivered = 0.0
    await asyncio.sleep(0.01)
    assert await delivery.purge() == 2
    assert await _outbox(store) == []


async def test_without_an_on_event_plugin_nothing_is_written_to_the_outbox(
    start_proxy: Any, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    store = _store(proxy)
    assert (store.events, store.rewriter, store.delivery) == (False, None, None)
    upstream.enqueue(Reply(content="a"))
    headers = await _ask(http, proxy)
    async with http.delete(f"{proxy.url}/conversations/{headers['X-Chat-Id']}") as resp:
        assert resp.status == 200
    assert await _outbox(store) == []


# -- the outbox's statements use its indexes -----------------------------------------------------

# The outbox's own, and the store's statements that write events with what they change.
_OUTBOX = re.compile(
    r"\boutbox\b|SET status = 'interrupted'|SELECT id, owner_id FROM chats", re.IGNORECASE
)


def _sqlite_scans(path: str, statements: list[str]) -> list[str]:
    db = sqlite3.connect(path)
    try:
        found = []
        for sql in statements:
            limited = re.search(r"\bLIMIT\b", sql, re.IGNORECASE) is not None
            for row in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall():
                detail = row[-1]
                if detail.startswith("SCAN") and ("USING" not in detail or not limited):
                    found.append(f"{sql}\n    -> {detail}")
        return found
    finally:
        db.close()


def _pg_seq_scans(node: dict[str, Any]) -> list[str]:
    found = []
    if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == "outbox":
        found.append(f"Seq Scan on outbox ({node.get('Filter', 'no filter')})")
    for child in node.get("Plans", ()):
        found += _pg_seq_scans(child)
    return found


async def _pg_scans(url: str, statements: dict[str, tuple[Any, ...]]) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET enable_seqscan = off")
        found = []
        for sql, params in statements.items():
            plan = orjson.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params))
            found += [f"{sql}\n    -> {s}" for s in _pg_seq_scans(plan[0]["Plan"])]
        return found
    finally:
        await conn.close()


async def test_no_outbox_statement_reads_the_whole_table(
    capture: Capture,  # noqa: F811
    start_proxy: Any,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    rules: dict[str, Any],
    db_url: str,
) -> None:
    proxy = await start_proxy(plugins=[PLUGIN])
    store = _store(proxy)
    delivery = store.delivery
    assert delivery is not None
    delivery.retry_first = delivery.retry_longest = 0.1
    capture.on = True
    rules["fail"] = 1  # a retry, too
    upstream.enqueue(Reply(content="a"), Reply(content="b"))
    first = await _ask(http, proxy)
    await _ask(http, proxy, "b")
    async with http.delete(f"{proxy.url}/conversations/{first['X-Chat-Id']}") as resp:
        assert resp.status == 200
    await _delivered(store, 5)
    await store.recover_interrupted()
    await store.reap_instances(60.0)
    delivery.keep_delivered = 0.0
    await delivery.purge()
    capture.on = False
    statements: dict[str, tuple[Any, ...]] = {}
    for sql, params in capture.statements:
        if _OUTBOX.search(sql) and not sql.lstrip().startswith("--") and sql != _ROWS:
            statements.setdefault(sql, params)
    text = "\n".join(statements)
    for needle in ("INSERT INTO outbox", "NOT EXISTS", "delivered_at = ", "DELETE FROM outbox"):
        assert needle in text, f"no captured statement has {needle!r}"
    explained = {  # INSERT ... VALUES reads nothing
        sql: params
        for sql, params in statements.items()
        if not re.match(r"\s*INSERT\b(?!.*\bSELECT\b)", sql, re.IGNORECASE | re.DOTALL)
    }
    path = sqlite_path(db_url)
    if path is not None:
        scans = _sqlite_scans(path, list(explained))
    else:
        scans = await _pg_scans(db_url, explained)
    assert not scans, "\n".join(scans)
