"""
A WebSocket connection as a member of the hub, alongside its TCP clients.

L{MemberConnection} speaks RFC 6455 (its opening handshake answered by
L{tcphub.web.upgrade.MemberResource}).  It builds the hub's protocol (the
same class as the TCP clients', with the same hooks, limits and events) on
a L{MemberTransport}, which carries whole messages (L{IMessageTransport}):

  - a WebSocket message in (text or binary) is one hub message, its bytes as
    they came; one the hub's framing cannot carry to the TCP clients (a
    newline in a line hub) closes the member with 1007;
  - a message out goes as text when it is valid UTF-8 without control
    characters (but tab, CR and LF), else as binary, its bytes as they are
    either way; the WebSocket frame is built once per broadcast and
    shared by every member;
  - flow control: when the peer does not read, the TCP transport pauses the
    member, whose outbox queues up to the hub's C{max_pending}; when the hub
    pauses reading from the member (C{max_rate}, C{pauseReading}), the TCP
    transport stops reading;
  - heartbeat: a ping every C{ping_interval} seconds on the hub's clock (one
    timer for every member); a member that does not answer within
    C{ping_timeout} is dropped (L{PingTimeout}, counted in C{timed_out});
  - closing: the hub's gentle close sends close code 1000 after the queued
    output; messages over C{max_frame} close with 1009, invalid UTF-8 text
    with 1007, floods (frames, pings, fragments) with 1008, other protocol
    errors with 1002 (each counted in C{protocol_errors}); a peer's close is
    answered with its code; a close the peer does not answer within
    C{close_timeout} seconds drops the TCP connection; the hub's abort (a
    slow consumer, a timeout) drops it at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Iterable, cast

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, IPushProducer, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub._metric_fields import COUNTER
from tcphub._version import version
from tcphub.errors import (
    FrameTimeout,
    FramingError,
    MalformedFrame,
    PingTimeout,
    UnframeableMessage,
)
from tcphub.hub.messages import IMessageTransport
from tcphub.hub.metrics import Drop
from tcphub.hub.protocol import HubProtocol
from tcphub.hub.rate import TokenBucket
from tcphub._deadlines import Deadline, FixedDelay
from tcphub._upstream.twisted_parts import write_now
from tcphub.web.frames import (
    BINARY,
    CLOSE,
    MESSAGE,
    PING,
    PONG,
    TEXT,
    Event,
    FrameParser,
    Violation,
    close_payload,
    encode,
    parse_close,
)
from tcphub.web.limits import MAX_FRAGMENTS, MAX_FRAMES_PER_SECOND, MAX_PINGS_PER_SECOND
from tcphub.web.origins import OriginPolicy

if TYPE_CHECKING:
    from tcphub.hub.factory import HubFactory

__all__ = ["MemberConnection", "MemberFactory", "MemberTransport"]

# Bytes that text never holds (JSON escapes them), and binary formats often
# do (a length prefix, such as the one of a WebSocketHandler's binary message).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _Prepared:
    """
    The WebSocket frames of the hub's recent frames, shared by every member:
    a broadcast is framed (and checked for UTF-8) once, not once per member.
    The hub hands each member the frames of a read together, so the cache
    holds several (keyed by the frame object, which it keeps alive, so that
    its id is not reused), up to C{LIMIT} bytes; then it starts again.
    """

    __slots__ = ("_framing", "_cache", "_size", "_last_frames", "_last_wire")
    LIMIT: Final = 1 << 20

    def __init__(self, hub: HubFactory) -> None:
        self._framing = hub.framing
        self._cache: dict[int, tuple[bytes, bytes]] = {}
        self._size = 0
        self._last_frames: list[bytes] = []
        self._last_wire = b""

    @property
    def size(self) -> int:
        """Bytes held: the frames, their WebSocket frames, and the last ones joined."""
        return self._size + len(self._last_wire)

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
        wire = encode(BINARY if binary else TEXT, payload)
        if self._size > self.LIMIT:
            self._cache.clear()
            self._size = 0
        self._cache[id(frame)] = (frame, wire)
        self._size += len(frame) + len(wire)
        return wire

    def wire_all(self, frames: list[bytes]) -> bytes:
        """The WebSocket frames of several of the hub's frames, joined.  The
        members a read's broadcasts went to are each handed the same frames,
        so the last list asked for is kept with its answer: the next member's
        list is compared with it (by identity first, in C) instead of each
        frame being looked up again."""
        if frames == self._last_frames:
            return self._last_wire
        wire = b"".join([self.wire(frame) for frame in frames])
        self._last_frames, self._last_wire = list(frames), wire
        return wire


class _Beat(Enum):
    STOPPED = "stopped"
    """Closing, paused with a ping out, or gone: no ping is due."""
    WAITING = "waiting"
    """The next ping is due after C{ping_interval} (L{MemberFactory.pings})."""
    PINGED = "pinged"
    """A ping is out: its pong is due within C{ping_timeout} (L{MemberFactory.pongs})."""


@implementer(IMessageTransport, IPushProducer)
class MemberTransport:
    """
    The transport the hub's protocol sees for a WebSocket member: it takes
    the hub's frames and sends their payloads as messages, and passes flow
    control, closing and addresses to the connection's TCP transport.
    """

    __slots__ = ("_connection", "_tcp", "_prepared", "_close")
    kind = "websocket"

    def __init__(self, connection: MemberConnection) -> None:
        self._connection = connection
        self._tcp: Any = connection.transport
        self._prepared = connection.factory.prepared
        self._close: tuple[int, str] = (1000, "")

    def write(self, frame: bytes) -> None:
        if self._connection.state is _State.OPEN:
            write_now(self._tcp, self._prepared.wire(frame))

    def writeSequence(self, frames: Iterable[bytes]) -> None:
        if self._connection.state is _State.OPEN:
            write_now(self._tcp, self._prepared.wire_all(frames if isinstance(frames, list) else list(frames)))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # The connection is the TCP transport's producer, and passes on when the peer stops and starts reading.
        self._connection.attach(producer)

    def unregisterProducer(self) -> None:
        self._connection.attach(None)

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


class _State(Enum):
    OPEN = "open"
    """Messages flow both ways."""
    CLOSING = "closing"
    """Our close frame is out: the peer's answer is due within C{close_timeout}; what else it sends is ignored."""
    CLOSED = "closed"
    """The close handshake is over (or we stopped waiting for it): TCP is being closed."""
    GONE = "gone"
    """TCP is closed."""


@implementer(IProtocol, IPushProducer)
class MemberConnection:
    """
    One WebSocket connection after its opening handshake (which
    L{tcphub.web.upgrade.MemberResource} answered on twisted.web's HTTP
    channel), and the hub
    member on it.  It speaks RFC 6455 itself (L{tcphub.web.frames}), in a
    record a few slots wide, its parser and rate buckets made when the
    member first sends, its heartbeat on timers shared by every member: an
    idle member costs under twice what a TCP client does
    (C{bench/ws_idle_bytes.py}).
    """

    __slots__ = ("factory", "transport", "member", "producer", "state", "credentials", "resume", "_parser",
                 "_beat", "_beat_deadline", "_close_call", "_unfinished_call", "_frames", "_pings",
                 "_peer_reads", "_owed_pong", "_reading", "_peer_close", "_unclean")

    factory: MemberFactory
    transport: Any
    """The TCP (or TLS) transport, taken over from twisted.web's HTTP channel."""
    member: HubProtocol | None
    """The hub's protocol for this member, once L{makeConnection} built it."""
    producer: IPushProducer | None
    """What the member registered as its transport's producer (the hub's
    protocol): paused while the peer does not read."""
    state: _State
    credentials: str | None
    """The token of the handshake's C{Authorization: Bearer}, if any."""
    resume: str | None
    """The session id of the handshake's C{?resume=S}, if any (one of at most C{MAX_SESSION_ID} characters)."""

    def __init__(self, factory: MemberFactory, credentials: str | None, resume: str | None) -> None:
        self.factory = factory
        self.transport = None
        self.member = None
        self.producer = None
        self.state = _State.OPEN
        self.credentials = credentials
        self.resume = resume
        self._parser: FrameParser | None = None  # made by the first byte the member sends
        self._beat = _Beat.STOPPED
        self._beat_deadline: Deadline[MemberConnection] | None = None
        self._close_call: IDelayedCall | None = None
        self._unfinished_call: IDelayedCall | None = None
        self._frames: TokenBucket | None = None
        self._pings: TokenBucket | None = None
        self._peer_reads = True
        self._owed_pong: bytes | None = None
        self._reading = True
        self._peer_close: tuple[int | None, str] | None = None
        self._unclean = "the TCP connection was lost"

    # -- IProtocol: the TCP transport's side ------------------------------

    def makeConnection(self, transport: Any) -> None:
        """Take the transport over (the opening handshake is answered): the member joins the hub."""
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        hub = self.factory.hub
        if hub.keep_alive and ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
        # Told when the peer stops reading from the start: its pongs must not pile up
        # even before the hub has sent it anything (and registered a producer of its own).
        self.transport.registerProducer(self, True)
        member = self.member = cast(HubProtocol, hub.buildProtocol(self.transport.getPeer()))
        member.makeConnection(MemberTransport(self))
        if not hub.reading_paused:
            self.heartbeat_start()

    def dataReceived(self, data: bytes) -> None:
        # As for a TCP client, what the messages of one read make the hub
        # write goes out as one write per receiver.
        if self.state is not _State.OPEN and self.state is not _State.CLOSING:
            return
        parser = self._parser
        if parser is None:
            parser = self._parser = FrameParser(self.factory.hub.max_frame, MAX_FRAGMENTS)
        surface = self.factory.hub.surface
        completed = False
        surface.read_begins()
        try:
            for event in parser.feed(data):
                completed = True
                if not self._event(event):
                    break
        except Violation as violation:
            self._fail(violation.code, violation.error)
        finally:
            surface.read_ends()
        self._watch_unfinished(completed)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        clean = self._peer_close is not None  # its close frame came: the handshake is done
        self.state = _State.GONE
        self.heartbeat_stop()
        for call in (self._unfinished_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        self._unfinished_call = self._close_call = None
        if self.member is None:
            return
        if self._peer_close is not None:
            code, text = self._peer_close
            why = f"WebSocket closed with code {1005 if code is None else code}" + (f": {text}" if text else "")
        else:
            why = f"WebSocket connection lost without a close handshake: {self._unclean}"
        self.member.connectionLost(Failure(ConnectionDone(why) if clean else ConnectionLost(why)))

    def logPrefix(self) -> str:
        return self.__class__.__name__

    # -- what a member sends: frames, messages, pings, its close -----------

    def _event(self, event: Event) -> bool:
        """Act on one frame's event; False: read no more of this read."""
        frames = self._frames
        now = self.factory.hub.clock.seconds()
        if frames is None:
            frames = self._frames = TokenBucket(MAX_FRAMES_PER_SECOND, MAX_FRAMES_PER_SECOND, now)
        if frames.take(now):
            self._refuse(f"more than {MAX_FRAMES_PER_SECOND} frames a second")
            return False
        kind = event[0]
        if kind == CLOSE:
            self._peer_closes(parse_close(event[1]))
            return False
        if self.state is not _State.OPEN:
            return True  # our close is out: only the peer's answer matters
        if kind == MESSAGE:
            return self._message(event[1])
        if kind == PING:
            return self._ping_received(event[1], now)
        if kind == PONG:
            self._pong_received()
        return True

    def _message(self, payload: bytes) -> bool:
        member = self.member
        assert member is not None, "messages come once the connection is open"
        try:
            self.factory.hub.framing.check(payload)
        except UnframeableMessage as error:
            self._fail(1007, error)
            return False
        member.dataReceived(payload)
        return self.state is _State.OPEN

    def _ping_received(self, payload: bytes, now: float) -> bool:
        pings = self._pings
        if pings is None:
            pings = self._pings = TokenBucket(MAX_PINGS_PER_SECOND, MAX_PINGS_PER_SECOND, now)
        if pings.take(now):
            self._refuse(f"more than {MAX_PINGS_PER_SECOND} pings a second")
            return False
        if not self._peer_reads:
            # A peer that does not read would pile our pongs up in the
            # transport's buffer: owe it one, the latest, until it reads.
            self._owed_pong = payload
        else:
            self.transport.write(encode(PONG, payload))
        return True

    def _peer_closes(self, close: tuple[int | None, str]) -> None:
        """The peer's close frame: answered (if it began the close), then
        TCP closed by us, as RFC 6455 has a server do."""
        self._peer_close = close
        if self.state is _State.OPEN:
            # Its code echoed, as RFC 6455 §5.5.1 has it typically done (none for none).
            code = close[0]
            self.transport.write(encode(CLOSE, b"" if code is None else close_payload(code)))
        self.state = _State.CLOSED
        self.heartbeat_stop()
        self._arm_close_deadline()
        self.transport.loseConnection()

    def _refuse(self, what: str) -> None:
        self._fail(1008, MalformedFrame(what))

    def _fail(self, code: int, error: FramingError) -> None:
        """The peer broke the protocol: close with C{code} and why, read no
        more of what it sends (RFC 6455 §7.1.7: a failed connection's data is
        not processed; a flood would go on while the close frame is on its
        way), then the hub counts it.  The close deadline ends the TCP
        connection."""
        self._send_close(code, str(error))
        self.transport.pauseProducing()
        member = self.member
        assert member is not None, "frames come once the connection is open"
        member.frameError(error)

    # -- IPushProducer, for the TCP transport: whether the peer reads -------

    def attach(self, producer: IPushProducer | None) -> None:
        """The member's producer (the hub's protocol, once it has sent the
        member something), paused while the peer does not read; None: detached."""
        self.producer = producer
        if producer is not None and not self._peer_reads:
            producer.pauseProducing()

    def pauseProducing(self) -> None:
        """The TCP transport's buffer filled: the peer stopped reading."""
        self._peer_reads = False
        if self.producer is not None:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        """The TCP transport's buffer drained: the peer reads again, and the pong owed it goes."""
        if self.producer is not None:
            self.producer.resumeProducing()
        self._peer_reads = True
        owed, self._owed_pong = self._owed_pong, None
        if owed is not None and self.state is _State.OPEN:
            self.transport.write(encode(PONG, owed))

    def stopProducing(self) -> None:
        if self.producer is not None:
            self.producer.stopProducing()

    def _watch_unfinished(self, completed: bool) -> None:
        """The hub's C{frame_timeout}, for a member: a frame or a fragmented
        message begun and not finished (a slowloris trickling one byte now
        and then) must be finished in time; a message completed starts a
        new deadline for the next."""
        timeout = self.factory.hub.frame_timeout
        call = self._unfinished_call
        parser = self._parser
        if (timeout is not None and self.state is _State.OPEN and self._reading
                and parser is not None and parser.unfinished):
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
        """The hub stopped or started reading this member: its deadlines
        wait (a ping already due waits in L{ping_due})."""
        self._reading = reading
        if reading:
            self.heartbeat_start()
        elif self._beat is _Beat.PINGED:
            self.heartbeat_stop()  # its pong would wait unread
        self._watch_unfinished(False)

    # -- the heartbeat, on the hub's clock --------------------------------

    def heartbeat_start(self) -> None:
        """Ping C{ping_interval} seconds from now, unless a ping is due already."""
        pings = self.factory.pings
        if pings is None or self.state is not _State.OPEN or self._beat is not _Beat.STOPPED:
            return
        self._beat = _Beat.WAITING
        self._beat_deadline = pings.add(self)

    def heartbeat_stop(self) -> None:
        """No ping, and no pong awaited, from now on."""
        deadline, self._beat_deadline = self._beat_deadline, None
        if deadline is not None:
            owner = self.factory.pings if self._beat is _Beat.WAITING else self.factory.pongs
            assert owner is not None, "a deadline is queued only when pings are sent"
            owner.withdraw(deadline)
        self._beat = _Beat.STOPPED

    def ping_due(self) -> None:
        """C{ping_interval} went by: ping (unless the hub stopped reading
        this member meanwhile: its pong would wait unread)."""
        self._beat_deadline = None
        if not self._reading:
            self._beat = _Beat.STOPPED
            return
        pongs = self.factory.pongs
        assert pongs is not None, "pings are sent only with an interval, and then pongs awaited"
        self._beat = _Beat.PINGED
        self._beat_deadline = pongs.add(self)
        self.transport.write(encode(PING, b""))

    def _pong_received(self) -> None:
        if self.member is not None:
            self.member.peerAlive()  # a quiet member that answers pings is not idle
        if self._beat is _Beat.PINGED:
            self.heartbeat_stop()
            self.heartbeat_start()

    def pong_overdue(self) -> None:
        """C{ping_timeout} went by since the ping, without a pong."""
        self._beat_deadline = None
        self._beat = _Beat.STOPPED
        assert self.member is not None
        error = PingTimeout(f"client {self.member.client_id} ({self.member.address}) did not answer "
                            f"a ping within {self.factory.ping_timeout} seconds")
        self.member.drop(Drop.TIMED_OUT, error, level=LogLevel.info)

    # -- closing ------------------------------------------------------------

    def _send_close(self, code: int, reason: str) -> None:
        """Our close frame, once: the peer's answer is due within C{close_timeout}."""
        if self.state is not _State.OPEN:
            return
        self.transport.write(encode(CLOSE, close_payload(code, reason)))
        self.state = _State.CLOSING
        self.heartbeat_stop()
        self._watch_unfinished(False)
        self._arm_close_deadline()

    def _arm_close_deadline(self) -> None:
        # Whoever closed, the TCP connection must be gone within close_timeout; one deadline.
        if self._close_call is None:
            self._close_call = self.factory.hub.clock.callLater(self.factory.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._unclean = f"no close reply within {self.factory.close_timeout} seconds"
        self.state = _State.CLOSED
        self._close_call = None
        self.transport.abortConnection()

    def close_gently(self, code: int = 1000, reason: str = "") -> None:
        """Close with C{code} and C{reason} after what was written (nothing,
        if a close is under way already).  Any code a server may send,
        1012 ("service restart") included."""
        self._send_close(code, reason)

    def abort(self) -> None:
        """Drop TCP at once, unless a close frame of ours is on its way (1009,
        1008, or the 1002 for a malformed close of the peer's): the close
        deadline ends the connection then, and the peer learns why."""
        if self.state is _State.OPEN or self.state is _State.CLOSED:
            self.transport.abortConnection()


@dataclass
class MemberCounters:
    """What the members' port counts of its own, on C{/metrics} and C{/varz}."""

    rejected_origin: int = field(default=0, metadata=COUNTER)
    """Handshakes refused for their C{Origin} (L{OriginRejected})."""
    bad_handshakes: int = field(default=0, metadata=COUNTER)
    """Handshakes refused as malformed (400), or for a WebSocket version other than 13 (426)."""


class MemberFactory:
    """
    The settings every L{MemberConnection} of C{hub} reads (the origin
    policy, heartbeat and close deadlines), the frames they share, and the
    port's counts.  Messages are bounded by the hub's C{max_frame}.
    """

    protocol: type[MemberConnection] = MemberConnection
    """The class of each member's connection (a subclass may be given)."""

    def __init__(self, hub: HubFactory, *, origins: OriginPolicy, ping_interval: float | None,
                 ping_timeout: float, close_timeout: float) -> None:
        self.hub = hub
        self.origins = origins
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.server = f"tcphub/{version()}".encode("ascii")
        """The C{Server} header of the handshake's answer."""
        self.prepared = _Prepared(hub)
        self.pings: FixedDelay[MemberConnection] | None = None
        """Every member's next ping, on one timer (None: no pings)."""
        self.pongs: FixedDelay[MemberConnection] | None = None
        """Every pinged member's pong deadline, on one timer."""
        if ping_interval is not None:
            self.pings = FixedDelay(hub.clock, ping_interval, lambda connection: connection.ping_due())
            self.pongs = FixedDelay(hub.clock, ping_timeout, lambda connection: connection.pong_overdue())
        self.counters = MemberCounters()
        """The members' port's own counts (the hub counts its members' traffic)."""
