"""Where a request's messages go: the chat, the parent message, what is new (SPEC §3.2, §3.4).

Client history (the default, as OpenAI clients send it): the request carries the whole
conversation; the longest stored prefix (by prefix hash, among the caller's chats) is found and
only what follows it is new. Server history (``X-Chat-History: server``): the request carries
only the new messages; the stored branch ending at the chat's head (or at ``X-Chat-Parent``) is
prepended for the upstream. A chat named by the request (``X-Chat-Id``) that belongs to another
user is ``403 chat_forbidden`` (:attr:`chatproxy.access.Need.POST`); an unknown one is created.
"""

from __future__ import annotations

from typing import Any

from chatproxy.access import Need, chat_state
from chatproxy.auth import Caller
from chatproxy.errors import InvalidRequest
from chatproxy.ids import new_chat_id, new_message_id
from chatproxy.offload import LARGE_COUNT, offload
from chatproxy.settings import Settings
from chatproxy.store.store import BranchEntry, NewMessage, Store, ThreadMatch, Turn, utcnow
from chatproxy.store.threading import (
    default_title,
    message_text,
    prefix_hashes,
    replayable,
    without_reasoning,
)

__all__ = ["Plan", "plan_client_history", "plan_server_history"]

Plan = tuple[Turn, str, list[dict[str, Any]]]  # the turn, the parent's hash, the history sent


def _turn(
    store: Store,
    settings: Settings,
    caller: Caller,
    chat: tuple[str, bool],
    parent_id: str | None,
    new: list[tuple[dict[str, Any], str]],
    body: dict[str, Any],
    title_from: list[dict[str, Any]],
) -> Turn:
    chat_id, chat_is_new = chat
    return Turn(
        user_id=caller.user_id,
        chat_id=chat_id,
        chat_is_new=chat_is_new,
        title=default_title(title_from) if chat_is_new and settings.chats.title != "none" else None,
        parent_id=parent_id,
        new_messages=[
            NewMessage(new_message_id(), m["role"], m, message_text(m.get("content")), h)
            for m, h in new
        ],
        assistant_id=new_message_id(),
        params={k: v for k, v in body.items() if k != "messages"},
        model=body.get("model") if isinstance(body.get("model"), str) else None,
        instance_id=store.instance_id,
        created_at=utcnow(),
    )


async def plan_client_history(
    store: Store,
    settings: Settings,
    caller: Caller,
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    chat_id: str | None,
) -> Plan:
    """Thread a request that resends the whole conversation (the rule: module
    :mod:`chatproxy.store.threading` and the README's "How conversations are stored")."""
    hashes = await offload(len(messages) > LARGE_COUNT, prefix_hashes, messages)
    chat_is_new = (
        chat_id is not None and await chat_state(store, caller.user_id, chat_id, Need.POST) is None
    )
    match = None if chat_is_new else await store.find_thread(caller.user_id, hashes, chat_id)
    if (
        match is not None
        and chat_id is None
        and not await _continues(store, settings, messages, match)
    ):
        match = None
    if match is not None:
        chat_id, parent_id, first_new = match.chat_id, match.message_id, match.index + 1
    else:
        parent_id, first_new = None, 0
        if chat_id is None:
            chat_id, chat_is_new = new_chat_id(), True
    new = list(zip(messages[first_new:], hashes[first_new:], strict=True))
    chat = (chat_id, chat_is_new)
    turn = await offload(
        len(new) > LARGE_COUNT, _turn, store, settings, caller, chat, parent_id, new, body, messages
    )
    return turn, hashes[-1], []


async def _continues(
    store: Store, settings: Settings, messages: list[dict[str, Any]], match: ThreadMatch
) -> bool:
    """Whether a request without a chat header continues the chat of its longest stored
    prefix, or starts a chat of its own.

    A shared prefix that holds an answer is one conversation. One without (the setup, and at
    most the first question) is what every run of an agent sends: a new chat, except for the
    exact resend of it (nothing new) within ``chats.regenerate_window`` of the stored answer,
    which is a regenerate.
    """
    shared = messages[: match.index + 1]
    if any(m.get("role") == "assistant" for m in shared):
        return True
    if match.index < len(messages) - 1:
        return False
    window = settings.chats.regenerate_window
    if window <= 0:
        return False
    answered = await store.last_activity(match.message_id)
    return answered is not None and (utcnow() - answered).total_seconds() <= window


def _replayable(entry: BranchEntry) -> bool:
    return replayable(entry.role, entry.status, entry.data)


async def plan_server_history(
    store: Store,
    settings: Settings,
    caller: Caller,
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    chat_id: str | None,
    branch_from: str | None,
    *,
    reuse: bool = False,
) -> Plan:
    """Continue the stored conversation with the request's new messages. ``reuse``: the
    messages may begin with ones already stored below the branch point (a client that
    resends a turn's earlier steps, as the AI SDK does with ``previous_response_id``); those
    are threaded onto, not stored again. Either way the upstream is sent them all."""
    if chat_id is None and branch_from is not None:
        parent = await store.get_message(branch_from)
        if parent is None or parent.user_id != caller.user_id:
            raise _bad_parent()
        chat_id = parent.chat_id
    state = None
    if chat_id is not None:
        state = await chat_state(store, caller.user_id, chat_id, Need.POST)
    history: list[BranchEntry] = []
    if state is not None:
        leaf = branch_from or state.head_id
        if leaf is not None:
            history = await store.branch(chat_id or "", leaf)
            if not history:
                raise _bad_parent()
        while history and not _replayable(history[-1]):
            history.pop()  # hang the new messages under the last message worth sending
    elif branch_from is not None:
        raise _bad_parent()
    if not messages and not history:
        raise InvalidRequest(
            "'messages' must contain at least one message", code="empty_array", param="messages"
        )
    chat_is_new = state is None
    if chat_id is None:
        chat_id = new_chat_id()
    parent = history[-1] if history else None
    hashes = await offload(
        len(messages) > LARGE_COUNT,
        prefix_hashes,
        messages,
        parent=parent.prefix_hash if parent else "",
    )
    parent_id, first_new = (parent.id if parent else None), 0
    if reuse and hashes and not chat_is_new:
        # The hashes continue the branch point's: a match is a message stored below it.
        match = await store.find_thread(caller.user_id, hashes, chat_id)
        if match is not None:
            parent_id, first_new = match.message_id, match.index + 1
    new = list(zip(messages[first_new:], hashes[first_new:], strict=True))
    turn = await offload(
        len(new) > LARGE_COUNT,
        _turn,
        store,
        settings,
        caller,
        (chat_id, chat_is_new),
        parent_id,
        new,
        body,
        messages,
    )
    sent = [without_reasoning(e.data) for e in history if _replayable(e)]
    return turn, hashes[-1] if hashes else (parent.prefix_hash if parent else ""), sent


def _bad_parent() -> InvalidRequest:
    return InvalidRequest(
        "X-Chat-Parent does not name a message of this chat",
        code="invalid_parent",
        param="X-Chat-Parent",
    )
