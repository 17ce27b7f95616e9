"""GET /metrics: Prometheus' format, parsed with prometheus-client's own parser, moving as
requests are made."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def scrape(http: aiohttp.ClientSession, proxy: ProxyServer) -> dict[tuple, float]:
    async with http.get(proxy.url.removesuffix("/v1") + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_metrics_parse_and_move_with_requests_answers_refusals_and_retries(
    start_proxy, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        **{
            "limits.ip_rate": "60/minute",
            "limits.ip_burst": 3,
            "upstream.retries": 1,
            "upstream.backoff_initial": 0.01,
        }
    )
    before = await scrape(http, proxy)
    assert before[("chatproxy_active_generations", ())] == 0
    upstream.enqueue(Reply(status=503), Reply(content="after a retry"))
    for _ in range(2):
        async with http.post(f"{proxy.url}/chat/completions", json=BODY) as resp:
            assert resp.status == 200
            await resp.read()
    async with http.get(f"{proxy.url}/models") as resp:
        assert resp.status == 200
    async with http.get(f"{proxy.url}/models") as resp:
        assert resp.status == 429
    after = await scrape(http, proxy)

    route = "/v1/chat/completions"
    assert after[("chatproxy_requests_total", (("route", route), ("status", "200")))] == 2
    passthrough = (("route", "/v1/{tail}"), ("status", "200"))
    assert after[("chatproxy_requests_total", passthrough)] == 1
    refused = ("chatproxy_limit_refusals_total", (("code", "rate_limit_exceeded"),))
    assert after[refused] == 1
    assert after[("chatproxy_upstream_retries_total", ())] == 1
    assert after[("chatproxy_time_to_first_byte_seconds_count", ())] == 2
    completed = ("chatproxy_generation_duration_seconds_count", (("status", "completed"),))
    assert after[completed] == 2
    assert after[("chatproxy_tokens_total", (("kind", "completion"),))] > 0
    assert after[("chatproxy_store_write_seconds_count", ())] >= 4  # two turns, two finishes
    assert after[("chatproxy_active_generations", ())] == 0
    assert after[("chatproxy_client_disconnects_total", ())] == 0


async def test_metrics_count_a_client_that_left(
    proxy: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    from tests.util import eventually

    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(30)], chunk_delay=0.02))
    resp = await http.post(f"{proxy.url}/chat/completions", json=BODY)
    await resp.content.readuntil(b"w2 ")
    during = await scrape(http, proxy)
    assert during[("chatproxy_active_generations", ())] == 1
    resp.close()

    async def counted() -> bool:
        return (await scrape(http, proxy))[("chatproxy_client_disconnects_total", ())] == 1

    await eventually(counted)
