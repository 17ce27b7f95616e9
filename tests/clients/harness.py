"""The pytest side of the real-client matrix (tests/test_client_*.py).

Each client script in this folder runs under ``.venv-clients/bin/python`` (``make clients``
installs it; in CI a missing one fails the test, elsewhere it is skipped saying why), talks
to a proxy on a real port in front of a :class:`FakeUpstream` that answers in kind (tool calls,
JSON), and prints ``RESULT {json}``. The tests then compare what is stored, chat by chat, with
the conversations the client had (:func:`transcripts`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatproxy.store.models import Message
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream
from tests.util import all_chats, all_messages

__all__ = ["CLIENTS_DIR", "clients_python", "db_url", "run_client", "transcripts", "upstream"]

CLIENTS_DIR = Path(__file__).parent
VENV = CLIENTS_DIR.parent.parent / ".venv-clients"
# Nothing a client does may leave the machine: no tracing, telemetry or price-list fetches.
QUIET_ENV = {
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "NO_PROXY": "127.0.0.1,localhost",
    "PYTHONUNBUFFERED": "1",
}
# Keys and endpoints of the environment never reach a client: each is given a dummy key.
DROPPED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "LLM_USER_PATH")
CLIENT_TIMEOUT = 120.0  # seconds for one script run (a few, normally)


@pytest.fixture
def db_url(db_path: Path) -> str:
    """The matrix runs on SQLite only: each client costs seconds to start, and the threading
    rule it checks is the same on both stores (tests/test_threading_rule.py, which drives it
    with the openai SDK, runs on PostgreSQL too)."""
    return f"sqlite://{db_path}"


@pytest.fixture
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[FakeUpstream]:
    """A fake upstream that answers in kind; ``indirect`` parameter ``"spaced"`` spells tool-call
    arguments as Python's json.dumps does, anything else compact as OpenAI does."""
    spaced = getattr(request, "param", "compact") == "spaced"
    async with FakeUpstream(auto=True, spaced_arguments=spaced) as fake:
        yield fake


def clients_python() -> Path:
    """The Python of .venv-clients; fails the test in CI, skips it elsewhere, when the clients
    are not installed."""
    path = VENV / "bin" / "python"
    if not (VENV / ".installed-stamp").exists() or not path.exists():
        reason = (
            f"the real clients are not installed in {VENV}: run `make clients` (make test does)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    return {**env, **QUIET_ENV}


async def run_client(script: str, *args: str) -> Any:
    """Run ``tests/clients/SCRIPT ARGS...`` with the clients' Python; its ``RESULT`` JSON."""
    process = await asyncio.create_subprocess_exec(
        str(clients_python()),
        str(CLIENTS_DIR / script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=client_env(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=CLIENT_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    shown = f"{script} {' '.join(args)}\n{err.decode()}\n{out.decode()}"
    assert process.returncode == 0, shown
    lines = out.decode().strip().splitlines()
    assert lines and lines[-1].startswith("RESULT "), shown
    return json.loads(lines[-1].removeprefix("RESULT "))


def _arguments(text: Any) -> str:
    try:
        return orjson.dumps(json.loads(text), option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, ValueError):
        return str(text)


def _data(message: Message | None) -> dict[str, Any]:
    data = message.data if message is not None else None
    return data if isinstance(data, dict) else {}


def _line(message: Message, parent: Message | None) -> str:
    data = _data(message)
    calls = data.get("tool_calls") or []
    if calls:
        said = "; ".join(
            f"call {c['function']['name']} {_arguments(c['function'].get('arguments'))}"
            for c in calls
        )
    else:
        said = message.text
    line = f"{message.role}: {said}"
    if message.role == "assistant" and message.status != "completed":
        line += f" [{message.status}]"
    if message.role == "tool":
        called = [c.get("id") for c in _data(parent).get("tool_calls") or []]
        if data.get("tool_call_id") not in called:
            line += f" [answers {data.get('tool_call_id')!r}, not a call of its parent]"
    return line


async def transcripts(store: Store) -> list[list[str]]:
    """Every stored chat, oldest first, as its messages in the order stored: ``role: text``,
    ``assistant: call NAME {args}`` (arguments as sorted compact JSON), ``tool: text``. A
    message that does not continue the one before it (a second branch, a copy stored as a
    sibling) is marked ``<branch from N>``, N the position of its parent (``root``); a tool
    result whose ``tool_call_id`` is not a call of its parent says so."""
    chats = sorted(await all_chats(store), key=lambda c: (c.created_at, c.id))
    messages = await all_messages(store)
    out = []
    for chat in chats:
        mine = [m for m in messages if m.chat_id == chat.id]
        position = {m.id: i for i, m in enumerate(mine)}
        by_id = {m.id: m for m in mine}
        lines = []
        for i, m in enumerate(mine):
            line = _line(m, by_id.get(m.parent_id or ""))
            expected_parent = mine[i - 1].id if i else None
            if m.parent_id != expected_parent:
                where = "root" if m.parent_id is None else position.get(m.parent_id, "?")
                line = f"<branch from {where}> {line}"
            lines.append(line)
        out.append(lines)
    return out
