"""A generation: one upstream answer being produced, stored, and fanned out to subscribers.

The generation is a task of its own. It writes the request's turn to the store while it opens
the upstream response, publishes the upstream's events in its numbered log
(:mod:`chatproxy.engine.eventlog`: each event's data with the upstream's own bytes, unmodified;
the usage-only chunk a client did not ask for is left out), accumulates the assistant message,
queues a checkpoint every ``checkpoint_interval`` while the content grows, and stores the final
state. HTTP handlers only follow the log (:mod:`chatproxy.engine.relay`): a client that leaves
is a subscriber leaving, and the answer is finished and stored all the same (policy
``finish``) or cancelled (policy ``abort``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from chatproxy.engine.accumulate import is_usage_only
from chatproxy.engine.dialect import CHAT_COMPLETIONS, Dialect
from chatproxy.engine.eventlog import EventLog, Subscriber
from chatproxy.engine.sse import SSEEvent, SSEParser
from chatproxy.engine.watchdog import Watchdog
from chatproxy.errors import APIError, UpstreamError, error_body
from chatproxy.metrics import Metrics
from chatproxy.settings import Settings
from chatproxy.store.models import Status
from chatproxy.store.store import Answer, Store, Turn, utcnow
from chatproxy.store.threading import prefix_hashes
from chatproxy.upstream.client import HOP_BY_HOP, Upstream

__all__ = ["DONE_EVENT", "Generation", "Head"]

log = logging.getLogger("chatproxy.generation")

DONE_EVENT = b"data: [DONE]\n\n"
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"content-encoding", "date", "server", "set-cookie"}


@dataclass(slots=True, frozen=True)
class Head:
    """The upstream's status and the headers worth passing on to subscribers."""

    status: int
    headers: CIMultiDict[str]


class _StreamBroken(Exception):
    """The upstream stream failed after the first byte; carries the stored status."""

    def __init__(self, status: str, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


class _NotStored(Exception):
    """The request's turn could not be written: nothing is forwarded."""


class Generation:
    """Produces one assistant message; any number of subscribers follow :attr:`events`."""

    def __init__(
        self,
        *,
        turn: Turn | None,
        parent_hash: str,
        body: bytes,
        upstream_headers: Mapping[str, str],
        stream: bool,
        hide_usage: bool,
        store: Store | None,
        upstream: Upstream,
        settings: Settings,
        request_id: str,
        metrics: Metrics | None = None,
        upstream_url: str | None = None,
        failure: APIError | None = None,
        dialect: Dialect = CHAT_COMPLETIONS,
    ) -> None:
        # No turn and no store: an incognito request (X-Chat-Store: false), forwarded only.
        self.turn = turn
        self.chat_id = turn.chat_id if turn else ""
        self.message_id = turn.assistant_id if turn else ""
        self.request_id = request_id
        self.stream = stream
        # The answer's events, numbered: their data, and the upstream's bytes of each.
        self.events = EventLog()
        self.status = Status.IN_PROGRESS
        self.error: dict[str, Any] | None = None
        self.client_disconnected = False
        # Resolved only here; subscribers wait through :meth:`wait_head`, which shields it, so a
        # handler cancelled by its client's leaving can never cancel it under the generation.
        self._head: asyncio.Future[Head] = asyncio.get_running_loop().create_future()
        self._head.add_done_callback(_retrieve)
        self.task: asyncio.Task[None] | None = None
        # Awaited once the answer is stored, before its end is published (the registry frees
        # the chat there, so a client that saw the end can post the next turn at once).
        # (A function of the generation, not a closure over it: no reference cycle per answer.)
        self.before_end: Callable[[Generation], Awaitable[None]] | None = None
        self.dialect = dialect
        self.acc = dialect.accumulator()
        self._parent_hash = parent_hash
        self._body = body
        self._upstream_headers = upstream_headers
        self._hide_usage = hide_usage
        self._store = store
        self._upstream = upstream
        self._settings = settings
        self._metrics = metrics
        self._upstream_url = upstream_url  # None: the configured upstream
        self._failure = failure  # answered instead of asking the upstream (a plugin failed)
        self._aborted = False
        self._begin: asyncio.Future[None] | None = None
        self._t0 = 0.0
        self._ttft: float | None = None
        self._next_checkpoint = 0.0
        self._checkpointed_version = 0
        # The last events (data, bytes), published once the answer is stored.
        self._final: tuple[list[bytes], list[bytes]] = ([], [])

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber, to: EventLog) -> None:
        to.subscribers.append(sub)

    def unsubscribe(self, sub: Subscriber, to: EventLog, *, disconnected: bool) -> None:
        """A subscriber left; ``disconnected`` when its client went away before the end."""
        to.subscribers.remove(sub)
        if disconnected:
            self.client_left()

    def client_left(self) -> None:
        """The requesting client went away before the end (also before it subscribed)."""
        if self.events.done:
            return
        self.client_disconnected = True
        if not self.events.subscribers and self._settings.chats.on_disconnect == "abort":
            self.abort()

    async def wait_head(self) -> Head:
        """The upstream's response head, once it is in (and the turn is stored); raises the
        :class:`~chatproxy.errors.APIError` to answer when there is none. Cancelling the
        waiter leaves the generation untouched."""
        return await asyncio.shield(self._head)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._store is not None and self.turn is not None:
            self._begin = asyncio.ensure_future(self._store.begin_turn(self.turn))
        else:
            self._begin = asyncio.get_running_loop().create_future()
            self._begin.set_result(None)
        self.task = asyncio.create_task(self._run(), name=f"generation-{self.message_id}")
        return self.task

    async def begun(self) -> None:
        """Return once the request's turn is written (or could not be); cancelling the waiter
        leaves the write alone."""
        begin = self._begin
        assert begin is not None
        if begin.done():
            return
        # What ``asyncio.wait([begin])`` does, without its set, tasks check and second future.
        waiter = asyncio.get_running_loop().create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        begin.add_done_callback(wake)
        try:
            await waiter
        finally:
            begin.remove_done_callback(wake)

    def abort(self) -> None:
        """Cancel the upstream request; the message is stored as ``cancelled``."""
        if self.task is not None and not self.events.done and not self._aborted:
            self._aborted = True
            self.task.cancel()

    async def _run(self) -> None:
        if self._metrics is None:
            await self._generate()
            return
        self._metrics.active.inc()
        try:
            await self._generate()
        finally:
            self._metrics.active.dec()
            usage = self.acc.usage if isinstance(self.acc.usage, dict) else {}
            self._metrics.answer(
                self.status,
                self._ttft,
                asyncio.get_running_loop().time() - self._t0,
                _int(usage.get("prompt_tokens")),
                _int(usage.get("completion_tokens")),
                self.client_disconnected,
            )

    async def _generate(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._next_checkpoint = self._t0 + self._settings.storage.checkpoint_interval
        head_error: APIError = APIError("the request was stopped before the upstream answered")
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await self._open()
            if self.stream:
                await self._pump_sse(resp)
            else:
                await self._pump_body(resp)
            self.status, error = self.dialect.outcome(self.acc)
            if error is not None:
                self.error = error
        except asyncio.CancelledError:
            if self._aborted:
                self.status = Status.CANCELLED
            else:  # stopped by the shutdown's drain timeout: the stream ends as any other cut
                self.status = Status.INTERRUPTED
                self._cut(
                    error_body(
                        "the proxy shut down before the answer was complete",
                        "server_error",
                        "generation_interrupted",
                    )["error"]
                )
        except UpstreamError as exc:  # before the first byte
            self.status, self.error, head_error = Status.FAILED, exc.body()["error"], exc
            # The requesting client gets an HTTP error; a resuming one, the same in-band.
            self._hold(orjson.dumps(exc.body()))
            self._hold(b"[DONE]", DONE_EVENT)
        except _StreamBroken as exc:
            self.status = exc.status
            self._cut(exc.error)
        except _NotStored:
            head_error = APIError("could not store the request", code="store_unavailable")
        except Exception:
            log.exception("generation failed request_id=%s", self.request_id)
            self.status = Status.FAILED
            self.error = error_body("internal error in the proxy", "server_error")["error"]
        finally:
            if resp is not None:
                resp.close()
        # The end is only published once it is stored: a client that saw the end of its
        # answer (or an error) can read it back at once.
        if await self._begun():
            await self._finish()
        if self.before_end is not None:
            await self.before_end(self)
        if not self._head.done():
            self._head.set_exception(head_error)
        self.events.end(*self._final)

    def _hold(self, data: bytes, raw: bytes | None = None) -> None:
        """Add an event to those published once the answer is stored."""
        self._final[0].append(data)
        self._final[1].append(b"data: " + data + b"\n\n" if raw is None else raw)

    def _cut(self, error: dict[str, Any]) -> None:
        """The answer ends early with ``error``: a stream's clients get it in-band, then
        ``[DONE]``."""
        self.error = error
        if self.stream:
            self._hold(orjson.dumps({"error": error}))
            self._hold(b"[DONE]", DONE_EVENT)

    async def _begun(self) -> bool:
        assert self._begin is not None
        try:
            await asyncio.shield(self._begin)
        except Exception:
            log.exception("could not store request_id=%s", self.request_id)
            return False
        return True

    async def _open(self) -> aiohttp.ClientResponse:
        if self._failure is not None:
            if not await self._begun():
                raise _NotStored
            raise UpstreamError(self._failure.status, self._failure.body())
        resp = await self._upstream.open(
            "POST",
            self.dialect.path,
            headers=self._upstream_headers,
            data=self._body,
            request_id=self.request_id,
            base=self._upstream_url,
        )
        if not await self._begun():
            resp.close()
            raise _NotStored
        headers = CIMultiDict(
            (k, v) for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS
        )
        self._head.set_result(Head(resp.status, headers))
        return resp

    async def _pump_sse(self, resp: aiohttp.ClientResponse) -> None:
        parser = SSEParser()
        saw_done = False

        take, ends, acc = self._take_event, self.dialect.ends, self.acc

        def forward(events: list[SSEEvent], raws: list[bytes]) -> None:
            nonlocal saw_done
            data: list[bytes] = []
            kept: list[bytes] = []
            try:
                for ev, raw in zip(events, raws, strict=True):
                    piece = ev[0]  # its data
                    if take(piece):  # raises on a broken event
                        data.append(piece)
                        kept.append(raw)
                    saw_done = saw_done or ends(piece, acc)
            finally:  # what came before a broken event is still published
                if saw_done:  # published once stored
                    self._final[0].extend(data)
                    self._final[1].extend(kept)
                elif data:
                    self.events.publish(data, kept)
                    self._maybe_checkpoint()

        await self._read(resp, lambda chunk: forward(*parser.split(chunk)))
        events, raws, tail = parser.finish()
        forward(events, raws)
        if tail and self._final[1]:  # bytes after the last event (a comment): they go too
            self._final[1][-1] += tail
        if not saw_done and self.acc.finish_reason is None:
            raise _StreamBroken(
                Status.FAILED,
                error_body(
                    "the upstream stream ended before it was complete",
                    "upstream_error",
                    "upstream_incomplete",
                )["error"],
            )

    def _take_event(self, data: bytes) -> bool:
        """Accumulate one event; whether to forward it."""
        if data == b"[DONE]":
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _StreamBroken(
                Status.FAILED,
                error_body("the upstream sent invalid data", "upstream_error", "upstream_invalid")[
                    "error"
                ],
            ) from None
        if type(chunk) is not dict:  # orjson's objects are dicts exactly
            return True
        error = self.dialect.error(data, chunk)
        if error is not None:
            raise _StreamBroken(Status.FAILED, error)
        self.acc.add_chunk(chunk)
        return not (self._hide_usage and is_usage_only(chunk))

    async def _pump_body(self, resp: aiohttp.ClientResponse) -> None:
        parts: list[bytes] = []

        def on_data(data: bytes) -> None:
            # One piece is held back: the last one is published once the answer is stored.
            parts.append(data)
            held, _ = self._final
            if held:
                self.events.publish(held, held)
                self._final = ([], [])
            self._hold(data, data)

        await self._read(resp, on_data)
        try:
            body = orjson.loads(b"".join(parts))
        except orjson.JSONDecodeError:
            raise _StreamBroken(
                Status.FAILED,
                error_body("the upstream sent invalid JSON", "upstream_error", "upstream_invalid")[
                    "error"
                ],
            ) from None
        if isinstance(body, dict):
            self.acc.add_completion(body)

    async def _read(self, resp: aiohttp.ClientResponse, on_data: Callable[[bytes], None]) -> None:
        """Feed the upstream body to ``on_data`` as it arrives, under the idle timeout and
        ``max_duration``."""
        loop = asyncio.get_running_loop()
        up = self._settings.upstream
        task = asyncio.current_task()
        assert task is not None
        watch = Watchdog(task, idle=up.idle_timeout, deadline=self._t0 + up.max_duration)
        reader = resp.content
        try:
            while True:
                data = await reader.readany()
                if not data:
                    return
                watch.last = loop.time()
                if self._ttft is None:
                    self._ttft = watch.last - self._t0
                on_data(data)
        except asyncio.CancelledError:
            if watch.fired is None or self._aborted:
                raise
            if watch.fired == "deadline":
                raise _StreamBroken(
                    Status.INCOMPLETE,
                    error_body(
                        f"the answer took longer than max_duration ({up.max_duration:g} s)",
                        "upstream_error",
                        "max_duration_exceeded",
                    )["error"],
                ) from None
            raise _StreamBroken(
                Status.FAILED,
                error_body(
                    f"the upstream sent nothing for {up.idle_timeout:g} s",
                    "upstream_error",
                    "upstream_timeout",
                )["error"],
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            # aiohttp raises the connection error before handing over bytes it had already
            # received; they are part of the answer, so take them before giving up.
            with contextlib.suppress(Exception):
                leftover = reader._read_nowait(-1)
                if leftover:
                    on_data(leftover)
            raise _StreamBroken(
                Status.FAILED,
                error_body(
                    f"the upstream connection failed mid-stream ({type(exc).__name__})",
                    "upstream_error",
                    "upstream_disconnected",
                )["error"],
            ) from None
        finally:
            watch.disarm()

    # -- store -------------------------------------------------------------------------------

    def _maybe_checkpoint(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_checkpoint or self.acc.version == self._checkpointed_version:
            return
        if self._store is None:
            return
        self._next_checkpoint = now + self._settings.storage.checkpoint_interval
        self._checkpointed_version = self.acc.version
        self._store.checkpoint(self.message_id, self.acc.content, self.acc.message())

    async def _finish(self) -> None:
        if self._store is None:
            return
        acc = self.acc
        message = acc.message()
        usage = acc.usage if isinstance(acc.usage, dict) else {}
        elapsed = asyncio.get_running_loop().time() - self._t0
        answer = Answer(
            status=self.status,
            text=acc.content,
            data=message,
            prefix_hash=prefix_hashes([message], parent=self._parent_hash)[0],
            error=self.error,
            model=acc.model,
            finish_reason=acc.finish_reason,
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            total_tokens=_int(usage.get("total_tokens")),
            usage=acc.usage,
            upstream_id=acc.upstream_id,
            system_fingerprint=acc.system_fingerprint,
            client_disconnected=self.client_disconnected,
            ttft_ms=None if self._ttft is None else round(self._ttft * 1000),
            duration_ms=round(elapsed * 1000),
            completed_at=utcnow(),
        )
        try:
            await self._store.finish(self.message_id, self.chat_id, answer)
        except Exception:
            log.exception("could not store the answer request_id=%s", self.request_id)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # Nobody may be waiting for the head (every client left): do not log the exception.
    if not fut.cancelled():
        fut.exception()
