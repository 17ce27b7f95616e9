"""`import` of a file larger than a chunk: its documents are parsed in a parser process (a few
chunks ahead of the writer) and stored in file order on both stores, with the same refusals as
the documents parsed in the importing process: an invalid document far into the file stops the
import at its line, the documents before it stored, nothing of it; the parser process is gone
once the import ends, whichever way."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatproxy import importing
from chatproxy.importing import ImportFailed, import_file
from chatproxy.store.models import Chat, Message
from chatproxy.store.store import Store

DOCS = 300


def doc(n: int) -> dict[str, Any]:
    messages = [
        {
            "id": f"p{n}m{i}",
            "parent_id": f"p{n}m{i - 1}" if i else None,
            "role": "user" if i % 2 == 0 else "assistant",
            "message": {"role": "user" if i % 2 == 0 else "assistant", "content": f"doc {n} #{i}"},
            "created_at": "2025-03-01T00:00:00+00:00",
        }
        for i in range(4)
    ]
    chat = {"id": f"chat_p{n}", "owner": "local", "title": f"chat {n}"}
    return {"format": "chatproxy.chat", "version": 1, "chat": chat, "messages": messages}


def parser_processes() -> list[int]:
    """This process's children running the import's parser."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent.split()[1]) == os.getpid() and b"chatproxy.importing" in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # About ten documents a chunk: the file's 300 go to the parser process in 30 chunks.
    monkeypatch.setattr(importing, "_CHUNK_BYTES", 10 * len(orjson.dumps(doc(0))))


async def stored(store: Store) -> tuple[list[str], int]:
    chats = await store.read(lambda: Chat.all().order_by("id").values_list("id", flat=True))
    messages = await store.read(lambda: Message.all().count())
    return list(chats), messages


async def test_a_file_of_many_chunks_is_stored_whole_in_file_order(db_url: str) -> None:
    source = b"".join(orjson.dumps(doc(n)) + b"\n" for n in range(DOCS))
    store = Store(db_url)
    await store.open()
    try:
        stats = await import_file(store, io.BytesIO(source))
        chats, messages = await stored(store)
        heads = await store.read(
            lambda: Chat.filter(id="chat_p299").values_list("head_id", flat=True)
        )
    finally:
        await store.close()
    assert (stats.documents, stats.chats, stats.messages) == (DOCS, DOCS, 4 * DOCS)
    assert chats == sorted(f"chat_p{n}" for n in range(DOCS)) and messages == 4 * DOCS
    assert list(heads) == ["p299m3"]  # derived in the parser process, as here
    assert parser_processes() == []


@pytest.mark.parametrize("bad", ["not json at all", '{"format": "chatproxy.chat"}'])
async def test_an_invalid_document_far_into_the_file_stops_the_import_at_its_line(
    db_url: str, bad: str
) -> None:
    lines = [orjson.dumps(doc(n)) for n in range(DOCS)]
    lines[250] = bad.encode()  # line 251, in the parser process's 25th chunk
    store = Store(db_url)
    await store.open()
    try:
        with pytest.raises(ImportFailed) as failed:
            await import_file(store, io.BytesIO(b"\n".join(lines) + b"\n"))
        chats, messages = await stored(store)
    finally:
        await store.close()
    assert str(failed.value).startswith("line 251: ")
    assert (failed.value.stats.chats, failed.value.stats.messages) == (250, 1000)
    assert chats == sorted(f"chat_p{n}" for n in range(250)) and messages == 1000
    assert parser_processes() == []


async def test_a_pretty_printed_document_after_lines_is_read_whole(db_url: str) -> None:
    # A json document (its first line "{" alone) after jsonl lines: read to the end, whole.
    lines = b"".join(orjson.dumps(doc(n)) + b"\n" for n in range(40))
    pretty = orjson.dumps(doc(40), option=orjson.OPT_INDENT_2) + b"\n"
    store = Store(db_url)
    await store.open()
    try:
        stats = await import_file(store, io.BytesIO(lines + pretty))
        chats, messages = await stored(store)
    finally:
        await store.close()
    assert (stats.chats, stats.messages) == (41, 164)
    assert "chat_p40" in chats and messages == 164
