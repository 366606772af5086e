"""Formatting a peer's address, and checking that a payload is bytes: shared by the hub and the ports beside it."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

__all__ = ["check_payload", "format_address"]


def format_address(address: IAddress) -> str:
    """C{host:port} (C{[host]:port} for IPv6), or a UNIX socket's path."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "unix")
    return str(address)


def check_payload(data: object, where: str) -> None:
    """Raise L{TypeError} unless C{data} is bytes-like (text must be encoded first)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"{where} takes bytes, not {type(data).__name__}"
            + (": encode text first, e.g. text.encode('utf-8')" if isinstance(data, str) else "")
        )
