"""The real `ai` npm package (the Vercel AI SDK's chat transport, stream reader and chat class)
against /api/chat: tests/node/aisdk-e2e.mjs, run with the machine's Node.js.

`make test` installs the package (`npm ci --prefix tests/node`). In CI a missing Node.js or
package fails this test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.aisdk import base
from tests.util import all_chats

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "aisdk-e2e.mjs"
EXAMPLE = Path(__file__).parent.parent / "examples" / "aisdk-chat" / "chat.mjs"
STORY = [f"part{i} " for i in range(40)]


def node() -> str:
    """The node executable, with the `ai` package installed beside the script."""
    path = shutil.which("node")
    missing = (
        "Node.js is not installed"
        if path is None
        else "the `ai` package is not installed: run `make test` (npm ci --prefix tests/node)"
        if not (NODE_DIR / "node_modules" / "ai" / "package.json").exists()
        else None
    )
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert path is not None
    return path


async def test_the_ai_sdk_client_sends_reloads_resumes_and_regenerates_through_the_proxy(
    proxy: ProxyServer, upstream: FakeUpstream, store: Store
) -> None:
    executable = node()
    upstream.enqueue(
        Reply(content="Hello from chatproxy!"),
        Reply(content="A second answer."),
        Reply(chunks=STORY, chunk_delay=0.05),
        Reply(content="A regenerated story."),
        Reply(content="Only the last message was sent."),
    )
    process = await asyncio.create_subprocess_exec(
        executable,
        str(SCRIPT),
        base(proxy),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode() + out.decode()
    last = out.decode().strip().splitlines()[-1]
    assert last.startswith("RESULT "), out.decode()
    result = orjson.loads(last.removeprefix("RESULT "))
    assert result["first"] == "Hello from chatproxy!"
    assert result["second"] == "A second answer."
    assert 0 < len(result["partial"]) < len("".join(STORY))
    assert result["resumed"] == "".join(STORY)
    assert result["regenerated"] == "A regenerated story."
    assert result["single"] == "Only the last message was sent."
    # hello, answer, question, answer, story question, regenerated story, last question, answer
    assert result["messages"] == 8
    assert [c.id for c in await all_chats(store)] == [result["chatId"]]
    requests = [r.json["messages"] for r in upstream.chat_requests]
    assert requests[3] == requests[2]  # regenerate: the same question again
    assert requests[4][:-1] == [
        *requests[3],
        {"role": "assistant", "content": "A regenerated story."},
    ]
    assert requests[4][-1] == {"role": "user", "content": "Only this message is sent."}


async def run_example(tmp_path: Path, proxy: ProxyServer, *args: str) -> str:
    """examples/aisdk-chat/chat.mjs, with the test's copy of the `ai` package."""
    executable = node()
    folder = tmp_path / "aisdk-chat"
    if not folder.exists():
        folder.mkdir()
        shutil.copy(EXAMPLE, folder / EXAMPLE.name)
        (folder / "node_modules").symlink_to(NODE_DIR.resolve() / "node_modules")
    process = await asyncio.create_subprocess_exec(
        executable,
        str(folder / EXAMPLE.name),
        "--url",
        base(proxy),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode() + out.decode()
    return out.decode()


async def test_the_example_chats_and_a_second_run_goes_on_with_the_stored_history(
    proxy: ProxyServer, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.enqueue(Reply(content="Hi, I am the example."), Reply(content="Still here."))
    out = await run_example(tmp_path, proxy, "--chat", "example-1", "--model", "m", "Hello!")
    assert out.splitlines() == [
        "assistant> Hi, I am the example.",
        "(chat example-1: 2 messages stored)",
    ]
    out = await run_example(tmp_path, proxy, "--chat", "example-1", "--model", "m", "Again")
    assert out.splitlines() == [
        "user> Hello!",
        "assistant> Hi, I am the example.",
        "assistant> Still here.",
        "(chat example-1: 4 messages stored)",
    ]
    assert upstream.chat_requests[1].json["messages"][:2] == [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi, I am the example."},
    ]
