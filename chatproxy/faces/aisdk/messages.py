"""UIMessages (the AI SDK's) to chat-completions messages and back.

To the upstream (:func:`to_chat`): a ``system`` or ``user`` message becomes one message (text,
and ``file`` parts as image, audio or file content parts); an ``assistant`` message becomes one
assistant message per step (``step-start`` parts separate the steps), each followed by a
``tool`` message per tool part that has a result. Reasoning is not sent back upstream (some
servers refuse it), nor are ``data-*`` and ``source-*`` parts (for the page, not the model).

From the store (:func:`to_ui`): the same in reverse, so that a client that sends back what it
was given yields the very messages that are stored, byte for byte: threading (prefix hashes)
finds them and the upstream request is the same whether the client sends its whole history or
only its last message. An answer that went through tool calls (an assistant message, the tool
results, the next assistant message...) is one UIMessage, as the AI SDK's client builds it: it
has the id of its first answer, the one the client was given when the answer began and keeps
while the answer goes on after each tool output (:func:`answer_start`).

A UIMessage's own id is kept with the messages stored from it (``Message.metadata``,
``{"ui_id": ...}``); answers generated here have the stored message's id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from chatproxy.errors import InvalidRequest
from chatproxy.faces.aisdk.stream import (
    INVALID_ARGUMENTS,
    PROVIDER,
    answer_metadata,
    frame,
    tool_input,
)
from chatproxy.store.models import Message
from chatproxy.store.threading import message_text, without_reasoning

__all__ = [
    "UI_ID",
    "UIConverted",
    "answer_start",
    "earlier_steps",
    "for_upstream",
    "stored_ui_id",
    "to_chat",
    "to_ui",
]

UI_ID = "ui_id"  # the key of a UIMessage's id in Message.metadata
MAX_ID = 256
ROLES = ("system", "user", "assistant")
TOOL_STATES = (
    "input-streaming",
    "input-available",
    "approval-requested",
    "approval-responded",
    "output-available",
    "output-error",
    "output-denied",
)
_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}
_IGNORED = ("step-start", "source-url", "source-document")
DENIED = "the user denied this tool call"


@dataclass(slots=True, frozen=True)
class UIConverted:
    """A UIMessage and the chat-completions messages it stands for."""

    id: str
    role: str
    messages: list[dict[str, Any]]


def _invalid(param: str, what: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"'{param}' {what}", code=code, param=param)


def _string(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        code = "missing_required_parameter" if value is None else "invalid_type"
        raise _invalid(f"{param}.{key}", "is required and must be a string", code)
    return value


def for_upstream(message: dict[str, Any]) -> dict[str, Any]:
    """A message as it goes upstream: without its reasoning (some servers refuse it), keys in
    one order whatever the database gave back (PostgreSQL's ``jsonb`` orders them its own way),
    so that the request is the same whether the history came from the client or the store."""
    return _sorted(without_reasoning(message))


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


# -- to the upstream ---------------------------------------------------------------------------


def to_chat(ui: Any, param: str) -> UIConverted:
    """Check one UIMessage and convert it; anything malformed raises :class:`InvalidRequest`."""
    if not isinstance(ui, dict):
        raise _invalid(param, "must be a UIMessage object", "invalid_type")
    ui_id = _string(ui, "id", param)
    if not 0 < len(ui_id) <= MAX_ID:
        raise _invalid(f"{param}.id", f"must be 1 to {MAX_ID} characters")
    role = ui.get("role")
    if role not in ROLES:
        raise _invalid(f"{param}.role", f"must be one of {', '.join(ROLES)}")
    parts = ui.get("parts")
    if not isinstance(parts, list):
        code = "missing_required_parameter" if parts is None else "invalid_type"
        raise _invalid(f"{param}.parts", "is required and must be an array", code)
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(
                f"{param}.parts[{j}]", "must be an object with a string 'type'", "invalid_type"
            )
    if role == "assistant":
        return UIConverted(ui_id, role, _assistant(parts, f"{param}.parts"))
    return UIConverted(ui_id, role, [_prompt(role, parts, f"{param}.parts")])


def _prompt(role: str, parts: list[dict[str, Any]], param: str) -> dict[str, Any]:
    """A system or user message: text, and (from users) files."""
    content: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        p, kind = f"{param}[{j}]", part["type"]
        if kind == "text":
            content.append({"type": "text", "text": _string(part, "text", p)})
        elif kind == "file" and role == "user":
            content.append(_file(part, p))
        elif not (kind in _IGNORED or kind.startswith("data-")):
            allowed = "text and file" if role == "user" else "text"
            raise _invalid(f"{p}.type", f"must be one of the parts of a {role} message ({allowed})")
    if not content:
        return {"role": role, "content": ""}
    if len(content) == 1 and content[0]["type"] == "text":
        return {"role": role, "content": content[0]["text"]}
    return {"role": role, "content": content}


def _file(part: dict[str, Any], param: str) -> dict[str, Any]:
    media_type, url = _string(part, "mediaType", param), _string(part, "url", param)
    if media_type.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    if not url.startswith("data:") or "," not in url:
        raise _invalid(f"{param}.url", "must be a data: URL (only images may be given by URL)")
    audio = _AUDIO_FORMATS.get(media_type)
    if audio is not None:
        return {
            "type": "input_audio",
            "input_audio": {"data": url.split(",", 1)[1], "format": audio},
        }
    file: dict[str, Any] = {"file_data": url}
    filename = part.get("filename")
    if isinstance(filename, str) and filename:
        file["filename"] = filename
    return {"type": "file", "file": file}


def _steps(parts: list[dict[str, Any]]) -> list[list[tuple[int, dict[str, Any]]]]:
    steps: list[list[tuple[int, dict[str, Any]]]] = [[]]
    for j, part in enumerate(parts):
        if part["type"] == "step-start":
            if steps[-1]:
                steps.append([])
        else:
            steps[-1].append((j, part))
    return [s for s in steps if s]


def _assistant(parts: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """An answer: one assistant message per step, each followed by its tool results."""
    out: list[dict[str, Any]] = []
    for step in _steps(parts):
        text: list[str] = []
        refusal: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        took = False
        for j, part in step:
            p, kind = f"{param}[{j}]", part["type"]
            if kind == "text":
                marked = _chatproxy(part.get("providerMetadata")).get("refusal") is True
                (refusal if marked else text).append(_string(part, "text", p))
            elif kind == "reasoning":
                _string(part, "text", p)
            elif kind.startswith("tool-") or kind == "dynamic-tool":
                call, result = _tool(part, p)
                calls.append(call)
                if result is not None:
                    results.append(result)
            elif not (kind in (*_IGNORED, "file") or kind.startswith("data-")):
                raise _invalid(f"{p}.type", "is not a part of an assistant message")
            else:
                continue
            took = True
        if not took:
            continue
        content: str | None = "".join(text)
        if calls and not content:
            content = None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if refusal:
            message["refusal"] = "".join(refusal)
        if calls:
            message["tool_calls"] = calls
        out += [message, *results]
    return out


def _chatproxy(metadata: Any) -> dict[str, Any]:
    value = metadata.get(PROVIDER) if isinstance(metadata, dict) else None
    return value if isinstance(value, dict) else {}


def _tool(part: dict[str, Any], param: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A tool part as a tool call, and its result as a ``tool`` message (if it has one)."""
    kind = part["type"]
    name = _string(part, "toolName", param) if kind == "dynamic-tool" else kind[len("tool-") :]
    call_id = _string(part, "toolCallId", param)
    state = part.get("state")
    if state not in TOOL_STATES:
        raise _invalid(f"{param}.state", f"must be one of {', '.join(TOOL_STATES)}")
    value = part.get("input")
    raw = _chatproxy(part.get("callProviderMetadata")).get("arguments")
    if isinstance(raw, str) and tool_input(raw)[0] == value:
        arguments = raw  # as the model sent them, so the message is the stored one
    else:
        arguments = orjson.dumps({} if value is None else value).decode()
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if state == "output-available":
        output = part.get("output")
        content = output if isinstance(output, str) else orjson.dumps(output).decode()
    elif state == "output-error":
        content = _string(part, "errorText", param)
    elif state == "output-denied":
        content = DENIED
    else:
        return call, None
    return call, {"role": "tool", "tool_call_id": call_id, "content": content}


# -- from the store ----------------------------------------------------------------------------


class _Row(Protocol):
    @property
    def role(self) -> str: ...


def answer_start(branch: Sequence[_Row]) -> int | None:
    """Where the UIMessage that ends ``branch`` (stored messages, oldest first) begins: the
    index of the first assistant message of the answer it ends with (an answer and the tool
    results and answers that followed it), or ``None`` when it does not end with one."""
    start = None
    for i in range(len(branch) - 1, -1, -1):
        if branch[i].role == "assistant":
            start = i
        elif branch[i].role != "tool":
            break
    return start


def stored_ui_id(m: Message) -> str:
    """The id a client knows a stored message by."""
    ui_id = m.metadata.get(UI_ID) if isinstance(m.metadata, dict) else None
    return ui_id if isinstance(ui_id, str) else m.id


def to_ui(branch: Iterable[Message]) -> list[dict[str, Any]]:
    """A branch of stored messages (oldest first) as UIMessages."""
    out: list[dict[str, Any]] = []
    group: list[Message] = []  # an answer and what followed it up to the next prompt
    for m in branch:
        if m.role in ("assistant", "tool"):
            if group or m.role == "assistant":  # a tool result with no call before is dropped
                group.append(m)
            continue
        if group:
            out.append(_answer(group))
            group = []
        if m.role in ("system", "user", "developer"):
            role = "system" if m.role == "developer" else m.role
            out.append({"id": stored_ui_id(m), "role": role, "parts": _prompt_parts(m.data)})
    if group:
        out.append(_answer(group))
    return out


def _prompt_parts(data: dict[str, Any]) -> list[dict[str, Any]]:
    content = data.get("content")
    if not isinstance(content, list):
        return [{"type": "text", "text": message_text(content)}]
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = str(part["image_url"].get("url") or "")
            parts.append({"type": "file", "mediaType": _data_type(url) or "image/*", "url": url})
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            media_type = "audio/mpeg" if audio.get("format") == "mp3" else "audio/wav"
            url = f"data:{media_type};base64,{audio.get('data') or ''}"
            parts.append({"type": "file", "mediaType": media_type, "url": url})
        elif kind == "file" and isinstance(part.get("file"), dict):
            url = str(part["file"].get("file_data") or "")
            ui = {"type": "file", "mediaType": _data_type(url) or "application/octet-stream"}
            if isinstance(part["file"].get("filename"), str):
                ui["filename"] = part["file"]["filename"]
            parts.append(ui | {"url": url})
    return parts


def _data_type(url: str) -> str | None:
    if not url.startswith("data:"):
        return None
    return url[len("data:") :].split(",", 1)[0].split(";", 1)[0] or None


def _answer(group: Sequence[Message]) -> dict[str, Any]:
    """One UIMessage of an answer: its first assistant message's id, its last one's metadata."""
    parts: list[dict[str, Any]] = []
    tools: dict[str, dict[str, Any]] = {}
    first = last = group[0]
    for m in group:
        data = m.data if isinstance(m.data, dict) else {}
        if m.role == "tool":
            part = tools.get(str(data.get("tool_call_id")))
            if part is not None:
                part["state"] = "output-available"
                part["output"] = _output(message_text(data.get("content")))
            continue
        last = m
        parts.append({"type": "step-start"})
        if isinstance(data.get("reasoning_content"), str) and data["reasoning_content"]:
            parts.append({"type": "reasoning", "text": data["reasoning_content"], "state": "done"})
        text = message_text(data.get("content"))
        if text:
            parts.append({"type": "text", "text": text, "state": "done"})
        if isinstance(data.get("refusal"), str) and data["refusal"]:
            marked = {"providerMetadata": {PROVIDER: {"refusal": True}}}
            parts.append({"type": "text", "text": data["refusal"], "state": "done", **marked})
        for position, call in enumerate(data.get("tool_calls") or []):
            part = _tool_part(call, position)
            tools[part["toolCallId"]] = part
            parts.append(part)
    message: dict[str, Any] = {"id": stored_ui_id(first), "role": "assistant", "parts": parts}
    metadata = answer_metadata(last.model, last.usage)
    if metadata is not None:
        message["metadata"] = metadata
    return message


def _output(content: str) -> Any:
    """A tool result as the client gave it: an object or array it sent is stored as compact
    JSON (:func:`_tool`) and given back parsed; any other text as it is."""
    if not content.startswith(("{", "[")):
        return content
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    return value if orjson.dumps(value).decode() == content else content


def earlier_steps(steps: Iterable[tuple[str, Any]]) -> bytes:
    """The UI message stream parts of the stored steps of an answer (its assistant messages
    and the tool results after each, as ``(role, data)``, oldest first) that a resumed stream
    replays before the rest of it, so that the replay holds the whole UIMessage, as a reload
    gives it. A tool call is replayed as its input streaming and then its output
    (``tool-input-start`` / ``-delta`` / ``tool-output-available``): never as
    ``tool-input-available``, which would have the client run the tool again."""
    out: list[bytes] = []
    count = 0
    for role, data in steps:
        data = data if isinstance(data, dict) else {}
        if role == "tool":
            output = _output(message_text(data.get("content")))
            call_id = str(data.get("tool_call_id"))
            out.append(
                frame({"type": "tool-output-available", "toolCallId": call_id, "output": output})
            )
            continue
        if out:
            out.append(frame({"type": "finish-step"}))
        out.append(frame({"type": "start-step"}))
        refusal = {"providerMetadata": {PROVIDER: {"refusal": True}}}
        for kind, text, extra in (
            ("reasoning", data.get("reasoning_content"), {}),
            ("text", message_text(data.get("content")), {}),
            ("text", data.get("refusal"), refusal),
        ):
            if isinstance(text, str) and text:
                part_id = f"replayed-{count}"
                count += 1
                out.append(frame({"type": f"{kind}-start", "id": part_id, **extra}))
                out.append(frame({"type": f"{kind}-delta", "id": part_id, "delta": text}))
                out.append(frame({"type": f"{kind}-end", "id": part_id}))
        for position, call in enumerate(data.get("tool_calls") or []):
            out.append(_replayed_call(call, position))
    if out:
        out.append(frame({"type": "finish-step"}))
    return b"".join(out)


def _replayed_call(call: Any, position: int) -> bytes:
    part = _tool_part(call, position)
    call_id, name = part["toolCallId"], part["type"][len("tool-") :]
    start: dict[str, Any] = {"type": "tool-input-start", "toolCallId": call_id, "toolName": name}
    if "callProviderMetadata" in part:
        start["providerMetadata"] = part["callProviderMetadata"]
    fn = call.get("function") if isinstance(call, dict) else None
    arguments = fn.get("arguments") if isinstance(fn, dict) else None
    if part["state"] == "output-error":  # arguments that are not JSON
        error = {"type": "tool-input-error", "toolCallId": call_id, "toolName": name}
        return frame(start) + frame(
            error | {"input": part["input"], "errorText": INVALID_ARGUMENTS}
        )
    delta = {"type": "tool-input-delta", "toolCallId": call_id}
    text = arguments if isinstance(arguments, str) and arguments.strip() else "{}"
    return frame(start) + frame(delta | {"inputTextDelta": text})


def _tool_part(call: Any, position: int) -> dict[str, Any]:
    call = call if isinstance(call, dict) else {}
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    arguments = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
    value, metadata, valid = tool_input(arguments)
    part: dict[str, Any] = {
        "type": f"tool-{fn.get('name') or ''}",
        "toolCallId": call.get("id") or f"call-{position}",
        "state": "input-available" if valid else "output-error",
        "input": value,
    }
    if not valid:
        part["errorText"] = INVALID_ARGUMENTS
    if metadata is not None:
        part["callProviderMetadata"] = metadata
    return part
