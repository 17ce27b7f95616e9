"""``before_store``: what the plugins may change of a message before it is written.

Plugins see a :class:`~chatproxy.plugins.hookspecs.StoreRecord` for each of a request's new
messages before their first write, for an answer at each checkpoint (in the writer, when it
takes the checkpoint) and at its final write. They get copies: the request sent upstream, what
the client receives and the prefix hashes (computed from what the client sent, already in the
turn) are never affected. A chat titled after its first message is titled after that message
as it is stored.

A plugin that raises (or leaves ``text``/``data`` of the wrong type) must not let the
unchanged text through, which would defeat a redaction plugin: the message is stored
*withheld* — its text empty, its data reduced to its structure (role, tool call ids and
function names; content empty, tool call arguments ``{}``) — and an answer so withheld is
stored ``failed`` with the ``plugin_error`` error. The failure is logged with the plugin's
name and counted in ``chatproxy_plugin_errors`` (:meth:`Plugins.failed`). Every plugin sees
the record in turn; the first failure withholds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from chatproxy.plugins.hookspecs import StoreRecord
from chatproxy.store.batch import Answer, NewMessage, Turn
from chatproxy.store.models import Status
from chatproxy.store.threading import default_title

if TYPE_CHECKING:
    from chatproxy.plugins.manager import Plugins

__all__ = ["HOOK", "Rewriter", "withheld"]

HOOK = "before_store"


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    # A deep copy, as fast as it gets for JSON values: the caller's dict may be the very
    # message sent upstream.
    return orjson.loads(orjson.dumps(data))  # type: ignore[no-any-return]


def withheld(data: dict[str, Any]) -> dict[str, Any]:
    """A message reduced to its structure: role, tool call ids and function names."""
    out: dict[str, Any] = {"role": data.get("role"), "content": ""}
    if isinstance(data.get("tool_call_id"), str):
        out["tool_call_id"] = data["tool_call_id"]
    calls = data.get("tool_calls")
    if isinstance(calls, list) and calls:
        kept = []
        for call in calls:
            if not isinstance(call, dict):
                continue
            fn = call.get("function") if isinstance(call.get("function"), dict) else {}
            kept.append(
                {
                    "id": call.get("id"),
                    "type": call.get("type", "function"),
                    "function": {"name": fn.get("name"), "arguments": "{}"},
                }
            )
        out["tool_calls"] = kept
        if data.get("content") is None:
            out["content"] = None
    return out


class Rewriter:
    """Runs the ``before_store`` implementations of ``plugins`` on records."""

    def __init__(self, plugins: Plugins) -> None:
        self._plugins = plugins
        self._impls: list[tuple[str, Callable[..., Any]]] = plugins.implementations(HOOK)

    def run(self, record: StoreRecord) -> str | None:
        """Let every plugin change ``record``; the name of the plugin that failed, if one
        did (the record is then to be withheld)."""
        for name, fn in self._impls:
            try:
                fn(record=record)
                if not isinstance(record.text, str) or not isinstance(record.data, dict):
                    raise TypeError("before_store left text or data of the wrong type")
            except Exception as exc:
                self._plugins.failed(name, HOOK, exc)
                return name
        return None

    def message(self, user_id: str, chat_id: str, m: NewMessage) -> NewMessage:
        """A request's message as it is to be stored."""
        record = StoreRecord(
            kind="message",
            chat_id=chat_id,
            message_id=m.id,
            user_id=user_id,
            role=m.role,
            text=m.text,
            data=_copy(m.data),
            final=True,
        )
        if self.run(record) is not None:
            return dataclasses.replace(m, text="", data=withheld(m.data))
        return dataclasses.replace(m, text=record.text, data=record.data)

    def turn(self, turn: Turn) -> Turn:
        """The turn with its new messages as they are to be stored (and the title of a new
        chat taken from them)."""
        new = [self.message(turn.user_id, turn.chat_id, m) for m in turn.new_messages]
        title = turn.title
        derived = title is not None and title == default_title(m.data for m in turn.new_messages)
        if turn.chat_is_new and derived:
            title = default_title(m.data for m in new)
        return dataclasses.replace(turn, new_messages=new, title=title)

    def checkpoint(
        self, message_id: str, owner: tuple[str, str], text: str, data: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """A running answer's checkpoint as it is to be stored; ``owner``: (chat, user)."""
        record = StoreRecord(
            kind="answer",
            chat_id=owner[0],
            message_id=message_id,
            user_id=owner[1],
            role="assistant",
            text=text,
            data=_copy(data),
            final=False,
        )
        if self.run(record) is not None:
            return "", withheld(data)
        return record.text, record.data

    def answer(self, message_id: str, owner: tuple[str, str], answer: Answer) -> Answer:
        """An answer's final state as it is to be stored; ``owner``: (chat, user)."""
        record = StoreRecord(
            kind="answer",
            chat_id=owner[0],
            message_id=message_id,
            user_id=owner[1],
            role="assistant",
            text=answer.text,
            data=_copy(answer.data),
            final=True,
            status=answer.status,
        )
        failed = self.run(record)
        if failed is None:
            return dataclasses.replace(answer, text=record.text, data=record.data)
        error = {
            "message": f"plugin {failed!r} failed in {HOOK}",
            "type": "server_error",
            "param": None,
            "code": "plugin_error",
        }
        return dataclasses.replace(
            answer, status=Status.FAILED, text="", data=withheld(answer.data), error=error
        )

    def stored(self, user_id: str, chat_id: str, message: Any) -> None:
        """Rewrite an ORM :class:`~chatproxy.store.models.Message` row in place (messages
        added through the management API)."""
        m = self.message(
            user_id,
            chat_id,
            NewMessage(message.id, message.role, message.data, message.text, message.prefix_hash),
        )
        message.text, message.data = m.text, m.data
