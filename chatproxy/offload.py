"""CPU-heavy request work off the event loop, where it is heavy enough to be noticed.

A request of tens of thousands of messages costs hundreds of milliseconds of parsing, hashing
and row building; done on the loop, every other client waits that long. Small work stays
inline (a thread hand-off costs more than it saves); large work runs in a worker thread, which
gives the loop the GIL back every switch interval (5 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["LARGE_BODY", "LARGE_COUNT", "offload"]

P = ParamSpec("P")
T = TypeVar("T")

LARGE_COUNT = 1000  # messages or rows: about 20 ms of hashing and row building
LARGE_BODY = 256 * 1024  # bytes of JSON: about 10 ms of parsing and checking


async def offload(heavy: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``: in a worker thread when ``heavy``, else here and now."""
    if not heavy:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
