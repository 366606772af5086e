"""
Counters for the hub and read-only records of its clients.

The hub keeps mutable L{HubCounters} on its hot path and hands out frozen
snapshots (L{Metrics}, L{ClientInfo}) so that callers can keep them, compare
them and serialise them (C{dataclasses.asdict}) without racing the reactor.
"""

from __future__ import annotations

import enum

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientInfo:
    """One connected client, as it was when the snapshot was taken."""

    id: str
    address: str
    connected: float
    """When the connection was accepted, in the hub clock's seconds (epoch time by default)."""
    bytes_received: int
    bytes_sent: int
    messages_received: int
    messages_sent: int
    pending_bytes: int
    """Encoded bytes queued by the hub while the client's transport is paused."""
    held_bytes: int
    """Received messages held while reading from the client is paused."""
    active: float
    """When traffic last went either way, in the hub clock's seconds."""
    rooms: tuple[str, ...] = ()
    """The rooms the client is in, in the order it joined them."""
    kind: str = "tcp"
    """What carries it: C{tcp}, C{tls}, C{unix} or C{websocket}."""
    user: str | None = None
    """Who it authenticated as (C{--mode hub}); None: no identity."""


@dataclass(frozen=True)
class Traffic:
    """What the clients of one kind (C{tcp}, C{tls}, C{unix}, C{websocket})
    sent and received since the hub started, those gone included."""

    bytes_received: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    messages_sent: int = 0


@dataclass(frozen=True)
class ClosedConnection:
    """A client that has gone, and why (the hub keeps the last ones)."""

    id: str
    address: str
    connected: float
    closed: float
    """When the connection ended, in the hub clock's seconds."""
    bytes_received: int
    bytes_sent: int
    messages_received: int
    messages_sent: int
    reason: str
    """Why it ended: the error the hub dropped it for (e.g. C{SlowConsumer: ...}),
    or how the connection ended (e.g. C{ConnectionDone: ...})."""
    user: str | None = None
    """Who it had authenticated as, if anyone."""


@dataclass(frozen=True)
class Metrics:
    """The hub's counters; all totals since the hub started, except C{connections}."""

    connections: int
    rooms: int
    """Rooms with at least one member."""
    room_members: int
    """Memberships across all rooms (a client in 3 rooms counts 3)."""
    bytes_received: int
    bytes_sent: int
    uptime: float
    """Seconds since the hub started listening."""
    messages_received: int
    messages_sent: int
    accepted: int
    rejected: int
    """Connections closed at once because C{max_connections} (or as many as
    the descriptor limit allows) were connected, or by C{max_connections_per_ip}."""
    timed_out: int
    protocol_errors: int
    """Connections closed for a framing error (over-long or malformed frame)."""
    slow_consumers: int
    """Connections dropped because their queued output passed C{max_pending}."""
    handler_errors: int
    """Exceptions raised by hooks and event callbacks (the hub went on)."""
    frame_timeouts: int
    """Connections closed for not finishing a begun frame within C{frame_timeout}."""
    rejected_per_ip: int
    """Connections refused by C{max_connections_per_ip} (also counted in C{rejected})."""
    rate_limited: int
    """Times a client over C{max_rate} had its reading paused."""
    descriptor_refusals: int
    """Connections the process had no file descriptor left for (EMFILE):
    closed at once by Twisted, before the hub saw them (counted by every hub
    listening in the process, since descriptors are the process's)."""
    auth_failed: int
    """Members refused at authentication (a bad, expired or missing token)."""
    auth_timeouts: int
    """Members closed for not authenticating within C{auth_timeout}."""
    forbidden: int
    """Room operations refused by a member's identity (the member stays)."""
    bad_requests: int
    """Structured messages refused as malformed or unknown (the member stays)."""
    unrecovered: int
    """Joins with C{since} (and rooms of a resumed session) answered C{recovered: false}:
    members that know they missed messages."""
    sessions_resumed: int
    """Members back in their session after a drop (C{hub.resume})."""
    sessions_expired: int
    """Sessions not resumed within C{resume_window} (or their identity's expiry)."""
    sessions_refused: int
    """C{hub.resume} with an id that names no session (forged, expired, or another user's)."""
    sessions_parked: int = 0
    """Sessions waiting to be resumed now."""


class Drop(enum.Enum):
    """Why the hub drops a client (L{HubProtocol.drop}); the value is the
    L{Metrics} field it is counted in."""

    PROTOCOL_ERROR = "protocol_errors"
    """The peer broke the framing or its transport's protocol."""
    TIMED_OUT = "timed_out"
    """Idle for C{timeout}, or no pong in time."""
    FRAME_TIMEOUT = "frame_timeouts"
    """A frame begun and not finished within C{frame_timeout}."""
    SLOW_CONSUMER = "slow_consumers"
    """Its queued output passed C{max_pending}."""


class HubCounters:
    """The mutable totals behind L{Metrics}; the hub's hot path adds to
    these fields directly."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "messages_received",
        "messages_sent",
        "accepted",
        "rejected",
        "timed_out",
        "protocol_errors",
        "slow_consumers",
        "handler_errors",
        "frame_timeouts",
        "rejected_per_ip",
        "rate_limited",
        "descriptor_refusals",
        "auth_failed",
        "auth_timeouts",
        "forbidden",
        "bad_requests",
        "unrecovered",
        "sessions_resumed",
        "sessions_expired",
        "sessions_refused",
    )

    def __init__(self) -> None:
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.accepted = 0
        self.rejected = 0
        self.timed_out = 0
        self.protocol_errors = 0
        self.slow_consumers = 0
        self.handler_errors = 0
        self.frame_timeouts = 0
        self.rejected_per_ip = 0
        self.rate_limited = 0
        self.descriptor_refusals = 0
        self.auth_failed = 0
        self.auth_timeouts = 0
        self.forbidden = 0
        self.bad_requests = 0
        self.unrecovered = 0
        self.sessions_resumed = 0
        self.sessions_expired = 0
        self.sessions_refused = 0

    def dropped(self, reason: Drop) -> int:
        """Count one more client dropped for C{reason}; return the new total."""
        return self.add(reason.value)

    def add(self, name: str) -> int:
        """Count one more of C{name} (one of the fields); return the new total."""
        count: int = getattr(self, name) + 1
        setattr(self, name, count)
        return count

    def snapshot(self, connections: int, uptime: float, rooms: int = 0, room_members: int = 0,
                 sessions_parked: int = 0) -> Metrics:
        return Metrics(
            connections=connections,
            rooms=rooms,
            room_members=room_members,
            sessions_parked=sessions_parked,
            uptime=uptime,
            **{name: getattr(self, name) for name in self.__slots__},
        )
