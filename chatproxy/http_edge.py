"""The HTTP edge: the request parser's limits, and what a client gets when they are broken.

aiohttp parses the request line and the headers before any middleware runs. What it cannot
parse (a header over the size limit, too many headers, a malformed request line, a header
with a forbidden character) it answers itself, by default with a ``text/plain`` 400 that
quotes the offending bytes (an ``Authorization: Bearer cp-...`` header, say) and a log record
that quotes them again with a traceback. Here, in one place:

- the limits are explicit (:data:`MAX_LINE_SIZE`, :data:`MAX_FIELD_SIZE`, :data:`MAX_HEADERS`);
- every refusal is an OpenAI-shaped JSON error that echoes nothing of the request:
  ``431 request_header_fields_too_large`` for a header (or the request line) over the limit
  and for too many headers, ``400 malformed_request`` for anything else the parser refuses;
- the log gets one line naming the client, the status and the code, nothing it sent;
- an exception that escapes a handler (a bug: the middleware renders every expected error) is
  logged with its traceback, as aiohttp does, and answered as a JSON ``500``, not a text page.

This holds for aiohttp's C parser and for its pure-Python one (``AIOHTTP_NO_EXTENSIONS=1``):
both raise the exceptions of ``aiohttp.http_exceptions`` mapped below.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from chatproxy.errors import APIError, HeadersTooLarge, InvalidRequest, error_response
from chatproxy.ids import new_request_id

__all__ = [
    "MAX_FIELD_SIZE",
    "MAX_HEADERS",
    "MAX_LINE_SIZE",
    "ProxyRunner",
    "parser_refusal",
]

log = logging.getLogger("chatproxy.access")

MAX_LINE_SIZE = 8190  # bytes in the request line (method, path and query, version)
MAX_FIELD_SIZE = 8190  # bytes in one header, name and value
MAX_HEADERS = 128  # headers in one request


def _status(error: APIError, status: int) -> APIError:
    # The error tree has no 431 class; the status is set on the instance, as app.py does
    # for aiohttp's own HTTP errors.
    error.status = status
    return error


def parser_refusal(exc: HttpProcessingError) -> APIError:
    """What the client is told when the parser refused its request: never its bytes."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else MAX_FIELD_SIZE
        message = f"a request header or the request line is longer than {limit} bytes"
        return HeadersTooLarge(message)
    if exc.message.startswith("Too many headers"):
        message = f"the request has more than {MAX_HEADERS} headers"
        return HeadersTooLarge(message)
    if isinstance(exc, BadStatusLine | InvalidURLError):  # BadHttpMethod is a BadStatusLine
        return InvalidRequest("the request line is not valid HTTP/1.1", code="malformed_request")
    return InvalidRequest("the request headers are not valid HTTP/1.1", code="malformed_request")


def _handler_failure(status: int) -> APIError:
    if status == 504:
        return _status(APIError("the request took too long", code="timeout"), 504)
    return APIError("internal error in the proxy")


class _Connection(RequestHandler):
    """aiohttp's connection handler, with :func:`parser_refusal` for its error page."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = new_request_id()
        if isinstance(exc, HttpProcessingError):
            error = parser_refusal(exc)
            fields = {
                "request_id": request_id,
                "remote": request.remote,
                "status": error.status,
                "code": error.code,
            }
            # Not HTTP at all (TLS on the plain port, a scanner) is internet noise.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
            log.log(
                level,
                "%(request_id)s refused an unparsable request from %(remote)s "
                "status=%(status)d code=%(code)s",
                fields,
                extra={"fields": fields},
            )
        else:
            error = _handler_failure(status)
            if exc is not None:
                self.log_exception(
                    "%s error handling request from %s", request_id, request.remote, exc_info=exc
                )
        if request.writer.output_size > 0:
            raise ConnectionError("the response was under way: no error response can follow")
        error.headers["X-Request-Id"] = request_id
        resp = error_response(error)
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` with this module's parser limits and refusals.

    aiohttp has no public hook for the class of its connection handler (``web.Server``
    instantiates ``RequestHandler`` itself), so the runner rebuilds the server the application
    made around :class:`_Connection`, with the same handler, request factory and options.
    tests/test_http_parser.py proves it through a real port.
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(
            app,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
