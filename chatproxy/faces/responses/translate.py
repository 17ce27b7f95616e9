"""A Responses API request: its checks, and its translation to chat completions.

:func:`validate_request` holds the checks every ``POST /v1/responses`` needs before anything
is stored, whatever the upstream speaks; each refusal is a 400 in OpenAI's shape naming its
``param``. :func:`chat_request` builds the chat-completions body for an upstream that has no
``/v1/responses``:

- ``input`` and ``instructions``: ``messages`` (the caller converts the input);
  ``instructions`` lead them as a ``system`` message;
- ``tools``: function tools as chat tools; any other type (``web_search``, ``file_search``,
  ``mcp``, ...) is refused (``unsupported_value``, naming ``tools[i].type``): a chat completion
  cannot run it;
- ``tool_choice``: ``auto``, ``none``, ``required``, a function, ``allowed_tools`` of functions,
  in their chat forms; a built-in tool is refused the same way. It and ``parallel_tool_calls``
  are sent with tools only (OpenAI refuses them without);
- ``text``: ``format`` as ``response_format`` (``text``, the default, is left out),
  ``verbosity`` as ``verbosity``;
- ``reasoning``: ``effort`` as ``reasoning_effort`` (chat completions has no summaries);
- ``max_output_tokens`` as ``max_completion_tokens``; ``top_logprobs`` as ``logprobs: true``
  with ``top_logprobs``;
- ``stream: true`` asks for ``stream_options.include_usage`` too, so that usage is stored;
- ``prompt`` (a prompt stored at OpenAI) is refused (``unsupported_parameter``);
- never sent: the proxy's own ``store``, ``previous_response_id``, ``conversation``,
  ``background``, ``background_options``, ``include``, ``truncation``, ``metadata`` (kept with
  the stored response), ``stream_options``, ``context_management``; and the Responses-only
  ``max_tool_calls``, ``prompt_cache_options``, ``moderation``, ``access_programs``, ``image``,
  which have no chat form;
- anything else is passed through, as the chat-completions face passes a body through:
  ``temperature``, ``top_p``, ``user``, ``safety_identifier``, ``service_tier``,
  ``prompt_cache_key``, an upstream's own extensions (``top_k``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chatproxy.access import metadata_value
from chatproxy.errors import InvalidRequest
from chatproxy.ids import check_id
from chatproxy.store.models import MODEL_LENGTH, refuse_nul
from chatproxy.store.threading import without_reasoning

__all__ = ["chat_request", "validate_request"]

_CHOICES = ("auto", "none", "required")
_FORMATS = ("text", "json_schema", "json_object")
_FLAGS = ("stream", "background", "store", "parallel_tool_calls")
# Never sent to a chat-completions upstream: the proxy's own, or with no chat form.
_OWN = frozenset(
    {
        "store",
        "previous_response_id",
        "conversation",
        "background",
        "background_options",
        "include",
        "truncation",
        "metadata",
        "stream_options",
        "context_management",
    }
)
_DROPPED = frozenset(
    {"max_tool_calls", "prompt_cache_options", "moderation", "access_programs", "image"}
)
_HANDLED = frozenset(  # by chat_request itself
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "top_logprobs",
        "parallel_tool_calls",
        "stream",
        "prompt",
    }
)


def _invalid(message: str, code: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def _type_error(value: Any, param: str, expected: str) -> InvalidRequest:
    if value is None:
        return _invalid(f"'{param}' is required", "missing_required_parameter", param)
    return _invalid(f"'{param}' must be {expected}", "invalid_type", param)


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(value, param, "an object")
    return value


def _string(value: Any, param: str, *, required: bool = False) -> str | None:
    if (value is None and not required) or isinstance(value, str):
        return value
    raise _type_error(value, param, "a string")


def _one_of(value: Any, param: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        if value is None:
            raise _type_error(value, param, "a string")
        raise _invalid(f"'{param}' must be one of {', '.join(allowed)}", "invalid_value", param)
    return value


# -- checks ----------------------------------------------------------------------------------


def _check_conversation(value: Any) -> None:
    if isinstance(value, dict):
        check_id(value.get("id"), what="chat", param="conversation.id")
    elif isinstance(value, str):
        check_id(value, what="chat", param="conversation")
    else:
        raise _type_error(value, "conversation", "a conversation id or an object with an id")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _type_error(tools, "tools", "an array")
    for i, raw in enumerate(tools):
        p = f"tools[{i}]"
        tool = _object(raw, p)
        kind = _string(tool.get("type"), f"{p}.type", required=True)
        if kind != "function":
            continue  # a built-in tool: the upstream's to check (or chat_request's to refuse)
        _string(tool.get("name"), f"{p}.name", required=True)
        _string(tool.get("description"), f"{p}.description")
        if tool.get("parameters") is not None:
            _object(tool["parameters"], f"{p}.parameters")
        if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
            raise _type_error(tool["strict"], f"{p}.strict", "a boolean")


def _check_tool_choice(choice: Any) -> None:
    if isinstance(choice, str):
        _one_of(choice, "tool_choice", _CHOICES)
        return
    if not isinstance(choice, dict):
        raise _type_error(choice, "tool_choice", "a string or an object")
    kind = _string(choice.get("type"), "tool_choice.type", required=True)
    if kind == "function":
        _string(choice.get("name"), "tool_choice.name", required=True)
    elif kind == "allowed_tools":
        _one_of(choice.get("mode"), "tool_choice.mode", ("auto", "required"))
        allowed = choice.get("tools")
        if not isinstance(allowed, list):
            raise _type_error(allowed, "tool_choice.tools", "an array")
        for i, raw in enumerate(allowed):
            p = f"tool_choice.tools[{i}]"
            tool = _object(raw, p)
            if _string(tool.get("type"), f"{p}.type", required=True) == "function":
                _string(tool.get("name"), f"{p}.name", required=True)


def _check_text(text: Any) -> None:
    _object(text, "text")
    _string(text.get("verbosity"), "text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return
    _object(fmt, "text.format")
    kind = _one_of(fmt.get("type"), "text.format.type", _FORMATS)
    if kind == "json_schema":
        _string(fmt.get("name"), "text.format.name", required=True)
        _object(fmt.get("schema"), "text.format.schema")
        _string(fmt.get("description"), "text.format.description")
        if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
            raise _type_error(fmt["strict"], "text.format.strict", "a boolean")


def _check_integer(value: Any, param: str, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(value, param, "an integer")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _invalid(f"'{param}' must be an integer {bounds}", "invalid_value", param)


def validate_request(body: Mapping[str, Any]) -> None:
    """Check a ``POST /v1/responses`` body before anything is stored: ``model`` (required, a
    string that fits the store), ``input`` (required: a string or an array; its items are
    :func:`~chatproxy.faces.items.input_to_messages`'s to check), the booleans, the ids
    (``previous_response_id`` a response id, ``conversation`` a chat id or ``{"id": ...}``,
    not both), ``instructions``, ``tools``, ``tool_choice``, ``text``, ``reasoning``,
    ``max_output_tokens``, ``metadata``; and no NUL character outside ``input`` (the rest is
    stored with the response). Raises :class:`~chatproxy.errors.InvalidRequest`."""
    model = _string(body.get("model"), "model", required=True)
    if model is not None and len(model) > MODEL_LENGTH:
        raise _invalid(
            f"'model' is longer than {MODEL_LENGTH} characters", "invalid_value", "model"
        )
    value = body.get("input")
    if not isinstance(value, str | list):
        raise _type_error(value, "input", "a string or an array of input items")
    for key in _FLAGS:
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise _type_error(body[key], key, "a boolean")
    _string(body.get("instructions"), "instructions")
    previous = body.get("previous_response_id")
    if previous is not None:
        check_id(previous, what="response", param="previous_response_id")
    if body.get("conversation") is not None:
        _check_conversation(body["conversation"])
        if previous is not None:
            raise _invalid(
                "Mutually exclusive parameters: Ensure you are only providing one of: "
                "'previous_response_id' or 'conversation'.",
                "mutually_exclusive_parameters",
                None,
            )
    if body.get("tools") is not None:
        _check_tools(body["tools"])
    if body.get("tool_choice") is not None:
        _check_tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        _check_text(body["text"])
    if body.get("reasoning") is not None:
        reasoning = _object(body["reasoning"], "reasoning")
        _string(reasoning.get("effort"), "reasoning.effort")
        _string(reasoning.get("summary"), "reasoning.summary")
    if body.get("max_output_tokens") is not None:
        _check_integer(body["max_output_tokens"], "max_output_tokens", 1)
    if body.get("top_logprobs") is not None:
        _check_integer(body["top_logprobs"], "top_logprobs", 0, 20)
    metadata_value(body.get("metadata"))
    refuse_nul({k: v for k, v in body.items() if k != "input"})


# -- translation -----------------------------------------------------------------------------


def _chat_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise _unsupported(f"tools[{i}].type", tool.get("type"))
        fn: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def _unsupported(param: str, value: Any) -> InvalidRequest:
    return _invalid(
        f"Unsupported value: '{param}' does not support {value!r} with this upstream: it has no "
        "/v1/responses, and a chat completion can only call function tools.",
        "unsupported_value",
        param,
    )


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    kind = choice["type"]
    if kind == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools":
        allowed = []
        for i, tool in enumerate(choice["tools"]):
            if tool.get("type") != "function":
                raise _unsupported(f"tool_choice.tools[{i}].type", tool.get("type"))
            allowed.append({"type": "function", "function": {"name": tool["name"]}})
        return {
            "type": "allowed_tools",
            "allowed_tools": {"mode": choice["mode"], "tools": allowed},
        }
    raise _unsupported("tool_choice.type", kind)


def _response_format(fmt: Mapping[str, Any]) -> dict[str, Any] | None:
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {"name": fmt["name"], "schema": fmt["schema"]}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    return None  # text: the default


def chat_request(body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The chat-completions body for a Responses request ``body`` (checked by
    :func:`validate_request`), as the module's table says. ``messages`` are the whole
    conversation as chat messages (the stored chain, then this request's input); their
    reasoning is left out, as the chat-completions face leaves it out of history it sends.
    Raises :class:`~chatproxy.errors.InvalidRequest` for what a chat completion cannot do."""
    if body.get("prompt") is not None:
        raise _invalid(
            "Unsupported parameter: 'prompt' is not supported with this upstream: it has no "
            "/v1/responses to resolve a stored prompt.",
            "unsupported_parameter",
            "prompt",
        )
    out: dict[str, Any] = {"model": body.get("model")}
    chat = [without_reasoning(m) for m in messages]
    if body.get("instructions") is not None:
        chat.insert(0, {"role": "system", "content": body["instructions"]})
    out["messages"] = chat
    tools = body.get("tools") or []
    if tools:  # OpenAI refuses parallel_tool_calls and tool_choice without tools
        out["tools"] = _chat_tools(tools)
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
        if body.get("tool_choice") is not None:
            out["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    text = body.get("text") or {}
    if text.get("format") is not None and (fmt := _response_format(text["format"])) is not None:
        out["response_format"] = fmt
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("top_logprobs"):
        out["logprobs"], out["top_logprobs"] = True, body["top_logprobs"]
    if body.get("stream") is True:
        out["stream"], out["stream_options"] = True, {"include_usage": True}
    for key, value in body.items():
        if key not in _OWN and key not in _DROPPED and key not in _HANDLED:
            out[key] = value
    return out
