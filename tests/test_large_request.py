"""One very large request (50,000 messages, about 3 MB) does not stall the other clients: the
proxy, a real ``chatproxy serve`` process, keeps answering ``/healthz`` while it hashes,
threads and stores it, on both stores."""

from __future__ import annotations

import asyncio
import http.client
import io
import threading
import time

import aiohttp
import orjson

from chatproxy.testing import FakeUpstream, Reply
from tests.serve import Serve

# Seconds: the longest a /healthz beside the large request may take. Measured here: about 0.1 s
# (what is left: a GIL hand-off or two while a worker thread parses or writes), against 1 to
# 2.5 s when the work ran on the loop.
STALL_BOUND = 0.4


def _probe(port: int, latencies: list[float], done: threading.Event) -> None:
    """GET /healthz over one keep-alive connection until ``done``, timing each answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while not done.is_set():
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    finally:
        conn.close()


def _conversation(turns: int) -> list[dict[str, str]]:
    messages = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} about the large request"})
        messages.append({"role": "assistant", "content": f"answer {i}, with a few words more"})
    messages.append({"role": "user", "content": "and the last question"})
    return messages


async def test_a_50000_message_request_does_not_stall_other_clients(db_url: str) -> None:
    body = orjson.dumps({"model": "m", "messages": _conversation(25_000)})
    async with FakeUpstream() as fake:
        fake.enqueue(Reply(content="The answer to the large request."))
        server = Serve("--upstream", fake.url, db=db_url, env={"CHATPROXY_LIMITS__IP_RATE": "0"})
        await server.start()
        try:
            latencies: list[float] = []
            done = threading.Event()
            # Probed from a thread of its own: this process's loop is busy being the upstream.
            prober = threading.Thread(target=_probe, args=(server.port, latencies, done))
            prober.start()
            try:
                async with aiohttp.ClientSession() as http:
                    await asyncio.sleep(0.1)
                    headers = {"Content-Type": "application/json"}
                    async with http.post(
                        f"{server.base}/v1/chat/completions", data=io.BytesIO(body), headers=headers
                    ) as resp:
                        answer = await resp.json()
                        chat_id = resp.headers["X-Chat-Id"]
                    async with http.get(f"{server.base}/v1/conversations/{chat_id}") as resp:
                        chat = await resp.json()
            finally:
                done.set()
                await asyncio.to_thread(prober.join)
        finally:
            assert await server.stop() == 0
    assert answer["choices"][0]["message"]["content"] == "The answer to the large request."
    assert chat["message_count"] == 50_002  # every message stored, and the answer
    assert len(latencies) > 5
    assert max(latencies) < STALL_BOUND, f"/healthz waited {max(latencies):.3f} s"
