"""The hooks a chatproxy plugin may implement, and the objects they are given.

A plugin is a module (or any object) with functions marked ``@chatproxy.hookimpl`` whose names
are hook names below; pluggy matches the arguments by name, so an implementation may take any
subset of a hook's arguments. These objects are the stable interface: fields are only ever
added. A hook that refuses raises an :class:`~chatproxy.errors.APIError` subclass
(:class:`~chatproxy.errors.InvalidRequest` 400, :class:`~chatproxy.errors.AuthenticationError`
401, :class:`~chatproxy.errors.PermissionDenied` 403, ...): the client gets it as an
OpenAI-shaped error. Any other exception is the plugin's failure: logged with its name,
counted in ``/metrics``, and answered as a clean ``500``/``502`` naming no secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

__all__ = [
    "EVENT_TYPES",
    "Event",
    "Exporter",
    "Identity",
    "StoreRecord",
    "UpstreamCall",
    "hookimpl",
    "hookspec",
]

PROJECT = "chatproxy"  # the pluggy project name and the entry-point group
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(slots=True)
class Identity:
    """Who is calling, as :func:`identify` answers it."""

    # A user id as mode "header" accepts one: 1 to 128 of A-Z a-z 0-9 _ . @ : - (another is
    # refused with 401 invalid_user_id).
    user_id: str
    tier: str | None = None  # a tier of [limits.tiers]; None: limits.default_tier
    name: str | None = None  # shown in the UI and `chatproxy stats`; None: the user id


@dataclass(slots=True)
class UpstreamCall:
    """One request the proxy is about to send upstream for an answer (before anything of it is
    stored). Change it in place; raise an ``APIError`` to refuse it (nothing is stored)."""

    face: Literal["chat.completions", "aisdk", "responses"]  # the API the client called
    user_id: str
    tier: str | None
    chat_id: str | None  # None: an unstored request (X-Chat-Store: false)
    model: str | None
    path: str  # relative to the upstream's base URL: "/chat/completions"
    body: dict[str, Any]  # the JSON body to send
    headers: dict[str, str]  # the headers to send (the upstream's Authorization included)
    upstream_url: str  # the upstream's base URL ("https://api.openai.com/v1"); may be changed


@dataclass(slots=True)
class StoreRecord:
    """A message about to be written: change ``text`` and ``data`` in place (what the client
    receives and how the conversation threads are not affected)."""

    kind: Literal["message", "answer"]  # one of the request's messages, or the answer
    chat_id: str
    message_id: str
    user_id: str
    role: str
    text: str  # the message's text, as search and the UI read it
    data: dict[str, Any]  # the message object as stored (OpenAI shape: role, content, ...)
    final: bool  # False: a checkpoint of an answer still running
    status: str | None = None  # the answer's status when final (completed, failed, ...)


EVENT_TYPES = (
    "chat.created",
    "chat.deleted",
    "answer.completed",
    "answer.failed",
    "answer.incomplete",
    "answer.interrupted",
    "answer.cancelled",
)


@dataclass(slots=True, frozen=True)
class Event:
    """Something that happened to the history, after it was committed."""

    id: str  # unique and stable across redeliveries: de-duplicate on it
    type: str  # one of EVENT_TYPES
    created_at: datetime
    user_id: str
    chat_id: str
    message_id: str | None = None  # the answer, for answer.*
    # answer.*: status, model, finish_reason, usage, error; chat.created: title.
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Exporter:
    """An extra ``chatproxy export --format NAME``: ``render`` turns one chat's export
    document (the ``json`` format's object) into the bytes written for it."""

    name: str
    render: Callable[[dict[str, Any]], bytes]
    extension: str = ""  # the file suffix, for help texts ("csv")
    description: str = ""


class HookSpecs:
    """The hook specifications (pluggy)."""

    @hookspec
    def register_commands(self, cli: click.Group) -> None:
        """Add click commands (or groups) to ``chatproxy``."""

    @hookspec
    def register_routes(self, router: web.UrlDispatcher) -> None:
        """Add HTTP routes; they run behind the proxy's authentication and limits, and the
        handler finds the caller as ``request[chatproxy.appkeys.CALLER]``."""

    @hookspec(firstresult=True)
    def identify(self, request: web.Request) -> Identity | Awaitable[Identity | None] | None:
        """Who the caller is (``None``: not this plugin's to say), before the built-in auth
        modes; may be ``async``. The first plugin answering wins. Raise
        ``AuthenticationError``/``PermissionDenied`` to refuse the request."""

    @hookspec
    def before_upstream(self, call: UpstreamCall) -> Awaitable[None] | None:
        """See and change an upstream request, or refuse it; may be ``async``."""

    @hookspec
    def before_store(self, record: StoreRecord) -> None:
        """Change a message before it is written (user messages before their first write,
        answers at each checkpoint and at the end). Runs in the store's writer: keep it fast
        and never block."""

    @hookspec
    def on_event(self, event: Event) -> Awaitable[None] | None:
        """React to a committed change, off the request path; may be ``async``. Events are
        delivered at least once, in order per chat; an exception is logged and counted, and
        the delivery is tried again later."""

    @hookspec
    def register_exporters(self) -> list[Exporter] | Exporter | None:
        """Extra ``chatproxy export --format`` formats."""
