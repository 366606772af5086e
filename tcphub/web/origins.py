"""
Which pages may open a WebSocket to the hub: a browser sends the page's
origin in the handshake's C{Origin} header, and a page from another site must
not be able to join the hub with the visitor's network position.  Pure: no
I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def _normalize(origin: str) -> str:
    """C{scheme://host:port}, lowercased, with the default port written out;
    an origin that is not one (C{null}, garbage) is kept as is, lowercased."""
    parts = urlsplit(origin.strip().lower())
    if not parts.scheme or not parts.hostname:
        return origin.strip().lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return origin.strip().lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def _hostname(host: str) -> str | None:
    """The name in a C{Host} header (C{name:port}, C{[::1]:port}), lowercased."""
    parts = urlsplit("//" + host.strip().lower())
    try:
        parts.port
    except ValueError:
        return None
    return parts.hostname


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class OriginPolicy:
    """
    C{allowed}: origins such as C{https://chat.example.com} or
    C{http://127.0.0.1:8080}, or C{*} for any, besides the same origin
    (the page's host and port are the ones the handshake was sent to,
    as the C{Host} header says), and only for a C{Host} the listener is
    really reached by: an address, C{localhost}, or one of C{public_names}.
    "Same origin" judged by the C{Host} header alone is open to DNS
    rebinding: a page of C{rebind.example}, whose name the attacker points
    at the hub's address, sends C{Host} and C{Origin} both
    C{rebind.example}.

    A handshake without an C{Origin} header does not come from a browser
    page (C{websocat}, a Python client, the C{websockets} package): it is
    allowed, since such a client could send any header it likes anyway.
    """

    def __init__(self, allowed: Iterable[str] = (), public_names: Iterable[str] = ()) -> None:
        allowed = list(allowed)
        if isinstance(public_names, str):
            raise TypeError(f"public_names takes a collection of names, not one: [{public_names!r}]")
        names = [name.strip().lower() for name in public_names]
        for name in names:
            if not _NAME.fullmatch(name) or _hostname(name) != name:
                raise ValueError(f"a public name looks like chat.example.com, not {name!r}")
        self.public_names = frozenset(names) | {"localhost"}
        """The names the listener is reached by, besides its addresses."""
        for origin in allowed:
            if not isinstance(origin, str) or not origin or (
                origin != "*" and not (urlsplit(origin).scheme and urlsplit(origin).hostname)
            ):
                raise ValueError(f"an allowed origin looks like https://example.com, or is *, not {origin!r}")
        self.any = "*" in allowed
        self.allowed = frozenset(_normalize(origin) for origin in allowed if origin != "*")

    def allows(self, origin: str | None, host: str | None, secure: bool) -> bool:
        """Whether a handshake with this C{Origin} header, sent to C{host}
        (the C{Host} header) over TLS or not, may proceed."""
        if origin is None or self.any:
            return True
        normalized = _normalize(origin)
        if normalized in self.allowed:
            return True  # besides the same origin: the built-in page keeps working
        if not host:
            return False
        name = _hostname(host)
        if name is None or not (_is_address(name) or name in self.public_names):
            return False  # a name the hub does not know it is reached by: DNS rebinding
        return normalized == _normalize(("https://" if secure else "http://") + host)
