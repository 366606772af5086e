"""
Every error tcphub reports, as classes a user can catch.

All of them derive from L{TcpHubError}, so C{except TcpHubError} catches
anything tcphub raised on purpose.
"""

from __future__ import annotations


class TcpHubError(Exception):
    """Base class of every error tcphub raises or reports."""


class FramingError(TcpHubError):
    """A peer sent bytes that do not decode under the connection's framing."""


class FrameTooLong(FramingError):
    """A frame is longer than the hub's C{max_frame}: the buffer would overflow."""

    def __init__(self, length: int | None, limit: int) -> None:
        size = "frame" if length is None else f"frame of {length} bytes"
        super().__init__(f"{size} exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class MalformedFrame(FramingError):
    """The bytes break the framing's grammar (e.g. a netstring without its comma)."""


class UnframeableMessage(FramingError, ValueError):
    """A payload that the framing cannot carry (e.g. a newline in a line frame)."""


class UnknownClient(TcpHubError, KeyError):
    """No connected client has this id (it never existed or has gone)."""

    def __str__(self) -> str:
        return f"no connected client with id {self.args[0]!r}"


class ClientDisconnected(TcpHubError):
    """The client went away before the data could be handed to its transport."""


class SlowConsumer(ClientDisconnected):
    """The client stopped reading and its queued output passed C{max_pending}."""


class IdleTimeout(TcpHubError):
    """The client sent nothing for longer than the hub's C{timeout}."""


class ConnectionLimitReached(TcpHubError):
    """A connection arrived while C{max_connections} clients were connected."""


class HandlerError(TcpHubError):
    """A hook or event callback raised; the original failure is C{__cause__}."""
