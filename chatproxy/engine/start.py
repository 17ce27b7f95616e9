"""Starting a generation: the one entry every API face calls.

A face (chat completions, ``/api/chat``, later ``/v1/responses``) parses its request, plans
where the turn goes (:mod:`chatproxy.engine.planning`), describes the work as a :class:`Work`
(no HTTP request in it) and calls :func:`start_generation`, then writes the generation's event
log to its client in its own rendering (:func:`chatproxy.engine.relay.write_feed`).
:func:`start_generation` runs the ``before_upstream`` plugins, claims the chat (one running
answer per chat and branch), builds the upstream request, starts the generation and registers
it, and asks for the chat's title once its first answer is complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from chatproxy.appkeys import GENERATIONS, METRICS, PLUGINS, SETTINGS, STORE, TITLER, UPSTREAM
from chatproxy.auth import Caller
from chatproxy.engine.dialect import CHAT_COMPLETIONS, Dialect
from chatproxy.engine.generation import Generation
from chatproxy.engine.registry import Generations
from chatproxy.engine.titles import Titler
from chatproxy.errors import APIError, Conflict
from chatproxy.metrics import Metrics
from chatproxy.plugins import NO_PLUGINS, PluginFailed, Plugins, UpstreamCall
from chatproxy.settings import Settings
from chatproxy.store.models import Status
from chatproxy.store.store import Store, Turn
from chatproxy.upstream.client import Upstream

__all__ = ["ChatRequest", "Engine", "Face", "Work", "start_generation", "upstream_body"]

Face = Literal["chat.completions", "aisdk", "responses"]


@dataclass(slots=True)
class ChatRequest:
    """A chat-completions request as the client sent it: its bytes and their parse."""

    raw: bytes
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    stream: bool
    model: str | None


@dataclass(slots=True)
class Work:
    """What a generation is asked to do, described without the HTTP request it came in."""

    face: Face
    caller: Caller
    request: ChatRequest
    turn: Turn | None  # where it is stored: chat, parent, new messages (None: not stored)
    parent_hash: str = ""  # the prefix hash the answer's own hash continues
    history: list[dict[str, Any]] = field(default_factory=list)  # stored, sent first
    branch_from: str | None = None  # the branch point named by the client, if any
    request_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # client headers passed on
    # How the upstream is asked: ``request`` is in this dialect (a face that speaks another
    # one has converted it, and renders the upstream's events back).
    dialect: Dialect = CHAT_COMPLETIONS


@dataclass(slots=True, frozen=True)
class Engine:
    """What generations need of the running application."""

    settings: Settings
    store: Store
    upstream: Upstream
    generations: Generations
    metrics: Metrics | None = None
    titler: Titler | None = None
    plugins: Plugins = NO_PLUGINS

    @classmethod
    def of(cls, app: web.Application) -> Engine:
        """The engine of a running application."""
        return cls(
            settings=app[SETTINGS],
            store=app[STORE],
            upstream=app[UPSTREAM],
            generations=app[GENERATIONS],
            metrics=app[METRICS],
            titler=app.get(TITLER),
            plugins=app.get(PLUGINS, NO_PLUGINS),
        )


def upstream_body(
    req: ChatRequest, history: list[dict[str, Any]], dialect: Dialect = CHAT_COMPLETIONS
) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the usage-only chunk must be hidden.

    Stored history (server-side history) goes before the request's messages. Streams ask for
    usage (to store it); a client that did not ask is not shown it. Otherwise the client's
    bytes are sent as they came.
    """
    body, hide_usage = _upstream_body(req, history, dialect)
    return (req.raw if body is None else orjson.dumps(body)), hide_usage


def _upstream_body(
    req: ChatRequest, history: list[dict[str, Any]], dialect: Dialect
) -> tuple[dict[str, Any] | None, bool]:
    """The body to send when it differs from the client's (``None``: the client's bytes)."""
    options = req.body.get("stream_options") or {}
    add_usage = dialect.asks_usage and req.stream and options.get("include_usage") is not True
    if not history and not add_usage:
        return None, False
    body = dict(req.body)
    if history:
        body["messages"] = [*history, *req.messages]
    if add_usage:
        body["stream_options"] = dict(options, include_usage=True)
    return body, add_usage


async def start_generation(engine: Engine, work: Work) -> Generation:
    """Start the generation ``work`` describes and register it.

    A ``before_upstream`` plugin refusing the request raises its error (nothing is stored);
    one failing stores the turn with a failed answer, as an upstream failure would. A chat
    whose answer is still running gets :class:`Conflict` (``chat_busy``), unless
    ``branch_from`` names a branch point no running answer hangs from.
    """
    turn, upstream = work.turn, engine.upstream
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    headers.update(upstream.auth_headers(work.caller.upstream_authorization))
    headers.update(work.headers)
    failure: APIError | None = None
    url: str | None = None
    if engine.plugins.implements("before_upstream"):
        body, hide_usage, url, failure = await _before_upstream(
            engine.plugins, work, headers, upstream.base_url
        )
    else:
        body, hide_usage = upstream_body(work.request, work.history, work.dialect)
    generations = engine.generations
    if turn is not None and not await generations.claim(turn, work.branch_from):
        raise Conflict(
            "an answer is being generated in this chat; wait for it, or follow it at "
            f"GET /v1/conversations/{turn.chat_id}/stream",
            code="chat_busy",
        )
    gen = Generation(
        turn=turn,
        parent_hash=work.parent_hash,
        body=body,
        upstream_headers=headers,
        stream=work.request.stream,
        hide_usage=hide_usage,
        store=engine.store if turn is not None else None,
        upstream=upstream,
        settings=engine.settings,
        request_id=work.request_id,
        metrics=engine.metrics,
        upstream_url=url,
        failure=failure,
        dialect=work.dialect,
    )
    if turn is None:
        gen.start()
        return gen
    try:
        gen.start()
    except BaseException:
        generations.release(turn)
        raise
    generations.add(gen)
    if turn.chat_is_new and engine.titler is not None:
        _title_when_answered(engine.titler, gen, turn, work.caller)
    return gen


async def _before_upstream(
    plugins: Plugins, work: Work, headers: dict[str, str], base_url: str
) -> tuple[bytes, bool, str | None, APIError | None]:
    """Run the ``before_upstream`` plugins on the request (``headers`` are changed in place):
    the body to send, whether to hide the usage-only chunk, the upstream to send it to
    (``None``: the configured one), and the failure to answer with (a plugin that failed)."""
    req = work.request
    body, hide_usage = _upstream_body(req, work.history, work.dialect)
    call = UpstreamCall(
        face=work.face,
        user_id=work.caller.user_id,
        tier=work.caller.tier,
        chat_id=work.turn.chat_id if work.turn is not None else None,
        model=req.model,
        path=work.dialect.path,
        # A copy of its own: a plugin may change anything in it, nested values included,
        # and what is stored (the client's messages) must not change with it.
        body=orjson.loads(req.raw if body is None else orjson.dumps(body)),
        headers=headers,
        upstream_url=base_url,
    )
    try:
        await plugins.run("before_upstream", call=call)
    except PluginFailed as exc:
        return b"", hide_usage, None, exc  # never sent
    if call.headers is not headers:
        headers.clear()
        headers.update(call.headers)
    url = None if call.upstream_url == base_url else call.upstream_url
    if call.body == (req.body if body is None else body):  # unchanged by the plugins
        return upstream_body(req, work.history, work.dialect)[0], hide_usage, url, None
    return orjson.dumps(call.body), hide_usage, url, None


def _title_when_answered(titler: Titler, gen: Generation, turn: Turn, caller: Caller) -> None:
    """Once the first answer of a new chat is complete, ask the upstream for its title."""
    first = next((m.text for m in turn.new_messages if m.role == "user" and m.text), None)
    if first is None or gen.task is None:
        return

    def done(_: object) -> None:
        if gen.status == Status.COMPLETED:
            titler.schedule(
                turn.chat_id,
                first,
                turn.model,
                caller.upstream_authorization,
                request_id=gen.request_id,
            )

    gen.task.add_done_callback(done)
