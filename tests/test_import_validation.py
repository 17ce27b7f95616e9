"""`chatproxy import` of documents that leave fields out or hold bad values (issue 13, item 7).

A field that can be derived is derived (the prefix hash from the parent's and the message, as
the proxy computes it; the head, the times, the token counts from the usage), an optional one
takes its default, and anything else is refused before anything is written: one line naming
the line of the file and the field, exit 1, nothing of the file imported.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner, Result

from chatproxy.appkeys import STORE
from chatproxy.cli import main
from chatproxy.export import read_documents
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.conftest import StartProxy
from tests.util import eventually

QUESTION = {"role": "user", "content": "Name a colour."}
FOLLOW_UP = {"role": "user", "content": "And another?"}
# What `chat_document` writes for a message beside its id, parent, role and message.
OPTIONAL_MESSAGE_FIELDS = [
    "status",
    "error",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usage",
    "upstream_id",
    "system_fingerprint",
    "params",
    "client_disconnected",
    "ttft_ms",
    "duration_ms",
    "instance_id",
    "prefix_hash",
    "metadata",
    "created_at",
    "completed_at",
]


async def cli(*args: str) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CHATPROXY_")}
    return await asyncio.to_thread(
        CliRunner().invoke, main, list(args), env=env, catch_exceptions=True
    )


def assert_one_line(result: Result, *needles: str) -> str:
    what = (result.exit_code, result.output, result.exception)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), what
    assert "Traceback" not in result.output and result.stdout == "", what
    (line,) = result.stderr.splitlines()
    assert line.startswith("chatproxy: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


async def post(http: aiohttp.ClientSession, proxy: ProxyServer, messages: list[Any]) -> Any:
    """Send ``messages``; return the chat id and the answer, once the answer is stored (the
    response may reach the client before its final row is written)."""
    body = {"model": "m", "messages": messages}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = (await resp.json())["choices"][0]["message"]
        chat_id, message_id = resp.headers["X-Chat-Id"], resp.headers["X-Message-Id"]

    async def stored() -> bool:
        message = await proxy.app[STORE].get_message(message_id)
        return message is not None and message.status == "completed"

    await eventually(stored)
    return chat_id, answer


async def chat_ids(db: str) -> list[str]:
    store = Store(db)
    await store.open(migrate=False)
    try:
        from chatproxy.store.models import Chat

        return sorted(await store.read(lambda: Chat.all().values_list("id", flat=True)))
    finally:
        await store.close()


@pytest.fixture
async def exported(
    start_proxy: StartProxy, upstream: FakeUpstream, db_url: str, tmp_path: Path
) -> dict[str, Any]:
    """The lossless export of a chat made through the proxy (two turns and a regenerate),
    then removed from the database (proxy stopped): importing it again must give it back."""
    proxy = await start_proxy()
    upstream.enqueue(Reply(content="Blue."), Reply(content="Green."), Reply(content="Teal."))
    async with aiohttp.ClientSession() as http:
        chat_id, first = await post(http, proxy, [QUESTION])
        assert (await post(http, proxy, [QUESTION, first, FOLLOW_UP]))[0] == chat_id
        # The same history again: a sibling answer.
        assert (await post(http, proxy, [QUESTION, first, FOLLOW_UP]))[0] == chat_id
    await proxy.stop()
    out = tmp_path / "chat.json"
    assert (await cli("export", chat_id, "--db", db_url, "-o", str(out))).exit_code == 0
    assert (await cli("chats", "rm", chat_id, "--db", db_url)).exit_code == 0
    return orjson.loads(out.read_bytes())


def write_jsonl(path: Path, *docs: Any) -> Path:
    path.write_bytes(b"".join(orjson.dumps(doc) + b"\n" for doc in docs))
    return path


async def export_json(db: str, chat_id: str) -> dict[str, Any]:
    result = await cli("export", chat_id, "--db", db)
    assert result.exit_code == 0, (result.output, result.exception)
    return orjson.loads(result.stdout_bytes)


# -- what is left out is derived or defaulted ---------------------------------------------------


async def test_a_document_without_any_optional_field_imports_with_derived_hashes(
    exported: dict[str, Any], db_url: str, tmp_path: Path
) -> None:
    bare = copy.deepcopy(exported)
    for name in ("title", "visibility", "metadata", "head_id", "created_at", "updated_at"):
        del bare["chat"][name]
    for m in bare["messages"]:
        for name in OPTIONAL_MESSAGE_FIELDS:
            del m[name]
        del m["role"]  # the message itself says it
    path = write_jsonl(tmp_path / "bare.jsonl", bare)
    result = await cli("import", str(path), "--db", db_url)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith("imported 1 chat(s) and 5 message(s)")

    back = await export_json(db_url, exported["chat"]["id"])
    original = {m["id"]: m for m in exported["messages"]}
    for m in back["messages"]:
        # The prefix hash is computed exactly as the proxy computed it.
        assert m["prefix_hash"] == original[m["id"]]["prefix_hash"], m["id"]
        assert m["role"] == original[m["id"]]["role"]
        assert m["message"] == original[m["id"]]["message"]
        assert (m["status"], m["client_disconnected"], m["error"]) == ("completed", False, None)
        assert m["created_at"] is not None and m["completed_at"] is None
    # The head is the newest leaf (the regenerated answer), as the proxy had it.
    assert back["chat"]["head_id"] == exported["chat"]["head_id"]
    assert (back["chat"]["visibility"], back["chat"]["metadata"]) == ("private", {})
    assert [m["id"] for m in back["messages"]] == [m["id"] for m in exported["messages"]]


@pytest.mark.parametrize("field", OPTIONAL_MESSAGE_FIELDS)
async def test_each_optional_field_may_be_left_out(
    exported: dict[str, Any], db_url: str, tmp_path: Path, field: str
) -> None:
    doc = copy.deepcopy(exported)
    for m in doc["messages"]:
        del m[field]
    path = write_jsonl(tmp_path / "doc.jsonl", doc)
    result = await cli("import", str(path), "--db", db_url)
    assert result.exit_code == 0, (result.output, result.exception)
    back = {m["id"]: m for m in (await export_json(db_url, doc["chat"]["id"]))["messages"]}
    for m in exported["messages"]:
        expected = {
            "status": "completed",
            "client_disconnected": False,
            "prefix_hash": m["prefix_hash"],  # derived
            # The token counts are the usage's; the creation time keeps the order.
            **{name: m[name] for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
        }.get(field)
        if field == "created_at":
            continue
        assert back[m["id"]][field] == expected, (field, m["id"])


async def test_a_resent_history_threads_into_the_imported_chat(
    exported: dict[str, Any],
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    db_url: str,
    tmp_path: Path,
) -> None:
    doc = copy.deepcopy(exported)
    for m in doc["messages"]:
        del m["prefix_hash"]
    path = write_jsonl(tmp_path / "doc.jsonl", doc)
    assert (await cli("import", str(path), "--db", db_url)).exit_code == 0
    proxy = await start_proxy()
    upstream.enqueue(Reply(content="Red."))
    by_id = {m["id"]: m for m in doc["messages"]}
    head = by_id[doc["chat"]["head_id"]]
    branch = []
    while head is not None:
        branch.insert(0, head["message"])
        head = by_id.get(head["parent_id"] or "")
    async with aiohttp.ClientSession() as http:
        chat_id, _ = await post(http, proxy, [*branch, {"role": "user", "content": "One more?"}])
    assert chat_id == doc["chat"]["id"]


async def test_an_unfinished_answer_without_a_hash_stays_unhashed_as_the_proxy_keeps_it(
    db_url: str, tmp_path: Path
) -> None:
    doc = {
        "format": "chatproxy.chat",
        "version": 1,
        "chat": {"id": "chat_cut", "owner": "alice", "created_at": "2024-05-01T10:00:00"},
        "messages": [
            {"id": "msg_q", "message": QUESTION},
            {
                "id": "msg_a",
                "parent_id": "msg_q",
                "status": "interrupted",
                "message": {"role": "assistant", "content": "Bl"},
            },
        ],
    }
    path = write_jsonl(tmp_path / "cut.jsonl", doc)
    assert (await cli("import", str(path), "--db", db_url)).exit_code == 0
    back = await export_json(db_url, "chat_cut")
    question, answer = back["messages"]
    assert len(question["prefix_hash"]) == 32 and answer["prefix_hash"] == ""
    assert answer["status"] == "interrupted"
    # A date and time without a zone is UTC; left-out times follow in document order.
    assert back["chat"]["created_at"] == "2024-05-01T10:00:00+00:00"
    assert question["created_at"] == "2024-05-01T10:00:00+00:00"
    assert answer["created_at"] == "2024-05-01T10:00:00.000001+00:00"


# -- what is wrong is refused, naming the line and the field ------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value

    return mutate


_DELETE = object()

BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("format", _DELETE, "not a chatproxy chat export"),
    ("version", 2, "version"),
    ("version", _DELETE, "version"),
    ("version", True, "version"),
    ("chat", _DELETE, "chat"),
    ("chat", [], "chat"),
    ("chat.id", _DELETE, "chat.id"),
    ("chat.id", "bad id!", "chat.id"),
    ("chat.id", "c" * 129, "chat.id"),
    ("chat.owner", _DELETE, "chat.owner"),
    ("chat.owner", 5, "chat.owner"),
    ("chat.owner", "u" * 200, "chat.owner"),
    ("chat.title", "t" * 300, "chat.title"),
    ("chat.title", 5, "chat.title"),
    ("chat.visibility", "secret", "chat.visibility"),
    ("chat.metadata", [1], "chat.metadata"),
    ("chat.created_at", "yesterday", "chat.created_at"),
    ("chat.updated_at", 12345, "chat.updated_at"),
    ("chat.head_id", "msg_nowhere", "chat.head_id"),
    ("messages", "none", "messages"),
    ("messages.1", "a message", "messages[1]"),
    ("messages.1.id", _DELETE, "messages[1].id"),
    ("messages.1.id", "m" * 65, "messages[1].id"),
    ("messages.1.id", "bad id!", "messages[1].id"),
    ("messages.1.parent_id", "msg_nowhere", "messages[1].parent_id"),
    ("messages.1.parent_id", 7, "messages[1].parent_id"),
    ("messages.1.message", _DELETE, "messages[1].message"),
    ("messages.1.message", "Blue.", "messages[1].message"),
    ("messages.1.role", 5, "messages[1].role"),
    ("messages.1.role", "r" * 17, "messages[1].role"),
    ("messages.1.status", "done", "messages[1].status"),
    ("messages.1.error", "boom", "messages[1].error"),
    ("messages.1.model", "m" * 300, "messages[1].model"),
    ("messages.1.finish_reason", 5, "messages[1].finish_reason"),
    ("messages.1.prompt_tokens", -1, "messages[1].prompt_tokens"),
    ("messages.1.prompt_tokens", "12", "messages[1].prompt_tokens"),
    ("messages.1.total_tokens", 2**40, "messages[1].total_tokens"),
    ("messages.1.completion_tokens", True, "messages[1].completion_tokens"),
    ("messages.1.usage", [1], "messages[1].usage"),
    ("messages.1.params", "temperature=1", "messages[1].params"),
    ("messages.1.client_disconnected", "yes", "messages[1].client_disconnected"),
    ("messages.1.ttft_ms", 1.5, "messages[1].ttft_ms"),
    ("messages.1.instance_id", "i" * 65, "messages[1].instance_id"),
    ("messages.1.prefix_hash", "xyz", "messages[1].prefix_hash"),
    ("messages.1.metadata", "x", "messages[1].metadata"),
    ("messages.1.created_at", "not a date", "messages[1].created_at"),
    ("messages.1.completed_at", 12345, "messages[1].completed_at"),
]


@pytest.mark.parametrize(
    ("path", "value", "named"),
    BAD_FIELDS,
    ids=[f"{p}={'deleted' if v is _DELETE else str(v)[:12]}" for p, v, _ in BAD_FIELDS],
)
async def test_a_bad_field_is_one_line_naming_line_and_field_and_nothing_of_it_is_imported(
    exported: dict[str, Any], db_url: str, tmp_path: Path, path: str, value: Any, named: str
) -> None:
    good = copy.deepcopy(exported)
    bad = copy.deepcopy(exported)
    bad["chat"]["id"] = "chat_second"
    for m in bad["messages"]:  # ids of their own, so that only the mutation is wrong
        m["id"] = m["id"] + "_2"
        m["parent_id"] = m["parent_id"] and m["parent_id"] + "_2"
    bad["chat"]["head_id"] += "_2"
    _set(path, value)(bad)
    file = write_jsonl(tmp_path / "backup.jsonl", good, bad)
    line = assert_one_line(await cli("import", str(file), "--db", db_url), str(file))
    assert f": line 2: {named}" in line, line
    # Nothing of the bad document; the good one before it is imported, and says so.
    assert await chat_ids(db_url) == [good["chat"]["id"]]
    assert line.endswith(
        f"(the 1 chat(s) and {len(good['messages'])} message(s) before it are imported)"
    )
    assert await export_json(db_url, good["chat"]["id"]) == good


async def test_duplicate_ids_and_parent_cycles_are_refused(
    exported: dict[str, Any], db_url: str, tmp_path: Path
) -> None:
    doc = copy.deepcopy(exported)
    doc["messages"][2]["id"] = doc["messages"][1]["id"]
    file = write_jsonl(tmp_path / "dup.jsonl", doc)
    assert_one_line(await cli("import", str(file), "--db", db_url), "line 1: messages[2].id")
    doc = copy.deepcopy(exported)
    doc["messages"][0]["parent_id"] = doc["messages"][1]["id"]  # question <-> first answer
    file = write_jsonl(tmp_path / "cycle.jsonl", doc)
    line = assert_one_line(await cli("import", str(file), "--db", db_url))
    assert "parent_id" in line and "descendant" in line
    assert await chat_ids(db_url) == []


async def test_a_single_json_document_names_the_field(
    exported: dict[str, Any], db_url: str, tmp_path: Path
) -> None:
    doc = copy.deepcopy(exported)
    doc["messages"][3]["status"] = "done"
    file = tmp_path / "chat.json"
    file.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    line = assert_one_line(await cli("import", str(file), "--db", db_url))
    assert line == (
        f"chatproxy: {file}: messages[3].status: expected one of in_progress, completed, "
        "incomplete, failed, cancelled, interrupted, got 'done'"
    )


async def test_ids_taken_by_another_user_or_chat_are_refused_and_nothing_of_it_stored(
    exported: dict[str, Any], db_url: str, tmp_path: Path
) -> None:
    original = write_jsonl(tmp_path / "original.jsonl", exported)
    assert (await cli("import", str(original), "--db", db_url)).exit_code == 0
    chat_id = exported["chat"]["id"]

    other = copy.deepcopy(exported)
    other["chat"]["id"] = "chat_other"
    for m in other["messages"]:
        m["id"] += "_o"
        m["parent_id"] = m["parent_id"] and m["parent_id"] + "_o"
    other["chat"]["head_id"] += "_o"
    stolen_chat = copy.deepcopy(exported)
    stolen_chat["chat"]["owner"] = "mallory"
    stolen_message = copy.deepcopy(other)
    stolen_message["chat"]["id"] = "chat_third"
    stolen_message["messages"][0]["id"] = exported["messages"][0]["id"]
    stolen_message["messages"][1]["parent_id"] = exported["messages"][0]["id"]

    for bad, needle in (
        (stolen_chat, f"chat {chat_id!r} is already stored for another user"),
        (stolen_message, f"message {exported['messages'][0]['id']!r} of chat 'chat_third'"),
    ):
        file = write_jsonl(tmp_path / "conflict.jsonl", other, bad)
        assert_one_line(await cli("import", str(file), "--db", db_url), f"line 2: {needle}")
        # Nothing of the refused document; "chat_other", on line 1, is imported.
        assert await chat_ids(db_url) == sorted([chat_id, "chat_other"])
    back = await export_json(db_url, chat_id)
    assert back["chat"]["owner"] == exported["chat"]["owner"]
    assert back == exported


def test_read_documents_returns_complete_documents_for_other_readers() -> None:
    doc = {
        "format": "chatproxy.chat",
        "version": 1,
        "chat": {"id": "c1", "owner": "u"},
        "messages": [{"id": "m1", "message": QUESTION}],
    }
    (read,) = read_documents(orjson.dumps(doc))
    assert read["chat"]["head_id"] == "m1"
    # A title left out is derived as the proxy names a chat: its first user message.
    assert read["chat"]["title"] == "Name a colour." and read["chat"]["visibility"] == "private"
    (m,) = read["messages"]
    assert m["role"] == "user" and m["status"] == "completed" and len(m["prefix_hash"]) == 32
    assert set(OPTIONAL_MESSAGE_FIELDS) <= set(m)


async def test_an_import_with_nul_characters_is_stored_alike_on_both_stores(
    db_url: str, tmp_path: Path
) -> None:
    doc = {
        "format": "chatproxy.chat",
        "version": 1,
        "chat": {"id": "chat_nul", "owner": "ada", "title": "a\x00b", "metadata": {"k": "v\x00"}},
        "messages": [
            {"id": "msg_nul1", "parent_id": None, "message": {"role": "user", "content": "x\x00y"}},
        ],
    }
    path = tmp_path / "nul.jsonl"
    path.write_bytes(orjson.dumps(doc) + b"\n")
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["import", str(path), "--db", db_url]
    )
    assert result.exit_code == 0, result.output
    store = Store(db_url)
    await store.open()
    try:
        chat = await store.get_chat("chat_nul")
        (message,) = await store.chat_messages("chat_nul")
    finally:
        await store.close()
    assert chat is not None and chat.title == "a\ufffdb" and chat.metadata == {"k": "v\ufffd"}
    assert message.text == "x\ufffdy" and message.data["content"] == "x\ufffdy"
