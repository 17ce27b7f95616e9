"""A client closing at any point (before the head, mid-stream, right after ``[DONE]``) is normal
traffic: no traceback in the log, and exactly one access-log line per request, saying that the
client left early."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import orjson
import pytest

from chatproxy.server import ProxyServer
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import all_messages, eventually

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}


async def _post(
    proxy: ProxyServer, body: dict, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST ``body`` to /v1/chat/completions on a raw connection of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    raw = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (extra, len(raw), raw)
    )
    await writer.drain()
    return reader, writer


async def _request(proxy: ProxyServer, body: dict, *, until: bytes | None, rst: bool) -> None:
    """POST ``body``, read until ``until`` (None: nothing), then close (with a TCP reset when
    ``rst``)."""
    reader, writer = await _post(proxy, body)
    if until is not None:
        await reader.readuntil(until)
    else:
        await asyncio.sleep(0.2)
    if rst:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize(
    ("reply", "until"),
    [
        (Reply(content="slow head", delay=0.6), None),
        (Reply(chunks=[f"w{i} " for i in range(30)], chunk_delay=0.02), b"w3 "),
        (Reply(content="quick answer"), b"data: [DONE]\n\n"),
    ],
    ids=["before-head", "mid-stream", "after-done"],
)
async def test_a_client_closing_at_any_point_logs_no_traceback_and_one_access_line(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    reply: Reply,
    until: bytes | None,
    rst: bool,
) -> None:
    upstream.enqueue(reply)
    with caplog.at_level(logging.DEBUG):
        await _request(proxy, BODY, until=until, rst=rst)

        async def stored() -> bool:
            rows = await all_messages(store)
            return any(m.role == "assistant" and m.status == "completed" for m in rows)

        await eventually(stored)

        def access_lines() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "chatproxy.access"]

        async def logged() -> list[logging.LogRecord]:
            return access_lines()

        await eventually(logged)
        await asyncio.sleep(0.2)  # anything logged late would come now
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    (line,) = access_lines()
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["path"] == "/v1/chat/completions"
    if until != b"data: [DONE]\n\n":
        assert fields["left_early"] is True
    else:  # the whole answer was written: whether the close came first is a race
        assert isinstance(fields["left_early"], bool)
    assert fields["status"] == (499 if until is None else 200)
    answer = next(m for m in await all_messages(store) if m.role == "assistant")
    assert answer.status == "completed"


async def test_a_client_that_stays_has_an_access_line_saying_so(
    proxy: ProxyServer, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        reader, writer = await _post(proxy, BODY, b"Connection: close\r\n")
        await reader.read()
        writer.close()
    (line,) = [r for r in caplog.records if r.name == "chatproxy.access"]
    assert line.fields["left_early"] is False  # type: ignore[attr-defined]
    assert line.fields["status"] == 200  # type: ignore[attr-defined]
