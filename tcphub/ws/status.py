"""
What a L{WebSocketHandler} shows of itself: its L{HandlerState}, the
L{ConnectionContext} its route handlers get, and its L{Status}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from tcphub._metric_fields import COUNTER, GAUGE

__all__ = ["CAN_CONNECT", "CLOSED_BY_USER", "ConnectionContext", "HandlerState", "Status"]


class HandlerState(enum.Enum):
    """Where a L{WebSocketHandler} is in its life (C{handler.state})."""

    IDLE = "idle"
    """Never connected: L{WebSocketHandler.connect} may be called."""
    CONNECTING = "connecting"
    """Connecting, or reconnecting after a connection ended: sends are queued."""
    OPEN = "open"
    """A connection is open."""
    CLOSING = "closing"
    """L{WebSocketHandler.close} was called: the connection closes, then the service stops."""
    CLOSED = "closed"
    """Closed by L{WebSocketHandler.close}; C{connect} may be called again."""
    GIVEN_UP = "given up"
    """The retries ran out (or the server closed with a fatal code); C{connect} may be called again."""


CAN_CONNECT = frozenset({HandlerState.IDLE, HandlerState.CLOSED, HandlerState.GIVEN_UP})
CLOSED_BY_USER = frozenset({HandlerState.CLOSING, HandlerState.CLOSED})


@dataclass
class ConnectionContext:
    """Handed to every route handler; one object for the handler's life."""

    connection_id: str | None = None
    """New for every connection that opens."""
    connected: bool = False
    last_message_at: float | None = None
    """When the last message arrived, in the handler clock's seconds."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Yours to fill; kept across reconnections."""
    subprotocol: str | None = None
    """The subprotocol the server chose among C{subprotocols}, for the current connection."""


@dataclass(frozen=True)
class Status:
    connected: bool
    retries: int = field(metadata=COUNTER)
    """Reconnection attempts scheduled over the handler's life."""
    messages_sent: int = field(metadata=COUNTER)
    messages_received: int = field(metadata=COUNTER)
    last_ping: float | None
    """When the last ping or pong was seen, in the handler clock's seconds."""
    reconnects: int = field(metadata=COUNTER)
    """Connections opened after the first one."""
    queued: int = field(metadata=GAUGE)
    queued_bytes: int = field(metadata=GAUGE)
    pending_requests: int = field(metadata=GAUGE)
    handlers_in_flight: int = field(metadata=GAUGE)
    """Route handlers whose Deferred (or coroutine) has not ended yet."""
    reading_paused: bool
    """Whether reading stopped because C{max_concurrent_handlers} calls are in flight."""
    invalid_messages: int = field(metadata=COUNTER)
    unrouted_messages: int = field(metadata=COUNTER)
    handler_errors: int = field(metadata=COUNTER)
    late_replies: int = field(metadata=COUNTER)
    protocol_errors: int = field(metadata=COUNTER)
    """Connections this side closed because the peer broke the protocol
    (close codes 1002, 1003, 1007, 1009)."""
    compression: str | None
    """The negotiated compression extension, e.g. C{permessage-deflate}."""
    subprotocol: str | None
    """The negotiated subprotocol, if any."""
