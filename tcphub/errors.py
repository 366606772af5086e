"""
Every error tcphub reports, as classes a user can catch.

All of them derive from L{TcpHubError}, so C{except TcpHubError} catches
anything tcphub raised on purpose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.python.failure import Failure


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


class FrameTimeout(FramingError):
    """A frame was begun and not finished within the hub's C{frame_timeout}
    (a slowloris: one byte now and then, to hold a connection)."""


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


class PingTimeout(IdleTimeout):
    """A WebSocket member did not answer the hub's ping within C{ping_timeout}."""


class OriginRejected(TcpHubError):
    """A browser's WebSocket handshake came from a page whose C{Origin} the
    hub does not allow (refused with HTTP 403)."""


class ConnectionLimitReached(TcpHubError):
    """A connection arrived while C{max_connections} clients were connected."""


class AddressLimitReached(ConnectionLimitReached):
    """A connection arrived from an address with C{max_connections_per_ip}
    clients connected already."""


class DescriptorLimitReached(ConnectionLimitReached):
    """The process had no file descriptor left for a connection (EMFILE):
    Twisted closed it before the hub saw it."""


class RoomError(TcpHubError):
    """A room operation the hub refuses."""


class InvalidRoomName(RoomError, ValueError):
    """A room name that is not a non-empty string of at most C{MAX_ROOM_NAME} characters."""


class RoomLimitReached(RoomError):
    """The client is in C{max_rooms_per_client} rooms already."""


class BusError(TcpHubError):
    """The bus that joins several hubs (Redis) failed, or sent what it should not."""


class BusQueueFull(BusError):
    """A publish made while the bus was down or slow found its queue full: it was dropped."""


class NodeIdInUse(BusError):
    """Another live process is this node (the same C{node_id} on the same
    Redis and deployment): this one refuses to run as it, since the two would
    overwrite each other's presence and drop each other's messages as their own."""


class NotRecovered(BusError):
    """What a member missed in a room while away cannot all be given from
    the room's stream: C{reason} is C{history_lost} (trimmed, or more than
    the room's history bound), C{history_expired} (older than the room's
    history keeps) or C{unavailable} (Redis cannot be asked)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ListenFailed(TcpHubError):
    """A listening endpoint could not be set up (port in use, missing
    directory or certificate, ...)."""


class AuthRefused(TcpHubError):
    """A member's credentials were refused: C{code} says why, for programs
    (C{invalid_token}, C{expired_token}, ...), C{reason} for people; neither
    contains the token."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SecretUnreadable(TcpHubError, ValueError):
    """A secret's file cannot be read, is empty or too large, or the secret
    was given twice; the message says where it was looked for, never the secret."""


class HandlerError(TcpHubError):
    """A hook, route handler or event callback raised; the original is C{__cause__}."""

    @classmethod
    def from_failure(cls, where: str, failure: Failure) -> HandlerError:
        """The error for C{failure} (a L{twisted.python.failure.Failure}) raised in C{where}."""
        error = cls(f"{where} raised {failure.getErrorMessage()}")
        error.__cause__ = failure.value
        return error



class WebSocketError(TcpHubError):
    """Base class of the WebSocket handler's errors."""


class InvalidRoute(WebSocketError, ValueError):
    """A route pattern that is not a dotted path of words, C{*} and C{#}."""


class RouteConflict(WebSocketError):
    """A route for this exact pattern exists already (pass C{replace=True} to replace it)."""


class InvalidMessage(WebSocketError):
    """An incoming message that is not a valid envelope (bad JSON, no path, ...)."""


class NotConnected(WebSocketError):
    """A send while no connection is open and none is being retried."""


class MessageTooLarge(WebSocketError):
    """A send of a message larger than the handler's C{max_send_size}."""


class QueueFull(WebSocketError):
    """A send while disconnected, with C{max_queue} messages already waiting."""


class HandlerClosed(WebSocketError):
    """The handler was closed: its pending connect, sends and requests fail with this."""


class HandshakeRejected(WebSocketError):
    """The server answered the opening handshake with an HTTP status other
    than 101: C{status}, C{headers} (lower-case names), and for a redirect
    its C{location}."""

    def __init__(self, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.location = headers.get("location")
        where = f"; it redirects to {self.location}" if self.location else ""
        super().__init__(f"the server rejected the handshake: HTTP {status} {reason}{where}".rstrip())


class RequestInterrupted(WebSocketError):
    """The connection closed while a request waited for its reply."""


class RequestRefused(WebSocketError):
    """The peer answered a request with a refusal (a reply on the handler's
    C{error_path}): C{code} and C{reason} are the reply's, C{data} all of it."""

    def __init__(self, data: object) -> None:
        fields = data if isinstance(data, dict) else {}
        self.data = data
        self.code = str(fields.get("code", "refused"))
        self.reason = str(fields.get("reason", ""))
        super().__init__(f"{self.code}: {self.reason}" if self.reason else self.code)


class RequestTimeout(WebSocketError):
    """No reply to a request within its timeout."""


class RetryLimitReached(WebSocketError):
    """The connection failed, and so did every retry C{max_retries} allowed."""

    def __init__(self, retries: int, last_error: str) -> None:
        super().__init__(f"gave up after {retries} retries; last failure: {last_error}")
        self.retries = retries


class FatalClose(WebSocketError):
    """The server closed with one of the handler's C{fatal_close_codes} (an
    authentication failure, a policy violation): retrying would not help."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"the server closed with {code} {reason or ''}".strip() + ": not retrying")
        self.code = code
        self.reason = reason


class InvalidCloseCode(WebSocketError, ValueError):
    """C{close()} takes code 1000 or 3000-4999 and a reason of at most 123 UTF-8 bytes."""
