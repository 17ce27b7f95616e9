"""Generations shared between instances through Redis (``redis.url`` set).

Three kinds of keys per chat, all under ``redis.prefix``:

- ``busy:{chat}``, a hash of the chat's running answers (message id → the branch point they
  hang from): one generation per chat, on every instance, claimed atomically by a script;
- ``gen:{chat}``, a Redis Stream of the running generation's events: event N is entry
  ``0-N`` (so ``Last-Event-ID`` maps to a stream id), trimmed to ``stream_maxlen``, closed by
  an end entry;
- ``genmeta:{chat}``, the generation's message id and instance.

While a generation runs, its instance refreshes the keys' expiry every heartbeat interval to
``heartbeat_timeout``: if the instance dies, they expire, and a follower on another instance
ends its stream instead of waiting forever. Once the generation ends, the keys live on for the
resume grace period, then expire. Redis being unreachable never fails a request: the claim
falls back to this instance's own check, and a follower gets an in-band error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

BLOCK_MS = 1000  # how long a follower waits on Redis before checking the owner is alive
READ_COUNT = 1000


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
        self._prefix = prefix
        self._instance_id = instance_id
        self._maxlen = maxlen
        self._ttl_ms = max(1, round(ttl * 1000))
        self._refresh = refresh
        self._grace_ms = round(grace * 1000)
        self._mirrors: set[asyncio.Task[None]] = set()

    def keys(self, chat_id: str) -> tuple[str, str, str]:
        """The chat's busy, stream and meta keys."""
        p = self._prefix
        return f"{p}busy:{chat_id}", f"{p}gen:{chat_id}", f"{p}genmeta:{chat_id}"

    # -- one generation per chat -------------------------------------------------------------

    async def claim(
        self, chat_id: str, message_id: str, parent_id: str | None, branch_from: str | None
    ) -> bool:
        """Claim the chat for ``message_id``; False if another instance's answer runs there
        (on the same branch point, when ``branch_from`` names one)."""
        busy = self.keys(chat_id)[0]
        args = (message_id, parent_id or "", branch_from or "", self._ttl_ms)
        try:
            return bool(await self._claim(keys=(busy,), args=args))
        except (RedisError, OSError) as exc:
            log.warning(
                "redis unreachable, chat %s claimed on this instance only: %r", chat_id, exc
            )
            return True

    async def busy(self, chat_id: str) -> bool:
        """Whether an answer runs in the chat on any instance (False if Redis is down)."""
        try:
            return bool(await self.client.exists(self.keys(chat_id)[0]))
        except (RedisError, OSError):
            return False

    async def release(self, chat_id: str, message_id: str) -> None:
        """Give up the claim of ``message_id`` on the chat."""
        with contextlib.suppress(RedisError, OSError):
            await self.client.hdel(self.keys(chat_id)[0], message_id)

    # -- publishing --------------------------------------------------------------------------

    def mirror(self, gen: Generation) -> None:
        """Copy ``gen``'s events into Redis as they come (in a task of its own), then release
        its claim."""
        task = asyncio.create_task(self._mirror(gen), name=f"mirror-{gen.message_id}")
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _mirror(self, gen: Generation) -> None:
        busy, stream, meta = self.keys(gen.chat_id)
        fanout = gen.events
        # Passive: following for Redis does not keep an answer alive under policy "abort".
        sub = Subscriber(passive=True)
        fanout.subscribers.append(sub)
        try:
            if gen.stream:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.delete(stream)
                    pipe.hset(
                        meta, mapping={"message": gen.message_id, "instance": self._instance_id}
                    )
                    pipe.pexpire(meta, self._ttl_ms)
                    await pipe.execute()
            while True:
                n = len(fanout.pieces)
                if sub.seen < n:
                    if gen.stream:
                        await self._append(stream, meta, busy, fanout.pieces, sub.seen, n)
                    sub.seen = n
                elif fanout.done:
                    if gen.stream:
                        await self._close(stream, meta, n)
                    break
                else:
                    try:
                        await asyncio.wait_for(fanout.wait(sub), self._refresh)
                    except TimeoutError:  # nothing new: keep the keys alive
                        await self._expire((busy, stream, meta), self._ttl_ms)
        except (RedisError, OSError) as exc:
            log.warning("redis unreachable, generation %s not shared: %r", gen.message_id, exc)
        finally:
            fanout.subscribers.remove(sub)
            await self.release(gen.chat_id, gen.message_id)

    async def _append(
        self, stream: str, meta: str, busy: str, pieces: list[bytes], start: int, end: int
    ) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for i in range(start, end):
                pipe.xadd(
                    stream, {"d": pieces[i]}, id=f"0-{i + 1}", maxlen=self._maxlen, approximate=True
                )
            for key in (stream, meta, busy):
                pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

    async def _close(self, stream: str, meta: str, n: int) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {"e": b"1"}, id=f"0-{n + 1}")
            if self._grace_ms > 0:
                pipe.pexpire(stream, self._grace_ms)
                pipe.pexpire(meta, self._grace_ms)
            else:
                pipe.delete(stream, meta)
            await pipe.execute()

    async def _expire(self, keys: tuple[str, ...], ms: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pexpire(key, ms)
            await pipe.execute()

    # -- following ---------------------------------------------------------------------------

    async def feed(self, chat_id: str, after: int) -> RedisFeed | None:
        """A feed of the chat's generation running on any instance (or just finished), from
        event ``after + 1``; ``None`` when there is none."""
        _, stream, meta = self.keys(chat_id)
        try:
            message_id = await self.client.hget(meta, "message")
        except (RedisError, OSError) as exc:
            log.warning("redis unreachable, cannot look for a shared generation: %r", exc)
            return None
        if message_id is None:
            return None
        return RedisFeed(self.client, stream, meta, message_id.decode(), after)

    async def forget(self, chat_id: str) -> None:
        """Remove the chat's stream records (the chat was deleted)."""
        _, stream, meta = self.keys(chat_id)
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(stream, meta)

    async def close(self) -> None:
        """Let the mirrors finish (the generations have ended), then close the client."""
        if self._mirrors:
            await asyncio.wait(set(self._mirrors), timeout=5.0)
        for task in list(self._mirrors):
            task.cancel()
        await self.client.aclose()


class RedisFeed:
    """Follows a generation's Redis stream; see :class:`chatproxy.proxy.feed.Feed`."""

    def __init__(self, client: Redis, stream: str, meta: str, message_id: str, after: int) -> None:
        self.message_id = message_id
        self.position = after
        self._client = client
        self._stream = stream
        self._meta = meta
        self._ended = False

    async def next(self) -> list[bytes] | None:
        while not self._ended:
            try:
                batch = await self._read()
            except (RedisError, OSError) as exc:
                log.warning("redis unreachable while following %s: %r", self.message_id, exc)
                return self._end("the shared stream of this answer is unreachable")
            if batch:
                return batch
        return None

    async def _read(self) -> list[bytes] | None:
        found = await self._client.xread(
            {self._stream: f"0-{self.position}"}, count=READ_COUNT, block=BLOCK_MS
        )
        if not found:
            # Nothing for a while: is the instance running it still there?
            if not await self._client.exists(self._meta):
                return self._end("the instance producing this answer stopped")
            return None
        batch = []
        for entry_id, fields in found[0][1]:
            if b"e" in fields:
                self._ended = True
                break
            batch.append(fields[b"d"])
            self.position = int(entry_id.split(b"-")[1])
        return batch

    def _end(self, message: str) -> list[bytes]:
        self._ended = True
        self.position += 2
        error = error_body(message, "server_error", "generation_interrupted")
        return [orjson.dumps(error), b"[DONE]"]

    async def close(self, *, disconnected: bool) -> None:
        """Nothing to undo: following through Redis holds no resources."""
