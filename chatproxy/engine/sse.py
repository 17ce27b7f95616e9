"""Incremental, byte-based Server-Sent Events tokenizer (WHATWG event-stream rules).

One pass over the upstream's bytes gives both what the proxy reads and what it forwards: each
dispatched event's fields, and the stream's own bytes that carry it (from the end of the event
before it, comments and blank lines included, through the blank line ending it), untouched.
Forwarding those pieces in order reproduces the stream byte for byte, cut only at event
boundaries: an event can be left out whole, and a client never sees half of one.

Streams without ``\\r`` (nearly all) are cut with a single ``find(b"\\n\\n")`` per event and the
common one-line ``data: ...`` event is sliced straight out of the input; a chunk holding
exactly one event is forwarded as the very object read. Other line endings (``\\r\\n``, ``\\r``)
are found on the raw bytes, and the event's lines normalised for reading.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_CR = 0x0D
_SPACE = 0x20
_COLON = 0x3A
# The end of a line, then an empty line: an event's end, in any of the three line endings.
# A "\r" that ends the bytes so far is taken as a whole line ending: a "\n" arriving after it
# is then an empty line with nothing pending, which dispatches nothing.
_BLANK = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_LINE_ENDS = b"\r\n"


class SSEEvent(NamedTuple):
    """One dispatched event: ``data`` is its data lines joined with ``\\n``."""

    data: bytes
    event: str | None = None
    id: str | None = None


# Builds an SSEEvent from its three fields without the Python-level ``__new__``.
_new_event = tuple.__new__


class SSEParser:
    """Turns arbitrarily split chunks of an event stream into :class:`SSEEvent` objects, each
    with the stream's bytes that carry it (:meth:`split`).

    ``id`` is reported per event (only when that event carries an ``id:`` field); the stream's
    "last event ID" is left to the consumer.
    """

    __slots__ = ("_buf", "_cr", "_head", "_pos", "_scan")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # The stream's bytes since the last dispatched event (none of them forwarded yet).
        self._buf = bytearray()
        # Offset in _buf of the first byte not read yet (blocks before it dispatched nothing).
        self._pos = 0
        # Offset in _buf from which the next search for an event's end resumes.
        self._scan = 0
        # Whether _buf holds a "\r" (its ends are then searched for in any line ending).
        self._cr = False
        # Opening bytes held back while they could still be a split BOM; None once decided.
        self._head: bytes | None = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed, in stream order."""
        return self.split(chunk)[0]

    def flush(self) -> list[SSEEvent]:
        """End of stream: return a final event left unterminated (if it has data), then reset."""
        return self.finish()[0]

    def split(self, chunk: bytes) -> tuple[list[SSEEvent], list[bytes]]:
        """Consume ``chunk``; the events it completed and, for each, the bytes that carry it."""
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if self._head is not None:
            chunk = self._open(chunk)
            if not chunk:
                return [], []
        buf = self._buf
        if buf:
            # An event split across reads: wait, without copying, until one ends here.
            buf += chunk
            self._cr = self._cr or b"\r" in chunk
            if self._cr:
                if _BLANK.search(buf, self._scan) is None:
                    self._scan = max(self._pos, len(buf) - 3)
                    return [], []
            elif buf.find(b"\n\n", self._scan) < 0:
                self._scan = max(self._pos, len(buf) - 1)
                return [], []
            data = bytes(buf)
            buf.clear()
        else:
            data = chunk
        events, raws, start, pos, scan = _cut(data, self._pos, self._scan)
        if start < len(data):
            buf += memoryview(data)[start:]
            self._cr = b"\r" in buf
        self._pos, self._scan = pos - start, scan - start
        return events, raws

    def finish(self) -> tuple[list[SSEEvent], list[bytes], bytes]:
        """End of stream: the final event left unterminated (if it has data) with its bytes,
        and the bytes after the last event that carry none (a trailing comment, say); then
        reset."""
        data = (self._head or b"") + bytes(self._buf)
        pos = self._pos
        if self._head is not None and data.startswith(_BOM):
            pos = len(_BOM)
        self._reset()
        if not data:
            return [], [], b""
        events, raws, start, _, _ = _cut(data + b"\n\n", pos, pos)
        if not events:
            return [], [], data
        overflow = start - len(data)  # the blank line added here, where it ends the event
        if overflow > 0:
            raws[-1] = raws[-1][: len(raws[-1]) - overflow]
        return events, raws, data[start:] if start < len(data) else b""

    def _open(self, chunk: bytes) -> bytes:
        """The stream's first bytes: a BOM is kept for forwarding and skipped for reading."""
        head = self._head + chunk  # type: ignore[operator]
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        if head.startswith(_BOM):
            self._pos = self._scan = len(_BOM)
        return head


def _cut(data: bytes, pos: int, scan: int) -> tuple[list[SSEEvent], list[bytes], int, int, int]:
    """Dispatch every complete event in ``data`` from ``pos`` (searching for ends from
    ``scan``): the events, their bytes, and the offsets where the undispatched bytes, the
    unread ones and the next search start."""
    if b"\r" in data:
        return _cut_any(data, pos, scan)
    events: list[SSEEvent] = []
    raws: list[bytes] = []
    start = 0
    n = len(data)
    while pos < n:
        if data[pos] == _LF:  # a blank line with nothing pending
            pos += 1
            continue
        # The usual event is one line: its first "\n" is the first "\n\n" (so past ``scan``).
        end = data.find(b"\n", pos)
        if 0 <= end < n - 1 and data[end + 1] == _LF:
            if data.startswith(b"data:", pos):
                value = pos + 5
                if value < end and data[value] == _SPACE:
                    value += 1
                event: SSEEvent | None = _new_event(SSEEvent, (data[value:end], None, None))
            else:
                event = _block(data, pos, end)
        else:
            end = data.find(b"\n\n", max(pos, scan))
            if end < 0:
                return events, raws, start, pos, max(pos, n - 1)
            event = _block(data, pos, end)
        pos = end + 2
        if event is not None:
            events.append(event)
            raws.append(data[start:pos])  # the whole object when it is one event
            start = pos
    return events, raws, start, pos, pos


def _cut_any(data: bytes, pos: int, scan: int) -> tuple[list[SSEEvent], list[bytes], int, int, int]:
    """:func:`_cut` for bytes holding a ``\\r``: ends found on the raw bytes, lines normalised."""
    events: list[SSEEvent] = []
    raws: list[bytes] = []
    start = 0
    n = len(data)
    while pos < n:
        if data[pos] in _LINE_ENDS:  # a blank line (or half of a "\r\n") with nothing pending
            pos += 1
            continue
        m = _BLANK.search(data, max(pos, scan))
        if m is None:
            return events, raws, start, pos, max(pos, n - 3)
        block = data[pos : m.start()].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        event = _block(block, 0, len(block))
        pos = m.end()
        if event is not None:
            events.append(event)
            raws.append(data[start:pos])
            start = pos
    return events, raws, start, pos, pos


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
