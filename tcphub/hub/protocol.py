"""
L{HubProtocol}, one client of the hub.  Extend the hub by subclassing it and
passing the class as C{protocol=}.  The hooks a subclass overrides:

  - C{messageReceived(payload)}: each decoded message (no need to call super).
  - C{connectionMade()} / C{connectionLost(reason)}: call super first / last;
    C{self.client_id} is set once super's C{connectionMade} has run.
  - C{inputEnded()}: the client ended its input (FIN); by default, close once
    the queued output is written.
  - C{timeoutConnection()}: no traffic either way for C{timeout} seconds.

Inside a hook, C{self.sendMessage(payload)} answers this client and
C{self.broadcastMessage(payload)} talks to the rest; C{self.factory.broadcast}
and C{self.factory.send} return Deferreds, for flow control.
C{pauseReading()}/C{resumeReading()} stop and restart taking this client's
messages, so that a slow destination pushes back on it through TCP.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Final

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub._deadlines import Deadline
from tcphub._observer import OneShotObserver
from tcphub.hub.addresses import check_payload, format_address
from tcphub._upstream.twisted_parts import send_now, unsent_bytes
from tcphub.errors import (
    ClientDisconnected,
    FrameTimeout,
    FramingError,
    IdleTimeout,
    SlowConsumer,
    TcpHubError,
)
from tcphub.hub.framing import FrameDecoder
from tcphub.hub.messages import IMessageTransport, MessageDecoder, MessageOutbox
from tcphub.hub.metrics import ClientInfo, Drop
from tcphub.hub.outbox import CLOSED, QUEUE, WRITE, Outbox, Waiter, notify_gone
from tcphub.hub.rate import TokenBucket
from tcphub.hub.rooms import Kept

if TYPE_CHECKING:
    from tcphub.hub.factory import HubFactory

__all__ = ["GONE", "DRAINING", "HubProtocol", "OPEN", "REFUSED", "check_payload", "format_address"]

# A client's lifecycle (HubProtocol.state).
REFUSED: Final = 0
"""Not admitted (a connection limit): the state of a
L{tcphub.hub.refused.RefusedConnection}, which stands in for the hub's
protocol, is aborted at once, and is never in the client table."""
OPEN: Final = 1
"""In the client table: messages flow both ways."""
DRAINING: Final = 2
"""Closing gently: no input is taken, the queued output is written, then TCP closes."""
GONE: Final = 3
"""Aborted, or the connection is gone: nothing flows."""

GOING_AWAY_CLOSE: Final = 1012
"""The WebSocket close code of L{HubProtocol.goingAway}: RFC 6455's "service restart"."""

# Why reading from a client is paused (HubProtocol._read_paused is a set of these bits).
# Each reason is resumed only by its own owner.
_PAUSED_BY_USER: Final = 1  # pauseReading(): a subclass's own flow control
_PAUSED_BY_RATE: Final = 2  # the client is over max_rate: resumed when its bucket refills
_PAUSED_BY_HUB: Final = 4  # HubFactory.pause_reading(), e.g. a gateway whose upstream stalls
_PAUSED_BY_WAIT: Final = 8  # waitBeforeReading(): the protocol awaits what its next message must see


class _Seldom:
    """A client's fields that most clients never set, in one record made
    when the first of them is (an idle client's memory counts: 48 bytes)."""

    __slots__ = ("input_ended", "held", "departure", "lost", "rate_call", "dropped_for", "said_last")

    def __init__(self) -> None:
        self.input_ended = False
        """The client ended its input (FIN)."""
        self.held: deque[bytes] | None = None
        """Messages held while reading is paused."""
        self.departure: ClientDisconnected | None = None
        """Why the hub ended the connection, for those still waiting on it."""
        self.lost: OneShotObserver | None = None
        """Fired once the connection is gone (L{HubProtocol.whenLost})."""
        self.rate_call: IDelayedCall | None = None
        """When C{max_rate} lets the client be read again."""
        self.dropped_for: Drop | None = None
        self.said_last = False
        """Last words went out with L{HubProtocol.sendNow}: close with a FIN, not a reset."""


@implementer(IProtocol, IHalfCloseableProtocol, ILoggingContext)
class HubProtocol:
    """
    One client of the hub: decodes its frames, counts its traffic, keeps its
    deadlines (idle, unfinished frame, rate), and sends through its L{Outbox}
    (which queues, up to the hub's C{max_pending} bytes, while the client
    does not read).

    It is half-closeable: when the client ends its input (FIN, e.g. C{nc -N}
    or C{shutdown(SHUT_WR)}), what it sent is handled and L{inputEnded} is
    called.

    Its fields live in slots (an idle client's memory counts), which is why
    it implements C{IProtocol} itself rather than inherit Twisted's
    C{Protocol} (whose instances all have a C{__dict__}: 40 bytes a client);
    a subclass without C{__slots__} keeps its own attributes in a
    C{__dict__} as usual.
    """

    __slots__ = (
        "factory", "transport", "connected", "client_id", "connected_at", "state", "outbox",
        "bytes_received", "messages_received", "_read_at", "_frames", "_decoder", "_read_paused", "_idle",
        "_frame_call", "_bucket", "_seldom",
    )

    factory: HubFactory
    transport: Any
    """A TCP, TLS or UNIX transport: an C{ITCPTransport} that is also a consumer and a push producer."""
    client_id: str
    connected_at: float
    """When the connection was accepted, in the hub clock's seconds."""
    bytes_received: int
    """Bytes read from this client."""
    messages_received: int
    """Messages decoded from this client."""
    state: int
    """L{REFUSED}, L{OPEN}, L{DRAINING} or L{GONE}."""
    outbox: Outbox | None
    """This client's output (see L{tcphub.hub.outbox}); None until the hub
    first sends it something (an idle client never needs one)."""

    _log = Logger()

    def connectionMade(self) -> None:
        hub = self.factory
        self.client_id = hub.id_prefix + secrets.token_hex(8)  # 64 random bits, 16 characters
        self.connected_at = self._read_at = now = hub.clock.seconds()
        self.bytes_received = 0
        self.messages_received = 0
        self._frames = 0
        self._read_paused = 0
        # Created when one of its fields is first set: most clients never set any.
        self._seldom: _Seldom | None = None
        # This client's deadline in the hub's idle timetable, while it has one.
        self._idle: Deadline[HubProtocol] | None = None
        self._frame_call: IDelayedCall | None = None
        self._bucket = None if hub.max_rate is None else TokenBucket(hub.max_rate, hub.max_burst or 1, now)
        # Created at the first byte: a client that only listens never needs one.
        self._decoder: FrameDecoder | None = None
        # Created with the first frame sent: a client that is never sent anything never needs one.
        self.outbox = None
        self.state = OPEN
        if hub.keep_alive and ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
        self._arm_idle()
        hub.client_connected(self)
        if hub.reading_paused:
            self._pause(_PAUSED_BY_HUB)

    @property
    def address(self) -> str:
        """The peer's address, C{host:port} (formatted when asked: it is
        rarely needed, and each idle connection's bytes count)."""
        return format_address(self.transport.getPeer())

    @property
    def kind(self) -> str:
        """What carries this client: C{tcp}, C{tls}, C{unix}, or a message
        transport's own kind (C{websocket})."""
        transport = self.transport
        if IMessageTransport.providedBy(transport):
            return str(transport.kind)
        if ISSLTransport.providedBy(transport):
            return "tls"
        return "unix" if isinstance(transport.getPeer(), UNIXAddress) else "tcp"

    @property
    def bytes_sent(self) -> int:
        """Bytes handed to this client's transport (its outbox counts them)."""
        return 0 if self.outbox is None else self.outbox.bytes_sent

    @property
    def messages_sent(self) -> int:
        """Messages handed to this client's transport."""
        return 0 if self.outbox is None else self.outbox.messages_sent

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for this client while it does not read."""
        return 0 if self.outbox is None else self.outbox.queued_bytes

    def first_outbox(self) -> Outbox | None:
        """
        The outbox of a client that has none yet, made now, with this
        protocol registered as its transport's producer (told when the
        transport's buffer fills); None for a client that is closing, which
        takes nothing.  For the hub's broadcast and L{deliver}: not an
        override point.
        """
        if self.state != OPEN:
            return None
        transport = self.transport
        kind = MessageOutbox if IMessageTransport.providedBy(transport) else Outbox
        outbox = self.outbox = kind(transport, self.factory.batch, self.connected_at)
        transport.registerProducer(self, True)
        return outbox

    @property
    def dropped_for(self) -> Drop | None:
        """Why the hub dropped this client (L{drop}); None while it has not."""
        seldom = self._seldom
        return None if seldom is None else seldom.dropped_for

    def _held(self) -> deque[bytes] | tuple[()]:
        """The messages held while reading is paused (none: an empty tuple)."""
        seldom = self._seldom
        return (None if seldom is None else seldom.held) or ()

    def _set_seldom(self) -> _Seldom:
        seldom = self._seldom
        if seldom is None:
            seldom = self._seldom = _Seldom()
        return seldom

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        self.state = GONE
        seldom = self._seldom
        if seldom is not None and seldom.lost is not None:
            seldom.lost.fire(None)
        given = None if seldom is None else seldom.departure
        departure = given or ClientDisconnected(
            f"client {self.client_id} disconnected: {reason.getErrorMessage()}"
        )
        if self.outbox is not None:
            self.outbox.abort(departure)
        self.factory.client_disconnected(self, reason, given)

    def _cancel_timers(self) -> None:
        # Each timer's attribute is None once it has fired.
        seldom = self._seldom
        rate_call = None if seldom is None else seldom.rate_call
        for call in (self._frame_call, rate_call):
            if call is not None:
                call.cancel()
        self._frame_call = None
        idle, self._idle = self._idle, None
        if idle is not None:
            self.factory.idle_deadlines.withdraw(idle)
        if seldom is not None:
            seldom.rate_call = None

    def makeConnection(self, transport: Any) -> None:
        """As Twisted's C{Protocol}: keep C{transport}, then L{connectionMade}."""
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return self.__class__.__name__

    # -- inbound --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state != OPEN:
            return
        hub = self.factory
        size = len(data)
        self.bytes_received += size
        hub.counters.bytes_received += size
        self._read_at = hub.clock.seconds()
        frames = self._frames
        # Whatever this read makes the hub write, to any client, goes out as
        # one write per client once the read is handled.
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = (MessageDecoder(self) if IMessageTransport.providedBy(self.transport)
                                       else hub.framing.decoder(self, hub.max_frame))
        batch = hub.batch
        batch.begin()
        try:
            decoder.dataReceived(data)
        finally:
            batch.end()
        if hub.frame_timeout is not None and self.state == OPEN and not self._read_paused:
            self._watch_frame(hub.frame_timeout, frames != self._frames)

    def _watch_frame(self, timeout: float, frames_completed: bool) -> None:
        """Keep a deadline on a frame begun and not finished (a slowloris
        sends one byte now and then to hold its connection for ever)."""
        call = self._frame_call
        decoder = self._decoder
        if decoder is not None and decoder.partial:
            if call is None:
                self._frame_call = self.factory.clock.callLater(timeout, self._frame_timed_out)
            elif frames_completed:
                # The frame begun now is a new one: its own deadline.
                call.reset(timeout)
        elif call is not None:
            self._frame_call = None
            call.cancel()

    def _frame_timed_out(self) -> None:
        self._frame_call = None
        error = FrameTimeout(
            f"client {self.client_id} ({self.address}) began a frame and did not "
            f"finish it within {self.factory.frame_timeout} seconds"
        )
        self.drop(Drop.FRAME_TIMEOUT, error)

    def readConnectionLost(self) -> None:
        """IHalfCloseableProtocol: the client ended its input (FIN)."""
        self._set_seldom().input_ended = True
        dropped = 0
        if self._decoder is not None:
            batch = self.factory.batch
            batch.begin()
            try:
                dropped = self._decoder.inputEnded()
            finally:
                batch.end()
        if dropped:
            # Not a protocol error: a client that crashes ends its input anywhere.
            self._log.debug(
                "client {client_id} ended its input inside a frame: {dropped} bytes dropped",
                client_id=self.client_id, dropped=dropped,
            )
        if self._frame_call is not None:
            self._frame_call.cancel()
            self._frame_call = None
        if not self._held() and self.state == OPEN:
            # A client the hub is closing (maybe for its last line, just
            # handled) is departing: no hook.
            self._end_input()

    def writeConnectionLost(self) -> None:
        """IHalfCloseableProtocol: our side's output was shut down."""

    def _end_input(self) -> None:
        try:
            self.inputEnded()
        except Exception:
            self.factory.handler_failed(f"{type(self).__name__}.inputEnded", Failure(), self.client_id)

    def inputEnded(self) -> None:
        """
        Override: the client will send nothing more (it closed its connection,
        or only its sending half, as C{nc -N} and C{shutdown(SHUT_WR)} do), and
        every message it sent has been handled.  By default (as Node's
        C{allowHalfOpen: false}): close once the queued output is written, so
        that a request followed by FIN gets its whole reply; with the hub's
        C{allow_half_open}, keep the client as a receiver (a peer that closed
        both halves is then found at the next write, or by C{timeout}).
        """
        if not self.factory.allow_half_open:
            self.loseConnection()

    def frameReceived(self, payload: bytes) -> None:
        """The decoder's callback: count, emit C{data}, call L{messageReceived}."""
        if self.state != OPEN:
            return
        self._frames += 1
        if self._read_paused or (self._bucket is not None and not self._take_token()):
            # The rest of a read that came in before the pause: hold it.
            self._hold(payload)
            return
        self._dispatch(payload)

    def _hold(self, payload: bytes) -> None:
        seldom = self._set_seldom()
        if seldom.held is None:
            seldom.held = deque()
        seldom.held.append(payload)

    def _take_token(self) -> bool:
        """C{max_rate}: False (and reading paused until a token is due) if
        this client is over its rate."""
        assert self._bucket is not None
        clock = self.factory.clock
        wait = self._bucket.take(clock.seconds())
        if not wait:
            return True
        self.factory.counters.rate_limited += 1
        self._pause(_PAUSED_BY_RATE)
        self._set_seldom().rate_call = clock.callLater(wait, self._rate_refilled)
        return False

    def _rate_refilled(self) -> None:
        self._set_seldom().rate_call = None
        self._resume(_PAUSED_BY_RATE)

    def _dispatch(self, payload: bytes) -> None:
        hub = self.factory
        self.messages_received += 1
        hub.counters.messages_received += 1
        if hub.events.has("data"):
            hub.events.emit("data", self.client_id, payload)
        try:
            self.messageReceived(payload)
        except Exception:
            hub.handler_failed(f"{type(self).__name__}.messageReceived", Failure(), self.client_id)

    def frameError(self, error: FramingError) -> None:
        """The decoder's callback for undecodable input: count, report, drop the client."""
        if self.state != OPEN:
            return  # closed by a handler earlier in this read: what follows does not matter
        what = f"protocol error from client {self.client_id} ({self.address}): {error}"
        self.drop(Drop.PROTOCOL_ERROR, error, ClientDisconnected(what))

    def messageReceived(self, payload: bytes) -> None:
        """Override: called for each complete message, framing removed."""

    def pauseReading(self) -> None:
        """Stop taking messages from this client: what it sends stays in the
        socket (TCP pushes back on it), and the messages left in the current
        read are held until L{resumeReading}.  The idle timeout is suspended."""
        self._pause(_PAUSED_BY_USER)

    def resumeReading(self) -> None:
        """Deliver the held messages, in order, and read again, unless the
        hub or the rate limit holds reading too (each pause has its owner)."""
        self._resume(_PAUSED_BY_USER)

    def waitBeforeReading(self) -> None:
        """Hold this client's next messages (as L{pauseReading} does) until
        L{readAfterWait}: the protocol awaits an answer its next message
        must see (a session being fetched from Redis).  A pause of its own,
        which L{resumeReading} does not lift.  Not an override point."""
        self._pause(_PAUSED_BY_WAIT)

    def readAfterWait(self) -> None:
        """Lift L{waitBeforeReading}'s pause."""
        self._resume(_PAUSED_BY_WAIT)

    def whenFollowing(self, room: str, then: Callable[[], None]) -> None:
        """Call C{then} (say this client is in C{room}) once the hub reads
        the room's messages from the other hubs joined with it: at once
        without a relay, or when it does already; else this client's next
        messages wait meanwhile (L{waitBeforeReading}), for one round trip
        to Redis.  So a member told it is in a room gets every message
        published after that, on any hub.  C{then} is not called if the
        connection closed meanwhile.  Not an override point."""
        relay = self.factory.relay
        ready = relay.following(room) if relay is not None else None
        if ready is None:
            then()
            return
        self.waitBeforeReading()

        def followed(_: object) -> None:
            if self.state == OPEN:
                then()
            self.readAfterWait()

        ready.addCallback(followed)

    def hubPausedReading(self) -> None:
        """Called by L{HubFactory.pause_reading}: a pause of the hub's own,
        which L{resumeReading} does not lift.  Not an override point."""
        self._pause(_PAUSED_BY_HUB)

    def hubResumedReading(self) -> None:
        """Called by L{HubFactory.resume_reading}: lifts only the hub's pause."""
        self._resume(_PAUSED_BY_HUB)

    def _pause(self, why: int) -> None:
        was_paused = self._read_paused
        self._read_paused |= why
        if not was_paused:
            # The hub holds the client back: neither deadline is its fault
            # (the idle one lapses when it comes: see idle_due).
            call, self._frame_call = self._frame_call, None
            if call is not None:
                call.cancel()
            self.transport.pauseProducing()

    def _resume(self, why: int) -> None:
        if not self._read_paused & why:
            return
        self._read_paused &= ~why
        if self._read_paused:
            return
        held = self._held()
        while held and not self._read_paused and self.state == OPEN:
            if self._bucket is not None and not self._take_token():
                break
            self._dispatch(held.popleft())
        if self._read_paused or self.state != OPEN:
            return
        self._read_at = self.factory.clock.seconds()
        self._arm_idle()
        if self.factory.frame_timeout is not None:
            self._watch_frame(self.factory.frame_timeout, False)
        if self._seldom is not None and self._seldom.input_ended:
            self._end_input()
        else:
            self.transport.resumeProducing()

    # -- the idle timeout: traffic either way, like Node's socket.setTimeout

    def _arm_idle(self) -> None:
        hub = self.factory
        if hub.timeout is not None and self._idle is None:
            self._idle = hub.idle_deadlines.add(self.active + hub.timeout, self)

    def idle_due(self) -> None:
        """Called by the hub's idle timetable when this client's idle
        deadline comes.  Traffic only stamps the time (cheap, once per read
        or write): the deadline moves to the true one when it comes early.
        While the hub holds the client back, it has none."""
        hub = self.factory
        self._idle = None
        if self._read_paused:
            return
        timeout = hub.timeout
        assert timeout is not None, "due only with a timeout"
        deadline = self.active + timeout
        if hub.clock.seconds() < deadline:
            self._idle = hub.idle_deadlines.add(deadline, self)
            return
        try:
            self.timeoutConnection()
        except Exception:
            hub.handler_failed(f"{type(self).__name__}.timeoutConnection", Failure(), self.client_id)

    def peerAlive(self) -> None:
        """The peer showed it is there without sending a message (a WebSocket
        pong): traffic, for the idle timeout, as a read would be."""
        self._read_at = self.factory.clock.seconds()

    def timeoutConnection(self) -> None:
        """Override: no traffic either way for C{timeout} seconds.  By
        default: count it, report L{IdleTimeout}, and drop the client."""
        error = IdleTimeout(f"client {self.client_id} idle for {self.factory.timeout} seconds")
        self.drop(Drop.TIMED_OUT, error, level=LogLevel.info)

    # -- outbound -------------------------------------------------------

    def sendMessage(self, payload: bytes) -> None:
        """Frame C{payload} and send it to this client (queued while it does not read)."""
        if type(payload) is not bytes:
            check_payload(payload, "sendMessage")
        frame = self.factory.framing.encode(payload)
        outbox = self.outbox
        if outbox is not None and outbox.mode == WRITE:
            outbox.write(frame)  # the common case, without deliver()'s call
        else:
            self.deliver(frame)

    def broadcastMessage(self, payload: bytes, room: str | None = None) -> int | None:
        """Frame C{payload} once and send it to every other client (of
        C{room}, if given); the fire-and-forget form of
        C{factory.broadcast(payload, exclude=[self.client_id], room=room)}.
        Returns the message's number in the room (see C{room_sequence})."""
        if type(payload) is not bytes:
            check_payload(payload, "broadcastMessage")
        self._send_to_others(payload, room, False)
        return None if room is None else self.factory.room_sequence(room)

    def announce(self, payload: bytes, room: str) -> None:
        """Send a notice (who joined, who left, who is renamed) to the others
        in C{room}, on every hub joined with this one, as L{broadcastMessage}
        does; a notice is not numbered, and not kept in the room's history."""
        if type(payload) is not bytes:
            check_payload(payload, "announce")
        self._send_to_others(payload, room, True)

    def _send_to_others(self, payload: bytes, room: str | None, notice: bool) -> None:
        hub = self.factory
        hub.broadcast_frame(hub.framing.encode(payload), skip=self, room=room, notice=notice, waited=False)
        relay = hub.relay
        if relay is not None:
            if notice:
                relay.broadcast(payload, (self.client_id,), room, notice=True)
            else:
                relay.broadcast(payload, (self.client_id,), room)

    # -- rooms ----------------------------------------------------------

    def join(self, room: str) -> None:
        """Join C{room} (see L{HubFactory.join})."""
        self.factory.join(self.client_id, room)

    def leave(self, room: str) -> None:
        """Leave C{room} (see L{HubFactory.leave})."""
        self.factory.leave(self.client_id, room)

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms this client is in, in the order it joined them."""
        return self.factory.rooms_of(self)

    def deliver(self, frame: bytes, waiter: Waiter = None) -> bool:
        """
        Send an encoded frame: written now, or with the current read's output
        (True); or queued behind earlier ones while the client does not read
        (False), and C{waiter} is told when it is written or the client goes.
        A closing client takes nothing; a queue past C{max_pending} drops the client.
        """
        outbox = self.outbox
        if outbox is None:
            outbox = self.first_outbox()
        mode = CLOSED if outbox is None else outbox.mode
        if mode == WRITE:
            assert outbox is not None
            outbox.write(frame)
            return True
        if mode == QUEUE:
            assert outbox is not None
            if outbox.enqueue(frame, waiter) > self.factory.max_pending:
                self._drop_slow_consumer()
            return False
        departure = None if self._seldom is None else self._seldom.departure
        notify_gone(waiter, departure or ClientDisconnected(f"client {self.client_id} is closing"))
        return False

    def _drop_slow_consumer(self) -> None:
        error = SlowConsumer(
            f"client {self.client_id} ({self.address}) stopped reading with "
            f"{self.pending_bytes} bytes queued (max_pending={self.factory.max_pending})"
        )
        self.drop(Drop.SLOW_CONSUMER, error)

    def drop(self, reason: Drop | str, error: TcpHubError, departure: ClientDisconnected | None = None,
             level: LogLevel = LogLevel.warn) -> None:
        """
        Drop this client for C{error}: count it under C{reason} (a L{Drop},
        or its value, the L{Metrics} field: anything else is a L{ValueError}),
        log it (once per burst of its kind), report it on the C{error}
        event, and abort the connection.  C{departure} is what
        the client's pending sends fail with (by default C{error} itself if it
        is a L{ClientDisconnected}, else one that names it).  For a subclass
        that finds a peer breaking its own protocol, and for transports that
        find one breaking theirs (a WebSocket member that stops answering pings).
        """
        reason = Drop(reason)
        if self.state not in (OPEN, DRAINING):
            return
        if departure is None:
            departure = error if isinstance(error, ClientDisconnected) else ClientDisconnected(str(error))
        self.factory.counters.dropped(reason)
        self.factory.repeats.emit(reason.value, level, "{departure}", departure=departure,
                                  client_id=self.client_id, address=self.address, kind=self.kind,
                                  reason=reason.value, error_type=type(error).__name__)
        self.factory.report(self.client_id, error)
        self._set_seldom().dropped_for = reason
        try:
            self.dropping(reason, error)
        except Exception:
            self.factory.handler_failed("dropping", Failure(), self.client_id)
        self._abort(departure)

    def goingAway(self) -> None:
        """
        Called when this hub drains as a lame duck (its process was told to
        stop, e.g. by C{SIGTERM}, and other hubs will take its clients): tell
        the client to reconnect elsewhere, then close after its queued
        output.  Here: a WebSocket member gets close code 1012 (service
        restart); a subclass with words of its own says them first and
        calls C{super().goingAway()}.
        """
        if IMessageTransport.providedBy(self.transport):
            self.transport.closeWith(GOING_AWAY_CLOSE, "this server is going away: reconnect")
        self.loseConnection()

    def dropping(self, reason: Drop, error: TcpHubError) -> None:
        """
        Called as the hub drops this client for C{error}, just before it
        aborts the connection (queued output is then lost): a subclass's
        last words, with L{sendNow}.  Nothing here.
        """

    def sendNow(self, payload: bytes) -> bool:
        """
        Frame C{payload} and hand it to the kernel at once, bypassing the
        outbox: only if nothing is waiting to be written to this client and
        its socket (TCP or UNIX) takes it whole without waiting.  For last
        words before the hub drops the client: once they are sent, the drop
        closes with a FIN after them rather than a reset.  True if it was sent.
        """
        said = self._set_seldom().said_last = send_now(self.transport, self.factory.framing.encode(payload))
        return said

    def loseConnection(self) -> None:
        """Close after the queued output is written; no new messages are taken."""
        if self.state != OPEN:
            return
        self.state = DRAINING
        outbox = self.outbox
        if outbox is not None:
            outbox.close()
            if outbox.queue:
                return  # the transport's resumeProducing closes it, once the queue is written
        self._close_transport()

    def abortConnection(self) -> None:
        """Close at once: queued output is dropped, and its senders told.
        (A refused client was aborted when it was refused.)"""
        if self.state in (OPEN, DRAINING):
            self._abort(ClientDisconnected(f"client {self.client_id} was disconnected by the hub"))

    def _close_transport(self) -> None:
        # A registered producer keeps a paused transport open for ever: unregister first
        # (this protocol is registered once it has an outbox).
        if self.outbox is not None:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def whenLost(self) -> Deferred[None]:
        """Fires once the connection is closed."""
        seldom = self._set_seldom()
        if seldom.lost is None:
            seldom.lost = OneShotObserver()
        return seldom.lost.when_fired()

    def _abort(self, departure: ClientDisconnected) -> None:
        self.state = GONE
        seldom = self._set_seldom()
        seldom.departure = departure
        if self.outbox is not None:
            self.outbox.abort(departure, unsent_bytes(self.transport))
        self._cancel_timers()
        if seldom.said_last:
            # Twisted's buffer was empty and stays so: a FIN after the last
            # words (a reset would make the peer's kernel discard them).
            self._close_transport()
        else:
            self.transport.abortConnection()

    # -- IPushProducer: the transport tells us when its buffer is full ---

    def pauseProducing(self) -> None:
        # The transport pauses its producer once its writes filled its buffer;
        # one that has written nothing yet gets its outbox now, paused.
        outbox = self.outbox if self.outbox is not None else self.first_outbox()
        if outbox is not None:
            outbox.pause()

    def resumeProducing(self) -> None:
        outbox = self.outbox
        if outbox is None:
            return
        outbox.resume()
        if self.state == DRAINING and not outbox.queue:
            self._close_transport()

    def stopProducing(self) -> None:
        if self.outbox is not None:
            self.outbox.pause()

    @property
    def active(self) -> float:
        """When traffic last went either way, in the hub clock's seconds."""
        outbox = self.outbox
        return self._read_at if outbox is None else max(self._read_at, outbox.written_at)

    @property
    def held_bytes(self) -> int:
        """Input held while reading is paused."""
        return sum(map(len, self._held()))

    def replayFrame(self, room: str, kept: Kept) -> bytes:
        """
        The frame that gives this client one message of C{room}'s history
        as it joins the room (with C{room_history}): C{kept.frame} is the
        message as it was sent, C{kept.at} when.  Here: the frame as it was.
        The chat prefixes the time.
        """
        return kept.frame

    @classmethod
    def relayedPayload(cls, room: str, payload: bytes, offset: int, epoch: str) -> bytes:
        """
        A message another hub (joined through a relay) sent to C{room}, as
        this hub's members get it: C{offset} is its number in the room here,
        within C{epoch}, for a format that carries them (each hub numbers
        its rooms on its own).  Here: the bytes as they are.
        """
        return payload

    @classmethod
    def publication(cls, room: str, sender: str, payload: bytes, data: Any, offset: int,
                    epoch: str) -> bytes:
        """
        The message C{room}'s members get when an application publishes to
        it (the HTTP API's C{publish}), as they would get it from a member
        of this protocol: C{sender} names the application, C{payload} is the
        published bytes, C{data} the published JSON value (if it was JSON),
        C{offset} its number in the room, counted within C{epoch} (see
        L{HubFactory.room_epoch}).  Here: the bytes as they are.  A subclass
        with a format of its own overrides it.
        """
        return payload

    @property
    def user(self) -> str | None:
        """Who the client authenticated as, for C{/connz} and the logs
        (a hook: a protocol with identities overrides it); None here."""
        return None

    @property
    def presence(self) -> object:
        """What a room's list of members shows of this client on every hub
        joined with this one, as JSON (a hook): the chat's nick, the
        structured protocol's user and name; None here: not listed.  A
        protocol whose presence changes while it is in rooms calls
        L{presenceChanged}."""
        return None

    def presenceChanged(self) -> None:
        """Say that what L{presence} shows has changed (a nick, a name): a
        relay writes the rooms' lists anew only for rooms whose members or
        presence changed."""
        self.factory.presence_changed(self)

    def info(self) -> ClientInfo:
        """A snapshot of this client's record."""
        return ClientInfo(
            id=self.client_id,
            address=self.address,
            connected=self.connected_at,
            bytes_received=self.bytes_received,
            bytes_sent=self.bytes_sent,
            messages_received=self.messages_received,
            messages_sent=self.messages_sent,
            pending_bytes=self.pending_bytes,
            held_bytes=self.held_bytes,
            active=self.active,
            rooms=self.factory.rooms_of(self),
            kind=self.kind,
            user=self.user,
        )

