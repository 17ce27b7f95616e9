"""Identifiers: chats, messages, requests."""

from __future__ import annotations

import re
import secrets

__all__ = ["CHAT_ID_RE", "new_chat_id", "new_message_id", "new_request_id"]

CHAT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


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
