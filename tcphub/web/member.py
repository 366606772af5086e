"""
A WebSocket connection as a member of the hub, alongside its TCP clients.

L{MemberConnection} is the Autobahn server protocol.  Once the handshake is
done it builds the hub's protocol (the same class as the TCP clients', with
the same hooks, limits and events) on a L{MemberTransport}, which carries
whole messages (L{IMessageTransport}):

  - a WebSocket message in (text or binary) is one hub message, its bytes as
    they came; one the hub's framing cannot carry to the TCP clients (a
    newline in a line hub) closes the member with 1007;
  - a message out goes as text when it is valid UTF-8 without control
    characters (but tab, CR and LF), else as binary, its bytes as they are
    either way; the WebSocket frame is built once per broadcast and
    shared by every member (Autobahn's prepared message);
  - flow control: when the peer does not read, the TCP transport pauses the
    member, whose outbox queues up to the hub's C{max_pending}; when the hub
    pauses reading from the member (C{max_rate}, C{pauseReading}), the TCP
    transport stops reading;
  - heartbeat: a ping every C{ping_interval} seconds on the hub's clock (not
    Autobahn's timers, which round to whole seconds); a member that does not
    answer within C{ping_timeout} is dropped (L{PingTimeout}, counted in
    C{timed_out});
  - closing: the hub's gentle close sends close code 1000 after the queued
    output; messages over C{max_frame} close with 1009, invalid UTF-8 text
    with 1007, other protocol errors with 1002 (each counted in
    C{protocol_errors}); a close the peer does not answer within
    C{close_timeout} seconds drops the TCP connection; the hub's abort (a
    slow consumer, a timeout) drops it at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Iterable, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, ISSLTransport, ITCPTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub._metric_fields import COUNTER
from tcphub._upstream.autobahn_parts import FailureHooks, parse_frames, unfinished
from tcphub._version import version
from tcphub.errors import (
    FrameTimeout,
    FrameTooLong,
    FramingError,
    MalformedFrame,
    OriginRejected,
    PingTimeout,
    UnframeableMessage,
)
from tcphub.hub.messages import IMessageTransport
from tcphub.hub.metrics import Drop
from tcphub.hub.protocol import HubProtocol, format_address
from tcphub.hub.rate import TokenBucket
from tcphub.hub.sessions import MAX_SESSION_ID
from tcphub.web.limits import MAX_FRAGMENTS, MAX_FRAMES_PER_SECOND, MAX_PINGS_PER_SECOND
from tcphub.web.origins import OriginPolicy

if TYPE_CHECKING:
    from tcphub.hub.factory import HubFactory

__all__ = ["MemberConnection", "MemberFactory", "MemberTransport"]

# Bytes that text never holds (JSON escapes them), and binary formats often
# do (a length prefix, such as the one of a WebSocketHandler's binary message).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STATE_OPEN: Final = WebSocketProtocol.STATE_OPEN
_STATE_CLOSING: Final = WebSocketProtocol.STATE_CLOSING


class _Prepared:
    """
    The WebSocket frames of the hub's recent frames, shared by every member:
    a broadcast is framed (and checked for UTF-8) once, not once per member.
    The hub hands each member the frames of a read together, so the cache
    holds several (keyed by the frame object, which it keeps alive, so that
    its id is not reused), up to C{LIMIT} bytes; then it starts again.
    """

    __slots__ = ("_framing", "_cache", "_size")
    LIMIT: Final = 1 << 20

    def __init__(self, hub: HubFactory) -> None:
        self._framing = hub.framing
        self._cache: dict[int, tuple[bytes, bytes]] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes held: the frames and their WebSocket frames."""
        return self._size

    def wire(self, frame: bytes) -> bytes:
        """The WebSocket frame of the hub's C{frame}, text or binary."""
        entry = self._cache.get(id(frame))
        if entry is not None:
            return entry[1]
        payload = self._framing.payload(frame)
        try:
            payload.decode("utf-8")
            binary = _CONTROL.search(payload) is not None
        except UnicodeDecodeError:
            binary = True
        wire = PreparedMessage(payload, binary, applyMask=False, doNotCompress=True).payloadHybi
        if self._size > self.LIMIT:
            self._cache.clear()
            self._size = 0
        self._cache[id(frame)] = (frame, wire)
        self._size += len(frame) + len(wire)
        return wire


class _Beat(Enum):
    STOPPED = "stopped"
    """Not open yet, paused, or gone: no ping is due."""
    WAITING = "waiting"
    """The next ping is due after C{ping_interval}."""
    PINGED = "pinged"
    """A ping is out: its pong is due within C{ping_timeout}."""


@implementer(IPushProducer)
class _Flow:
    """The member's protocol as the TCP transport's producer, with the
    connection told when the peer stops and starts reading (its pongs wait)."""

    def __init__(self, producer: Any, connection: MemberConnection) -> None:
        self._producer = producer
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.peer_reads(False)
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()
        self._connection.peer_reads(True)

    def stopProducing(self) -> None:
        self._producer.stopProducing()


@implementer(IMessageTransport, IPushProducer)
class MemberTransport:
    """
    The transport the hub's protocol sees for a WebSocket member: it takes
    the hub's frames and sends their payloads as messages, and passes flow
    control, closing and addresses to the connection's TCP transport.
    """

    kind = "websocket"

    def __init__(self, connection: MemberConnection) -> None:
        self._connection = connection
        self._tcp: Any = connection.transport
        self._prepared = connection.factory.prepared
        self._close: tuple[int, str] = (1000, "")

    def write(self, frame: bytes) -> None:
        if self._connection.state == _STATE_OPEN:
            # Straight to TCP: Autobahn's sendData would only add a debug log line per message.
            self._tcp.write(self._prepared.wire(frame))

    def writeSequence(self, frames: Iterable[bytes]) -> None:
        if self._connection.state == _STATE_OPEN:
            wire = self._prepared.wire
            self._tcp.write(b"".join([wire(frame) for frame in frames]))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._tcp.registerProducer(_Flow(producer, self._connection), streaming)

    def unregisterProducer(self) -> None:
        self._tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        """The hub stops reading this member: so does TCP, and the heartbeat
        and the unfinished-frame deadline wait (neither is the peer's fault)."""
        self._tcp.pauseProducing()
        self._connection.reading(False)

    def resumeProducing(self) -> None:
        self._tcp.resumeProducing()
        self._connection.reading(True)

    def stopProducing(self) -> None:
        self._tcp.stopProducing()

    @property
    def credentials(self) -> str | None:
        return self._connection.credentials

    @property
    def resume(self) -> str | None:
        return self._connection.resume

    def closeWith(self, code: int, reason: str) -> None:
        """The close code and reason the coming L{loseConnection} sends."""
        self._close = (code, reason)

    def loseConnection(self) -> None:
        """Close with code 1000, or the one L{closeWith} gave (after what was written)."""
        self._connection.close_gently(*self._close)

    def abortConnection(self) -> None:
        """Drop the TCP connection at once, unless a close frame we sent is
        already on its way (the peer then learns why: e.g. 1009)."""
        self._connection.abort()

    def getPeer(self) -> IAddress:
        return self._tcp.getPeer()  # type: ignore[no-any-return]

    def getHost(self) -> IAddress:
        return self._tcp.getHost()  # type: ignore[no-any-return]


class MemberConnection(FailureHooks):
    """One WebSocket connection, and the hub member on it once it is open."""

    factory: MemberFactory
    transport: Any
    """The TCP (or TLS) transport, taken over from twisted.web's HTTP channel."""
    member: HubProtocol | None = None
    _beat = _Beat.STOPPED
    _beat_call: IDelayedCall | None = None
    _close_call: IDelayedCall | None = None
    _frames: TokenBucket | None = None
    _pings: TokenBucket | None = None
    _fragments = 0
    _peer_reads = True
    _owed_pong: bytes | None = None
    _messages = 0
    _reading = True
    _unfinished_call: IDelayedCall | None = None
    _in_close_frame = False
    credentials: str | None = None
    """The token of the handshake's C{Authorization: Bearer}, if any."""
    resume: str | None = None
    """The session id of the handshake's C{?resume=S}, if any (one of at most C{MAX_SESSION_ID} characters)."""
    _refused_by_us = False

    def dataReceived(self, data: bytes) -> None:
        # As for a TCP client, what the messages of one read make the hub
        # write goes out as one write per receiver.  (Autobahn's own
        # dataReceived only adds a debug line per read.)
        surface = self.factory.hub.surface
        messages = self._messages
        surface.read_begins()
        try:
            parse_frames(self, data)
        finally:
            surface.read_ends()
        self._watch_unfinished(self._messages != messages)

    def _watch_unfinished(self, completed: bool) -> None:
        """The hub's C{frame_timeout}, for a member: a frame or a fragmented
        message begun and not finished (a slowloris trickling one byte now
        and then) must be finished in time; a message completed starts a
        new deadline for the next."""
        timeout = self.factory.hub.frame_timeout
        call = self._unfinished_call
        if timeout is not None and self.state == _STATE_OPEN and self._reading and unfinished(self):
            if call is None:
                self._unfinished_call = self.factory.hub.clock.callLater(timeout, self._unfinished_timed_out)
            elif completed:
                call.reset(timeout)
        elif call is not None:
            self._unfinished_call = None
            call.cancel()

    def _unfinished_timed_out(self) -> None:
        self._unfinished_call = None
        member = self.member
        assert member is not None, "a deadline runs once the connection is open"
        error = FrameTimeout(f"client {member.client_id} ({member.address}) began a WebSocket frame or "
                             f"message and did not finish it within {self.factory.hub.frame_timeout} seconds")
        member.drop(Drop.FRAME_TIMEOUT, error)

    def reading(self, reading: bool) -> None:
        """The hub stopped or started reading this member: its deadlines wait."""
        self._reading = reading
        if reading:
            self.heartbeat_start()
        else:
            self.heartbeat_stop()
        self._watch_unfinished(False)

    def onConnect(self, request: ConnectionRequest) -> None:
        hub = self.factory.hub
        full = hub.refusal(self.transport.getPeer())
        if full is not None:
            # Said in HTTP before the upgrade, not with a TCP reset after it.
            hub.count_refusal(full, format_address(self.transport.getPeer()))
            self._refused_by_us = True
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "the hub is full")
        origin = request.headers.get("origin")
        secure = ISSLTransport.providedBy(self.transport)
        if not self.factory.origins.allows(origin, request.headers.get("host"), secure):
            address = format_address(self.transport.getPeer())
            error = OriginRejected(f"refused a WebSocket from {address}: origin {origin!r} is not allowed")
            self.factory.counters.rejected_origin += 1
            hub.surface.fault("rejected_origin", LogLevel.warn, "{error}", error=error,
                              address=address, origin=origin)
            hub.surface.report(error)
            self._refused_by_us = True
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            # A program's credentials (a browser cannot set this header): the hub checks them at once.
            self.credentials = token.strip()
        asked = request.params.get("resume", [])
        if len(asked) == 1 and 0 < len(asked[0]) <= MAX_SESSION_ID:
            self.resume = asked[0]

    def onOpen(self) -> None:
        # twisted.web's HTTP channel registered itself as the TCP transport's
        # producer; the connection is the member's now.
        self.transport.unregisterProducer()
        hub = self.factory.hub
        if hub.keep_alive and ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
        now = hub.clock.seconds()
        self._frames = TokenBucket(MAX_FRAMES_PER_SECOND, MAX_FRAMES_PER_SECOND, now)
        self._pings = TokenBucket(MAX_PINGS_PER_SECOND, MAX_PINGS_PER_SECOND, now)
        member = self.member = cast(HubProtocol, hub.buildProtocol(self.transport.getPeer()))
        member.makeConnection(MemberTransport(self))
        if not hub.reading_paused:
            self.heartbeat_start()

    # -- what a member may send: frames, fragments, pings ------------------

    def frameBegan(self, control: bool, continuation: bool) -> None:
        if self.state != _STATE_OPEN or self._frames is None:
            return
        if self._frames.take(self.factory.hub.clock.seconds()):
            self._refuse(f"more than {MAX_FRAMES_PER_SECOND} frames a second")
        elif not control:
            self._fragments = self._fragments + 1 if continuation else 1
            if self._fragments > MAX_FRAGMENTS:
                self._refuse(f"a message in more than {MAX_FRAGMENTS} frames")

    def _refuse(self, what: str) -> None:
        self._fail(1008, what, MalformedFrame(what))
        # A flood goes on while the close frame is on its way: read no more of it.
        self.transport.pauseProducing()

    def onPing(self, payload: bytes) -> None:
        assert self._pings is not None, "pings come once the connection is open"
        if self._pings.take(self.factory.hub.clock.seconds()):
            self._refuse(f"more than {MAX_PINGS_PER_SECOND} pings a second")
        elif not self._peer_reads:
            # A peer that does not read would pile our pongs up in the
            # transport's buffer: owe it one, the latest, until it reads.
            self._owed_pong = payload
        else:
            super().onPing(payload)

    def peer_reads(self, reading: bool) -> None:
        """The TCP transport's buffer filled (the peer stopped reading) or drained."""
        self._peer_reads = reading
        owed, self._owed_pong = self._owed_pong, None
        if reading and owed is not None and self.state == _STATE_OPEN:
            self.sendPong(owed)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        member = self.member
        assert member is not None, "messages come once the connection is open"
        self._messages += 1
        try:
            self.factory.hub.framing.check(payload)
        except UnframeableMessage as error:
            self._fail(1007, str(error), error)
            return
        member.dataReceived(payload)

    # -- protocol errors: Autobahn closes with its code, the hub counts ----

    def peerFailed(self, kind: str, reason: str, size: int | None = None, limit: int | None = None) -> None:
        if kind == "too_big":
            assert limit is not None
            self._member_error(FrameTooLong(size, limit))
        else:
            self._member_error(MalformedFrame(reason))

    def _fail(self, code: int, reason: str, error: FramingError) -> None:
        self.sendCloseFrame(code, reason.encode("utf-8")[:123])
        self._member_error(error)

    def _member_error(self, error: FramingError) -> None:
        assert self.member is not None, "frames come once the connection is open"
        self.member.frameError(error)

    # -- the heartbeat, on the hub's clock --------------------------------

    def heartbeat_start(self) -> None:
        """Ping every C{ping_interval} seconds from now on."""
        interval = self.factory.ping_interval
        if interval is None:
            return
        self._beat = _Beat.WAITING
        self._beat_call = self.factory.hub.clock.callLater(interval, self._ping)

    def heartbeat_stop(self) -> None:
        self._beat = _Beat.STOPPED
        call, self._beat_call = self._beat_call, None
        if call is not None:
            call.cancel()

    def _ping(self) -> None:
        self._beat = _Beat.PINGED
        self._beat_call = self.factory.hub.clock.callLater(self.factory.ping_timeout, self._ping_timed_out)
        self.sendPing()

    def onPong(self, payload: bytes) -> None:
        if self.member is not None:
            self.member.peerAlive()  # a quiet member that answers pings is not idle
        if self._beat is _Beat.PINGED:
            self.heartbeat_stop()
            self.heartbeat_start()

    def _ping_timed_out(self) -> None:
        self._beat_call = None
        self._beat = _Beat.STOPPED
        assert self.member is not None
        error = PingTimeout(f"client {self.member.client_id} ({self.member.address}) did not answer "
                            f"a ping within {self.factory.ping_timeout} seconds")
        self.member.drop(Drop.TIMED_OUT, error, level=LogLevel.info)

    # -- closing ------------------------------------------------------------

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        # Whoever closed, the TCP connection must be gone within close_timeout;
        # one deadline (a close the hub asks for after the peer's is ignored).
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if self._close_call is None:
            self._close_call = self.factory.hub.clock.callLater(self.factory.close_timeout, self._close_timed_out)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        self._in_close_frame = True
        try:
            result: bool | None = super().onCloseFrame(code, reasonRaw)
            return result
        finally:
            self._in_close_frame = False

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # As Autobahn's, without its two lines (an info, then a warn) per
        # refused handshake: tcphub's own refusals are counted and logged
        # once per burst already, and Autobahn's (a malformed upgrade) are
        # logged here the same way.
        self.wasNotCleanReason = reason
        if not self._refused_by_us:
            self.factory.hub.surface.fault("bad_handshakes", LogLevel.info,
                                           "refused a WebSocket handshake from {peer}: {code} {reason}",
                                           peer=format_address(self.transport.getPeer()), code=code, reason=reason)
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        self.wasClean = True  # answered in HTTP: a clean end, not a warning
        self.dropConnection(abort=False)

    def dropConnection(self, abort: bool = False) -> None:
        # Autobahn drops TCP as soon as a server has answered a close frame,
        # even when its answer is a 1002 for a malformed one: that answer is
        # let out, and the close deadline ends the connection.
        if self._in_close_frame and self.failedByMe:
            return
        super().dropConnection(abort)

    def _close_timed_out(self) -> None:
        self._close_call = None
        self.wasClean = False
        self.wasNotCleanReason = f"no close reply within {self.factory.close_timeout} seconds"
        self.dropConnection(abort=True)

    def close_gently(self, code: int = 1000, reason: str = "") -> None:
        # Autobahn ignores it if a close is under way already.  Its sendClose
        # refuses the codes a server may send but an application may not
        # choose (1012, "service restart"): the frame is sent here directly.
        # A close frame's reason holds 123 bytes: cut at a character's boundary.
        reason_utf8 = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        self.sendCloseFrame(code, reason_utf8 or None, isReply=False)

    def abort(self) -> None:
        # A close frame of ours on its way (1009, 1008, or the 1002 for a
        # malformed close of the peer's) is not cut off by a reset: the
        # close deadline ends the connection.
        if self.state != _STATE_CLOSING or self.localCloseCode is None:
            self.transport.abortConnection()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn calls this once the TCP connection is gone: the timers go with it.
        self.heartbeat_stop()
        unfinished_call, self._unfinished_call = self._unfinished_call, None
        if unfinished_call is not None:
            unfinished_call.cancel()
        call, self._close_call = self._close_call, None
        if call is not None:
            call.cancel()
        if self.member is None:
            return
        why = f"WebSocket closed with code {code}" + (f": {reason}" if reason else "")
        self.member.connectionLost(Failure(ConnectionDone(why) if wasClean else ConnectionLost(why)))


@dataclass
class MemberCounters:
    """What the members' port counts of its own, on C{/metrics} and C{/varz}."""

    rejected_origin: int = field(default=0, metadata=COUNTER)
    """Handshakes refused for their C{Origin} (L{OriginRejected})."""


class MemberFactory(WebSocketServerFactory):
    """
    Builds a L{MemberConnection} per WebSocket handshake, for C{hub}.  Its
    settings (the origin policy, heartbeat and close deadlines) are read by
    every connection; messages are bounded by the hub's C{max_frame}.
    """

    protocol = MemberConnection  # type: ignore[assignment]

    def __init__(self, hub: HubFactory, *, origins: OriginPolicy, ping_interval: float | None,
                 ping_timeout: float, close_timeout: float) -> None:
        super().__init__(server=f"tcphub/{version()}")
        self.hub = hub
        self.origins = origins
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.prepared = _Prepared(hub)
        self.counters = MemberCounters()
        """The members' port's own counts (the hub counts its members' traffic)."""
        self.setProtocolOptions(
            maxMessagePayloadSize=hub.max_frame,
            maxFramePayloadSize=hub.max_frame,
            # Autobahn's own timers round to whole seconds: the hub's clock
            # runs the heartbeat and the close deadline instead.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            # Tell the peer why (1009, 1007, 1002) rather than drop the TCP connection.
            failByDrop=False,
            # Autobahn would answer Origin: null (and file://) with a 400 of
            # its own; the hub's origin policy decides, and counts (403).
            allowNullOrigin=True,
        )
        self.noisy = False
