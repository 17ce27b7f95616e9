"""Rate limit response headers, in OpenAI's convention and the IETF httpapi draft's.

OpenAI: ``x-ratelimit-{limit,remaining,reset}-requests``, the reset as a Go duration (``6m0s``).
IETF (draft-ietf-httpapi-ratelimit-headers-09/10): ``RateLimit-Policy: "name";q=limit;w=window``
and ``RateLimit: "name";r=remaining;t=seconds``, both Structured Field lists.
"""

from __future__ import annotations

import math

__all__ = ["go_duration", "rate_limit_headers", "retry_after_header"]

# Float slack before rounding up, so 0.29 s (289.99999999999997 ms) is 290ms, not 291ms.
_EPS = 1e-6


def _ceil(value: float) -> int:
    return math.ceil(value - _EPS)


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String``: ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``.

    Resolution is one millisecond, rounded up (a reset is never announced early); zero or
    negative gives ``"0s"``.
    """
    ms = _ceil(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    text = f"{secs}.{ms:03d}".rstrip("0") + "s" if ms else f"{secs}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def rate_limit_headers(
    *, name: str, limit: int, remaining: int, reset_after: float, window: float
) -> dict[str, str]:
    """Headers describing one limit's state, in both conventions.

    ``name`` identifies the policy (a plain ASCII word such as ``"ip"``), ``window`` is the
    policy's time window in seconds (rounded up to a whole second, at least 1).
    """
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": go_duration(reset_after),
        "RateLimit-Policy": f"{quoted};q={limit};w={max(1, _ceil(window))}",
        "RateLimit": f"{quoted};r={remaining};t={max(0, _ceil(reset_after))}",
    }


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, _ceil(seconds)))
