"""`import` of a document holding NUL characters (escaped as \\u0000, as JSON writes them): both
stores take it, every NUL stored as U+FFFD, in text and JSON columns alike; the documents
around it, which hold none, are stored as they are."""

from __future__ import annotations

import io
from typing import Any

import orjson

from chatproxy.importing import import_file
from chatproxy.store.models import Chat, Message
from chatproxy.store.store import Store

NUL, REPLACEMENT = "\x00", "\ufffd"


def doc(n: int, text: str) -> dict[str, Any]:
    messages = [
        {
            "id": f"n{n}a",
            "role": "user",
            "message": {"role": "user", "content": f"question {text}"},
        },
        {
            "id": f"n{n}b",
            "parent_id": f"n{n}a",
            "role": "assistant",
            "message": {"role": "assistant", "content": f"answer {text}"},
            "model": f"model{text}",
            "usage": {"prompt_tokens": 3, "note": text},
            "metadata": {"k": text},
        },
    ]
    chat = {"id": f"chat_n{n}", "owner": "local", "title": f"title {text}"}
    return {"format": "chatproxy.chat", "version": 1, "chat": chat, "messages": messages}


def loaded(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


async def test_a_nul_in_a_document_is_stored_as_u_fffd_and_the_others_as_they_are(
    db_url: str,
) -> None:
    # Plain text; a NUL; a backslash and "u0000" (no NUL, though its line holds \\u0000).
    texts = ("x y", f"x{NUL}y", "x\\u0000y")
    source = b"".join(orjson.dumps(doc(n, text)) + b"\n" for n, text in enumerate(texts))
    store = Store(db_url)
    await store.open()
    try:
        stats = await import_file(store, io.BytesIO(source))
        chats = await store.read(lambda: Chat.all().order_by("id").values_list("title", flat=True))
        messages = await store.read(
            lambda: (
                Message.all()
                .order_by("id")
                .values_list("text", "data", "model", "usage", "metadata", "prompt_tokens")
            )
        )
    finally:
        await store.close()
    assert (stats.chats, stats.messages) == (3, 6)
    stored = (texts[0], f"x{REPLACEMENT}y", texts[2])
    assert list(chats) == [f"title {text}" for text in stored]
    for n, text in enumerate(stored):
        question, answer = messages[2 * n], messages[2 * n + 1]
        assert question[0] == f"question {text}"
        assert loaded(question[1]) == {"role": "user", "content": f"question {text}"}
        assert answer[0] == f"answer {text}" and answer[2] == f"model{text}"
        assert loaded(answer[3]) == {"prompt_tokens": 3, "note": text}
        assert loaded(answer[4]) == {"k": text}
        assert answer[5] == 3  # left out: as the usage says
