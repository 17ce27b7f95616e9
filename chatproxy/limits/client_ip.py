"""The client address a per-IP limit is keyed on.

It is the socket peer. Only when the peer is one of our trusted proxies is ``X-Forwarded-For``
read, right to left: each trusted hop vouches for the entry to its left, so the first
untrusted entry is the client. Anything left of that was written by the client and is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = ["Network", "client_ip", "is_trusted_peer", "parse_trusted"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_trusted(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parse trusted proxy networks (``"10.0.0.0/8"``, ``"::1"``); raises ``ValueError``.

    Host bits are allowed (``"10.1.2.3/8"`` means ``10.0.0.0/8``); IPv4-mapped IPv6 networks
    become IPv4 ones, as addresses are compared unmapped.
    """
    networks: list[Network] = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
        if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
            v4 = net.network_address.ipv4_mapped
            assert v4 is not None
            net = ipaddress.IPv4Network((v4, net.prefixlen - 96))
        networks.append(net)
    return tuple(networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: ``peer``, or the right-most untrusted ``X-Forwarded-For`` hop.

    ``X-Forwarded-For`` is read only when ``peer`` is inside a ``trusted`` network. A malformed
    entry stops the walk at the last trusted hop; if every hop is trusted, the left-most one
    is the client. ``None`` (a unix socket peer) gives ``"unknown"``.
    """
    if peer is None:
        return "unknown"
    if not trusted:
        # Same normalisation as _parse, without parsing: "::ffff:1.2.3.4" -> "1.2.3.4".
        if peer.startswith("::ffff:") and "." in peer:
            return peer[7:]
        return peer
    last = _parse(peer)
    if last is None:
        return peer
    if not _is_trusted(last, trusted) or not forwarded_for:
        return str(last)
    for entry in reversed(forwarded_for.split(",")):
        hop = _parse(entry.strip())
        if hop is None:
            break  # never trust garbage, nor anything left of it
        if not _is_trusted(hop, trusted):
            return str(hop)
        last = hop
    return str(last)


def is_trusted_peer(peer: str | None, trusted: Sequence[Network]) -> bool:
    """Whether the socket peer is one of the trusted proxies."""
    addr = _parse(peer) if peer else None
    return addr is not None and _is_trusted(addr, trusted)


def _is_trusted(addr: _Address, trusted: Sequence[Network]) -> bool:
    # A v4 address in a v6 network (or the reverse) is simply not contained.
    return any(addr in net for net in trusted)


@lru_cache(maxsize=4096)
def _parse(text: str) -> _Address | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1`` or ``[2001:db8::1]:80``."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or (port and not (port[0] == ":" and _is_port(port[1:]))):
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port(port):
            return None
    else:
        host = text
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535
