"""``chatproxy export`` and the CLI's contract (SPEC §10): formats, files, exit codes, help.

The data is produced the way a user produces it: the real ``openai`` SDK talks to a running
proxy in front of the fake upstream. The CLI then runs through click's ``CliRunner``; since
the command calls ``asyncio.run`` itself, async tests run it in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner, Result

from chatproxy.cli import main
from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply, ToolCall

StartProxy = Callable[..., Awaitable[ProxyServer]]  # the conftest fixture

MODEL = "fake-model"
QUESTION = "What is the capital of France?"
REASONING = "The user asks about geography; France's capital is Paris."
ANSWER_1 = "The capital of France is Paris."
QUESTION_2 = "What is the weather there right now?"
TOOL_NAME = "get_weather"
TOOL_ARGS = '{"city": "Paris", "unit": "celsius"}'
TOOL_CALL_ID = "call_weather_1"
TOOL_RESULT = '{"temperature": 21, "sky": "clear"}'
ANSWER_3_ABANDONED = "It is sunny and 21 degrees in Paris (first try)."
ANSWER_3 = "Paris is clear and pleasant at 21 degrees."

USAGE_1 = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
USAGE_2 = {"prompt_tokens": 23, "completion_tokens": 5, "total_tokens": 28}
USAGE_3A = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
USAGE_3B = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}

ASSISTANT_TOOL_CALL = {
    "id": TOOL_CALL_ID,
    "type": "function",
    "function": {"name": TOOL_NAME, "arguments": TOOL_ARGS},
}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The invoking environment minus any CHATPROXY_* a developer may have set."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CHATPROXY_")}
    env.update(extra or {})
    return env


def invoke(args: list[str], env: Mapping[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=clean_env(env), catch_exceptions=True)


async def cli(*args: str, env: Mapping[str, str] | None = None) -> Result:
    return await asyncio.to_thread(invoke, list(args), env)


def assert_one_line_error(result: Result, code: int) -> str:
    """Exit ``code``, nothing on stdout, one ``chatproxy:`` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatproxy: "), lines[0]
    assert result.stdout == ""
    return lines[0]


async def stored_ids(db: str, chat_id: str) -> set[str]:
    """The ids of the chat's stored messages, read through a store of its own (any database)."""
    store = Store(db)
    await store.open(migrate=False)
    try:
        return {m.id for m in await store.chat_messages(chat_id)}
    finally:
        await store.close()


async def count_rows(db: str, chat_id: str) -> int:
    return len(await stored_ids(db, chat_id))


@dataclass
class Recorded:
    """One chat made through the proxy, with the ids the proxy announced in its headers."""

    db: str  # the storage URL
    chat_id: str
    a1: str  # streamed, with reasoning
    a2: str  # tool call
    a3_abandoned: str  # first answer after the tool result, then regenerated
    a3: str  # the regenerated answer: the chat's head
    branch: list[dict[str, Any]]  # the active branch as the client knows it

    @property
    def url(self) -> str:
        return str(self.db)


async def stream_text(client: openai.AsyncOpenAI, messages: list[dict[str, Any]]) -> Any:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, stream=True
    )
    text = ""
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return raw.headers, text


async def make_chat(
    start_proxy: StartProxy, upstream: FakeUpstream, db: str, *, stop: bool = True
) -> Recorded:
    proxy = await start_proxy()
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0) as c:
        # Turn 1: a streamed answer with reasoning.
        upstream.enqueue(Reply(content=ANSWER_1, reasoning=REASONING, usage=USAGE_1))
        history: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
        headers, text = await stream_text(c, history)
        assert text == ANSWER_1
        chat_id, a1 = headers["x-chat-id"], headers["x-message-id"]

        # Turn 2: the client resends the history; the answer is a tool call.
        upstream.enqueue(
            Reply(tool_calls=[ToolCall(TOOL_NAME, TOOL_ARGS, id=TOOL_CALL_ID)], usage=USAGE_2)
        )
        history += [
            {"role": "assistant", "content": ANSWER_1},
            {"role": "user", "content": QUESTION_2},
        ]
        raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=history)
        completion = raw.parse()
        assert completion.choices[0].message.tool_calls[0].function.name == TOOL_NAME
        assert raw.headers["x-chat-id"] == chat_id
        a2 = raw.headers["x-message-id"]

        # Turn 3: the tool result; streamed answer.
        upstream.enqueue(Reply(content=ANSWER_3_ABANDONED, usage=USAGE_3A))
        history += [
            {"role": "assistant", "content": None, "tool_calls": [ASSISTANT_TOOL_CALL]},
            {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": TOOL_RESULT},
        ]
        headers, text = await stream_text(c, history)
        assert text == ANSWER_3_ABANDONED
        assert headers["x-chat-id"] == chat_id
        a3_abandoned = headers["x-message-id"]

        # Regenerate: the same history again gives a sibling of the last answer.
        upstream.enqueue(Reply(content=ANSWER_3, usage=USAGE_3B))
        headers, text = await stream_text(c, history)
        assert text == ANSWER_3
        assert headers["x-chat-id"] == chat_id
        a3 = headers["x-message-id"]
    if stop:
        await proxy.stop()
    branch = [*history, {"role": "assistant", "content": ANSWER_3}]
    return Recorded(db, chat_id, a1, a2, a3_abandoned, a3, branch)


@pytest.fixture
async def recorded(start_proxy: StartProxy, upstream: FakeUpstream, db_url: str) -> Recorded:
    return await make_chat(start_proxy, upstream, db_url)


async def export(rec: Recorded, fmt: str, *extra: str) -> Result:
    result = await cli("export", rec.chat_id, "--db", rec.url, "--format", fmt, *extra)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


# -- json ---------------------------------------------------------------------------------------


async def test_json_export_holds_every_message_of_every_branch(recorded: Recorded) -> None:
    doc = json.loads((await export(recorded, "json")).stdout)
    ids = [m["id"] for m in doc["messages"]]
    assert len(ids) == await count_rows(recorded.db, recorded.chat_id) == 7
    assert set(ids) == await stored_ids(recorded.db, recorded.chat_id)
    assert {recorded.a1, recorded.a2, recorded.a3_abandoned, recorded.a3} <= set(ids)
    assert [m["role"] for m in doc["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "assistant",
    ]


async def test_json_export_records_the_chat_and_its_head(recorded: Recorded) -> None:
    doc = json.loads((await export(recorded, "json")).stdout)
    chat = doc["chat"]
    assert chat["id"] == recorded.chat_id
    assert chat["head_id"] == recorded.a3
    assert chat["title"] == QUESTION
    assert chat["created_at"] and chat["updated_at"]


async def test_json_export_links_parents_into_a_tree_with_two_branches(
    recorded: Recorded,
) -> None:
    doc = json.loads((await export(recorded, "json")).stdout)
    by_id = {m["id"]: m for m in doc["messages"]}
    user_1, a1, user_2, a2, tool = (
        m for m in doc["messages"] if m["id"] not in (recorded.a3, recorded.a3_abandoned)
    )
    assert user_1["parent_id"] is None
    assert a1["id"] == recorded.a1 and a1["parent_id"] == user_1["id"]
    assert user_2["parent_id"] == recorded.a1
    assert a2["id"] == recorded.a2 and a2["parent_id"] == user_2["id"]
    assert tool["parent_id"] == recorded.a2
    # The regenerate is a sibling: both answers hang from the tool message.
    assert by_id[recorded.a3_abandoned]["parent_id"] == tool["id"]
    assert by_id[recorded.a3]["parent_id"] == tool["id"]


async def test_json_export_keeps_status_usage_and_timings(recorded: Recorded) -> None:
    doc = json.loads((await export(recorded, "json")).stdout)
    by_id = {m["id"]: m for m in doc["messages"]}
    assert all(m["status"] == "completed" for m in doc["messages"])
    expected = {
        recorded.a1: (USAGE_1, "stop"),
        recorded.a2: (USAGE_2, "tool_calls"),
        recorded.a3_abandoned: (USAGE_3A, "stop"),
        recorded.a3: (USAGE_3B, "stop"),
    }
    for message_id, (usage, finish_reason) in expected.items():
        m = by_id[message_id]
        assert m["usage"] == usage
        assert m["prompt_tokens"] == usage["prompt_tokens"]
        assert m["completion_tokens"] == usage["completion_tokens"]
        assert m["total_tokens"] == usage["total_tokens"]
        assert m["finish_reason"] == finish_reason
        assert m["model"] == MODEL
        assert isinstance(m["ttft_ms"], int) and m["ttft_ms"] >= 0
        assert isinstance(m["duration_ms"], int) and m["duration_ms"] >= m["ttft_ms"]
        assert m["completed_at"] is not None
        assert m["error"] is None


async def test_json_export_keeps_reasoning_and_tool_calls_in_the_stored_message(
    recorded: Recorded,
) -> None:
    doc = json.loads((await export(recorded, "json")).stdout)
    by_id = {m["id"]: m for m in doc["messages"]}
    a1 = by_id[recorded.a1]["message"]
    assert a1["role"] == "assistant"
    assert a1["content"] == ANSWER_1
    assert a1["reasoning_content"] == REASONING
    a2 = by_id[recorded.a2]["message"]
    assert not a2.get("content")
    assert a2["tool_calls"] == [ASSISTANT_TOOL_CALL]
    tool = next(m for m in doc["messages"] if m["role"] == "tool")["message"]
    assert tool == {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": TOOL_RESULT}
    assert by_id[recorded.a3_abandoned]["message"]["content"] == ANSWER_3_ABANDONED
    assert by_id[recorded.a3]["message"]["content"] == ANSWER_3


# -- jsonl --------------------------------------------------------------------------------------


async def test_jsonl_export_is_one_line_holding_the_json_document(recorded: Recorded) -> None:
    jsonl = (await export(recorded, "jsonl")).stdout
    lines = jsonl.splitlines()
    assert len(lines) == 1
    assert jsonl.endswith("\n")
    as_json = json.loads((await export(recorded, "json")).stdout)
    assert json.loads(lines[0]) == as_json


# -- markdown -----------------------------------------------------------------------------------


async def test_markdown_export_shows_the_active_branch_in_order(recorded: Recorded) -> None:
    md = (await export(recorded, "markdown")).stdout
    assert md.splitlines()[0] == f"# {QUESTION}"
    in_order = [QUESTION, REASONING, ANSWER_1, QUESTION_2, TOOL_NAME, TOOL_RESULT, ANSWER_3]
    positions = [md.find(text) for text in in_order]
    assert -1 not in positions, dict(zip(in_order, positions, strict=True))
    assert positions == sorted(positions)


async def test_markdown_export_leaves_out_the_abandoned_branch(recorded: Recorded) -> None:
    md = (await export(recorded, "markdown")).stdout
    assert ANSWER_3_ABANDONED not in md
    assert ANSWER_3 in md


async def test_markdown_export_folds_reasoning_into_details(recorded: Recorded) -> None:
    md = (await export(recorded, "markdown")).stdout
    details = re.findall(r"<details>(.*?)</details>", md, flags=re.S)
    assert len(details) == 1
    assert REASONING in details[0]
    assert ANSWER_1 not in details[0]


async def test_markdown_export_shows_tool_call_name_and_arguments(recorded: Recorded) -> None:
    md = (await export(recorded, "markdown")).stdout
    assert TOOL_NAME in md
    assert TOOL_ARGS in md
    assert TOOL_CALL_ID in md


# -- openai -------------------------------------------------------------------------------------


async def test_openai_export_is_the_active_branch_in_chat_completions_form(
    recorded: Recorded,
) -> None:
    doc = json.loads((await export(recorded, "openai")).stdout)
    assert list(doc) == ["messages"]
    messages = doc["messages"]
    assert [(m["role"], m.get("content") or None) for m in messages] == [
        (m["role"], m.get("content") or None) for m in recorded.branch
    ]
    assert messages[3]["tool_calls"] == [ASSISTANT_TOOL_CALL]
    assert messages[4]["tool_call_id"] == TOOL_CALL_ID
    assert all("reasoning_content" not in m for m in messages)
    assert ANSWER_3_ABANDONED not in json.dumps(doc)


async def test_openai_export_replays_into_the_same_chat(
    recorded: Recorded, start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    messages = json.loads((await export(recorded, "openai")).stdout)["messages"]
    before = await count_rows(recorded.db, recorded.chat_id)
    proxy = await start_proxy()
    upstream.enqueue(Reply(content="Anything else?"))
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0) as c:
        raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        assert raw.parse().choices[0].message.content == "Anything else?"
    await proxy.stop()
    assert raw.headers["x-chat-id"] == recorded.chat_id
    # The whole history was recognised: only the new answer was added, under the old head.
    assert await count_rows(recorded.db, recorded.chat_id) == before + 1
    doc = json.loads((await export(recorded, "json")).stdout)
    new = next(m for m in doc["messages"] if m["id"] == raw.headers["x-message-id"])
    assert new["parent_id"] == recorded.a3
    assert doc["chat"]["head_id"] == new["id"]
    # The upstream received the exported messages as sent.
    sent = upstream.chat_requests[-1].json["messages"]
    assert [(m["role"], m.get("content")) for m in sent] == [
        (m["role"], m.get("content")) for m in messages
    ]


# -- output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "jsonl", "markdown", "openai"])
async def test_output_file_receives_the_export_and_stdout_stays_empty(
    recorded: Recorded, tmp_path: Path, fmt: str
) -> None:
    to_stdout = (await export(recorded, fmt)).stdout_bytes
    out = tmp_path / f"chat.{fmt}"
    result = await export(recorded, fmt, "-o", str(out))
    assert result.stdout == ""
    assert result.stderr == ""
    assert out.read_bytes() == to_stdout


async def test_export_reads_the_database_while_the_proxy_is_serving(
    start_proxy: StartProxy, upstream: FakeUpstream, db_url: str
) -> None:
    rec = await make_chat(start_proxy, upstream, db_url, stop=False)
    doc = json.loads((await export(rec, "json")).stdout)
    assert len(doc["messages"]) == 7
    assert doc["chat"]["head_id"] == rec.a3


async def test_unwritable_output_file_exits_1_with_one_line(
    recorded: Recorded, tmp_path: Path
) -> None:
    target = tmp_path / "missing-dir" / "chat.json"
    result = await cli("export", recorded.chat_id, "--db", recorded.url, "-o", str(target))
    line = assert_one_line_error(result, 1)
    assert str(target) in line


# -- exit codes ---------------------------------------------------------------------------------


async def test_unknown_chat_id_exits_1_with_one_line_on_stderr(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'blank.db'}"
    result = await cli("export", "chat_doesnotexist", "--db", db)
    line = assert_one_line_error(result, 1)
    assert "chat_doesnotexist" in line


def test_bad_format_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    result = invoke(
        ["export", "chat_x", "--db", f"sqlite://{tmp_path / 'x.db'}", "--format", "xml"]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "xml" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_config_file_with_unknown_key_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 8080\n")
    result = invoke(["export", "chat_x", "-c", str(bad), "--db", f"sqlite://{tmp_path / 'x.db'}"])
    line = assert_one_line_error(result, 2)
    assert "server.prot" in line
    assert not (tmp_path / "x.db").exists()


def test_serve_with_unknown_config_key_exits_2_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[chats]\non_disconect = "abort"\n')
    line = assert_one_line_error(invoke(["serve", "-c", str(bad)]), 2)
    assert "chats.on_disconect" in line


def test_serve_with_bad_port_in_env_exits_2_naming_the_key() -> None:
    result = invoke(["serve"], env={"CHATPROXY_SERVER__PORT": "abc"})
    line = assert_one_line_error(result, 2)
    assert "server.port" in line
    assert "abc" in line


def test_serve_with_non_numeric_port_flag_is_a_usage_error_exit_2() -> None:
    result = invoke(["serve", "--port", "abc"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--port" in result.stderr


def test_serve_with_missing_config_file_exits_2(tmp_path: Path) -> None:
    line = assert_one_line_error(invoke(["serve", "-c", str(tmp_path / "nope.toml")]), 2)
    assert "nope.toml" in line


def test_unopenable_sqlite_database_exits_1_instead_of_hanging(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'no-such-dir' / 'chat.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    command = [sys.executable, "-m", "chatproxy", "export", "chat_x", "--db", db]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=10, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`chatproxy export --db {db}` still running after 10 s")
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("chatproxy: ")


# -- db upgrade ---------------------------------------------------------------------------------


def test_db_upgrade_creates_the_tables_in_a_blank_database(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    result = invoke(["db", "upgrade", "--db", f"sqlite://{path}"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""
    assert str(path) in result.stdout
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        applied = conn.execute("SELECT app, name FROM tortoise_migrations").fetchall()
    assert {"users", "chats", "messages"} <= names
    assert applied[0] == ("models", "0001_initial")
    assert applied == sorted(applied) and len(applied) >= 2


def test_db_upgrade_twice_succeeds(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'new.db'}"
    assert invoke(["db", "upgrade", "--db", url]).exit_code == 0
    result = invoke(["db", "upgrade", "--db", url])
    assert result.exit_code == 0, (result.output, result.exception)


def test_db_upgrade_reads_the_storage_url_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    result = invoke(["db", "upgrade"], env={"CHATPROXY_STORAGE__URL": f"sqlite://{path}"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert path.exists()


# -- help ---------------------------------------------------------------------------------------


def test_main_help_lists_the_commands() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("serve", "export", "db"):
        assert re.search(rf"^\s+{command}\b", result.stdout, flags=re.M), command


def test_serve_help_mentions_every_flag_of_the_spec() -> None:
    result = invoke(["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("-c", "--host", "--port", "--upstream", "--db", "--redis", "--demo"):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", result.stdout), flag


def test_export_help_mentions_format_and_output() -> None:
    result = invoke(["export", "--help"])
    assert result.exit_code == 0
    # CHAT_ID is optional since --all exports every chat.
    for flag in ("--format", "-o", "-c", "--db", "CHAT_ID", "--all", "--user", "--since"):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", result.stdout), flag
    for fmt in ("json", "jsonl", "markdown", "openai"):
        assert fmt in result.stdout


def test_db_upgrade_help_exits_0() -> None:
    result = invoke(["db", "upgrade", "--help"])
    assert result.exit_code == 0
    assert "--db" in result.stdout
