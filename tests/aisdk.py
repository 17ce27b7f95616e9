"""Helpers for the /api/chat (Vercel AI SDK) tests."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from chatproxy.server import ProxyServer

MODEL = "fake-model"


def base(proxy: ProxyServer) -> str:
    """The proxy's URL without ``/v1``."""
    return proxy.url.removesuffix("/v1")


def user(ui_id: str, text: str) -> dict[str, Any]:
    return {"id": ui_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def full(chat_id: str, *messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A ``useChat`` body carrying the whole history."""
    return {"id": chat_id, "messages": list(messages), "trigger": "submit-message", **extra}


def single(chat_id: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A body of the "send only the last message" pattern."""
    return {"id": chat_id, "message": message, **extra}


async def post_chat(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    body: Any,
    *,
    model: str | None = MODEL,
    headers: dict[str, str] | None = None,
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    """POST /api/chat; status, headers and the whole body."""
    if isinstance(body, dict) and model is not None:
        body = {"model": model, **body}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        f"{base(proxy)}/api/chat",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def parts(raw: bytes) -> list[Any]:
    """The parts of a UI message stream (``"[DONE]"`` for the last)."""
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: "), block
            data = block[len(b"data: ") :]
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def text_of(raw: bytes) -> str:
    return "".join(
        p["delta"] for p in parts(raw) if isinstance(p, dict) and p["type"] == "text-delta"
    )


async def ui_messages(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    chat_id: str,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    async with http.get(f"{base(proxy)}/api/chat/{chat_id}/messages", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def error_of(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, (await resp.json())["error"]
