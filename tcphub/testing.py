"""
In-memory doubles for testing code built on tcphub without sockets, as
C{treq.testing} is for treq: every timer on a L{Clock}, every connection a
L{StringTransport}, nothing touching the network.

  - L{MemoryHub}: a L{HubFactory} on a clock, with clients you attach and
    feed by hand; for testing a L{HubProtocol} subclass.
  - L{MemoryUpstream}: a L{WebSocketHandler} whose connection ends in memory,
    with the server's side of the handshake and its frames written for you;
    for testing route handlers and what a handler sends.
  - L{MemoryRedis}: an endpoint for C{RedisBus(endpoint=...)} that answers
    the bus's commands in memory; for testing a hub joined to a bus.

tcphub's own tests use these.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub.bus import resp
from tcphub.errors import TcpHubError
from tcphub.hub.factory import HubFactory
from tcphub.hub.messages import IMessageTransport
from tcphub.hub.protocol import HubProtocol

__all__ = ["MemoryHub", "MemoryRedis", "MemoryUpstream", "MessageTransport", "ProducerTransport"]


class ProducerTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transports, lets a protocol
    unregister a producer it never registered (Autobahn's C{dropConnection} does)."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


@implementer(IMessageTransport)
class MessageTransport(StringTransport):
    """A member's transport of whole messages, as a WebSocket member's
    (L{IMessageTransport}): C{value()} holds the frames the hub wrote, in its
    framing; C{closed_with} the close code it gave, if any."""

    kind = "websocket"

    def __init__(self, credentials: str | None = None, resume: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.credentials = credentials
        self.resume = resume
        self.closed_with: int | None = None

    def closeWith(self, code: int, reason: str) -> None:
        self.closed_with = code


class MemoryHub:
    """
    A L{HubFactory} made with C{options} on a L{Clock}; L{connect} attaches a
    client over a L{StringTransport} (what the hub writes to it is
    C{transport.value()}; feed it with C{protocol.dataReceived(bytes)}).
    Every event is recorded in L{events}.
    """

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.factory = HubFactory(clock=self.clock, **options)
        self.factory.doStart()
        self.events: list[tuple[Any, ...]] = []
        """C{(name, *arguments)} of every event, in order."""
        for name in ("connection", "data", "disconnect", "error", "join", "leave"):
            self.factory.on(name, lambda *args, name=name: self.events.append((name, *args)))
        self._next_port = 40000
        self.protocols: list[Any] = []
        self.lost: set[Any] = set()

    def connect(self, host: str = "127.0.0.1") -> tuple[HubProtocol, StringTransport]:
        """A new client from C{host} (a new port each time): its protocol
        (or the L{tcphub.hub.refused.RefusedConnection} standing in for it) and transport."""
        self._next_port += 1
        address = IPv4Address("TCP", host, self._next_port)
        protocol: Any = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return protocol, transport

    def connect_member(self, host: str = "127.0.0.1", credentials: str | None = None,
                       resume: str | None = None) -> tuple[HubProtocol, MessageTransport]:
        """A new member over a L{MessageTransport}, as a WebSocket member
        whose handshake gave C{credentials} and C{?resume=}."""
        self._next_port += 1
        address = IPv4Address("TCP", host, self._next_port)
        protocol: Any = self.factory.buildProtocol(address)
        transport = MessageTransport(credentials, resume, peerAddress=address)
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return protocol, transport

    def lose(self, protocol: Any) -> None:
        """The client's connection is gone (as its transport would say)."""
        self.lost.add(protocol)
        protocol.connectionLost(Failure(ConnectionDone("bye")))

    def timers(self) -> list[Any]:
        """The clock's delayed calls, but the windows of the hub's repeated-fault log."""
        calls: Any = self.clock.getDelayedCalls()
        return [call for call in calls if getattr(call.func, "__self__", None) is not self.factory.repeats]

    def errors(self) -> list[TcpHubError]:
        """What the C{error} event reported, in order."""
        return [event[2] for event in self.events if event[0] == "error"]

    def close(self) -> list[IDelayedCall]:
        """Lose the clients still connected and stop the hub; returns the
        delayed calls left on the clock, which are leaks."""
        for protocol in self.protocols:
            if protocol not in self.lost:
                self.lose(protocol)
        self.factory.doStop()
        return list(self.clock.getDelayedCalls())


def _server_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame, as a server sends it."""
    size = len(payload)
    if size < 126:
        head = struct.pack(">BB", 0x80 | opcode, size)
    elif size < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, size)
    return head + payload


class MemoryUpstream:
    """
    A L{WebSocketHandler} made with C{options} (C{reconnect=False} unless
    given) on a L{MemoryReactorClock}, which is its reactor and its clock,
    connecting to C{connect_to}; each attempt ends in a L{ProducerTransport} that
    you answer as the server: L{open}, L{deliver}, L{pong}.
    """

    protocol: Any
    """The handler's protocol for the latest attempt."""
    transport: ProducerTransport
    """Its transport: what the handler wrote is C{transport.value()}."""

    def __init__(self, connect_to: str = "ws://127.0.0.1:9/", **options: Any) -> None:
        from tcphub.ws.handler import WebSocketHandler

        self.reactor = MemoryReactorClock()
        options.setdefault("reconnect", False)
        options.setdefault("compression", False)
        self.ws = WebSocketHandler(reactor=self.reactor, clock=self.reactor, **options)
        self.connected: Deferred[None] = self.ws.connect(connect_to)
        """What C{connect} returned."""
        self.attach()

    def attach(self) -> None:
        """Answer the handler's latest connection attempt with a transport."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = ProducerTransport()
        self.protocol.makeConnection(self.transport)

    def open(self) -> None:
        """The server's side of the opening handshake: the connection opens."""
        key = re.search(rb"(?i)sec-websocket-key: *([^\r\n]+)", self.transport.value())
        if key is None:
            raise AssertionError("the handler has not sent its opening handshake")
        accept = base64.b64encode(hashlib.sha1(key[1] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )

    def deliver(self, path: str, data: Any, id: str | None = None) -> None:
        """The server sends C{{"path", "data", "id"}} as a text message."""
        envelope: dict[str, Any] = {"path": path, "data": data}
        if id is not None:
            envelope["id"] = id
        self.deliver_raw(json.dumps(envelope).encode("utf-8"))

    def deliver_raw(self, payload: bytes, binary: bool = False) -> None:
        """The server sends C{payload} as one text (or binary) message."""
        self.protocol.dataReceived(_server_frame(2 if binary else 1, payload))

    def pong(self) -> None:
        """The server answers a ping."""
        self.protocol.dataReceived(_server_frame(10, b""))

    def lose(self) -> None:
        """The connection drops (no close frame)."""
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionLost()))

    def finish(self) -> list[IDelayedCall]:
        """Close the handler and end its connection; returns the delayed
        calls left on the reactor, which are leaks."""
        lost = self.transport.disconnecting
        self.ws.close()
        if not lost:
            self.lose()
        self.reactor.advance(0)
        return list(self.reactor.getDelayedCalls())


@implementer(IStreamClientEndpoint)
class MemoryRedis:
    """
    An endpoint for C{RedisBus(..., endpoint=MemoryRedis())} whose
    connections are StringTransports, answered by L{answer}: C{PUBLISH},
    and the message of C{XADD}, are recorded in L{published}; C{SMEMBERS}
    C{XREVRANGE} and C{XRANGE} are empty; an C{XREAD} finds nothing (as one whose
    block ran out); C{GET} and C{GETDEL} find nothing; C{PUBSUB NUMSUB} answers
    L{subscribers}; C{SUBSCRIBE} is confirmed; a script (C{EVAL}) answers
    1; C{CLIENT ID} answers the connection's number (1, 2, ...); a command named in L{refused} gets an error; anything else is C{+OK}.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        """C{(protocol, transport)} of each connection, in order."""
        self.subscribers = 1
        self.refused: set[bytes] = set()
        """Commands answered with C{-NOPERM} (a password changed under the bus...)."""
        self.exec_errors: list[bytes] = []
        """What an C{EXEC} answers, as an array of these errors (empty: C{+OK})."""
        self.published: list[bytes] = []
        self._read: dict[int, int] = {}
        self._dropped: set[int] = set()

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    def answer(self) -> None:
        """Answer every command written since the last call."""
        for index, (protocol, transport) in enumerate(self.connections):
            data = transport.value()
            at = self._read.get(index, 0)
            replies = []
            while at < len(data):
                command: Any
                command, at = resp.parse(data, at)
                name = command[0]
                if name in self.refused:
                    replies.append(b"-NOPERM this user has no permissions to run the '%s' command\r\n" % name)
                elif name == b"PUBLISH":
                    self.published.append(command[2])
                    replies.append(b":1\r\n")
                elif name == b"XADD":
                    self.published.append(command[-1])
                    entry = b"1-%d" % len(self.published)
                    replies.append(b"$%d\r\n%s\r\n" % (len(entry), entry))
                elif name in (b"SMEMBERS", b"XREVRANGE", b"XRANGE"):
                    replies.append(b"*0\r\n")
                elif name in (b"XREAD", b"GET", b"GETDEL"):
                    replies.append(b"$-1\r\n")
                elif name == b"PUBSUB":
                    replies.append(b"*2\r\n$%d\r\n%s\r\n:%d\r\n" % (len(command[2]), command[2], self.subscribers))
                elif name == b"EXEC" and self.exec_errors:
                    replies.append(b"*%d\r\n" % len(self.exec_errors)
                                   + b"".join(b"-%s\r\n" % error for error in self.exec_errors))
                elif name == b"EVAL":
                    replies.append(b":1\r\n")
                elif command[:2] == [b"CLIENT", b"ID"]:
                    replies.append(b":%d\r\n" % (index + 1))
                elif name == b"SUBSCRIBE":
                    replies.append(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(command[1]), command[1]))
                else:
                    replies.append(b"+OK\r\n")
            self._read[index] = at
            if replies:
                protocol.dataReceived(b"".join(replies))

    def drop(self) -> None:
        """Every connection still open is closed (as the transports would say
        once closed): what they wrote and was not answered never will be."""
        for index, (protocol, transport) in enumerate(self.connections):
            if index in self._dropped:
                continue
            self._dropped.add(index)
            self._read[index] = len(transport.value())
            protocol.connectionLost(Failure(ConnectionDone()))
