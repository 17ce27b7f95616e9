"""Threading by prefix hash (SPEC §3.4).

``prefix_hash(m_k) = H(prefix_hash(m_{k-1}), canonical(m_k))``: a hash of the whole
conversation up to and including a message. A request that resends history m1..mn is matched
to the longest stored prefix (:func:`plan_thread` says what follows from the match).

``canonical`` keeps exactly what identifies a message when a client sends it back (role,
content, name, tool calls, tool_call_id) and irons out the differences clients introduce when
they send history back: a ``None`` and an empty content, content as a string or as a list of
text parts, extra keys the SDKs add to tool calls, key order, tool-call arguments re-serialised
(``{"city": "Paris"}`` for the ``{"city":"Paris"}`` the upstream sent: compared as parsed JSON,
compact with sorted keys, when they parse), and whitespace around an answer's text (some UIs
trim it). Everything else (reasoning, refusal, audio ...) is left out, because clients do not
reliably send it back.

``CANONICAL_VERSION`` names this form; a change to it comes with a migration that rehashes the
stored messages (migration ``0005_canonical_v2``), so chats stored before the change keep threading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from chatproxy.store.models import Status

__all__ = [
    "CANONICAL_VERSION",
    "ROOT_HASH",
    "TITLE_LENGTH",
    "canonical",
    "default_title",
    "message_text",
    "prefix_hashes",
    "replayable",
    "without_reasoning",
]

ROOT_HASH = b""
CANONICAL_VERSION = 2
TITLE_LENGTH = 80


def message_text(content: Any) -> str:
    """The plain text of a message's ``content`` (a string, or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
        return "".join(texts)
    return str(content)


def _canonical_content(content: Any) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") in ("text", "input_text", "output_text")
        for p in content
    ):
        return message_text(content)
    return content  # images, audio ...: compared as sent


def _canonical_tool_calls(calls: Any) -> list[Any] | None:
    if not calls or not isinstance(calls, list):
        return None
    out = []
    for call in calls:
        if not isinstance(call, Mapping):
            out.append(call)
            continue
        fn = call.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        out.append({"id": call.get("id"), "name": fn.get("name"), "args": _canonical_arguments(fn)})
    return out


def _canonical_arguments(fn: Mapping[str, Any]) -> Any:
    """A call's arguments as compact sorted-key JSON when they parse, else as sent."""
    args = fn.get("arguments")
    if not isinstance(args, str):
        return args
    try:
        return orjson.dumps(orjson.loads(args), option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONDecodeError:
        return args


def canonical(message: Mapping[str, Any]) -> bytes:
    """The bytes that identify ``message`` for threading."""
    role = message.get("role")
    content = _canonical_content(message.get("content"))
    if role == "assistant" and isinstance(content, str):
        content = content.strip()
    doc: dict[str, Any] = {"r": role, "c": content}
    if message.get("name"):
        doc["n"] = message["name"]
    tool_calls = _canonical_tool_calls(message.get("tool_calls"))
    if tool_calls:
        doc["t"] = tool_calls
    if message.get("tool_call_id"):
        doc["i"] = message["tool_call_id"]
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _step(parent: bytes, message: Mapping[str, Any]) -> bytes:
    return hashlib.blake2b(parent + canonical(message), digest_size=16).digest()


def prefix_hashes(messages: Iterable[Mapping[str, Any]], parent: str = "") -> list[str]:
    """The prefix hash (32 hex characters) of each message, continuing from ``parent``."""
    h = bytes.fromhex(parent) if parent else ROOT_HASH
    out = []
    for message in messages:
        h = _step(h, message)
        out.append(h.hex())
    return out


def default_title(messages: Iterable[Mapping[str, Any]]) -> str | None:
    """A chat's title from its first user message, trimmed to about 80 characters."""
    for m in messages:
        if m.get("role") == "user":
            text = " ".join(message_text(m.get("content")).split())
            if len(text) > TITLE_LENGTH:
                text = text[:TITLE_LENGTH].rsplit(" ", 1)[0] + "…"
            return text or None
    return None


def replayable(role: str, status: str, message: Mapping[str, Any]) -> bool:
    """Whether a stored message belongs in history sent back upstream: not an answer that
    failed (or was cut off) before it produced anything."""
    if role != "assistant" or status == Status.COMPLETED:
        return True
    return bool(message.get("content") or message.get("tool_calls"))


REASONING_KEYS = frozenset({"reasoning_content", "reasoning"})


def without_reasoning(message: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message as it is sent back upstream: without the model's reasoning, which
    some servers refuse in input messages (DeepSeek answers 400)."""
    return {k: v for k, v in message.items() if k not in REASONING_KEYS}
