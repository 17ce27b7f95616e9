"""Generations shared between instances through Redis (``redis.url`` set).

Keys, all under ``redis.prefix``:

- ``busy:{chat}``, a hash of the chat's running answers (message id → the branch point they
  hang from): one generation per chat, on every instance, claimed atomically by a script and
  released before the answer's end is published;
- ``gen:{chat}:{message}``, a Redis Stream of one answer's events: a start entry ``0-1``, then
  event N as entry ``1-N`` (so ``Last-Event-ID`` maps to a stream id), trimmed to
  ``stream_maxlen``, closed by an end entry;
- ``genmeta:{chat}``, the chat's newest streamed answer (its message id and instance).

While an answer runs, its instance refreshes the keys' expiry every heartbeat interval to
``heartbeat_timeout``: if the instance dies, they expire, and a follower on another instance
ends its stream instead of waiting forever. Once the answer ends, its stream lives on for the
resume grace period. Redis being unreachable never fails a request: a claim falls back to
this instance's own check, the copy of the events is retried until the answer ends, and a
follower gets an in-band error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chatproxy.engine.feed import Batch
from chatproxy.errors import error_body

if TYPE_CHECKING:
    from chatproxy.engine.generation import Generation

__all__ = ["RedisFeed", "SharedGenerations"]

log = logging.getLogger("chatproxy.shared")

REDIS_ERRORS = (RedisError, OSError)

# KEYS[1]: the busy hash. ARGV: message id, its branch point ("" for none), the requested
# branch point ("" for none), expiry in ms. Returns 1 if claimed, 0 if the chat is busy.
_CLAIM_LUA = """
local busy = redis.call('HGETALL', KEYS[1])
if #busy > 0 then
  if ARGV[3] == '' then return 0 end
  for i = 2, #busy, 2 do
    if busy[i] == ARGV[3] then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: the stream, the chat's meta. ARGV: the end entry's id, the grace period in ms, the
# message id, how long an ended stream stays for its current followers when there is no grace.
# The meta only expires with the stream if it still names this answer.
# Release a planning lock only if it is still the one taken (it may have expired and been
# taken by another instance since).
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
SERIAL_WAIT = 10.0  # seconds a request waits for an identical one on another instance

_CLOSE_LUA = """
redis.call('XADD', KEYS[1], ARGV[1], 'e', '1')
local grace = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.max(grace, tonumber(ARGV[4])))
if redis.call('HGET', KEYS[2], 'message') == ARGV[3] then
  if grace > 0 then redis.call('PEXPIRE', KEYS[2], grace) else redis.call('DEL', KEYS[2]) end
end
return 1
"""

BLOCK_MS = 1000  # how long a follower waits on Redis before checking the answer is alive
READ_COUNT = 1000
ENDED_STREAM_MS = 5000  # an ended stream kept for its followers when resume_grace is 0
CLOSE_ATTEMPTS = 3  # once the answer has ended, how often closing its stream is tried
# How often running answers' new events are written to Redis, all in one round trip: what a
# follower on another instance waits at most, on top of Redis itself.
FLUSH_INTERVAL = 0.02


def event_id(number: int) -> str:
    """The stream entry id of event ``number`` (from 1)."""
    return f"1-{number}"


class SharedGenerations:
    """Claims, event streams and followers of generations across instances."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        instance_id: str,
        maxlen: int,
        ttl: float,
        refresh: float,
        grace: float,
    ) -> None:
        self.client = Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=BLOCK_MS / 1000 + 5.0,
            retry=Retry(NoBackoff(), 1),
        )
        self._claim = self.client.register_script(_CLAIM_LUA)
        self.close_script = self.client.register_script(_CLOSE_LUA)
        self._unlock = self.client.register_script(_UNLOCK_LUA)
        self._prefix = prefix
        self.instance_id = instance_id
        self.maxlen = maxlen
        self.ttl_ms = max(1, round(ttl * 1000))
        self.refresh = refresh
        self.grace_ms = round(grace * 1000)
        self._live: list[_Mirrored] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # The flusher, close() and forget() take turns: none sees another's half-done work.
        self._flushing = asyncio.Lock()
        self._healthy = True

    def busy_key(self, chat_id: str) -> str:
        return f"{self._prefix}busy:{chat_id}"

    def meta_key(self, chat_id: str) -> str:
        return f"{self._prefix}genmeta:{chat_id}"

    def stream_key(self, chat_id: str, message_id: str) -> str:
        return f"{self._prefix}gen:{chat_id}:{message_id}"

    # -- one generation per chat -------------------------------------------------------------

    async def claim(
        self, chat_id: str, message_id: str, parent_id: str | None, branch_from: str | None
    ) -> bool:
        """Claim the chat for ``message_id``; False if another instance's answer runs there
        (on the same branch point, when ``branch_from`` names one)."""
        args = (message_id, parent_id or "", branch_from or "", self.ttl_ms)
        try:
            return bool(await self._claim(keys=(self.busy_key(chat_id),), args=args))
        except REDIS_ERRORS as exc:
            log.warning(
                "redis unreachable, chat %s claimed on this instance only: %r", chat_id, exc
            )
            return True

    async def lock(self, key: str) -> str | None:
        """Wait until no other instance plans a request identical to this one (``key``, a
        digest), then hold the lock; its token, or ``None`` when Redis does not answer or the
        wait is over (the request then goes ahead: it is never blocked for good)."""
        name, token = f"{self._prefix}plan:{key}", secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SERIAL_WAIT
        try:
            while not await self.client.set(name, token, nx=True, px=self.ttl_ms):
                if loop.time() > deadline:
                    return None
                await asyncio.sleep(0.01)
        except REDIS_ERRORS:
            return None
        return token

    async def unlock(self, key: str, token: str) -> None:
        """Release what :meth:`lock` took (never waits long, never fails)."""
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._unlock(keys=(f"{self._prefix}plan:{key}",), args=(token,))

    async def busy(self, chat_id: str) -> bool:
        """Whether an answer runs in the chat on any instance (False if Redis is down)."""
        try:
            return bool(await self.client.exists(self.busy_key(chat_id)))
        except REDIS_ERRORS:
            return False

    async def release(self, chat_id: str, message_id: str) -> None:
        """Give up the claim of ``message_id`` on the chat (never waits long, never fails)."""
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.client.hdel(self.busy_key(chat_id), message_id)

    # -- publishing --------------------------------------------------------------------------

    def mirror(self, gen: Generation) -> None:
        """Copy ``gen``'s events into Redis and keep its claim alive while it runs. Nothing
        happens per request or per event: the flusher task writes what is new in every running
        answer, in one round trip, every ``FLUSH_INTERVAL``."""
        self._live.append(_Mirrored(gen, self))
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="redis-mirror")

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._live:
                self._wake.clear()
                await self._wake.wait()
            started = loop.time()
            await self.flush()
            await asyncio.sleep(max(0.0, FLUSH_INTERVAL - (loop.time() - started)))

    async def flush(self) -> None:
        """Write what is new in every mirrored answer; forget the ones that are over."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        now = asyncio.get_running_loop().time()
        live = list(self._live)
        async with self.client.pipeline(transaction=False) as pipe:
            marks = [await m.queue(pipe, now) for m in live]
            try:
                results = await pipe.execute(raise_on_error=False)
            except REDIS_ERRORS as exc:
                self._unhealthy(exc)
                for m in live:
                    self._failed(m)
                return
        start, healthy = 0, True
        for m, mark in zip(live, marks, strict=True):
            done = results[start : start + mark.commands]
            start += mark.commands
            # An entry already there was written by an earlier attempt that seemed to fail.
            errors = [r for r in done if isinstance(r, Exception) and not _already_there(r)]
            if errors:
                healthy = False
                self._unhealthy(errors[0])
                self._failed(m)
            elif m.written(mark, now):
                self._live.remove(m)
        if healthy and not self._healthy:
            self._healthy = True
            log.info("redis reachable again, running answers shared")

    def _failed(self, m: _Mirrored) -> None:
        if m.failed() >= CLOSE_ATTEMPTS:  # ended some attempts ago: given up
            self._live.remove(m)

    def _unhealthy(self, exc: BaseException) -> None:
        if self._healthy:
            self._healthy = False
            log.warning("redis unreachable, running answers not shared for now: %r", exc)

    # -- following ---------------------------------------------------------------------------

    async def feed(self, chat_id: str, after: int) -> RedisFeed | None:
        """A feed of the chat's newest streamed answer, running on any instance (or just
        finished), from event ``after + 1``; ``None`` when there is none."""
        try:
            message_id = await self._newest(chat_id)
        except REDIS_ERRORS as exc:
            log.warning("redis unreachable, cannot look for a shared generation: %r", exc)
            return None
        if message_id is None:
            return None
        message = message_id.decode()
        return RedisFeed(self.client, self.stream_key(chat_id, message), message, after)

    async def _newest(self, chat_id: str) -> bytes | None:
        """The chat's newest streamed answer. One that has just started is in the busy hash
        before its first write (at most ``FLUSH_INTERVAL`` later), while the meta still names
        the chat's previous answer, or nothing: wait for that write."""
        meta, busy = self.meta_key(chat_id), self.busy_key(chat_id)
        deadline = asyncio.get_running_loop().time() + 3 * FLUSH_INTERVAL
        while True:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hget(meta, "message")
                pipe.hkeys(busy)
                message_id, running = await pipe.execute()
            if not running or message_id in running:
                return message_id  # type: ignore[no-any-return]
            if asyncio.get_running_loop().time() > deadline:
                # Running, but not streamed (or its instance cannot reach Redis).
                return message_id  # type: ignore[no-any-return]
            await asyncio.sleep(FLUSH_INTERVAL / 4)

    async def forget(self, chat_id: str) -> None:
        """Remove the chat's stream records (the chat was deleted)."""
        async with self._flushing:
            # A later flush must not write the records back.
            self._live = [m for m in self._live if m.gen.chat_id != chat_id]
            with contextlib.suppress(*REDIS_ERRORS):
                match = self.stream_key(chat_id, "*")
                streams = [k async for k in self.client.scan_iter(match=match)]
                await self.client.delete(self.meta_key(chat_id), *streams)

    async def close(self) -> None:
        """Write the last events of the answers (they have ended), then close the client."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while self._live:
                    await self.flush()
                    if self._live:
                        await asyncio.sleep(FLUSH_INTERVAL)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.client.aclose()


@dataclass(slots=True, frozen=True)
class _Mark:
    """What one flush queued for an answer: its events up to ``events``, the end or not, in
    ``commands`` commands."""

    events: int
    ended: bool
    commands: int


def _over(gen: Generation) -> bool:
    """Whether the answer has published its last event (or its task ended without it)."""
    return gen.events.done or (gen.task is not None and gen.task.done())


def _already_there(exc: Exception) -> bool:
    return "equal or smaller than the target stream top item" in str(exc)


class _Mirrored:
    """One answer being copied to Redis: how far, and what is left to do."""

    __slots__ = (
        "_seen",
        "failures",
        "gen",
        "keys",
        "meta",
        "opened",
        "refresh_at",
        "shared",
        "stream",
    )

    def __init__(self, gen: Generation, shared: SharedGenerations) -> None:
        self.gen = gen
        self.shared = shared
        chat_id = gen.chat_id
        self.meta = shared.meta_key(chat_id)
        self.stream = shared.stream_key(chat_id, gen.message_id)
        busy = shared.busy_key(chat_id)
        self.keys = (busy, self.meta, self.stream) if gen.stream else (busy,)
        self.opened = not gen.stream
        self.refresh_at = 0.0
        self.failures = 0
        self._seen = 0

    async def queue(self, pipe: Pipeline, now: float) -> _Mark:
        """Queue what is new, and say what that will have written."""
        gen, shared = self.gen, self.shared
        log = gen.events
        before = len(pipe)
        # The end is only taken once every event before it is in the same write.
        ended = _over(gen)
        n = len(log.pieces)
        if not gen.stream:
            if now >= self.refresh_at:
                pipe.pexpire(self.keys[0], shared.ttl_ms)
            return _Mark(n, ended, len(pipe) - before)
        if not self.opened:
            pipe.xadd(self.stream, {"s": shared.instance_id}, id="0-1")
            owner = {"message": gen.message_id, "instance": shared.instance_id}
            pipe.hset(self.meta, mapping=owner)
        for i in range(self._seen, n):
            pipe.xadd(
                self.stream,
                {"d": log.pieces[i]},
                id=event_id(i + 1),
                maxlen=shared.maxlen,
                approximate=True,
            )
        if ended:
            args = (event_id(n + 1), shared.grace_ms, gen.message_id, ENDED_STREAM_MS)
            await shared.close_script(keys=(self.stream, self.meta), args=args, client=pipe)
        elif not self.opened or now >= self.refresh_at:
            for key in self.keys:
                pipe.pexpire(key, shared.ttl_ms)
        return _Mark(n, ended, len(pipe) - before)

    def written(self, mark: _Mark, now: float) -> bool:
        """The queued write went through; whether this answer is done with."""
        self._seen = mark.events
        self.opened = True
        self.failures = 0
        if now >= self.refresh_at:
            self.refresh_at = now + self.shared.refresh
        return mark.ended

    def failed(self) -> int:
        """The write failed; how often in a row since the answer ended."""
        if _over(self.gen):
            self.failures += 1
        return self.failures


class RedisFeed:
    """Follows an answer's Redis stream; see :class:`chatproxy.engine.feed.Feed`."""

    def __init__(self, client: Redis, stream: str, message_id: str, after: int) -> None:
        self.message_id = message_id
        self.position = after
        self._client = client
        self._stream = stream
        self._ended = False

    async def next(self) -> Batch | None:
        while not self._ended:
            try:
                batch = await self._read()
            except REDIS_ERRORS as exc:
                log.warning("redis unreachable while following %s: %r", self.message_id, exc)
                return self._end("the shared stream of this answer is unreachable")
            if batch:
                return batch
        return None

    async def _read(self) -> Batch | None:
        found = await self._client.xread(
            {self._stream: event_id(self.position)}, count=READ_COUNT, block=BLOCK_MS
        )
        if not found:
            return await self._idle()
        batch: list[bytes] = []
        first = 0
        for entry_id, fields in found[0][1]:
            if b"e" in fields:
                self._ended = True
                break
            batch.append(fields[b"d"])
            self.position = int(entry_id.split(b"-")[1])
            first = first or self.position
        return Batch(first, batch) if batch else None

    async def _idle(self) -> Batch | None:
        """Nothing came for a while: has the stream ended before our position, or has the
        instance producing it stopped (its stream expired)?"""
        last = await self._client.xrevrange(self._stream, count=1)
        if not last:
            return self._end("the instance producing this answer stopped")
        if b"e" in last[0][1]:
            self._ended = True  # asked to start after its last event
        return None

    def _end(self, message: str) -> Batch:
        self._ended = True
        first = self.position + 1
        self.position += 2
        error = error_body(message, "server_error", "generation_interrupted")
        return Batch(first, [orjson.dumps(error), b"[DONE]"])

    async def close(self, *, disconnected: bool) -> None:
        """Nothing to undo: following through Redis holds no resources."""
