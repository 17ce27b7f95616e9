"""OpenAI items and the chat-completions messages the store keeps: every conversion between them.

Chats are stored as chat-completions messages (``role``, ``content``, ``tool_calls``,
``tool_call_id``, and ``reasoning_content`` on an answer that came with reasoning). The
Conversations and Responses APIs speak in items instead:

- :func:`items_to_messages` (Conversations ``items``) and :func:`input_to_messages`
  (Responses ``input``, also a plain string): input items as messages to store;
- :func:`message_items`: a stored message as conversation items (``/v1/conversations/{id}/items``,
  a response's ``input_items``);
- :func:`answer_items`: a stored answer as a response's ``output`` items;
- :func:`messages_to_input`: a stored chain as ``input`` for an upstream's ``/v1/responses``.

What an input item becomes:

==========================  ====================================================================
``message`` (or no type)    a message of its role (user, system, developer, assistant); text
                            parts (``input_text``, ``output_text``) are joined into a string
                            content; ``input_image`` with ``image_url`` is an ``image_url`` part;
                            ``input_file`` with ``file_data`` or ``file_id`` is a ``file`` part;
                            an assistant's ``refusal`` parts are its ``refusal``
``function_call``           a tool call of the assistant message just before it (or of a new one)
``function_call_output``    a ``tool`` message; its output is text (a string, or input_text parts)
``reasoning``               the ``reasoning_content`` of the assistant message it comes before
                            (its summary text, else its ``reasoning_text`` content); its id and
                            ``encrypted_content`` are not kept
==========================  ====================================================================

Refused, as :class:`ItemError` naming the exact parameter (``input[2].content[0].type``): any
other item type (``item_reference``, built-in tool calls ...); an image by ``file_id`` and a file
by ``file_url`` (a chat-completions message cannot carry them); an image, a file or audio in an
assistant message or in a tool output; a reasoning item that no assistant message or function
call follows (there is no answer to store it with).

Item ids: a stored message's items take its id, the k-th further one ``{id}_k`` (the tool calls
of an answer with text, say), so that one message's items are found by its id. An answer's
reasoning item is ``rs_{id}``: it is not a conversation item (conversations show what is sent
back upstream, and reasoning is not), and it shifts no other item's id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatproxy.store.models import Message, Status
from chatproxy.store.threading import message_text

__all__ = [
    "ItemError",
    "answer_items",
    "input_to_messages",
    "items_to_messages",
    "message_items",
    "messages_to_input",
]

_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")
_DETAILS = ("auto", "low", "high", "original")
_ITEM_TYPES = "message, function_call, function_call_output or reasoning"
_FILE_KEYS = ("file_data", "file_id", "filename")


class ItemError(ValueError):
    """An input item that cannot be stored; ``args`` is ``(code, param, message)``."""

    def __init__(self, code: str, param: str, what: str) -> None:
        super().__init__(code, param, f"'{param}' {what}")


# -- input items -> messages -----------------------------------------------------------------


def _absent_or_wrong(value: Any) -> str:
    return "missing_required_parameter" if value is None else "invalid_type"


def _str_field(item: Mapping[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        what = "is required and must be a string"
        raise ItemError(_absent_or_wrong(value), f"{param}.{key}", what)
    return value


def _optional_str(item: Mapping[str, Any], key: str, param: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise ItemError("invalid_type", f"{param}.{key}", "must be a string")
    return value


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ItemError("invalid_type", param, "must be an object")
    return value


def _image(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        what = "is not supported: images are stored by URL, send image_url (a URL or a data: URL)"
        raise ItemError("unsupported_parameter", f"{param}.file_id", what)
    url = _str_field(part, "image_url", param)
    detail = part.get("detail")
    if detail is not None and detail not in _DETAILS:
        raise ItemError("invalid_value", f"{param}.detail", f"must be one of {', '.join(_DETAILS)}")
    return {"type": "image_url", "image_url": {"url": url, "detail": detail or "auto"}}


def _file(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    if part.get("file_url") is not None:
        what = "is not supported: send the file as file_data (a data: URL) or file_id"
        raise ItemError("unsupported_parameter", f"{param}.file_url", what)
    file = {k: v for k in _FILE_KEYS if (v := _optional_str(part, k, param)) is not None}
    if "file_data" not in file and "file_id" not in file:
        what = "(or file_id) is required"
        raise ItemError("missing_required_parameter", f"{param}.file_data", what)
    return {"type": "file", "file": file}


def _content(value: Any, param: str, role: str) -> tuple[Any, str | None]:
    """Chat-completions content for an item's ``content`` (a string when it is all text), and
    the refusal an assistant's content holds."""
    if isinstance(value, str):
        return value, None
    if not isinstance(value, list):
        what = "must be a string or an array of content parts"
        raise ItemError(_absent_or_wrong(value), param, what)
    parts: list[dict[str, Any]] = []
    refusals: list[str] = []
    for i, raw in enumerate(value):
        p = f"{param}[{i}]"
        part = _object(raw, p)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _str_field(part, "text", p)})
        elif role == "assistant":
            if kind != "refusal":
                raise ItemError("invalid_value", f"{p}.type", "must be output_text or refusal")
            refusals.append(_str_field(part, "refusal", p))
        elif kind == "input_image":
            parts.append(_image(part, p))
        elif kind == "input_file":
            parts.append(_file(part, p))
        else:
            what = "must be input_text, input_image or input_file"
            raise ItemError("invalid_value", f"{p}.type", what)
    refusal = "".join(refusals) if refusals else None
    if any(part["type"] != "text" for part in parts):
        return parts, refusal
    if refusal is not None and not parts:
        return None, refusal  # as a chat completion carries a refusal: no content
    return "".join(part["text"] for part in parts), refusal


def _message(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise ItemError("invalid_value", f"{param}.role", f"must be one of {', '.join(_ROLES)}")
    content, refusal = _content(item.get("content"), f"{param}.content", role)
    message: dict[str, Any] = {"role": role, "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    return message


def _texts(value: Any, param: str, kind: str, *, required: bool) -> list[str]:
    """The texts of an array of ``{"type": kind, "text": ...}`` parts."""
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ItemError(_absent_or_wrong(value), param, f"must be an array of {kind} parts")
    texts = []
    for i, raw in enumerate(value):
        p = f"{param}[{i}]"
        part = _object(raw, p)
        if part.get("type") != kind:
            raise ItemError("invalid_value", f"{p}.type", f"must be {kind}")
        texts.append(_str_field(part, "text", p))
    return texts


def _reasoning(item: Mapping[str, Any], param: str) -> str:
    """A reasoning item's text: its summary, else its reasoning_text content."""
    _optional_str(item, "id", param)
    _optional_str(item, "encrypted_content", param)  # opaque to anyone but its issuer: not kept
    summary = _texts(item.get("summary"), f"{param}.summary", "summary_text", required=True)
    content = _texts(item.get("content"), f"{param}.content", "reasoning_text", required=False)
    return "\n\n".join(t for t in summary if t) or "\n\n".join(t for t in content if t)


def _tool_output(item: Mapping[str, Any], param: str) -> str:
    output = item.get("output")
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        what = "must be a string or an array of input_text parts"
        raise ItemError(_absent_or_wrong(output), f"{param}.output", what)
    texts = []
    for i, raw in enumerate(output):
        p = f"{param}.output[{i}]"
        part = _object(raw, p)
        if part.get("type") not in _TEXT_PARTS:
            what = "must be input_text: a tool result is stored as text"
            raise ItemError("invalid_value", f"{p}.type", what)
        texts.append(_str_field(part, "text", p))
    return "".join(texts)


def _with_reasoning(message: dict[str, Any], reasoning: list[str]) -> None:
    text = "\n\n".join(t for t in reasoning if t)
    if text:
        before = message.get("reasoning_content")
        message["reasoning_content"] = f"{before}\n\n{text}" if before else text
    reasoning.clear()


def items_to_messages(
    items: Any, param: str = "items", at_most: int | None = 1000
) -> list[dict[str, Any]]:
    """OpenAI input items as chat-completions messages, as the module's table says; at most
    ``at_most`` of them (``None``: any number). ``function_call`` items join the assistant
    message just before them (or start one), as a chat-completions answer carries its tool
    calls; ``reasoning`` items go with the assistant message that follows them. Raises
    :class:`ItemError`."""
    if not isinstance(items, list) or (at_most is not None and len(items) > at_most):
        code = "invalid_type" if not isinstance(items, list) else "invalid_value"
        bound = f" of at most {at_most} items" if at_most is not None else " of input items"
        raise ItemError(code, param, f"must be an array{bound}")
    out: list[dict[str, Any]] = []
    extendable = False  # out[-1] is an assistant message that tool calls may join
    reasoning: list[str] = []  # of the reasoning items waiting for their answer
    reasoning_at: str | None = None  # the param of the first of them

    def no_reasoning_waits() -> None:
        if reasoning_at is not None:
            what = (
                "is reasoning, which must come before the assistant message or function_call"
                " it belongs to"
            )
            raise ItemError("invalid_value", f"{reasoning_at}.type", what)

    for i, raw in enumerate(items):
        p = f"{param}[{i}]"
        item = _object(raw, p)
        kind = item.get("type", "message")
        if kind == "reasoning":
            reasoning.append(_reasoning(item, p))
            reasoning_at = reasoning_at or p
            continue
        if kind == "message":
            message = _message(item, p)
            extendable = message["role"] == "assistant"
            if extendable:
                _with_reasoning(message, reasoning)
                reasoning_at = None
            no_reasoning_waits()
            out.append(message)
        elif kind == "function_call":
            fn = {
                "name": _str_field(item, "name", p),
                "arguments": _str_field(item, "arguments", p),
            }
            call = {"id": _str_field(item, "call_id", p), "type": "function", "function": fn}
            _optional_str(item, "id", p)
            if not extendable:
                out.append({"role": "assistant", "content": None})
                extendable = True
            _with_reasoning(out[-1], reasoning)
            reasoning_at = None
            out[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            no_reasoning_waits()
            call_id = _str_field(item, "call_id", p)
            out.append({"role": "tool", "tool_call_id": call_id, "content": _tool_output(item, p)})
            extendable = False
        else:
            raise ItemError("invalid_value", f"{p}.type", f"must be {_ITEM_TYPES}")
    no_reasoning_waits()
    return out


def input_to_messages(
    input: Any, param: str = "input", at_most: int | None = None
) -> list[dict[str, Any]]:
    """A Responses request's ``input`` as chat-completions messages: a string is one user
    message, an array is input items (:func:`items_to_messages`; any number of them, as a chat
    completion's messages: the body size bounds them). Raises :class:`ItemError`."""
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    if not isinstance(input, list):
        what = "must be a string or an array of input items"
        raise ItemError(_absent_or_wrong(input), param, what)
    return items_to_messages(input, param, at_most)


# -- stored messages -> items ----------------------------------------------------------------


def _input_parts(content: Any) -> list[dict[str, Any]]:
    """A stored message's content as Responses input content parts (``input_text``,
    ``input_image``, ``input_file``); parts the Responses API has no form for (audio) are
    left out."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "input_text", "text": part["text"]})
        elif kind == "image_url":
            image = part["image_url"] if isinstance(part.get("image_url"), dict) else {}
            detail = image.get("detail") or "auto"
            parts.append({"type": "input_image", "image_url": image.get("url"), "detail": detail})
        elif kind == "file" and isinstance(part.get("file"), dict):
            file = {k: v for k in _FILE_KEYS if isinstance(v := part["file"].get(k), str)}
            parts.append({"type": "input_file", **file})
    return parts


def _item_status(status: str) -> str:
    # OpenAI's items know in_progress, completed and incomplete: a failed, cancelled or
    # interrupted answer is an incomplete one.
    return status if status in (Status.IN_PROGRESS, Status.COMPLETED) else Status.INCOMPLETE


def _tool_calls(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in data.get("tool_calls") or [] if isinstance(c, dict)]


def _answer_items(data: Mapping[str, Any], status: str) -> list[dict[str, Any]]:
    """An answer's ``message`` item (unless it only called tools) and ``function_call`` items,
    without ids."""
    status = _item_status(status)
    text, refusal = message_text(data.get("content")), data.get("refusal")
    refusal = refusal if isinstance(refusal, str) and refusal else None
    calls = _tool_calls(data)
    parts: list[dict[str, Any]] = []
    if text or not (calls or refusal):
        parts.append({"type": "output_text", "text": text, "annotations": []})
    if refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    items = [{"type": "message", "role": "assistant", "status": status, "content": parts}]
    for call in calls:
        fn = call["function"] if isinstance(call.get("function"), dict) else {}
        item = {"type": "function_call", "call_id": str(call.get("id") or "")}
        item |= {"name": str(fn.get("name") or ""), "arguments": str(fn.get("arguments") or "")}
        items.append(item | {"status": status})
    return items if parts else items[1:]


def _numbered(item_id: str, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": item_id if k == 0 else f"{item_id}_{k}", **item} for k, item in enumerate(items)]


def answer_items(data: Mapping[str, Any], status: str, item_id: str) -> list[dict[str, Any]]:
    """A stored answer (chat-completions shape) as a response's ``output`` items: a
    ``reasoning`` item (``rs_{item_id}``) when it has ``reasoning_content``, then its
    ``message`` (``output_text`` and/or ``refusal`` parts) and one ``function_call`` per tool
    call, numbered from ``item_id`` as :func:`message_items` numbers them."""
    items = _numbered(item_id, _answer_items(data, status))
    reasoning = data.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        summary = [{"type": "summary_text", "text": reasoning}]
        items.insert(0, {"id": f"rs_{item_id}", "type": "reasoning", "summary": summary})
    return items


def message_items(m: Message) -> list[dict[str, Any]]:
    """A stored message as OpenAI conversation items: a ``message`` (``input_text`` parts, or
    ``output_text`` for an answer), then one ``function_call`` per tool call; a tool result is
    one ``function_call_output``. An answer's reasoning is not an item here."""
    data = m.data if isinstance(m.data, dict) else {}
    if m.role in ("tool", "function"):
        call_id, output = data.get("tool_call_id") or data.get("name") or "", data.get("content")
        item = {"type": "function_call_output", "call_id": call_id, "status": "completed"}
        items = [item | {"output": message_text(output)}]
    elif m.role == "assistant":
        items = _answer_items(data, m.status)
    else:
        role = m.role if m.role in ("user", "system", "developer") else "unknown"
        parts = _input_parts(data.get("content"))
        items = [{"type": "message", "role": role, "status": "completed", "content": parts}]
    return _numbered(m.id, items)


def messages_to_input(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored chat messages as Responses ``input`` items, to send a stored chain to an
    upstream's ``/v1/responses``: user, system and developer messages with ``input_text``,
    ``input_image`` and ``input_file`` parts; an answer as an assistant message (its text, or
    its refusal, as string content: the form every Responses server takes without an item id)
    and one ``function_call`` per tool call; a tool result as a ``function_call_output``.

    Reasoning is left out: an upstream refuses reasoning items it did not issue (their ids and
    encrypted content are its own), and the proxy keeps only their text. So are messages of
    another role and parts the Responses API has no form for (audio)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in ("tool", "function"):
            call_id = m.get("tool_call_id") or m.get("name") or ""
            output = message_text(m.get("content"))
            out.append({"type": "function_call_output", "call_id": call_id, "output": output})
        elif role == "assistant":
            refusal = m.get("refusal") if isinstance(m.get("refusal"), str) else ""
            text = message_text(m.get("content")) or refusal
            calls = _tool_calls(m)
            if text or not calls:
                out.append({"type": "message", "role": "assistant", "content": text})
            for call in calls:
                fn = call["function"] if isinstance(call.get("function"), dict) else {}
                out.append(
                    {
                        "type": "function_call",
                        "call_id": str(call.get("id") or ""),
                        "name": str(fn.get("name") or ""),
                        "arguments": str(fn.get("arguments") or ""),
                    }
                )
        elif role in ("user", "system", "developer"):
            parts = _input_parts(m.get("content"))
            out.append({"type": "message", "role": role, "content": parts})
    return out
