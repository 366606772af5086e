"""
The TCP hub: one L{HubProtocol} per client, a L{HubFactory} that tracks them
and sends to one or all, and L{TcpServer}, the service that listens.

Extend the hub by subclassing L{HubProtocol} and passing the class as
C{protocol=}.  The hooks a subclass overrides:

  - C{messageReceived(payload)}: each decoded message (no need to call super).
  - C{connectionMade()} / C{connectionLost(reason)}: call super first / last;
    C{self.client_id} is set once super's C{connectionMade} has run.
  - C{timeoutConnection()}: the client was idle for C{timeout} seconds.

C{pauseReading()}/C{resumeReading()} (one client) and the factory's
C{pause_reading()}/C{resume_reading()} (all clients, and those who connect
meanwhile) stop taking input, so that a slow destination pushes back on the
senders through TCP instead of filling memory.

Inside a hook, C{self.sendMessage(payload)} answers this client and
C{self.broadcastMessage(payload)} talks to the rest; C{self.factory.broadcast}
and C{self.factory.send} return Deferreds, for flow control.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import deque
from typing import Callable, Iterable, Sequence

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from zope.interface import implementer

from tcphub import _checks, descriptors
from tcphub._bursts import first_of_a_burst
from tcphub._observer import OneShotObserver
from tcphub.errors import (
    AddressLimitReached,
    ClientDisconnected,
    ConnectionLimitReached,
    DescriptorLimitReached,
    FrameTimeout,
    FramingError,
    HandlerError,
    IdleTimeout,
    ListenFailed,
    SlowConsumer,
    TcpHubError,
    UnframeableMessage,
    UnknownClient,
)
from tcphub.events import Events, Subscription
from tcphub.framing import Framing, get_framing
from tcphub.metrics import ClientInfo, HubCounters, Metrics

__all__ = ["HubFactory", "HubProtocol", "TcpServer"]

DEFAULT_MAX_FRAME = 64 * 1024
DEFAULT_MAX_PENDING = 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_DRAIN_TIMEOUT = 5.0
DEFAULT_FRAME_TIMEOUT = 30.0
# Descriptors kept free beside the clients: listening ports, log files, the
# upstream connection, the reactor's own.
DESCRIPTOR_RESERVE = 64
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
# Twisted and Node use 50, which a burst of a few hundred connects overflows:
# the kernel then drops the handshakes and the clients stall on SYN-ACK retries.
DEFAULT_BACKLOG = 511


def _format_address(address: IAddress) -> str:
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "unix")
    return str(address)


class _Countdown:
    """One broadcast waiting on the paused receivers it was queued for; its
    Deferred fires when each has written it or gone.  One per broadcast, not
    one Deferred per receiver: broadcasting is the hub's hot path."""

    __slots__ = ("remaining", "done")

    def __init__(self) -> None:
        self.remaining = 0
        self.done: Deferred[None] = Deferred()

    def tick(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.callback(None)


def _notify_written(waiter: Deferred[None] | _Countdown | None) -> None:
    if isinstance(waiter, _Countdown):
        waiter.tick()
    elif waiter is not None:
        waiter.callback(None)


def _notify_gone(waiter: Deferred[None] | _Countdown | None, departure: ClientDisconnected) -> None:
    # A receiver that leaves does not fail a broadcast, only a send.
    if isinstance(waiter, _Countdown):
        waiter.tick()
    elif waiter is not None:
        waiter.errback(departure)


# Why reading from a client is paused (HubProtocol._read_paused is a set of these bits).
_PAUSED_BY_USER = 1  # pauseReading(), e.g. the hub-wide flow control of a gateway
_PAUSED_BY_RATE = 2  # the client is over max_rate: resumed when its bucket refills


def _check_payload(data: object, where: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"{where} takes bytes, not {type(data).__name__}"
            + (": encode text first, e.g. text.encode('utf-8')" if isinstance(data, str) else "")
        )


@implementer(IHalfCloseableProtocol)
class HubProtocol(Protocol):
    """
    One client of the hub: decodes its frames, counts its traffic, and queues
    its output (up to the hub's C{max_pending} bytes) while its transport is
    paused because the client does not read.

    It is half-closeable: when the client ends its input (FIN, e.g. C{nc -N}
    or C{shutdown(SHUT_WR)}), what it sent is handled and L{inputEnded} is
    called, which closes the connection once the queued output is written
    (override it to keep the client as a receiver).
    """

    factory: HubFactory
    client_id: str
    connected_at: float

    _log = Logger()
    _admitted = False
    _closing = False
    _close_when_flushed = False
    _input_ended = False
    _read_paused = 0
    _lost: OneShotObserver | None = None
    _outbox: list[bytes] | None = None
    _idle_call: IDelayedCall | None = None
    _frame_call: IDelayedCall | None = None
    _rate_call: IDelayedCall | None = None
    _host: str | None = None

    def connectionMade(self) -> None:
        hub = self.factory
        self.client_id = uuid.uuid4().hex
        self.connected_at = self._active_at = hub.clock.seconds()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        self._frames = 0
        # Both queues are created when first needed: most clients never need
        # them, and an empty deque costs about 600 bytes per connection.
        self._pending: deque[tuple[bytes, Deferred[None] | _Countdown | None]] | None = None
        self._pending_bytes = 0
        self._paused = False
        self._held: deque[bytes] | None = None
        self._held_bytes = 0
        self._departure: ClientDisconnected | None = None
        if not hub._admit(self):
            self._closing = True
            self.transport.abortConnection()
            return
        self._admitted = True
        self._decoder = hub.framing.decoder(self, hub.max_frame)
        if hub.max_rate is not None:
            self._tokens = float(hub.max_burst)
            self._tokens_at = self.connected_at
        self.transport.registerProducer(self, True)
        if hub.keep_alive and ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
        self._arm_idle()
        hub._connected(self)
        if hub.reading_paused:
            self.pauseReading()

    @property
    def address(self) -> str:
        """The peer's address, C{host:port} (formatted when asked: it is
        rarely needed, and each idle connection's bytes count)."""
        return _format_address(self.transport.getPeer())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        if self._lost is not None:
            self._lost.fire(None)
        if not self._admitted:
            self.factory._gone(self)
            return
        departure = self._departure or ClientDisconnected(
            f"client {self.client_id} disconnected: {reason.getErrorMessage()}"
        )
        self._fail_pending(departure)
        self.factory._disconnected(self, reason)

    def _cancel_timers(self) -> None:
        for name in ("_idle_call", "_frame_call", "_rate_call"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # -- inbound --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        hub = self.factory
        size = len(data)
        self.bytes_received += size
        hub.counters.bytes_received += size
        self._active_at = hub.clock.seconds()
        frames = self._frames
        # Whatever this read makes the hub write, to any client, goes out as
        # one write per client once the read is handled (see _write).
        hub._batching += 1
        try:
            self._decoder.dataReceived(data)
        finally:
            hub._batching -= 1
            if not hub._batching:
                hub._flush()
        if hub.frame_timeout is not None and not (self._closing or self._read_paused):
            self._watch_frame(frames != self._frames)

    def _watch_frame(self, frames_completed: bool) -> None:
        """Keep a deadline on a frame begun and not finished (a slowloris
        sends one byte now and then to hold its connection for ever)."""
        call = self._frame_call
        if self._decoder.partial:
            if call is None:
                self._frame_call = self.factory.clock.callLater(
                    self.factory.frame_timeout, self._frame_timed_out
                )
            elif frames_completed:
                # The frame begun now is a new one: its own deadline.
                call.reset(self.factory.frame_timeout)
        elif call is not None:
            self._frame_call = None
            call.cancel()

    def _frame_timed_out(self) -> None:
        self._frame_call = None
        error = FrameTimeout(
            f"client {self.client_id} ({self.address}) began a frame and did not "
            f"finish it within {self.factory.frame_timeout} seconds"
        )
        self._drop("frame_timeouts", error, ClientDisconnected(str(error)))

    def readConnectionLost(self) -> None:
        """IHalfCloseableProtocol: the client ended its input (FIN)."""
        if self._closing:
            return  # the hub is closing it already: no hook for a departing client
        self._input_ended = True
        hub = self.factory
        hub._batching += 1
        try:
            dropped = self._decoder.inputEnded()
        finally:
            hub._batching -= 1
            if not hub._batching:
                hub._flush()
        if dropped:
            # Not a protocol error: a client that crashes ends its input anywhere.
            self._log.debug(
                "client {client_id} ended its input inside a frame: {dropped} bytes dropped",
                client_id=self.client_id, dropped=dropped,
            )
        if self._frame_call is not None:
            self._frame_call.cancel()
            self._frame_call = None
        if not self._held and not self._closing:
            self._end_input()

    def writeConnectionLost(self) -> None:
        """IHalfCloseableProtocol: our side's output was shut down."""

    def _end_input(self) -> None:
        try:
            self.inputEnded()
        except Exception:
            self.factory._handler_failed(f"{type(self).__name__}.inputEnded", Failure(), self.client_id)

    def inputEnded(self) -> None:
        """
        Override: the client will send nothing more (it closed its connection,
        or only its sending half, as C{nc -N} and C{shutdown(SHUT_WR)} do), and
        every message it sent has been handled.  By default: close once the
        queued output is written, so that a request followed by FIN gets its
        whole reply.  Do nothing to keep the client as a receiver (a peer that
        closed both halves is then found at the next write, or by C{timeout}).
        """
        self.loseConnection()

    def frameReceived(self, payload: bytes) -> None:
        """The decoder's callback: count, emit C{data}, call L{messageReceived}."""
        if self._closing or self.transport.disconnecting:
            return
        self._frames += 1
        if self._read_paused:
            # The rest of a read that came in before the pause: hold it.
            self._hold(payload)
            return
        hub = self.factory
        if hub.max_rate is not None and not self._take_token():
            self._hold(payload)
            return
        self._dispatch(payload)

    def _hold(self, payload: bytes) -> None:
        if self._held is None:
            self._held = deque()
        self._held.append(payload)
        self._held_bytes += len(payload)

    def _take_token(self) -> bool:
        """The token bucket of C{max_rate}: False (and reading paused until a
        token is due) if this client is over its rate."""
        hub = self.factory
        now = hub.clock.seconds()
        rate = hub.max_rate
        tokens = min(float(hub.max_burst), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        hub.counters.rate_limited += 1
        self._pause(_PAUSED_BY_RATE)
        self._rate_call = hub.clock.callLater((1.0 - tokens) / rate, self._rate_refilled)
        return False

    def _rate_refilled(self) -> None:
        self._rate_call = None
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
            hub._handler_failed(f"{type(self).__name__}.messageReceived", Failure(), self.client_id)

    def frameError(self, error: FramingError) -> None:
        """The decoder's callback for undecodable input: count, report, drop the client."""
        if self._closing:
            return
        what = f"protocol error from client {self.client_id} ({self.address}): {error}"
        self._drop("protocol_errors", error, ClientDisconnected(what))

    def messageReceived(self, payload: bytes) -> None:
        """Override: called for each complete message, framing removed."""

    def pauseReading(self) -> None:
        """Stop taking messages from this client: what it sends stays in the
        socket (TCP pushes back on it), and the messages left in the current
        read are held until L{resumeReading}.  The idle timeout is suspended."""
        if self._admitted:
            self._pause(_PAUSED_BY_USER)

    def resumeReading(self) -> None:
        """Deliver the held messages, in order, and read again."""
        self._resume(_PAUSED_BY_USER)

    def _pause(self, why: int) -> None:
        if self._read_paused & why:
            return
        was_paused = self._read_paused
        self._read_paused |= why
        if not was_paused:
            # The hub holds the client back: neither deadline is its fault.
            self._disarm_idle()
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
        held = self._held or ()
        rate = self.factory.max_rate
        while held and not self._read_paused and not self._closing:
            if rate is not None and not self._take_token():
                break
            payload = held.popleft()
            self._held_bytes -= len(payload)
            self._dispatch(payload)
        if self._read_paused or self._closing:
            return
        self._active_at = self.factory.clock.seconds()
        self._arm_idle()
        if self.factory.frame_timeout is not None:
            self._watch_frame(False)
        if self._input_ended:
            self._end_input()
        else:
            self.transport.resumeProducing()

    # -- the idle timeout: traffic either way, like Node's socket.setTimeout

    def _arm_idle(self) -> None:
        timeout = self.factory.timeout
        if timeout is not None and self._idle_call is None:
            self._idle_call = self.factory.clock.callLater(timeout, self._idle_check)

    def _disarm_idle(self) -> None:
        call, self._idle_call = self._idle_call, None
        if call is not None:
            call.cancel()

    def _idle_check(self) -> None:
        # Traffic only stamps _active_at (cheap, once per read or write);
        # the timer moves to the true deadline when it fires early.
        self._idle_call = None
        clock = self.factory.clock
        deadline = self._active_at + self.factory.timeout
        now = clock.seconds()
        if now < deadline:
            self._idle_call = clock.callLater(deadline - now, self._idle_check)
        else:
            self.timeoutConnection()

    def timeoutConnection(self) -> None:
        """Override: no traffic either way for C{timeout} seconds.  By
        default: count it, report L{IdleTimeout}, and drop the client."""
        error = IdleTimeout(f"client {self.client_id} idle for {self.factory.timeout} seconds")
        self._drop("timed_out", error, ClientDisconnected(str(error)), LogLevel.info)

    # -- outbound -------------------------------------------------------

    def sendMessage(self, payload: bytes) -> None:
        """Frame C{payload} and send it to this client (queued while it is paused)."""
        _check_payload(payload, "sendMessage")
        self._deliver(self.factory.framing.encode(payload))

    def broadcastMessage(self, payload: bytes) -> None:
        """Frame C{payload} once and send it to every other client; the
        fire-and-forget form of C{factory.broadcast(payload, exclude=[self.client_id])}."""
        _check_payload(payload, "broadcastMessage")
        hub = self.factory
        countdown = hub._broadcast(hub.framing.encode(payload), skip=self)
        if countdown is not None:
            countdown.tick()

    def _deliver(self, frame: bytes, waiter: Deferred[None] | _Countdown | None = None) -> bool:
        """
        Write an encoded frame now (True), or queue it behind earlier ones
        while the transport is paused (False); C{waiter} is told when a queued
        frame is written or the client goes.  A closing client takes nothing.
        """
        if self._closing:
            _notify_gone(waiter, self._departure or ClientDisconnected(self.client_id))
            return False
        if not self._paused and not self._pending:
            self._write(frame)
            return True
        self._queue(frame, waiter)
        return False

    def _queue(self, frame: bytes, waiter: Deferred[None] | _Countdown | None) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append((frame, waiter))
        self._pending_bytes += len(frame)
        if self._pending_bytes > self.factory.max_pending:
            self._drop_slow_consumer()

    def _write(self, frame: bytes) -> None:
        hub = self.factory
        size = len(frame)
        counters = hub.counters
        self.bytes_sent += size
        self.messages_sent += 1
        counters.bytes_sent += size
        counters.messages_sent += 1
        if not hub._batching:
            self._active_at = hub.clock.seconds()
            self.transport.write(frame)
        elif self._outbox is None:
            self._outbox = [frame]
            hub._dirty.append(self)
        else:
            self._outbox.append(frame)

    def _flush_outbox(self, now: float) -> None:
        outbox, self._outbox = self._outbox, None
        if not outbox:
            return
        self._active_at = now
        if len(outbox) == 1:
            self.transport.write(outbox[0])
        elif len(outbox[0]) >= 1024:
            # Large frames: hand them over as they are, rather than copy them
            # all once more only for the transport to join them again.
            self.transport.writeSequence(outbox)
        else:
            self.transport.write(b"".join(outbox))

    def _drop_slow_consumer(self) -> None:
        error = SlowConsumer(
            f"client {self.client_id} ({self.address}) stopped reading with "
            f"{self._pending_bytes} bytes queued (max_pending={self.factory.max_pending})"
        )
        self._drop("slow_consumers", error, error)

    def _drop(self, counter: str, error: TcpHubError, departure: ClientDisconnected,
              level: LogLevel = LogLevel.warn) -> None:
        """Count C{error} in the hub's C{counter}, log it (once per burst),
        report it on the C{error} event, and abort the client."""
        counters = self.factory.counters
        count = getattr(counters, counter) + 1
        setattr(counters, counter, count)
        if first_of_a_burst(count):
            self._log.emit(level, "{departure} ({count} {counter} so far)",
                           departure=departure, count=count, counter=counter)
        self.factory._report(self.client_id, error)
        self._abort(departure)

    def loseConnection(self) -> None:
        """Close after the queued output is written; no new messages are taken."""
        if self._closing:
            return
        self._closing = True
        self._close_when_flushed = True
        if not self._pending:
            self._close_transport()

    def _close_transport(self) -> None:
        self._flush_outbox(self.factory.clock.seconds())
        # A registered producer keeps a paused transport open for ever: unregister first.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def whenLost(self) -> Deferred[None]:
        """Fires once the connection is closed."""
        if self._lost is None:
            self._lost = OneShotObserver()
        return self._lost.when_fired()

    def _abort(self, departure: ClientDisconnected) -> None:
        self._closing = True
        outbox, self._outbox = self._outbox, None
        if outbox:
            # Counted when batched, never handed to the transport: uncount.
            size = sum(map(len, outbox))
            counters = self.factory.counters
            self.bytes_sent -= size
            self.messages_sent -= len(outbox)
            counters.bytes_sent -= size
            counters.messages_sent -= len(outbox)
        self._departure = departure
        self._fail_pending(departure)
        self._cancel_timers()
        self.transport.abortConnection()

    def _fail_pending(self, departure: ClientDisconnected) -> None:
        pending, self._pending = self._pending or (), None
        self._pending_bytes = 0
        for _, waiter in pending:
            _notify_gone(waiter, departure)

    # -- IPushProducer: the transport tells us when its buffer is full ---

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        pending, self._pending = self._pending, None
        if pending:
            # The whole queue in one write: its bytes move to the transport's
            # buffer, which pauses us again if need be.
            frames = [frame for frame, _ in pending]
            counters = self.factory.counters
            self.bytes_sent += self._pending_bytes
            self.messages_sent += len(frames)
            counters.bytes_sent += self._pending_bytes
            counters.messages_sent += len(frames)
            self._pending_bytes = 0
            self._active_at = self.factory.clock.seconds()
            self.transport.write(b"".join(frames))
            for _, waiter in pending:
                _notify_written(waiter)
        if self._close_when_flushed and not self._pending:
            self._close_when_flushed = False
            self._close_transport()

    def stopProducing(self) -> None:
        self._paused = True

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
            pending_bytes=self._pending_bytes,
            held_bytes=self._held_bytes,
        )


class HubFactory(Factory):
    """
    The hub's state: the client table, counters, events and limits.

    Events (subscribe with L{on}, which returns a L{Subscription}):
      - C{connection(client: ClientInfo)}
      - C{data(client_id: str, payload: bytes)}
      - C{disconnect(client_id: str, reason: Failure)}
      - C{error(client_id: str | None, error: TcpHubError)}
    """

    protocol: type[HubProtocol] = HubProtocol
    noisy = False  # TcpServer logs its own line with the bound address.
    _log = Logger()

    def __init__(
        self,
        *,
        protocol: type[HubProtocol] | None = None,
        framing: str | Framing = "line",
        max_frame: int = DEFAULT_MAX_FRAME,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_ip: int | None = None,
        timeout: float | None = None,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        max_rate: float | None = None,
        max_burst: int | None = None,
        keep_alive: bool = True,
        clock: IReactorTime | None = None,
    ) -> None:
        if protocol is not None:
            self.protocol = protocol
        for name, value in (("max_frame", max_frame), ("max_pending", max_pending),
                            ("max_connections", max_connections)):
            _checks.number(name, value, minimum=1, integer=True)
        if max_connections_per_ip is not None:
            _checks.number("max_connections_per_ip", max_connections_per_ip, minimum=1, integer=True)
        if max_rate is not None:
            _checks.number("max_rate", max_rate, above=0)
            if max_burst is None:
                max_burst = max(1, math.ceil(max_rate))
            _checks.number("max_burst", max_burst, minimum=1, integer=True)
        elif max_burst is not None:
            raise ValueError("max_burst goes with max_rate")
        if clock is None:
            from twisted.internet import reactor as clock
        self.framing = get_framing(framing)
        self.max_frame = max_frame
        self.max_pending = max_pending
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.timeout = _checks.seconds_or_none("timeout", timeout)
        self.frame_timeout = _checks.seconds_or_none("frame_timeout", frame_timeout)
        self.max_rate = max_rate
        self.max_burst = max_burst
        self.keep_alive = _checks.flag("keep_alive", keep_alive)
        self.clock: IReactorTime = clock
        self.counters = HubCounters()
        self.events = Events(("connection", "data", "disconnect", "error"), self._event_failed)
        self.started_at: float | None = None
        self.reading_paused = False
        self._batching = 0
        self._dirty: list[HubProtocol] = []
        self._clients: dict[str, HubProtocol] = {}
        # Connections that are not in the client table (refused ones, until
        # they are gone): stop() waits for these too.
        self._refused: set[HubProtocol] = set()
        self._per_ip: dict[str, int] = {}
        self._all_gone: OneShotObserver | None = None

    def limit_connections(self, allowed: int) -> None:
        """Admit at most C{allowed} clients, fewer than C{max_connections}:
        what the process's descriptor limit leaves room for."""
        self.max_connections = min(self.max_connections, max(1, allowed))

    def startFactory(self) -> None:
        self.started_at = self.clock.seconds()

    # -- the public API -------------------------------------------------

    def on(self, event: str, callback) -> Subscription:
        """Subscribe to an event; see the class docstring for the arguments."""
        return self.events.on(event, callback)

    def send(self, client_id: str, data: bytes) -> Deferred[None]:
        """
        Send one message to one client.  Fires once it is handed to the client's
        transport, which waits while the client does not read; errbacks with
        L{UnknownClient}, L{ClientDisconnected} (or L{SlowConsumer}), or
        L{UnframeableMessage}.
        """
        _check_payload(data, "send")
        client = self._clients.get(client_id)
        if client is None:
            return fail(UnknownClient(client_id))
        try:
            frame = self.framing.encode(data)
        except UnframeableMessage:
            return fail()
        waiter: Deferred[None] = Deferred()
        if client._deliver(frame, waiter):
            return succeed(None)
        return waiter

    def broadcast(self, data: bytes, exclude: Iterable[str] = ()) -> Deferred[None]:
        """
        Send one message to every client not in C{exclude}, framed once.  Fires
        when every receiver has taken it or gone; clients that leave meanwhile
        do not fail it.  Errbacks only with L{UnframeableMessage}.  Raises
        L{TypeError} for C{str} data, or one id given as C{exclude} instead of
        a collection of ids.
        """
        _check_payload(data, "broadcast")
        if isinstance(exclude, (str, bytes)):
            raise TypeError(
                f"broadcast's exclude takes a collection of client ids, not one id: "
                f"exclude=[{exclude!r}]"
            )
        try:
            frame = self.framing.encode(data)
        except UnframeableMessage:
            return fail()
        countdown = self._broadcast(frame, frozenset(exclude))
        if countdown is None:
            return succeed(None)
        countdown.tick()
        return countdown.done

    def _broadcast(
        self, frame: bytes, excluded: frozenset[str] = frozenset(), skip: HubProtocol | None = None
    ) -> _Countdown | None:
        """
        Deliver C{frame} to every client but C{skip} and the C{excluded} ids.
        Returns None if every receiver took it at once, else a countdown for
        the paused ones, still held once (the caller ticks it).  The hot path:
        HubProtocol._write is inlined for the receivers that can take the
        frame now, and the hub's counters are summed once.
        """
        countdown = None
        size = len(frame)
        batching = self._batching
        now = self.clock.seconds()
        written = 0
        for client in tuple(self._clients.values()):
            if client is skip or client._closing or (excluded and client.client_id in excluded):
                continue
            if client._paused or client._pending:
                if countdown is None:
                    countdown = _Countdown()
                    countdown.remaining = 1
                countdown.remaining += 1
                client._queue(frame, countdown)
                continue
            client.bytes_sent += size
            client.messages_sent += 1
            written += 1
            if not batching:
                client._active_at = now
                client.transport.write(frame)
            elif client._outbox is None:
                client._outbox = [frame]
                self._dirty.append(client)
            else:
                client._outbox.append(frame)
        self.counters.bytes_sent += written * size
        self.counters.messages_sent += written
        return countdown

    def disconnect(self, client_id: str) -> Deferred[None]:
        """Close one client's connection after its queued output; fires when it is gone."""
        client = self._clients.get(client_id)
        if client is None:
            return fail(UnknownClient(client_id))
        client.loseConnection()
        return client.whenLost()

    def pause_reading(self) -> None:
        """Stop taking messages from every client, and from those who connect
        until L{resume_reading} (see L{HubProtocol.pauseReading})."""
        self.reading_paused = True
        for client in list(self._clients.values()):
            client.pauseReading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        for client in list(self._clients.values()):
            client.resumeReading()

    def clients(self) -> list[ClientInfo]:
        """Snapshots of every connected client."""
        return [client.info() for client in self._clients.values()]

    def client(self, client_id: str) -> ClientInfo:
        """A snapshot of one client; raises L{UnknownClient}."""
        try:
            return self._clients[client_id].info()
        except KeyError:
            raise UnknownClient(client_id) from None

    def get_metrics(self) -> Metrics:
        uptime = 0.0 if self.started_at is None else self.clock.seconds() - self.started_at
        return self.counters.snapshot(connections=len(self._clients), uptime=uptime)

    def close_all(self, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> Deferred[None]:
        """
        Close every connection once its queued output is written; after
        C{drain_timeout} seconds abort those still open.  Fires when none is left.
        """
        if not self._clients and not self._refused:
            return succeed(None)
        if self._all_gone is None:
            self._all_gone = OneShotObserver()
        done = self._all_gone.when_fired()
        for client in [*self._clients.values(), *self._refused]:
            client.loseConnection()
        deadline = self.clock.callLater(drain_timeout, self._abort_stragglers)
        done.addBoth(lambda result: (deadline.active() and deadline.cancel(), result)[1])
        return done

    # -- called by HubProtocol --------------------------------------------

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        if dirty:
            now = self.clock.seconds()
            for client in dirty:
                client._flush_outbox(now)

    def _admit(self, client: HubProtocol) -> bool:
        error: ConnectionLimitReached | None = None
        if len(self._clients) >= self.max_connections:
            error = ConnectionLimitReached(
                f"refused {client.address}: {self.max_connections} clients connected"
            )
        elif self.max_connections_per_ip is not None:
            host = getattr(client.transport.getPeer(), "host", None)
            if host is not None:
                count = self._per_ip.get(host, 0)
                if count >= self.max_connections_per_ip:
                    self.counters.rejected_per_ip += 1
                    error = AddressLimitReached(
                        f"refused {client.address}: {count} clients connected from "
                        f"{host} (max_connections_per_ip={self.max_connections_per_ip})"
                    )
                else:
                    self._per_ip[host] = count + 1
                    client._host = host
        if error is None:
            return True
        self._refused.add(client)
        self.counters.rejected += 1
        if first_of_a_burst(self.counters.rejected):
            self._log.warn("{error} ({count} refused so far)", error=error, count=self.counters.rejected)
        self._report(None, error)
        return False

    def _connected(self, client: HubProtocol) -> None:
        self._clients[client.client_id] = client
        self.counters.accepted += 1
        self._log.debug("client {client_id} connected from {address}",
                        client_id=client.client_id, address=client.address)
        if self.events.has("connection"):
            self.events.emit("connection", client.info())

    def _disconnected(self, client: HubProtocol, reason: Failure) -> None:
        del self._clients[client.client_id]
        host = client._host
        if host is not None:
            left = self._per_ip[host] - 1
            if left:
                self._per_ip[host] = left
            else:
                del self._per_ip[host]
        self._log.debug("client {client_id} disconnected: {reason}",
                        client_id=client.client_id, reason=reason.getErrorMessage())
        self.events.emit("disconnect", client.client_id, reason)
        self._gone(client)

    def _gone(self, client: HubProtocol) -> None:
        self._refused.discard(client)
        if not self._clients and not self._refused and self._all_gone is not None:
            all_gone, self._all_gone = self._all_gone, None
            all_gone.fire(None)

    def _report(self, client_id: str | None, error: TcpHubError) -> None:
        self.events.emit("error", client_id, error)

    def _handler_failed(self, where: str, failure: Failure, client_id: str | None) -> None:
        self.counters.handler_errors += 1
        if first_of_a_burst(self.counters.handler_errors):
            self._log.failure("{where} raised (the hub goes on; {count} so far)",
                              failure, where=where, count=self.counters.handler_errors)
        error = HandlerError.from_failure(where, failure)
        if where != "error event callback":
            self._report(client_id, error)

    def _event_failed(self, event: str, failure: Failure) -> None:
        self._handler_failed(f"{event} event callback", failure, None)

    def _refused_without_descriptor(self) -> None:
        counters = self.counters
        counters.descriptor_refusals += 1
        error = DescriptorLimitReached(
            f"{counters.descriptor_refusals} connections refused so far: no file descriptor "
            "left (EMFILE); raise the open-file limit (ulimit -n) or lower max_connections"
        )
        if first_of_a_burst(counters.descriptor_refusals):
            self._log.warn("{error}", error=error)
        self._report(None, error)

    def _abort_stragglers(self) -> None:
        for client in [*self._clients.values(), *self._refused]:
            self._log.info("aborting {address}: still open after the drain timeout",
                           address=client.address)
            client.transport.abortConnection()


def check_host(host: object) -> str:
    """Return C{host} if it can be listened on: an IPv4 or IPv6 address, or a name."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host takes an address or a name, not {host!r}")
    if host.startswith("[") and host.endswith("]"):
        raise ValueError(f"host takes an address without brackets, e.g. {host[1:-1]!r}, not {host!r}")
    if not (isIPAddress(host) or isIPv6Address(host) or _HOST_NAME.fullmatch(host)):
        raise ValueError(f"host takes an IPv4 or IPv6 address or a host name, not {host!r}")
    return host


class TcpServer(Service):
    """
    The hub as a service: listens on C{host:port} (or on C{endpoint}, any Twisted
    server endpoint string or object, or several), and stops by closing the
    listening ports and then every client.

    C{timeout} is in seconds (the seed's milliseconds, divided by 1000);
    C{None} disables the idle timeout.
    """

    _log = Logger()

    def __init__(
        self,
        port: int = 3000,
        host: str = "127.0.0.1",
        backlog: int = DEFAULT_BACKLOG,
        keep_alive: bool = True,
        timeout: float | None = None,
        *,
        framing: str | Framing = "line",
        max_frame: int = DEFAULT_MAX_FRAME,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_ip: int | None = None,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        max_rate: float | None = None,
        max_burst: int | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        protocol: type[HubProtocol] = HubProtocol,
        endpoint: str | IStreamServerEndpoint | Sequence[str | IStreamServerEndpoint] | None = None,
        raise_descriptor_limit: bool = True,
        clock: IReactorTime | None = None,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if endpoint is None:
            _checks.number("port", port, minimum=0, maximum=65535, integer=True)
            _checks.number("backlog", backlog, minimum=1, maximum=65535, integer=True)
            check_host(host)
        self.factory = HubFactory(
            protocol=protocol,
            framing=framing,
            max_frame=max_frame,
            max_pending=max_pending,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            timeout=timeout,
            frame_timeout=frame_timeout,
            max_rate=max_rate,
            max_burst=max_burst,
            keep_alive=keep_alive,
            clock=clock if clock is not None else reactor,
        )
        self.drain_timeout = _checks.number("drain_timeout", drain_timeout, minimum=0)
        self.raise_descriptor_limit = raise_descriptor_limit
        self._descriptor_watch: Callable[[dict], None] | None = None
        self._reactor = reactor
        self.endpoints = self._endpoints(reactor, endpoint, port, host, backlog)
        self.listening_ports: list[IListeningPort] = []
        self._listening: OneShotObserver | None = None
        self._listen_failure: ListenFailed | None = None

    def _endpoints(self, reactor, endpoint, port: int, host: str, backlog: int) -> list[IStreamServerEndpoint]:
        self._descriptions: dict[int, str] = {}
        if endpoint is None:
            tcp = TCP6ServerEndpoint if isIPv6Address(host) else TCP4ServerEndpoint
            listening = tcp(reactor, port, backlog=backlog, interface=host)
            self._descriptions[id(listening)] = f"{host}:{port}"
            return [listening]
        if isinstance(endpoint, (str, bytes)) or IStreamServerEndpoint.providedBy(endpoint):
            endpoint = [endpoint]
        endpoints = []
        for each in endpoint:
            if isinstance(each, str):
                try:
                    parsed = serverFromString(reactor, each)
                except Exception as error:
                    raise ValueError(f"endpoint {each!r}: {error}") from None
                self._descriptions[id(parsed)] = each
                each = parsed
            endpoints.append(each)
        return endpoints

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start listening; fires when every endpoint listens, errbacks if one fails."""
        if not self.running:
            self.startService()
        return self._listening.when_fired()

    def stop(self) -> Deferred[None]:
        """Fires when the listening ports are closed and every client is gone."""
        if not self.running:
            return succeed(None)
        return self.stopService()

    def privilegedStartService(self) -> None:
        # twistd calls this before the reactor runs: a port that cannot be
        # bound raises here, and twistd exits with the error instead of running
        # a hub that listens nowhere.
        super().privilegedStartService()
        self._listen()
        if self._listen_failure is not None:
            raise self._listen_failure

    def startService(self) -> None:
        super().startService()
        if self.raise_descriptor_limit:
            self._fit_descriptor_limit()
        if self._descriptor_watch is None:
            self._descriptor_watch = self._count_descriptor_refusals
            globalLogPublisher.addObserver(self._descriptor_watch)
        if self._listening is None:
            self._listen()

    def _fit_descriptor_limit(self) -> None:
        """Raise the soft RLIMIT_NOFILE toward the hard one as far as
        C{max_connections} needs; if even the hard limit is short, admit only
        as many clients as it leaves room for, and say so."""
        needed = self.factory.max_connections + DESCRIPTOR_RESERVE
        soft, hard = descriptors.limit()
        if soft >= needed:
            return
        raised = descriptors.raise_limit(needed)
        if raised > soft:
            self._log.info("raised the open-file limit from {soft} to {raised}", soft=soft, raised=raised)
        if raised < needed:
            allowed = max(1, raised - DESCRIPTOR_RESERVE)
            self._log.warn(
                "max_connections is {wanted}, but the open-file limit (ulimit -n) of {limit} "
                "leaves room for about {allowed} clients: more are refused and counted "
                "in 'rejected'; raise the hard limit to serve more",
                wanted=self.factory.max_connections, limit=raised, allowed=allowed,
            )
            self.factory.limit_connections(allowed)

    def _count_descriptor_refusals(self, event: dict) -> None:
        # Twisted closes a connection it cannot give a descriptor to (EMFILE)
        # inside its listening port, before any factory sees it; its log line
        # is the only trace, and it does not say which port: descriptors are
        # the process's, and so is this count.
        if self.listening_ports and event.get("log_format", "").startswith(
            "EMFILE recovery: Closed socket"
        ):
            self.factory._refused_without_descriptor()

    def stopService(self) -> Deferred[None]:
        if self._descriptor_watch is not None:
            globalLogPublisher.removeObserver(self._descriptor_watch)
            self._descriptor_watch = None
        super().stopService()
        listening, self._listening = self._listening, None
        ports, self.listening_ports = self.listening_ports, []
        d = listening.when_fired() if listening is not None else succeed(None)
        d.addErrback(lambda _: None)
        d.addCallback(lambda _: gatherResults([maybeDeferred(port.stopListening) for port in ports]))
        d.addCallback(lambda _: self.factory.close_all(self.drain_timeout))
        d.addCallback(lambda _: self._log.info("tcphub stopped"))
        return d

    def _listen(self) -> None:
        self._listening = listening = OneShotObserver()
        self._listen_failure = None
        attempts = [endpoint.listen(self.factory) for endpoint in self.endpoints]

        def listened(ports: list[IListeningPort]) -> None:
            self.listening_ports = ports
            # Under twistd the ports are bound before the reactor runs and
            # installs its signal handlers: say "listening" once it does, so
            # that the line means ready to serve, and to be stopped.
            self._reactor.callWhenRunning(self._announce, ports)
            listening.fire(None)

        def failed(failure: Failure) -> None:
            # Close the endpoints that did listen: a half-started hub is worse than none.
            for attempt in attempts:
                attempt.addCallback(lambda port: port and port.stopListening())
                attempt.addErrback(lambda _: None)
            cause = failure.value.subFailure
            error = ListenFailed(
                f"tcphub cannot listen on {self._describe(self.endpoints[failure.value.index])}: "
                f"{cause.getErrorMessage()}"
            )
            error.__cause__ = cause.value
            self._listen_failure = error
            self._log.error("{error}", error=error)
            listening.fire(cause)

        gatherResults(attempts, consumeErrors=True).addCallbacks(listened, failed)

    def _describe(self, endpoint: IStreamServerEndpoint) -> str:
        return self._descriptions.get(id(endpoint), repr(endpoint))

    def _announce(self, ports: list[IListeningPort]) -> None:
        for port in ports:
            self._log.info(
                "tcphub listening on {address} (framing={framing})",
                address=_format_address(port.getHost()),
                framing=self.factory.framing.name,
            )

    @property
    def address(self) -> IAddress:
        """The first listening port's address (its C{.port} is the bound port)."""
        if not self.listening_ports:
            raise RuntimeError("the server is not listening")
        return self.listening_ports[0].getHost()

    @property
    def port(self) -> int:
        """The first listening port's bound port number (useful with port 0)."""
        return self.address.port

    # -- the hub's API, for those who hold the service ---------------------

    def on(self, event: str, callback) -> Subscription:
        return self.factory.on(event, callback)

    def send(self, client_id: str, data: bytes) -> Deferred[None]:
        return self.factory.send(client_id, data)

    def broadcast(self, data: bytes, exclude: Iterable[str] = ()) -> Deferred[None]:
        return self.factory.broadcast(data, exclude)

    def disconnect(self, client_id: str) -> Deferred[None]:
        return self.factory.disconnect(client_id)

    def clients(self) -> list[ClientInfo]:
        return self.factory.clients()

    def client(self, client_id: str) -> ClientInfo:
        return self.factory.client(client_id)

    def get_metrics(self) -> Metrics:
        return self.factory.get_metrics()
