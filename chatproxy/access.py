"""Who may read or write a chat, and the checks of what a request names and asks for.

**The rule** (README "Your chats"; SPEC §3.2, §4), one table for every face (the management
API, the proxied chat completions, the AI SDK route, the resume stream) and for the CLI when it
acts for a user:

===========  =======  ============================  ==========================
need         owner    another user's private chat   another user's public chat
===========  =======  ============================  ==========================
``READ``     allowed  404, as if it did not exist   allowed
``WRITE``    allowed  404, as if it did not exist   403 ``permission_denied``
``POST``     allowed  403 ``chat_forbidden``        403 ``chat_forbidden``
===========  =======  ============================  ==========================

The 404 is the resource kind's "not found" (``chat_not_found`` for a chat, ``not_found`` for a
stored completion), word for word what an id that names nothing gets. ``WRITE`` is any change
(and reading what only the owner sees: the lossless export); a vote is feedback, ``READ``.

``POST`` is the one explicit difference: a request that posts into the chat it names
(``X-Chat-Id``, the ``id`` of ``POST /api/chat``) creates that chat when no chat has the id, so
another user's chat cannot pass for one that does not exist; SPEC §3.2 makes it ``403
chat_forbidden`` whatever its visibility, where the management API says ``permission_denied``.

**What a request names and asks for**: a chat or completion named in the path is checked by
:func:`chatproxy.ids.check_id` (one wording and one code per kind), then loaded and judged
here (:func:`chat`, :func:`completion`, :func:`chat_state`; the ``*_for`` forms take the aiohttp
request, judge its caller and name the chat in its access-log line). A list's ``limit``,
``after`` and ``order`` are read by :func:`paging`, its ``metadata[key]=value`` filters by
:func:`metadata_filter`, and a ``metadata`` object in a body by :func:`metadata_value`, with the
limits OpenAI documents (16 pairs, keys of 1 to 64 characters, values of at most 512).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from chatproxy.appkeys import CALLER, CHAT_ID, STORE
from chatproxy.errors import APIError, InvalidRequest, PermissionDenied
from chatproxy.ids import KINDS, check_id, unknown_id
from chatproxy.store import completions as stored
from chatproxy.store.models import Chat, Message, refuse_nul
from chatproxy.store.store import Store

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "METADATA_MAX_KEY",
    "METADATA_MAX_PAIRS",
    "METADATA_MAX_VALUE",
    "PUBLIC",
    "VISIBILITIES",
    "ChatState",
    "Need",
    "Paging",
    "Verdict",
    "chat",
    "chat_for",
    "chat_state",
    "chat_state_for",
    "choice",
    "completion",
    "completion_for",
    "decide",
    "metadata_filter",
    "metadata_value",
    "paging",
    "path_id",
    "refusal",
    "require",
]

PUBLIC = "public"
VISIBILITIES = ("private", PUBLIC)  # the first is the default
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
_METADATA_RULE = (
    f"at most {METADATA_MAX_PAIRS} pairs, keys of 1 to {METADATA_MAX_KEY} characters and "
    f"values of at most {METADATA_MAX_VALUE}"
)


# -- the rule --------------------------------------------------------------------------------


class Need(enum.Enum):
    """What a request does with a chat (the rows of the module's table)."""

    READ = "read"  # see it (and vote on it)
    WRITE = "write"  # change it, or read what only its owner sees
    POST = "post"  # post into the chat the request names, creating it if no chat has the id


class Verdict(enum.Enum):
    """The rule's answer (the cells of the module's table)."""

    ALLOWED = "allowed"
    HIDDEN = "hidden"  # 404: the chat does not exist, as far as this caller can tell
    READ_ONLY = "read_only"  # 403 permission_denied
    FORBIDDEN = "forbidden"  # 403 chat_forbidden (Need.POST)


def decide(user_id: str, owner_id: str, visibility: str, need: Need) -> Verdict:
    """The rule: may ``user_id`` use a chat of ``owner_id`` with ``visibility`` as ``need``?"""
    if user_id == owner_id:
        return Verdict.ALLOWED
    if need is Need.POST:
        return Verdict.FORBIDDEN
    if visibility != PUBLIC:
        return Verdict.HIDDEN
    return Verdict.READ_ONLY if need is Need.WRITE else Verdict.ALLOWED


def refusal(
    verdict: Verdict,
    resource_id: str,
    *,
    what: str = "chat",
    param: str | None = None,
    hint: str = "",
) -> APIError:
    """The error of a refusing ``verdict`` on ``resource_id``, a ``what`` (a key of
    :data:`chatproxy.ids.KINDS`: ``chat`` or ``completion``); ``param`` goes in the 404 as in
    that kind's other "not found" errors, ``hint`` (a clause) after the 403's reason."""
    if verdict is Verdict.HIDDEN:
        return unknown_id(resource_id, what=what, param=param)
    if verdict is Verdict.READ_ONLY:
        message = f"this {KINDS[what].noun} belongs to another user: it is read-only for you"
        return PermissionDenied(message + hint, code="permission_denied")
    if verdict is Verdict.FORBIDDEN:
        return PermissionDenied(
            "this chat belongs to another user: name a chat id of your own" + hint,
            code="chat_forbidden",
        )
    raise ValueError("an allowed verdict is no refusal")


def require(
    user_id: str,
    owner_id: str,
    visibility: str,
    need: Need,
    resource_id: str,
    *,
    what: str = "chat",
    param: str | None = None,
    hint: str = "",
) -> None:
    """Apply the rule: return if it allows ``need``, else raise its :func:`refusal`."""
    verdict = decide(user_id, owner_id, visibility, need)
    if verdict is not Verdict.ALLOWED:
        raise refusal(verdict, resource_id, what=what, param=param, hint=hint)


# -- loading and judging ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatState:
    """What the rule and the threading need of a stored chat (one light query)."""

    owner_id: str
    visibility: str
    head_id: str | None


async def chat(
    store: Store, user_id: str, chat_id: str, need: Need = Need.READ, *, hint: str = ""
) -> Chat:
    """The chat, if ``user_id`` may use it as ``need``; an id no chat has is its 404."""
    found = await store.get_chat(chat_id)
    if found is None:
        raise unknown_id(chat_id, what="chat")
    require(user_id, found.owner_id, found.visibility, need, chat_id, hint=hint)
    return found


async def chat_state(
    store: Store, user_id: str, chat_id: str, need: Need = Need.READ
) -> ChatState | None:
    """The chat's owner, visibility and head, if ``user_id`` may use it as ``need``. ``None``
    for an id no chat has when posting (:attr:`Need.POST`: the request creates the chat);
    otherwise such an id is the chat's 404."""
    row = await store.chat_access(chat_id)
    if row is None:
        if need is Need.POST:
            return None
        raise unknown_id(chat_id, what="chat")
    state = ChatState(*row)
    require(user_id, state.owner_id, state.visibility, need, chat_id)
    return state


async def completion(
    store: Store,
    user_id: str,
    completion_id: str,
    need: Need = Need.READ,
    *,
    what: str = "completion",
    param: str = "completion_id",
) -> tuple[Message, Chat]:
    """The stored completion (an answer; ``what`` names its kind in errors: a ``response``
    of /v1/responses is one too) and its chat, if ``user_id`` may use them as ``need`` (the
    rule of the chat); an id no answer has is the kind's 404."""
    found = await stored.get_completion(store, completion_id)
    if found is None:
        raise unknown_id(completion_id, what=what, param=param)
    message, owner = found
    require(user_id, owner.owner_id, owner.visibility, need, completion_id, what=what, param=param)
    return message, owner


async def continued_chat(
    store: Store, user_id: str, chat_id: str, *, what: str = "chat", param: str | None = None
) -> ChatState:
    """A stored chat a request continues by naming it (a Responses ``conversation``, or the
    chat of a ``previous_response_id``): one the caller may not read names nothing (the
    ``what``'s 404, naming ``param``), one it may read but not post to is ``403
    chat_forbidden``."""
    row = await store.chat_access(chat_id)
    if row is None:
        raise unknown_id(chat_id, what=what, param=param)
    state = ChatState(*row)
    require(user_id, state.owner_id, state.visibility, Need.READ, chat_id, what=what, param=param)
    require(user_id, state.owner_id, state.visibility, Need.POST, chat_id)
    return state


async def chat_for(
    request: web.Request, chat_id: str, need: Need = Need.READ, *, hint: str = ""
) -> Chat:
    """:func:`chat` for the request's caller; the chat is named in the access log."""
    found = await chat(request.app[STORE], request[CALLER].user_id, chat_id, need, hint=hint)
    request[CHAT_ID] = chat_id
    return found


async def chat_state_for(
    request: web.Request, chat_id: str, need: Need = Need.READ
) -> ChatState | None:
    """:func:`chat_state` for the request's caller; the chat is named in the access log."""
    state = await chat_state(request.app[STORE], request[CALLER].user_id, chat_id, need)
    request[CHAT_ID] = chat_id
    return state


async def completion_for(
    request: web.Request,
    completion_id: str,
    need: Need = Need.READ,
    *,
    what: str = "completion",
    param: str = "completion_id",
) -> tuple[Message, Chat]:
    """:func:`completion` for the request's caller; its chat is named in the access log."""
    message, owner = await completion(
        request.app[STORE], request[CALLER].user_id, completion_id, need, what=what, param=param
    )
    request[CHAT_ID] = owner.id
    return message, owner


def path_id(request: web.Request, name: str, what: str, *, param: str | None = None) -> str:
    """The id in the path's ``{name}``, checked as a ``what`` (the error names ``param``,
    default ``name``)."""
    return check_id(request.match_info[name], what=what, param=param or name)


# -- lists -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paging:
    """A list request's page: how many, after which item, in which order."""

    limit: int
    after: str | None
    descending: bool


def choice(query: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """The query's ``name``, one of ``choices`` (``default`` when not given)."""
    value = query.get(name, default)
    if value not in choices:
        raise InvalidRequest(
            f"'{name}' must be one of {', '.join(choices)}", code="invalid_value", param=name
        )
    return value


def paging(query: Mapping[str, str], *, order: str | None) -> Paging:
    """``limit`` (an integer from 1 to 100, default 20), ``after`` (the id of the previous
    page's last item: a malformed one is ``invalid_cursor``, as an unknown one is where the
    list looks it up) and ``order`` (``asc`` or ``desc``, default ``order``; ``None``: a list
    without that parameter, always newest first). Checked in that order; an empty value is a
    bad one."""
    raw = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        # At most three digits: int() of a long string is slow, and of a very long one an error.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_LIMIT):
            raise InvalidRequest(
                f"'limit' must be an integer from 1 to {MAX_LIMIT}",
                code="invalid_value",
                param="limit",
            )
        limit = int(raw)
    descending = True
    if order is not None:
        descending = choice(query, "order", ("asc", "desc"), order) == "desc"
    after = query.get("after")
    if after is not None:
        after = check_id(after, what="cursor", param="after")
    return Paging(limit, after, descending)


def metadata_filter(query: MultiMapping[str]) -> dict[str, str]:
    """The query's ``metadata[key]=value`` filters (all must hold), each key once and within
    the limits of stored metadata. Filters reach the database as they are: a NUL anywhere in
    the query string (a parameter's name or value) is refused first."""
    for name, value in query.items():
        refuse_nul({name: value})
    pairs: dict[str, str] = {}
    for name, value in query.items():
        if name.startswith("metadata[") and name.endswith("]"):
            key = name[len("metadata[") : -1]
            if key in pairs:
                raise InvalidRequest(
                    "a metadata key is filtered on twice: give each once",
                    code="invalid_value",
                    param="metadata",
                )
            pairs[key] = value
    _check_metadata_sizes(pairs)
    return pairs


def metadata_value(value: Any, *, param: str = "metadata") -> dict[str, str]:
    """A body's ``metadata``: an object of strings within OpenAI's limits; ``null`` is none."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest(
            f"'{param}' must be an object of strings", code="invalid_type", param=param
        )
    _check_metadata_sizes(value, param=param)
    return value


def _check_metadata_sizes(pairs: Mapping[str, str], *, param: str = "metadata") -> None:
    if len(pairs) > METADATA_MAX_PAIRS or any(
        not key or len(key) > METADATA_MAX_KEY or len(value) > METADATA_MAX_VALUE
        for key, value in pairs.items()
    ):
        raise InvalidRequest(f"'{param}' holds {_METADATA_RULE}", code="invalid_value", param=param)
