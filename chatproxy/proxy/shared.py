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
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import orjson
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from chatproxy.errors import error_body
from chatproxy.proxy.fanout import Subscriber

if TYPE_CHECKING:
    from chatproxy.proxy.generation import Generation

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
        self._close = self.client.register_script(_CLOSE_LUA)
        self._prefix = prefix
        self._instance_id = instance_id
        self._maxlen = maxlen
        self._ttl_ms = max(1, round(ttl * 1000))
        self._refresh = refresh
        self._grace_ms = round(grace * 1000)
        self._mirrors: set[asyncio.Task[None]] = set()

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
        args = (message_id, parent_id or "", branch_from or "", self._ttl_ms)
        try:
            return bool(await self._claim(keys=(self.busy_key(chat_id),), args=args))
        except REDIS_ERRORS as exc:
            log.warning(
                "redis unreachable, chat %s claimed on this instance only: %r", chat_id, exc
            )
            return True

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
        """Copy ``gen``'s events into Redis as they come, in a task of its own, and keep its
        claim alive while it runs."""
        task = asyncio.create_task(self._mirror(gen), name=f"mirror-{gen.message_id}")
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _mirror(self, gen: Generation) -> None:
        chat_id, message_id = gen.chat_id, gen.message_id
        busy, meta = self.busy_key(chat_id), self.meta_key(chat_id)
        stream = self.stream_key(chat_id, message_id)
        keys = (busy, meta, stream) if gen.stream else (busy,)
        fanout = gen.events
        # Passive: following for Redis does not keep an answer alive under policy "abort".
        sub = Subscriber(passive=True)
        fanout.subscribers.append(sub)
        loop = asyncio.get_running_loop()
        retry = _Retry(gen)
        try:
            if gen.stream:
                await retry(partial(self._open, stream, meta, message_id))
            refresh_at = loop.time() + self._refresh
            while True:
                due = loop.time() >= refresh_at
                if due:
                    refresh_at = loop.time() + self._refresh
                n = len(fanout.pieces)
                if sub.seen < n and gen.stream:
                    pieces = fanout.pieces
                    await retry(partial(self._append, stream, pieces, sub.seen, n, keys, due))
                    sub.seen = n
                    continue
                sub.seen = n
                ended = fanout.done or (gen.task is not None and gen.task.done())
                if ended:
                    if gen.stream:
                        await retry(partial(self._finish, stream, meta, message_id, n), ended=True)
                    return
                if due:
                    await retry(partial(self._expire, keys))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, refresh_at - loop.time())):
                        await fanout.wait(sub)
        except REDIS_ERRORS:
            log.warning("answer %s ended; its stream could not be closed in redis", message_id)
        finally:
            fanout.subscribers.remove(sub)
            await self.release(chat_id, message_id)  # already done, unless the answer failed

    async def _open(self, stream: str, meta: str, message_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {"s": self._instance_id}, id="0-1")
            pipe.pexpire(stream, self._ttl_ms)
            pipe.hset(meta, mapping={"message": message_id, "instance": self._instance_id})
            pipe.pexpire(meta, self._ttl_ms)
            await pipe.execute()

    async def _append(
        self,
        stream: str,
        pieces: list[bytes],
        start: int,
        end: int,
        keys: tuple[str, ...],
        refresh: bool,
    ) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for i in range(start, end):
                pipe.xadd(
                    stream,
                    {"d": pieces[i]},
                    id=event_id(i + 1),
                    maxlen=self._maxlen,
                    approximate=True,
                )
            for key in keys if refresh else ():
                pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

    async def _finish(self, stream: str, meta: str, message_id: str, n: int) -> None:
        args = (event_id(n + 1), self._grace_ms, message_id, ENDED_STREAM_MS)
        await self._close(keys=(stream, meta), args=args)

    async def _expire(self, keys: tuple[str, ...]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

    # -- following ---------------------------------------------------------------------------

    async def feed(self, chat_id: str, after: int) -> RedisFeed | None:
        """A feed of the chat's newest streamed answer, running on any instance (or just
        finished), from event ``after + 1``; ``None`` when there is none."""
        try:
            message_id = await self.client.hget(self.meta_key(chat_id), "message")
        except REDIS_ERRORS as exc:
            log.warning("redis unreachable, cannot look for a shared generation: %r", exc)
            return None
        if message_id is None:
            return None
        message = message_id.decode()
        return RedisFeed(self.client, self.stream_key(chat_id, message), message, after)

    async def forget(self, chat_id: str) -> None:
        """Remove the chat's stream records (the chat was deleted)."""
        with contextlib.suppress(*REDIS_ERRORS):
            streams = [k async for k in self.client.scan_iter(match=self.stream_key(chat_id, "*"))]
            await self.client.delete(self.meta_key(chat_id), *streams)

    async def close(self) -> None:
        """Let the mirrors finish (the generations have ended), then close the client."""
        if self._mirrors:
            await asyncio.wait(set(self._mirrors), timeout=5.0)
        left = list(self._mirrors)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await self.client.aclose()


class _Retry:
    """Runs a Redis operation of one mirror until it succeeds: while the answer runs, Redis
    being away only delays the copy (the events stay in memory); once it has ended, a few
    attempts are made, then the copy is given up."""

    def __init__(self, gen: Generation) -> None:
        self._gen = gen
        self._warned = False

    async def __call__(self, op: Callable[[], Awaitable[None]], *, ended: bool = False) -> None:
        attempts = 0
        while True:
            try:
                await op()
                return
            except REDIS_ERRORS as exc:
                attempts += 1
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "redis unreachable, answer %s is not shared for now: %r",
                        self._gen.message_id,
                        exc,
                    )
                gen_ended = self._gen.task is not None and self._gen.task.done()
                if (ended or gen_ended) and attempts >= CLOSE_ATTEMPTS:
                    raise
                await asyncio.sleep(min(0.1 * 2**attempts, 1.0))


class RedisFeed:
    """Follows an answer's Redis stream; see :class:`chatproxy.proxy.feed.Feed`."""

    def __init__(self, client: Redis, stream: str, message_id: str, after: int) -> None:
        self.message_id = message_id
        self.position = after
        self._client = client
        self._stream = stream
        self._ended = False

    async def next(self) -> list[bytes] | None:
        while not self._ended:
            try:
                batch = await self._read()
            except REDIS_ERRORS as exc:
                log.warning("redis unreachable while following %s: %r", self.message_id, exc)
                return self._end("the shared stream of this answer is unreachable")
            if batch:
                return batch
        return None

    async def _read(self) -> list[bytes] | None:
        found = await self._client.xread(
            {self._stream: event_id(self.position)}, count=READ_COUNT, block=BLOCK_MS
        )
        if not found:
            return await self._idle()
        batch = []
        for entry_id, fields in found[0][1]:
            if b"e" in fields:
                self._ended = True
                break
            batch.append(fields[b"d"])
            self.position = int(entry_id.split(b"-")[1])
        return batch

    async def _idle(self) -> list[bytes] | None:
        """Nothing came for a while: has the stream ended before our position, or has the
        instance producing it stopped (its stream expired)?"""
        last = await self._client.xrevrange(self._stream, count=1)
        if not last:
            return self._end("the instance producing this answer stopped")
        if b"e" in last[0][1]:
            self._ended = True  # asked to start after its last event
        return None

    def _end(self, message: str) -> list[bytes]:
        self._ended = True
        self.position += 2
        error = error_body(message, "server_error", "generation_interrupted")
        return [orjson.dumps(error), b"[DONE]"]

    async def close(self, *, disconnected: bool) -> None:
        """Nothing to undo: following through Redis holds no resources."""
