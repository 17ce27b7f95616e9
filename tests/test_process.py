"""Whole-process tests: `chatproxy serve` as a real subprocess, as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import orjson

from chatproxy.store.models import Message
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.serve import CHATPROXY, Serve


@contextlib.asynccontextmanager
async def streaming(server: Serve) -> AsyncIterator[tuple[aiohttp.ClientResponse, str]]:
    """A streamed chat request through ``server``: the open response and its message id."""
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.base}/v1/chat/completions", json=body) as resp,
    ):
        yield resp, resp.headers["X-Message-Id"]


async def run_cli(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CHATPROXY, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_quickstart_streams_through_serve_demo_and_exports_the_chat(
    tmp_path: Path,
) -> None:
    db = f"sqlite://{tmp_path / 'demo.db'}"
    server = Serve("--demo", db=db)
    await server.start()
    try:
        client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="anything")
        async with (
            client,
            client.chat.completions.with_streaming_response.create(
                model="demo", messages=[{"role": "user", "content": "Hello proxy"}], stream=True
            ) as response,
        ):
            chat_id = response.headers["x-chat-id"]
            chunks = [c async for c in await response.parse()]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert 'You said: "Hello proxy"' in text
    finally:
        assert await server.stop() == 0

    out = tmp_path / "chat.json"
    code, _, err = await run_cli("export", chat_id, "--db", db, "-f", "json", "-o", str(out))
    assert code == 0, err
    doc = orjson.loads(out.read_bytes())
    assert doc["chat"]["id"] == chat_id
    roles = [(m["role"], m["status"]) for m in doc["messages"]]
    assert roles == [("user", "completed"), ("assistant", "completed")]
    assert doc["messages"][1]["message"]["content"] == text

    code, out_bytes, err = await run_cli("export", "chat_unknown", "--db", db)
    assert (code, out_bytes) == (1, b"")
    assert err.decode().splitlines() == ["chatproxy: no chat with id 'chat_unknown'"]


async def test_kill_9_mid_stream_then_restart_marks_the_answer_interrupted_with_its_checkpoint(
    tmp_path: Path,
) -> None:
    db = f"sqlite://{tmp_path / 'crash.db'}"
    async with FakeUpstream() as fake:
        fake.enqueue(Reply(chunks=[f"tok{i} " for i in range(200)], chunk_delay=0.02))
        env = {"CHATPROXY_STORAGE__CHECKPOINT_INTERVAL": "0.05"}
        server = Serve("--upstream", fake.url, db=db, env=env)
        await server.start()
        async with streaming(server) as (resp, message_id):
            await resp.content.readuntil(b"tok20 ")
            await asyncio.sleep(0.3)  # a few checkpoints later
            assert await server.stop(signal.SIGKILL) == -signal.SIGKILL

        # The same instance (same port, so the same default instance id) starts again.
        restarted = Serve("--upstream", fake.url, db=db, env=env)
        restarted.port, restarted.base = server.port, server.base
        restarted.argv = server.argv
        await restarted.start()
        assert await restarted.stop() == 0

    stored = await stored_message(db, message_id)
    assert stored.status == "interrupted"
    assert stored.text.startswith("tok0 tok1 ") and "tok20 " in stored.text
    assert stored.data["content"] == stored.text
    assert stored.completed_at is not None


async def test_serve_warns_loudly_when_auth_none_binds_a_non_loopback_address(
    tmp_path: Path,
) -> None:
    server = Serve("--demo", "--host", "0.0.0.0", db=f"sqlite://{tmp_path / 'w.db'}")
    await server.start(stderr=asyncio.subprocess.PIPE)
    assert await server.stop() == 0
    assert server.proc is not None and server.proc.stderr is not None
    log = await server.proc.stderr.read()
    assert b"WARNING" in log and b"auth mode 'none' on 0.0.0.0" in log


async def test_serve_on_loopback_does_not_warn(tmp_path: Path) -> None:
    server = Serve("--demo", db=f"sqlite://{tmp_path / 'q.db'}")
    await server.start(stderr=asyncio.subprocess.PIPE)
    assert await server.stop() == 0
    assert server.proc is not None and server.proc.stderr is not None
    log = await server.proc.stderr.read()
    assert b"listening on" in log
    assert b"WARNING" not in log


async def test_sigterm_mid_stream_lets_the_answer_finish_and_exits_0(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'term.db'}"
    words = [f"tok{i} " for i in range(30)]
    async with FakeUpstream() as fake:
        fake.enqueue(Reply(chunks=words, chunk_delay=0.03))
        server = Serve("--upstream", fake.url, db=db)
        await server.start()
        async with streaming(server) as (resp, message_id):
            await resp.content.readuntil(b"tok3 ")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            rest = await resp.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert b"tok29 " in rest
        assert await server.stop() == 0
    stored = await stored_message(db, message_id)
    assert (stored.status, stored.text) == ("completed", "".join(words))


async def test_sigterm_stores_what_outlives_the_drain_timeout_as_interrupted(
    tmp_path: Path,
) -> None:
    db = f"sqlite://{tmp_path / 'drain.db'}"
    async with FakeUpstream() as fake:
        fake.enqueue(Reply(chunks=[f"tok{i} " for i in range(100)], chunk_delay=0.05))
        env = {"CHATPROXY_CHATS__DRAIN_TIMEOUT": "0.5"}
        server = Serve("--upstream", fake.url, db=db, env=env)
        await server.start()
        async with streaming(server) as (resp, message_id):
            await resp.content.readuntil(b"tok2 ")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            rest = await resp.read()
        assert await server.stop() == 0
    # The client's stream ends as any other cut: the in-band error, then [DONE].
    events = [e for e in rest.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "generation_interrupted"
    assert set(error) == {"message", "type", "param", "code"}
    stored = await stored_message(db, message_id)
    assert stored.status == "interrupted"
    assert stored.text.startswith("tok0 tok1 tok2 ")
    assert "tok99" not in stored.text


async def stored_message(db: str, message_id: str) -> Message:
    store = Store(db)
    await store.open()
    try:
        found = await store.get_message(message_id)
    finally:
        await store.close()
    assert found is not None
    return found


async def test_json_logs_have_one_access_line_per_request_with_its_fields(tmp_path: Path) -> None:
    server = Serve("--demo", "--log-format", "json", db=f"sqlite://{tmp_path / 'j.db'}")
    await server.start(stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
        async with http.post(f"{server.base}/v1/chat/completions", json=body) as resp:
            chat_id, request_id = resp.headers["X-Chat-Id"], resp.headers["X-Request-Id"]
            await resp.read()
    assert await server.stop() == 0
    assert server.proc is not None and server.proc.stderr is not None
    lines = [orjson.loads(line) for line in (await server.proc.stderr.read()).splitlines()]
    (access,) = [line for line in lines if line.get("request_id") == request_id]
    assert access["logger"] == "chatproxy.access"
    assert (access["method"], access["path"], access["status"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert (access["user"], access["chat"]) == ("local", chat_id)
    assert access["ms"] >= 0 and access["level"] == "info"
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


async def test_serve_demo_answers_the_responses_api_and_the_cli_shows_what_it_stored(
    tmp_path: Path,
) -> None:
    db = f"sqlite://{tmp_path / 'responses.db'}"
    server = Serve("--demo", "--log-format", "json", db=db)
    await server.start(stderr=asyncio.subprocess.PIPE)
    try:
        client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="anything")
        async with client:
            async with client.responses.stream(model="demo", input="Hello responses") as stream:
                final = await stream.get_final_response()
            second = await client.responses.create(
                model="demo", input="And again", previous_response_id=final.id
            )
        assert 'You said: "Hello responses"' in final.output_text
        assert second.conversation is not None and final.conversation is not None
        chat_id = final.conversation.id
        assert second.conversation.id == chat_id
    finally:
        assert await server.stop() == 0
    assert server.proc is not None and server.proc.stderr is not None
    lines = [orjson.loads(line) for line in (await server.proc.stderr.read()).splitlines()]
    found = [line["message"] for line in lines if line["logger"] == "chatproxy.responses"]
    assert found == ["upstream /v1/responses: native"]  # the demo upstream has the API

    code, out, err = await run_cli("export", chat_id, "--db", db, "-f", "json")
    assert code == 0, err
    doc = orjson.loads(out)
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant", "user", "assistant"]
    assert doc["messages"][1]["id"] == final.id
    assert doc["messages"][1]["message"]["content"] == final.output_text
    code, out, err = await run_cli("stats", "--db", db, "--json")
    assert code == 0, err
    (row,) = [orjson.loads(line) for line in out.splitlines()]
    assert (row["model"], row["messages"]) == ("demo", 2)
