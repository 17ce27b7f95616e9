"""Identifiers: chats, messages, requests; and the one check of an id a client sends.

Every id in a path, a query string, a header or a body goes through :func:`check_id`: an id
is 1 to 128 of ``A-Z a-z 0-9 _ -`` (SPEC §3.2), whatever its kind; a malformed one is ``400``
with the code of its kind and one wording (``'<param>' is not a valid <noun> id (...)``), a
missing one (``None``) ``400 missing_required_parameter``. A well-formed id that names nothing
is the kind's "not found" (:func:`unknown_id`): ``404`` for a resource, ``400`` for a list
cursor or a branch point, as the API documents them. Who may see what an id names is
:mod:`chatproxy.access`'s rule. Message ids are stored in a narrower column than chat ids
(:data:`MESSAGE_ID_LENGTH`); a longer one cannot name a stored message, and the store answers
"none" for it without asking the database (:func:`storable_message_id`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TypeGuard

from chatproxy.errors import APIError, InvalidRequest, ResourceNotFound

__all__ = [
    "CHAT_ID_LENGTH",
    "CHAT_ID_RE",
    "KINDS",
    "MESSAGE_ID_LENGTH",
    "IdKind",
    "check_id",
    "is_id",
    "new_chat_id",
    "new_message_id",
    "new_request_id",
    "storable_message_id",
    "unknown_id",
]

CHAT_ID_LENGTH = 128  # Chat.id
MESSAGE_ID_LENGTH = 64  # Message.id (the proxy's own are 28 characters)
CHAT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_RULE = "1 to 128 characters of A-Z, a-z, 0-9, _ and -"


@dataclass(slots=True, frozen=True)
class IdKind:
    """What an id names, and the error codes of its two failures."""

    noun: str  # in messages: "no <noun> with id ..."
    invalid: str  # code of a malformed id (400)
    unknown: str  # code of a well-formed id that names nothing
    unknown_status: int = 404


KINDS = {
    "chat": IdKind("conversation", "invalid_chat_id", "chat_not_found"),
    "message": IdKind("message", "invalid_message_id", "message_not_found"),
    "item": IdKind("item", "invalid_item_id", "item_not_found"),
    "completion": IdKind("chat completion", "invalid_id", "not_found"),
    "response": IdKind("response", "invalid_response_id", "response_not_found"),
    # A branch point (X-Chat-Parent) and a list cursor (after=) are parameters, not resources:
    # one that names nothing is a bad request.
    "parent": IdKind("message", "invalid_parent", "invalid_parent", 400),
    "cursor": IdKind("list item", "invalid_cursor", "invalid_cursor", 400),
}


def is_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a well-formed id (of any kind)."""
    return isinstance(value, str) and CHAT_ID_RE.fullmatch(value) is not None


def check_id(value: object, *, what: str, param: str) -> str:
    """``value`` if it is a well-formed id; otherwise :class:`InvalidRequest` naming ``param``:
    ``missing_required_parameter`` for ``None``, else the malformed code of ``what`` (a key of
    :data:`KINDS`). The value is not echoed."""
    if is_id(value):
        return value
    kind = KINDS[what]
    if value is None:
        raise InvalidRequest(
            f"'{param}' (the {kind.noun} id) is required",
            code="missing_required_parameter",
            param=param,
        )
    raise InvalidRequest(
        f"'{param}' is not a valid {kind.noun} id ({_RULE})", code=kind.invalid, param=param
    )


def unknown_id(value: str, *, what: str, param: str | None = None) -> APIError:
    """The error for a well-formed id (checked by :func:`check_id`) that names nothing the
    caller may see."""
    kind = KINDS[what]
    message = f"no {kind.noun} with id {value!r}"
    if kind.unknown_status == 404:
        return ResourceNotFound(message, code=kind.unknown, param=param)
    return InvalidRequest(message, code=kind.unknown, param=param)


def storable_message_id(value: str) -> bool:
    """Whether ``value`` fits the message id column (a longer one names no message)."""
    return len(value) <= MESSAGE_ID_LENGTH


def _token(n: int = 24) -> str:
    # token_urlsafe(18) is exactly 24 url-safe characters.
    return secrets.token_urlsafe(n * 3 // 4)


def new_chat_id() -> str:
    """``chat_`` + 24 random url-safe characters."""
    return "chat_" + _token()


def new_message_id() -> str:
    """``msg_`` + 24 random url-safe characters."""
    return "msg_" + _token()


def new_request_id() -> str:
    """``req_`` + 24 random url-safe characters."""
    return "req_" + _token()
