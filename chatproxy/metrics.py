"""Prometheus metrics (SPEC §12), one registry per application, served at ``GET /metrics``.

Requests by route and status, active generations, time to first byte and duration, tokens,
limit refusals, client disconnects, upstream retries, store write latency. Recording is a few
counter increments per request and one histogram observation per answer: nothing per chunk.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "metrics_handler"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STORE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class Metrics:
    """The metrics of one application."""

    def __init__(self, instance_id: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Which instance answers this scrape (several run behind one load balancer).
        Info("chatproxy_instance", "This chatproxy instance", registry=r).info(
            {"instance_id": instance_id}
        )
        self.reaped = Counter(
            "chatproxy_reaped_answers",
            "Answers of instances that stopped heartbeating, marked interrupted here",
            registry=r,
        )
        self.requests = Counter(
            "chatproxy_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.active = Gauge("chatproxy_active_generations", "Answers being generated", registry=r)
        self.ttft = Histogram(
            "chatproxy_time_to_first_byte_seconds",
            "From the request to the upstream's first byte",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "chatproxy_generation_duration_seconds",
            "Whole answers, by final status",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "chatproxy_tokens", "Tokens used, as the upstream reported", ["kind"], registry=r
        )
        self.refusals = Counter(
            "chatproxy_limit_refusals", "Requests refused by a limit", ["code"], registry=r
        )
        self.disconnects = Counter(
            "chatproxy_client_disconnects", "Answers whose client left before the end", registry=r
        )
        self.retries = Counter("chatproxy_upstream_retries", "Upstream retries", registry=r)
        self.plugin_errors = Counter(
            "chatproxy_plugin_errors",
            "Exceptions raised by a plugin's hook (refusals are not counted)",
            ["plugin", "hook"],
            registry=r,
        )
        self.store_writes = Histogram(
            "chatproxy_store_write_seconds",
            "Store write batches (one transaction each)",
            buckets=_STORE_BUCKETS,
            registry=r,
        )
        # The labelled series in use, by metric and labels: ``labels()`` costs more than the
        # increment. Each is made on first use, as before (no series shows up unused).
        self._series: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, made once."""
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def request(self, route: str, status: int) -> None:
        """Count one answered HTTP request."""
        self._child(self.requests, route, str(status)).inc()

    def answer(
        self,
        status: str,
        ttft: float | None,
        duration: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        disconnected: bool,
    ) -> None:
        """Record one finished answer."""
        if ttft is not None:
            self.ttft.observe(ttft)
        self._child(self.duration, status).observe(duration)
        if prompt_tokens:
            self._child(self.tokens, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self._child(self.tokens, "completion").inc(completion_tokens)
        if disconnected:
            self.disconnects.inc()


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus' text format."""
    from chatproxy.appkeys import METRICS

    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
