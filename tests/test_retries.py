"""Upstream retries before the first byte: tenacity-driven, bounded, honouring Retry-After."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from chatproxy.appkeys import METRICS, STORE
from chatproxy.errors import UpstreamError
from chatproxy.settings import UpstreamSettings
from chatproxy.testing import FakeUpstream, Reply
from chatproxy.upstream.client import Upstream
from tests.util import eventually, message

USER = {"role": "user", "content": "hello"}
FAST_RETRIES = {"upstream.retries": 2, "upstream.backoff_initial": 0.01}


async def test_503_twice_then_success_gives_one_answer_after_three_attempts(
    start_proxy, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(**FAST_RETRIES)
    upstream.enqueue(Reply(status=503), Reply(status=503), Reply(content="third time lucky"))
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=[USER])
    assert raw.parse().choices[0].message.content == "third time lucky"
    assert len(upstream.chat_requests) == 3
    answer = await message(proxy.app[STORE], raw.headers["x-message-id"])
    assert (answer.status, answer.text) == ("completed", "third time lucky")


async def test_503_forever_returns_the_status_after_retries_plus_one_attempts(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**FAST_RETRIES)
    upstream.enqueue(*[Reply(status=503) for _ in range(5)])
    body = {"model": "m", "messages": [USER], "stream": True}
    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["type"] == "server_error"
    assert len(upstream.chat_requests) == 3


async def test_a_400_is_not_retried(start_proxy, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(**FAST_RETRIES)
    upstream.enqueue(Reply(status=400), Reply(content="never"))
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="m", messages=[USER])
    assert len(upstream.chat_requests) == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "1"}, 1.0), ({"retry-after-ms": "250"}, 0.25), ({"Retry-After": "999"}, 60)],
)
async def test_retry_after_is_honoured_up_to_a_cap(
    upstream: FakeUpstream, headers: dict[str, str], expected: float
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    upstream.enqueue(Reply(status=429, headers=headers), Reply(content="ok"))
    settings = UpstreamSettings(url=upstream.url, retries=2, backoff_initial=0.01)
    async with aiohttp.ClientSession() as session:
        client = Upstream(settings, session, sleep=sleep)
        resp = await client.open("POST", "/chat/completions", headers={}, data=b'{"messages":[]}')
        resp.close()
    assert slept == [expected]


async def test_backoff_grows_exponentially_with_jitter_and_attempts_are_bounded(
    upstream: FakeUpstream,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    upstream.enqueue(*[Reply(status=502) for _ in range(4)])
    settings = UpstreamSettings(url=upstream.url, retries=3, backoff_initial=0.5, backoff_max=1.5)
    async with aiohttp.ClientSession() as session:
        client = Upstream(settings, session, sleep=sleep)
        with pytest.raises(UpstreamError) as info:
            await client.open("POST", "/chat/completions", headers={}, data=b"{}")
    assert info.value.status == 502
    assert len(upstream.chat_requests) == 4
    assert len(slept) == 3
    for wait, base in zip(slept, (0.5, 1.0, 1.5), strict=True):
        assert base <= wait <= base + 0.5


async def test_a_real_retry_after_wait_takes_at_least_that_long(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    import time

    proxy = await start_proxy(**FAST_RETRIES)
    upstream.enqueue(Reply(status=503, headers={"Retry-After": "1"}), Reply(content="ok"))
    started = time.monotonic()
    async with http.post(
        f"{proxy.url}/chat/completions", json={"model": "m", "messages": [USER]}
    ) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 1.0


async def test_no_response_head_within_first_byte_timeout_is_a_504_after_the_retries(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        **{
            "upstream.first_byte_timeout": 0.2,
            "upstream.retries": 1,
            "upstream.backoff_initial": 0.01,
        }
    )
    upstream.enqueue(Reply(delay=1.0), Reply(delay=1.0))
    async with http.post(
        f"{proxy.url}/chat/completions", json={"model": "m", "messages": [USER]}
    ) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
        message_id = resp.headers["X-Message-Id"]
    assert proxy.app[METRICS].registry.get_sample_value("chatproxy_upstream_retries_total") == 1
    # The second attempt was sent; on a loaded machine the upstream may only see it after the
    # proxy gave up waiting for its head.
    assert await eventually(lambda: _count_is(upstream, 2))
    assert (await message(proxy.app[STORE], message_id)).status == "failed"


async def _count_is(upstream: FakeUpstream, n: int) -> bool:
    return len(upstream.chat_requests) == n
