"""A ``before_store`` plugin for the tests (``plugins = ["tests.plugin_rewrite"]``): it stores
text upper-cased, or breaks when :data:`RULES` says ``crash``; what it saw is in
:data:`SEEN`."""

from __future__ import annotations

from typing import Any

from chatproxy import hookimpl
from chatproxy.plugins import StoreRecord

RULES: dict[str, Any] = {}
SEEN: list[dict[str, Any]] = []


@hookimpl
def before_store(record: StoreRecord) -> None:
    SEEN.append(
        {
            "kind": record.kind,
            "chat_id": record.chat_id,
            "message_id": record.message_id,
            "user_id": record.user_id,
            "role": record.role,
            "text": record.text,
            "final": record.final,
            "status": record.status,
        }
    )
    if RULES.get("crash"):
        raise RuntimeError("the rewriter broke")
    record.text = record.text.upper()
    content = record.data.get("content")
    if isinstance(content, str):
        record.data["content"] = content.upper()
    # What the plugin is given is a copy: changing it in place changes nothing else.
    record.data["rewritten"] = True
