"""A ``before_upstream`` plugin for the tests (``plugins = ["tests.plugin_guard"]``): what it
does is set by the test in :data:`RULES`, what it saw is in :data:`SEEN`."""

from __future__ import annotations

import asyncio
from typing import Any

from chatproxy import hookimpl
from chatproxy.errors import InvalidRequest
from chatproxy.plugins import UpstreamCall

RULES: dict[str, Any] = {}
SEEN: list[UpstreamCall] = []


@hookimpl
async def before_upstream(call: UpstreamCall) -> None:
    await asyncio.sleep(0)  # an async implementation, awaited by the engine
    SEEN.append(call)
    if call.model in RULES.get("deny", ()):
        raise InvalidRequest(
            f"the model {call.model!r} is not allowed here", code="model_not_allowed", param="model"
        )
    if RULES.get("crash"):
        raise RuntimeError("the guard broke; its key is sk-guard-secret-123")
    if "model" in RULES:
        call.body["model"] = RULES["model"]
    if "header" in RULES:
        call.headers["X-Guard"] = RULES["header"]
    if "upstream" in RULES:
        call.upstream_url = RULES["upstream"]
