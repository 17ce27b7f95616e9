"""Incremental, byte-based Server-Sent Events parser (WHATWG event-stream rules).

Line endings are normalised to ``\\n`` chunk by chunk (a ``\\r`` ending one chunk swallows a ``\\n``
starting the next), so event boundaries are found with a single ``find(b"\\n\\n")`` and the common
one-line ``data: ...`` event is sliced straight out of the input without splitting it into lines.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_SPACE = 0x20
_COLON = 0x3A


class SSEEvent(NamedTuple):
    """One dispatched event.

    ``data`` is its data lines joined with ``\\n``. (What is forwarded to clients are the
    upstream's own bytes, cut at event boundaries by :mod:`chatproxy.proxy.framing`.)
    """

    data: bytes
    event: str | None = None
    id: str | None = None


class SSEParser:
    """Turns arbitrarily split chunks of an event stream into :class:`SSEEvent` objects.

    ``id`` is reported per event (only when that event carries an ``id:`` field); the stream's
    "last event ID" is left to the consumer.
    """

    __slots__ = ("_buf", "_cr", "_head", "_scan")

    def __init__(self) -> None:
        # Bytes of the unfinished event; always starts at a line start and never with b"\n".
        self._buf = bytearray()
        # Offset in _buf from which the next search for b"\n\n" resumes.
        self._scan = 0
        # The previous chunk ended with b"\r": a b"\n" opening the next one belongs to it.
        self._cr = False
        # Opening bytes held back while they could still be a split BOM; None once decided.
        self._head: bytes | None = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed, in stream order."""
        chunk = self._normalize(chunk)
        if not chunk:
            return []
        buf = self._buf
        if buf:
            buf += chunk
            if buf.find(b"\n\n", self._scan) < 0:
                self._scan = len(buf) - 1
                return []
            data = bytes(buf)
            buf.clear()
        else:
            data = chunk
        events, pos = self._parse(data)
        if pos < len(data):
            buf += memoryview(data)[pos:]
            # _parse searched the leftover and found no boundary; only its last byte can start one.
            self._scan = len(buf) - 1
        else:
            self._scan = 0
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: return a final event left unterminated (if it has data), then reset."""
        head, self._head = self._head, None
        self._cr = False
        events = self.feed((head or b"") + b"\n\n")
        self._buf.clear()
        self._scan = 0
        self._head = b""
        return events

    def _normalize(self, chunk: bytes) -> bytes:
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if self._head is not None:
            head = self._head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return b""
            self._head = None
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if not chunk:
            return chunk
        if self._cr:
            self._cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk

    @staticmethod
    def _parse(data: bytes) -> tuple[list[SSEEvent], int]:
        """Dispatch every complete event in ``data``; return them and the offset consumed."""
        events: list[SSEEvent] = []
        pos = 0
        n = len(data)
        while pos < n:
            if data[pos] == _LF:  # a blank line with nothing pending
                pos += 1
                continue
            end = data.find(b"\n\n", pos)
            if end < 0:
                break
            event = _block(data, pos, end)
            if event is not None:
                events.append(event)
            pos = end + 2
        return events, pos


def _block(data: bytes, start: int, end: int) -> SSEEvent | None:
    """Build the event from the lines in ``data[start:end]`` (no blank line among them)."""
    if data.startswith(b"data:", start) and data.find(b"\n", start, end) < 0:
        value = start + 5
        if value < end and data[value] == _SPACE:
            value += 1
        # A slice of bytes spanning all of it is the object itself: no copy on the common path.
        return SSEEvent(data[value:end], None, None)

    lines: list[bytes] = []
    event: str | None = None
    event_id: str | None = None
    for line in data[start:end].split(b"\n"):
        if line[0] == _COLON:
            continue
        colon = line.find(b":")
        if colon < 0:
            name, value_bytes = line, b""
        else:
            name = line[:colon]
            value_bytes = line[colon + 1 :]
            if value_bytes[:1] == b" ":
                value_bytes = value_bytes[1:]
        if name == b"data":
            lines.append(value_bytes)
        elif name == b"event":
            event = value_bytes.decode("utf-8", "replace")
        elif name == b"id" and b"\x00" not in value_bytes:  # the spec ignores ids with NUL
            event_id = value_bytes.decode("utf-8", "replace")
    if not lines:
        return None
    return SSEEvent(lines[0] if len(lines) == 1 else b"\n".join(lines), event, event_id)
