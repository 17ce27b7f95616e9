"""An ``on_event`` plugin for the tests (``plugins = ["tests.plugin_recorder"]``): it keeps
the events it is given in :data:`EVENTS`; :data:`RULES` makes it fail (``fail``: that many
calls raise), slow (``delay`` seconds), or refuse the events of one chat (``refuse_chat``)."""

from __future__ import annotations

import asyncio
from typing import Any

from chatproxy import hookimpl
from chatproxy.plugins import Event

RULES: dict[str, Any] = {}
EVENTS: list[Event] = []
CALLS: list[str] = []  # every event id it was called with, in order
OVERLAPS: list[str] = []  # ids it was given while already handling them
_IN_FLIGHT: set[str] = set()


def reset() -> None:
    RULES.clear()
    EVENTS.clear()
    CALLS.clear()
    OVERLAPS.clear()
    _IN_FLIGHT.clear()


@hookimpl
async def on_event(event: Event) -> None:
    CALLS.append(event.id)
    if event.id in _IN_FLIGHT:
        OVERLAPS.append(event.id)
    _IN_FLIGHT.add(event.id)
    try:
        if RULES.get("delay"):
            await asyncio.sleep(RULES["delay"])
        if RULES.get("fail", 0) > 0:
            RULES["fail"] -= 1
            raise RuntimeError("the recorder is down")
        if event.chat_id == RULES.get("refuse_chat"):
            raise RuntimeError("the recorder refuses this chat")
        EVENTS.append(event)
    finally:
        _IN_FLIGHT.discard(event.id)
