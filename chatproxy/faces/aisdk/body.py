"""The body of ``POST /api/chat``, as ``useChat`` (AI SDK 5 and later) sends it.

``{id, messages, trigger, messageId?}`` carries the whole conversation;
``{id, message, trigger?, messageId?}`` only the last message (the "send only the last message"
pattern: the history comes from the store). Other keys the app adds are ignored, except the
chat-completions parameters listed in :data:`FORWARDED`, which go to the upstream. The Vercel
Chat SDK's body, ``{id, message, selectedChatModel, selectedVisibilityType}``, is read as sent:
``selectedChatModel`` is the model (when there is no ``model``), ``selectedVisibilityType`` the
visibility of a chat it creates.

What is stored is checked as the chat-completions endpoint checks it: a NUL character in the
model or a forwarded parameter, or a model name wider than its column, is refused; the
messages are stored with any NUL replaced (:mod:`chatproxy.store.models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatproxy.errors import InvalidRequest, json_object
from chatproxy.faces.aisdk.messages import UIConverted, to_chat
from chatproxy.ids import check_id
from chatproxy.store.models import MODEL_LENGTH, refuse_nul

__all__ = ["FORWARDED", "ChatBody", "parse_body"]

TRIGGERS = ("submit-message", "regenerate-message")
VISIBILITIES = ("private", "public")
MAX_MESSAGES = 1000
FORWARDED = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
    "response_format",
    "user",
)


@dataclass(slots=True, frozen=True)
class ChatBody:
    """A checked request body."""

    chat_id: str
    trigger: str
    message_id: str | None
    messages: list[UIConverted]
    single: bool  # {id, message}: history from the store
    model: str | None
    params: dict[str, Any]
    visibility: str | None = None  # of the chat, if this body creates it


def _invalid(message: str, code: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def parse_body(raw: bytes) -> ChatBody:
    """Parse and check a body; anything malformed raises :class:`InvalidRequest`."""
    body = json_object(raw)
    chat_id = body.get("id")
    if chat_id is None:
        raise _invalid("'id' (the chat id) is required", "missing_required_parameter", "id")
    chat_id = check_id(chat_id, what="chat", param="id")
    trigger = body.get("trigger", "submit-message")
    if trigger not in TRIGGERS:
        raise _invalid(
            f"'trigger' must be one of {', '.join(TRIGGERS)}", "invalid_value", "trigger"
        )
    message_id = body.get("messageId")
    if message_id is not None and not (isinstance(message_id, str) and message_id):
        raise _invalid("'messageId' must be a message id", "invalid_type", "messageId")
    # The Chat SDK names the model selectedChatModel.
    named = "model" if body.get("model") is not None else "selectedChatModel"
    model = body.get(named)
    if model is not None and not (isinstance(model, str) and model):
        raise _invalid(f"'{named}' must be a model name", "invalid_type", named)
    if model is not None and len(model) > MODEL_LENGTH:
        raise _invalid(
            f"'{named}' is longer than {MODEL_LENGTH} characters", "invalid_value", named
        )
    visibility = body.get("selectedVisibilityType")
    if visibility is not None and visibility not in VISIBILITIES:
        raise _invalid(
            "'selectedVisibilityType' must be private or public",
            "invalid_value",
            "selectedVisibilityType",
        )
    single = "messages" not in body
    if single and "message" not in body:
        raise _invalid(
            "'messages' (or 'message', with the history kept here) is required",
            "missing_required_parameter",
            "messages",
        )
    if not single and "message" in body:
        raise _invalid(
            "send either 'messages' or 'message', not both", "invalid_request", "message"
        )
    messages = [to_chat(body["message"], "message")] if single else _messages(body["messages"])
    params = {k: body[k] for k in FORWARDED if body.get(k) is not None}
    refuse_nul({"model": model, **params}, raw)
    return ChatBody(chat_id, trigger, message_id, messages, single, model, params, visibility)


def _messages(value: Any) -> list[UIConverted]:
    if not isinstance(value, list):
        raise _invalid("'messages' must be an array of UIMessages", "invalid_type", "messages")
    if not value:
        raise _invalid("'messages' must contain at least one message", "empty_array", "messages")
    if len(value) > MAX_MESSAGES:
        raise _invalid(
            f"'messages' holds at most {MAX_MESSAGES} messages", "invalid_value", "messages"
        )
    return [to_chat(m, f"messages[{i}]") for i, m in enumerate(value)]
