"""``chatproxy import``: chat documents read from a file into the store at bulk speed.

Each document is validated (:class:`chatproxy.export.DocumentReader`) and turned into rows;
batches of whole documents go to the database in short transactions (:mod:`chatproxy.bulk`).
A file larger than a chunk is parsed in a worker process, a few chunks ahead of the writer:
in one process, the parsing and the writer's thread take turns holding the interpreter (each
row the database stores waits for it), and the import runs at half the speed of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import pickle
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson

from chatproxy.bulk import MESSAGE_COLUMNS, BulkDB, ImportBatch, Written, bulk_db, sqlite_ts
from chatproxy.export import BadExport, DocumentReader, parse_line
from chatproxy.store.models import storable_json, storable_text
from chatproxy.store.store import Store
from chatproxy.store.threading import message_text

__all__ = ["ImportFailed", "ImportStats", "document_rows", "import_file", "parse_chunk"]


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# The columns of a message row that hold the document's strings (a NUL becomes U+FFFD).
_TEXTS = ("role", "text", "model", "finish_reason", "upstream_id", "system_fingerprint")
_TEXT_COLUMNS = tuple(MESSAGE_COLUMNS.index(name) for name in (*_TEXTS, "instance_id"))
_JSONS = ("data", "error", "usage", "params", "metadata")
_JSON_COLUMNS = tuple(MESSAGE_COLUMNS.index(name) for name in _JSONS)


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A message row as both stores hold it: every NUL replaced by U+FFFD."""
    values = list(row)
    for i in _TEXT_COLUMNS:
        values[i] = storable_text(values[i])
    for i in _JSON_COLUMNS:
        values[i] = storable_json(values[i])
    return tuple(values)


_depth = operator.itemgetter("depth")


def document_rows(
    ts: Callable[[datetime | None], Any],
    chat: dict[str, Any],
    messages: list[dict[str, Any]],
    votes: list[dict[str, Any]],
    nul: bool = True,
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The chat's row, its message rows (in :data:`MESSAGE_COLUMNS` order, parents before
    children) and vote rows; ``nul``: whether the document may hold a NUL (replaced);
    ``ts``: a datetime as the database takes it."""
    dumps = orjson.dumps
    chat_id, owner = chat["id"], chat["owner"]
    chat_row = (
        chat_id,
        owner,
        storable_text(chat["title"]),
        chat["visibility"],
        storable_json(dumps(chat["metadata"] or {}).decode()),
        chat["head_id"],
        ts(chat["created_at"]),
        ts(chat["updated_at"]),
    )
    rows = []
    for m in sorted(messages, key=_depth):  # stable: parents first
        data = m["message"]
        content = data.get("content")
        rows.append(
            (
                m["id"],
                chat_id,
                m["parent_id"],
                owner,
                m["role"],
                content if type(content) is str else message_text(content),
                m["depth"],
                dumps(data).decode(),
                m["prefix_hash"],
                m["status"],
                _json_text(m["error"]),
                m["model"],
                m["finish_reason"],
                m["prompt_tokens"],
                m["completion_tokens"],
                m["total_tokens"],
                _json_text(m["usage"]),
                m["upstream_id"],
                m["system_fingerprint"],
                _json_text(m["params"]),
                m["client_disconnected"],
                m["ttft_ms"],
                m["duration_ms"],
                m["instance_id"],
                _json_text(m["metadata"]),
                ts(m["created_at"]),
                ts(m["completed_at"]),
            )
        )
    if nul:
        rows = [_storable(row) for row in rows]
    vote_rows = [
        (v["message_id"], chat_id, v["user_id"], v["up"], ts(v["created_at"])) for v in votes
    ]
    return chat_row, rows, vote_rows


@dataclass(slots=True)
class ImportStats:
    """What an import added, and how far into the file it got."""

    chats: int = 0
    messages: int = 0
    documents: int = 0  # read and validated


class ImportFailed(BadExport):
    """A document that cannot be imported; the documents before it are (``stats``)."""

    def __init__(self, message: str, stats: ImportStats) -> None:
        super().__init__(message)
        self.stats = stats


_BATCH_RANGE = (100, 20_000)  # messages per transaction
_SERVED_CHECK = 2.0  # seconds between two looks at whether a proxy serves the store


class _Importer:
    """Batches documents into short transactions, one being written while the next is read."""

    def __init__(
        self,
        db: BulkDB,
        batch_messages: int,
        observe: Callable[[float, int, int], object] | None = None,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        self.db = db
        self.target = batch_messages
        self.heartbeat_timeout = heartbeat_timeout
        self.served = True  # until seen otherwise: short transactions
        self.served_seen = -_SERVED_CHECK
        self.batch = ImportBatch()
        self.stats = ImportStats()
        self.pending: asyncio.Future[None] | None = None
        self.now = datetime.now(UTC)
        # The last write's transaction as the database timed it (staging rows before it, or
        # waiting for a checkpoint, holds up no proxy: the batch is sized on this).
        self.transaction: float | None = None
        self.observe = observe
        db.observe = self._observed

    def _observed(self, seconds: float, wal: int, size: int) -> None:
        self.transaction = seconds
        if self.observe is not None:
            self.observe(seconds, wal, size)

    def add(self, line: int, chat: tuple[Any, ...], rows: list[Any], votes: list[Any]) -> None:
        b = self.batch
        b.users.setdefault(chat[1], self.now)
        b.docs.append((line, chat, len(rows), len(votes)))
        b.messages.extend(rows)
        b.votes.extend(votes)

    async def submit(self) -> None:
        """Hand the batch to the writer (after the one before it is written)."""
        await self.drain()
        if self.batch.docs:
            batch, self.batch = self.batch, ImportBatch()
            self.pending = asyncio.ensure_future(self._write(batch))

    async def drain(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending

    async def _write(self, batch: ImportBatch) -> None:
        started = time.perf_counter()
        self.transaction = None
        try:
            written = await self.db.write(batch)
        except Exception as exc:
            if len(batch.docs) == 1:
                line = batch.docs[0][0]
                why = f"line {line}: the database refused it ({exc})"
                raise ImportFailed(why, self.stats) from None
            # Find the document it refused: the ones before it are kept, as on a bad line.
            for doc in range(len(batch.docs)):
                await self._write(_part(batch, doc))
            raise
        seconds = self.transaction
        if seconds is None:
            seconds = time.perf_counter() - started
        self._count(written)
        if time.monotonic() - self.served_seen >= _SERVED_CHECK:
            self.served = await self.db.served(self.heartbeat_timeout)
            self.served_seen = time.monotonic()
        if len(batch) >= self.target // 2 and seconds > 0:
            rate = len(batch) / seconds
            low, high = _BATCH_RANGE
            aim = self.db.transaction_seconds if self.served else self.db.alone_seconds
            self.target = max(low, min(high, int(rate * aim)))

    def _count(self, written: Written) -> None:
        self.stats.chats += written.chats
        self.stats.messages += written.messages
        if written.conflict is not None:
            line, why = written.conflict
            raise ImportFailed(f"line {line}: {why}", self.stats)

    async def large(
        self, line: int, chat: tuple[Any, ...], rows: list[Any], votes: list[Any]
    ) -> None:
        """A document larger than a transaction: written in parts (parents first, votes
        last); if a part fails, what the others wrote of it is removed again."""
        await self.submit()
        await self.drain()
        done: list[str] = []
        new_chat = False
        try:
            for i in range(0, len(rows), self.target):
                part = rows[i : i + self.target]
                last = i + len(part) >= len(rows)
                batch = ImportBatch(users={chat[1]: self.now})
                batch.docs.append((line, chat, len(part), len(votes) if last else 0))
                batch.messages.extend(part)
                if last:
                    batch.votes.extend(votes)
                written = await self.db.write(batch)
                new_chat = new_chat or bool(written.chats)
                if written.conflict is None:
                    done.extend(r[0] for r in part)
                self._count(written)
        except Exception as exc:
            await self.db.delete_rows(chat[0] if new_chat else None, done)
            self.stats.chats -= int(new_chat)
            self.stats.messages -= len(done)
            if isinstance(exc, BadExport):
                raise
            raise ImportFailed(
                f"line {line}: the database refused it ({exc})", self.stats
            ) from None


def _part(batch: ImportBatch, index: int) -> ImportBatch:
    """Document ``index`` of ``batch`` alone."""
    m = sum(d[2] for d in batch.docs[:index])
    v = sum(d[3] for d in batch.docs[:index])
    _, chat, n_messages, n_votes = batch.docs[index]
    return ImportBatch(
        users={chat[1]: batch.users.get(chat[1])},
        messages=batch.messages[m : m + n_messages],
        votes=batch.votes[v : v + n_votes],
        docs=[batch.docs[index]],
    )


# A document's rows: (line, chat row, message rows, vote rows); or, in its place, why the
# document (and so the import) stops there.
Parsed = tuple[int, tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]] | str

_CHUNK_BYTES = 1 << 20  # lines handed to the parser at a time
_AHEAD = 4  # chunks parsed ahead of the writer, at most (memory: a few MiB)


def _postgres_ts(value: datetime | None) -> datetime | None:
    return value


def parse_chunk(first: int, lines: list[bytes], whole: bool, postgres: bool) -> list[Parsed]:
    """The documents of ``lines`` (``first``: the number of the first; ``whole``: one json
    document), validated and as rows, up to the first that cannot be imported (its error
    last). Runs in the parser process."""
    ts = _postgres_ts if postgres else sqlite_ts
    out: list[Parsed] = []
    for n, raw in enumerate(lines, first):
        if raw.isspace() or not raw:
            continue
        try:
            where, doc, nul = parse_line(None if whole else n, raw)
            chat, messages, votes = DocumentReader(where).parse(doc)
        except BadExport as exc:
            out.append(str(exc))
            break
        out.append((n, *document_rows(ts, chat, messages, votes, nul)))
    return out


def _chunks(source: BinaryIO) -> Iterator[tuple[int, list[bytes], bool]]:
    """``(number of the first line, lines, False)`` of about :data:`_CHUNK_BYTES` each; a
    json document (a pretty-printed one: its first line is ``{`` alone) whole, with True."""
    lines: list[bytes] = []
    size = 0
    first = 1
    for n, raw in enumerate(source, 1):
        line = raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw  # a UTF-8 byte-order mark
        if len(line) < 16 and line.strip() == b"{":
            if lines:
                yield first, lines, False
            yield n, [line + source.read()], True
            return
        lines.append(line)
        size += len(line)
        if size >= _CHUNK_BYTES:
            yield first, lines, False
            first, lines, size = n + 1, [], 0
    if lines:
        yield first, lines, False


class _Parser:
    """A worker process parsing chunks (``python -m chatproxy.importing``): a chunk pickled
    on its standard input, its documents on its standard output, each with its length."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Parser:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatproxy.importing",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def send(self, chunk: tuple[int, list[bytes], bool], postgres: bool) -> None:
        assert self.proc.stdin is not None
        data = pickle.dumps((*chunk, postgres), pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
        await self.proc.stdin.drain()

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def receive(self) -> list[Parsed]:
        assert self.proc.stdout is not None
        try:
            size = int.from_bytes(await self.proc.stdout.readexactly(8), "little")
            parsed: list[Parsed] = pickle.loads(await self.proc.stdout.readexactly(size))
        except asyncio.IncompleteReadError:
            code = await self.proc.wait()
            raise RuntimeError(f"the import's parser process stopped (exit code {code})") from None
        return parsed

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def _serve() -> None:
    """The parser process: chunks in, their documents out, until its input ends. It yields
    the processor to a proxy on the same machine (its work is never what a client waits for)."""
    os.nice(5)
    read, write = sys.stdin.buffer, sys.stdout.buffer
    while header := read.read(8):
        first, lines, whole, postgres = pickle.loads(read.read(int.from_bytes(header, "little")))
        data = pickle.dumps(parse_chunk(first, lines, whole, postgres), pickle.HIGHEST_PROTOCOL)
        write.write(len(data).to_bytes(8, "little") + data)
        write.flush()


async def _documents(source: BinaryIO, postgres: bool) -> AsyncIterator[Parsed]:
    """The documents of ``source`` in file order. The first chunk is parsed here; the next,
    if any, in a parser process (started meanwhile), at most :data:`_AHEAD` chunks ahead."""
    chunks = _chunks(source)
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    if second is None:  # a small file: not worth a process
        for item in parse_chunk(*first, postgres):
            yield item
        return
    parser = await _Parser.start()
    ahead = asyncio.Semaphore(_AHEAD)
    sent: asyncio.Queue[BaseException | None] = asyncio.Queue()  # a chunk sent, or the end

    async def feed() -> None:
        try:
            for chunk in itertools.chain([second], chunks):
                await ahead.acquire()
                await parser.send(chunk, postgres)
                sent.put_nowait(None)
            parser.close_input()
        except Exception as exc:  # the file could not be read
            sent.put_nowait(exc)
        else:
            sent.put_nowait(StopAsyncIteration())

    feeding = asyncio.create_task(feed())
    try:
        for item in parse_chunk(*first, postgres):
            yield item
        while (end := await sent.get()) is None:
            documents = await parser.receive()
            ahead.release()
            for item in documents:
                yield item
        if not isinstance(end, StopAsyncIteration):
            raise end
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        await parser.stop()


async def import_file(
    store: Store,
    source: BinaryIO,
    *,
    progress: Callable[[ImportStats], None] | None = None,
    batch_messages: int = 500,
    observe: Callable[[float, int, int], object] | None = None,
    heartbeat_timeout: float = 30.0,
) -> ImportStats:
    """Restore the chat documents of a json or jsonl export read from ``source``, with every
    branch, status, vote and timestamp; what a document leaves out is derived (prefix hashes,
    depths, head, title, times).

    Documents go in, in file order, in batches of short transactions (about
    ``BulkDB.transaction_seconds`` each while a proxy serves the store, an instance of it
    having heartbeated within ``heartbeat_timeout`` seconds: on SQLite it is never held up
    longer; ``BulkDB.alone_seconds`` while none does), each document whole or not at all.
    Ids already stored are skipped (importing twice adds nothing). A document that is not
    valid, or whose ids another chat or user holds, raises :class:`ImportFailed` naming its
    line and field: nothing of it is stored, the documents before it are."""
    async with bulk_db(store) as db:
        importer = _Importer(db, batch_messages, observe, heartbeat_timeout)
        try:
            async with contextlib.aclosing(_documents(source, db.postgres)) as documents:
                async for parsed in documents:
                    if isinstance(parsed, str):  # the documents before it go in
                        await importer.submit()
                        await importer.drain()
                        raise ImportFailed(parsed, importer.stats)
                    line, chat_row, rows, vote_rows = parsed
                    importer.stats.documents += 1
                    if len(rows) > importer.target:
                        await importer.large(line, chat_row, rows, vote_rows)
                    else:
                        importer.add(line, chat_row, rows, vote_rows)
                        if len(importer.batch) >= importer.target:
                            await importer.submit()
                            if progress is not None:
                                progress(importer.stats)
                    await asyncio.sleep(0)  # the writer's I/O (PostgreSQL) goes on meanwhile
            await importer.submit()
            await importer.drain()
        except ImportFailed:
            if importer.pending is not None:
                with contextlib.suppress(Exception):
                    await importer.drain()
            raise
        finally:
            await db.finish()
        if progress is not None:
            progress(importer.stats)
        return importer.stats


if __name__ == "__main__":
    _serve()
