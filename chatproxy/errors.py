"""The error tree, and its mapping to OpenAI-shaped HTTP errors.

::

    ChatProxyError
    ├── SettingsError            bad configuration; names the key (exit 2 / start-up stops)
    ├── NotFoundError            a chat or message that does not exist (CLI: exit 1)
    ├── StoreUnavailable         the database cannot be opened or reached (CLI: exit 1)
    └── APIError                 anything that becomes an HTTP error response
        ├── InvalidRequest       400 invalid_request_error
        ├── AuthenticationError  401 invalid_api_key
        ├── PermissionDenied     403
        ├── ResourceNotFound     404 (also a NotFoundError)
        ├── Conflict             409
        ├── PayloadTooLarge      413
        ├── HeadersTooLarge      431 (the HTTP parser's limits)
        ├── RateLimited          429
        └── UpstreamError        the upstream's status, its body normalised

Every ``APIError`` renders as ``{"error": {"message", "type", "param", "code"}}``: before a
response is prepared by :func:`error_response` (one middleware calls it); after that a stream
carries the same body in-band, as one SSE ``data:`` event followed by ``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "APIError",
    "AuthenticationError",
    "ChatProxyError",
    "Conflict",
    "HeadersTooLarge",
    "InvalidRequest",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ResourceNotFound",
    "SettingsError",
    "StoreUnavailable",
    "UpstreamError",
    "error_body",
    "error_response",
    "json_object",
    "normalize_upstream_error",
]


class ChatProxyError(Exception):
    """Base of every error chatproxy raises on purpose."""


class SettingsError(ChatProxyError):
    """A configuration key has a bad value (or is unknown)."""

    def __init__(self, key: str, expected: str, value: Any, *, unknown: bool = False) -> None:
        self.key = key
        self.expected = expected
        if unknown:
            message = f"unknown configuration key {key!r}"
        elif value is None:
            message = f"{key}: expected {expected}"
        else:
            message = f"{key}: expected {expected}, got {value!r}"
        super().__init__(message)


class NotFoundError(ChatProxyError):
    """Something asked for by id does not exist."""


class StoreUnavailable(ChatProxyError):
    """The database cannot be opened or does not answer."""


class APIError(ChatProxyError):
    """An error that is answered to an HTTP client in OpenAI's error shape."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error body."""
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


def json_object(raw: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    """A request body that must be a JSON object (``{}`` for an empty body when
    ``empty_ok``); anything else is :class:`InvalidRequest` (``invalid_json``, ``invalid_type``)."""
    if empty_ok and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_type")
    return body


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ResourceNotFound(APIError, NotFoundError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class HeadersTooLarge(APIError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(APIError):
    """The upstream answered an error, or could not be reached, or broke mid-stream."""

    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        status: int,
        body: dict[str, Any] | None = None,
        *,
        message: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self._body = body
        if body is not None:
            err = body["error"]
            message = message or str(err.get("message") or "upstream error")
            code = code or err.get("code")
            self.type = err.get("type") or self.type
        super().__init__(message or "upstream error", code=code, headers=headers)

    def body(self) -> dict[str, Any]:
        return self._body if self._body is not None else super().body()


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, the shape the OpenAI SDKs parse."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> web.Response:
    """The HTTP response for an error raised before any response byte was sent."""
    return web.Response(
        status=exc.status,
        body=orjson.dumps(exc.body()),
        content_type="application/json",
        headers=exc.headers,
    )


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def normalize_upstream_error(status: int, raw: bytes) -> dict[str, Any]:
    """Turn whatever error body an upstream sent into OpenAI's error shape.

    Handles OpenAI's own shape (kept as is), the flat ``{"object": "error", "message": ...,
    "code": 400}`` of vLLM and others, ``{"error": "text"}`` (Ollama, llama.cpp), integer codes
    and non-JSON bodies.
    """
    default_type = _STATUS_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    err: Any = None
    if isinstance(data, dict):
        err = data.get("error", data)
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        text = raw.decode("utf-8", "replace").strip()[:1000] if raw else ""
        err = {"message": text or f"upstream returned HTTP {status}"}
    code = err.get("code")
    if isinstance(code, int):
        code = str(code)
    elif code is not None and not isinstance(code, str):
        code = None
    message = err.get("message") or err.get("detail") or f"upstream returned HTTP {status}"
    param = err.get("param")
    return error_body(
        message if isinstance(message, str) else orjson.dumps(message).decode(),
        err.get("type") if isinstance(err.get("type"), str) else default_type,
        code,
        param if isinstance(param, str) else None,
    )
