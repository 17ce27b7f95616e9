"""Running the application on a real socket: used by ``chatproxy serve`` and by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import signal

from aiohttp import web

from chatproxy.app import create_app
from chatproxy.appkeys import GENERATIONS
from chatproxy.http_edge import ProxyRunner
from chatproxy.settings import Settings

__all__ = ["ProxyServer", "serve"]

log = logging.getLogger("chatproxy")


class ProxyServer:
    """The proxy listening on ``settings.server.host``/``port`` (port 0: any free port).

    With ``settings.demo`` the built-in fake upstream (:mod:`chatproxy.testing`) runs in the
    same process and the proxy talks to it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: web.Application | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._demo = None

    @property
    def url(self) -> str:
        """The proxy's base URL for OpenAI clients (``http://host:port/v1``)."""
        return f"http://{self.settings.server.host}:{self.port}/v1"

    async def start(self) -> str:
        settings = self.settings
        if settings.demo:
            from chatproxy.testing import FakeUpstream

            self._demo = FakeUpstream(demo=True)
            demo_url = await self._demo.start()
            settings = settings.replace(
                upstream=dataclasses.replace(settings.upstream, url=demo_url)
            )
            self.settings = settings
        self.app = create_app(settings)
        # Handlers are cancelled when their client goes away, in production as in tests. The
        # runner sets the HTTP parser's limits and answers what it refuses in OpenAI's shape.
        self._runner = ProxyRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=settings.chats.drain_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.server.host, settings.server.port)
        try:
            await site.start()
        except BaseException:  # the port is taken: close what setup opened, then say so
            await self._runner.cleanup()
            self._runner = None
            if self._demo is not None:
                await self._demo.close()
                self._demo = None
            raise
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        """Stop accepting, let running generations finish (``drain_timeout``; the rest are
        stored as ``interrupted``), then close everything."""
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
            assert self.app is not None
            await self.app[GENERATIONS].drain(self.settings.chats.drain_timeout)
            await self._runner.cleanup()
            self._runner = None
        if self._demo is not None:
            await self._demo.close()
            self._demo = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tune_gc() -> None:
    # A streaming proxy allocates many short-lived objects per chunk; with the default
    # thresholds the collector ran often enough to cost ~15% CPU and to stretch the gaps
    # between chunks under load. Everything alive after start-up is kept out of collections.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    if settings.auth.mode == "none" and not _is_loopback(settings.server.host):
        log.warning(
            "WARNING: auth mode 'none' on %s: anyone who can reach this address can use the "
            "upstream and read every stored chat. Set [auth] mode for a shared deployment.",
            settings.server.host,
        )
    server = ProxyServer(settings)
    await server.start()
    _tune_gc()
    upstream = "the built-in demo upstream" if settings.demo else server.settings.upstream.url
    log.info("chatproxy listening on %s (upstream: %s)", server.url, upstream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: draining running generations")
    finally:
        # The handlers stay until the drain is over: a second signal does not cut it short.
        try:
            await server.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
