"""CPU-heavy request work off the event loop, where it is heavy enough to be noticed.

A request of tens of thousands of messages costs hundreds of milliseconds of hashing and row
building; done on the loop, every other client waits that long. Below ``THRESHOLD`` items the
work stays inline (a thread hand-off costs more than it saves); above it, it runs in a worker
thread, which gives the loop the GIL back every switch interval (5 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["THRESHOLD", "offload"]

P = ParamSpec("P")
T = TypeVar("T")

THRESHOLD = 1000  # messages: about 20 ms of hashing and row building


async def offload(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``, in a worker thread when ``size`` (the number of items it
    works through) is over :data:`THRESHOLD`."""
    if size <= THRESHOLD:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
