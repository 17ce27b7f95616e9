"""Forwarding an event stream in whole events, byte for byte.

The parser (:mod:`chatproxy.proxy.sse`) reads a normalised copy; what the client gets are the
upstream's own bytes, cut only at event boundaries so that an event can be left out whole (the
usage-only chunk a client did not ask for) and so that a subscriber never sees half an event.
"""

from __future__ import annotations

__all__ = ["EventFramer", "before_event", "remove_event"]

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


def _boundary_end(buf: bytes, start: int = 0) -> int:
    """The offset just after the first blank line at or after ``start``, or -1."""
    best = -1
    for sep in _BOUNDARIES:
        i = buf.find(sep, start)
        if i >= 0 and (best < 0 or i + len(sep) < best):
            best = i + len(sep)
    return best


class EventFramer:
    """Releases the bytes of complete events; holds back an unfinished one."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def push(self, data: bytes) -> bytes:
        """The upstream's bytes up to the last complete event seen so far."""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        if data.endswith(_BOUNDARIES):  # the usual case: one read, whole events
            return data
        cut = max(data.rfind(sep) + len(sep) if sep in data else 0 for sep in _BOUNDARIES)
        self._tail = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """At the end of the stream: whatever was held back."""
        tail, self._tail = self._tail, b""
        return tail


def _event_start(buf: bytes, data: bytes) -> int:
    at = buf.find(data)
    return buf.rfind(b"data:", 0, at) if at >= 0 else -1


def before_event(buf: bytes, data: bytes) -> bytes:
    """The part of ``buf`` before the (single-line) event whose data is ``data``."""
    start = _event_start(buf, data)
    return buf[:start] if start >= 0 else buf


def remove_event(buf: bytes, data: bytes) -> bytes:
    """``buf`` without the (single-line) event whose data is ``data``."""
    start = _event_start(buf, data)
    end = _boundary_end(buf, start + 5 + len(data)) if start >= 0 else -1
    if start < 0 or end < 0:
        return buf
    return buf[:start] + buf[end:]
