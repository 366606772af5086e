"""
L{WebSocketHandler}, the service that keeps one WebSocket connection up
(reconnecting with backoff, up to a retry limit), routes incoming JSON
messages by path, queues sends while disconnected, and matches replies to
requests.  Its connections are L{HandlerProtocol}s (see L{tcphub.ws.protocol}).

Extend it by subclassing L{HandlerProtocol} and passing the class as
C{protocol=}, or by subscribing to the handler's events.
"""

from __future__ import annotations

import email.utils
import enum
from urllib.parse import urljoin, urlsplit, urlunsplit
import inspect
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, cast

from autobahn.websocket.util import parse_url
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub import _checks
from tcphub._metric_fields import COUNTER, GAUGE
from tcphub._observer import OneShotObserver
from tcphub._reactor import default_reactor
from tcphub._version import version
from tcphub._repeats import RepeatedLog
from tcphub.errors import (
    FatalClose,
    HandlerClosed,
    HandshakeRejected,
    InvalidCloseCode,
    InvalidMessage,
    MessageTooLarge,
    NotConnected,
    QueueFull,
    RequestInterrupted,
    WebSocketError,
)
from tcphub.events import Events, HandlerFailures, Subscription
from tcphub.ws.envelope import Codec, Envelope, PathDataCodec, check_envelope
from tcphub.ws.protocol import HandlerFactory, HandlerProtocol, Headers, HeadersEndpoint, parse_proxy
from tcphub.ws.reconnect import DEFAULT_JITTER, ReconnectingClientService, backoff_policy
from tcphub.ws.requests import PendingRequests
from tcphub.ws.routing import Router

__all__ = ["ConnectionContext", "HandlerState", "Status", "WebSocketHandler"]

RouteHandler = Callable[[Any, "ConnectionContext"], Any]

CLOSE_MESSAGE_TOO_BIG = 1009
# Refused handshakes that retrying may cure: timeout, rate limit (the rest of 4xx are final).
_RETRIED_STATUSES = frozenset({408, 429})
_REDIRECTS = frozenset({301, 302, 307, 308})
MAX_REDIRECTS = 3
"""Redirects followed in a row before a redirect is a final L{HandshakeRejected}."""
_WS_SCHEMES = {"http": "ws", "https": "wss"}


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from C{Retry-After}: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
# Close codes with which this side fails a connection the peer broke:
# protocol error, unsupported data, invalid payload (bad UTF-8), too big.
_PROTOCOL_ERRORS = frozenset({1002, 1003, 1007, 1009})


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


_CAN_CONNECT = frozenset({HandlerState.IDLE, HandlerState.CLOSED, HandlerState.GIVEN_UP})
_CLOSED_BY_USER = frozenset({HandlerState.CLOSING, HandlerState.CLOSED})


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


@implementer(IStreamClientEndpoint)
class _RoundRobin:
    """Each connection attempt to the next of the handler's URLs (one, or
    several to fail over between), the factory aimed at it."""

    def __init__(self, targets: list[tuple[IStreamClientEndpoint, str]], factory: HandlerFactory,
                 aimed: Callable[[str], None]) -> None:
        self._targets = targets
        self.factory = factory
        self._aimed = aimed
        self._next = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        endpoint, url = self._targets[self._next]
        self._next = (self._next + 1) % len(self._targets)
        self.factory.aim(url)
        self._aimed(url)
        return endpoint.connect(factory)

    def redirect(self, old: str, new: str, endpoint: IStreamClientEndpoint) -> None:
        """The server at C{old} sent us to C{new}: try it next, in its place."""
        for index, (_, url) in enumerate(self._targets):
            if url == old:
                self._targets[index] = (endpoint, new)
                self._next = index
                return


@implementer(IPushProducer)
class _TransportFlow:
    """Registered on a connection's transport, which tells it when its write
    buffer is full (pause) and drained (resume)."""

    def __init__(self, full: Callable[[bool], None]) -> None:
        self._full = full

    def pauseProducing(self) -> None:
        self._full(True)

    def resumeProducing(self) -> None:
        self._full(False)

    def stopProducing(self) -> None:
        self._full(True)


class WebSocketHandler(Service):
    """
    A WebSocket client that routes JSON messages by path and stays connected.

    As a service (C{setServiceParent}), it connects to C{url} on start and
    closes on stop; without a C{url}, call L{connect} yourself.

    Events (L{on}): C{open(context)}, C{close(context, code, reason)},
    C{retry(attempt, delay, context)} when a reconnection is scheduled,
    C{message(envelope, context)} for every valid incoming message,
    C{unrouted(envelope, context)}, C{error(error, context)}.

    Its protocol reports to it through the methods under "called by
    HandlerProtocol"; nothing else should call them.
    """

    _log = Logger()

    def __init__(
        self,
        reconnect: bool = True,
        max_retries: int | None = 5,
        backoff: str = "exponential",
        ping_interval: float = 30.0,
        *,
        url: str | Sequence[str] | None = None,
        ping_timeout: float | None = None,
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        jitter: float = DEFAULT_JITTER,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        min_uptime: float = 5.0,
        fatal_close_codes: Iterable[int] = (),
        max_concurrent_handlers: int = 1000,
        max_message_size: int = 1024 * 1024,
        max_send_size: int | None = None,
        max_queue: int = 1000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        request_timeout: float = 30.0,
        compression: bool = True,
        headers: Headers | None = None,
        subprotocols: Iterable[str] = (),
        origin: str | None = None,
        user_agent: str | None = None,
        proxy: str | None = None,
        codec: Codec | None = None,
        tls_options: Any = None,
        protocol: type[HandlerProtocol] = HandlerProtocol,
        clock: IReactorTime | None = None,
        reactor: Any = None,
    ) -> None:
        _checks.flag("reconnect", reconnect)
        _checks.count_or_none("max_retries", max_retries, minimum=0)
        _checks.number("ping_interval", ping_interval, minimum=0)
        if ping_timeout is not None:
            _checks.number("ping_timeout", ping_timeout, above=0)
        _checks.number("initial_delay", initial_delay, minimum=0)
        _checks.number("max_delay", max_delay, minimum=0)
        _checks.number("jitter", jitter, minimum=0, maximum=1)
        _checks.number("open_timeout", open_timeout, above=0)
        _checks.number("close_timeout", close_timeout, above=0)
        _checks.number("min_uptime", min_uptime, minimum=0)
        fatal_close_codes = frozenset(fatal_close_codes)
        for fatal in fatal_close_codes:
            _checks.number("fatal_close_codes", fatal, minimum=1000, maximum=4999, integer=True)
        _checks.number("request_timeout", request_timeout, above=0)
        urls = [url] if isinstance(url, str) else list(url or ())
        url = urls[0] if urls else None
        if tls_options is not None and url is not None and not url.startswith("wss:"):
            raise ValueError(f"tls_options is given, but {url!r} is not a wss:// URL")
        if reactor is None:
            reactor = default_reactor()
        self.url = url
        """The URL connected to (or tried last)."""
        self.urls = urls
        """The URLs connect() tries in turn, when given several."""
        self.reconnect = reconnect
        self.max_retries = max_retries if reconnect else 0
        self.backoff = backoff
        self._max_delay = max_delay
        self._retry_policy = backoff_policy(
            backoff, initial_delay=initial_delay, max_delay=max_delay, jitter=jitter
        )
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout if ping_timeout is not None else min(ping_interval, 10.0)
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.min_uptime = min_uptime
        self.fatal_close_codes = fatal_close_codes
        self.max_concurrent_handlers = _checks.count("max_concurrent_handlers", max_concurrent_handlers)
        self.max_message_size = _checks.count("max_message_size", max_message_size)
        self.max_send_size = _checks.count_or_none("max_send_size", max_send_size)
        self.max_queue = _checks.count("max_queue", max_queue, minimum=0)
        self.max_queue_bytes = _checks.count("max_queue_bytes", max_queue_bytes, minimum=0)
        self.request_timeout = request_timeout
        self.compression = compression
        if headers is not None and not (isinstance(headers, Mapping) or callable(headers)):
            raise TypeError(f"headers takes a mapping or a callable returning one, not {headers!r:.80}")
        self.headers = headers
        self.subprotocols = tuple(subprotocols)
        if any(not isinstance(name, str) or not name for name in self.subprotocols):
            raise ValueError(f"subprotocols takes names, not {self.subprotocols!r:.80}")
        self.origin = origin
        self.user_agent = user_agent if user_agent is not None else f"tcphub/{version()}"
        if proxy is not None:
            parse_proxy(proxy)
            if url is not None and url.startswith("wss:"):
                raise ValueError("a proxy is not supported with wss:// yet")
        self.proxy = proxy
        if codec is not None and not (callable(getattr(codec, "decode", None))
                                      and callable(getattr(codec, "encode", None))):
            raise TypeError(f"codec takes an object with decode() and encode(), not {codec!r:.80}")
        self.codec: Codec = codec if codec is not None else PathDataCodec()
        """How messages map to envelopes (see L{tcphub.ws.envelope.Codec})."""
        self.tls_options = tls_options
        self.protocol = protocol
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.reactor = reactor
        self.context = ConnectionContext()
        self.router: Router[tuple[RouteHandler, bool]] = Router()
        """Path patterns to C{(handler, whether it takes the whole envelope)}."""
        self.repeats = RepeatedLog(self._log, self.clock)
        """Logs each kind of fault once, then once per interval while it repeats."""
        self.handler_failed = HandlerFailures(
            self.repeats, lambda: self._count("handler_errors"),
            lambda client_id, error: self.events.emit("error", error, self.context),
            "the connection stays up",
        )
        """Called with C{(where, failure)} when a route handler raised."""
        self.events = Events(
            ("open", "close", "retry", "message", "unrouted", "error"), self.handler_failed.event_failed
        )
        self._state = HandlerState.IDLE
        self._service: ReconnectingClientService | None = None
        self._protocol: HandlerProtocol | None = None
        self._first_open: OneShotObserver | None = None
        self._closed: OneShotObserver | None = None
        self._queue: deque[tuple[bytes, bool, Deferred[None]]] = deque()
        self._queued_bytes = 0
        self._requests = PendingRequests(self.clock)
        self._counts = dict.fromkeys(
            ("retries", "messages_sent", "messages_received", "invalid_messages",
             "unrouted_messages", "handler_errors", "late_replies", "protocol_errors"),
            0,
        )
        self._opens = 0
        self._last_ping: float | None = None
        self._in_flight = 0
        self._held: deque[Envelope] = deque()
        self._reading_paused = False
        self._write_buffer_full = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False

    # -- the public API -------------------------------------------------

    @property
    def state(self) -> HandlerState:
        """Where the handler is in its life (see L{HandlerState})."""
        return self._state

    def connect(self, url: str | Sequence[str] | None = None) -> Deferred[None]:
        """
        Connect to C{url} (ws:// or wss://), or to the first of several that
        answers: each attempt goes to the next URL, and the backoff delay
        comes after each round of them (a standby server takes over at once).
        Fires on the first open; errbacks with L{RetryLimitReached} when the
        retries (rounds) are used up (at once, after the first round, with
        C{reconnect=False}), L{HandshakeRejected}, or L{HandlerClosed}.
        """
        if self._state not in _CAN_CONNECT:
            raise RuntimeError(f"the handler is {self._state.value}: close() it before connecting again")
        urls = [url] if isinstance(url, str) else list(url or self.urls)
        if not urls:
            raise ValueError("no URL to connect to")
        self.urls = urls
        factory = HandlerFactory(self, urls[0], self.protocol, self.reactor)
        targets = [(self._endpoint(each, factory), each) for each in urls]
        self.url = urls[0]
        self._targets = endpoint = _RoundRobin(targets, factory, self._aimed)
        self._redirects = 0
        service = self._service = ReconnectingClientService(
            endpoint,
            factory,
            backoff=self._retry_policy,
            max_retries=self.max_retries,
            confirm_open=True,
            min_uptime=self.min_uptime,
            round_size=len(targets),
            clock=self.clock,
        )
        self._state = HandlerState.CONNECTING
        self._first_open = OneShotObserver()
        self._closed = None
        service.when_given_up().addErrback(self._gave_up)
        service.on_retry = self._retry_scheduled
        service.startService()
        # Cancelling the Deferred (e.g. with addTimeout) stops the attempts.
        opened: Deferred[None] = Deferred(self._connect_cancelled)

        def relay(result: object) -> None:
            if not opened.called:  # else it was cancelled
                if isinstance(result, Failure):
                    opened.errback(result)
                else:
                    opened.callback(None)

        self._first_open.when_fired().addBoth(relay)
        return opened

    def _endpoint(self, url: str, factory: HandlerFactory) -> IStreamClientEndpoint:
        """Where the connections to C{url} go: TCP (TLS for wss://), through
        the proxy if any, with fresh headers before each attempt if asked."""
        try:
            secure, host, port, _, _, _ = parse_url(url)
        except Exception as error:
            raise ValueError(f"not a WebSocket URL: {url!r} ({error})") from None
        if self.tls_options is not None and not secure:
            raise ValueError(f"tls_options is given, but {url!r} is not a wss:// URL")
        if self.proxy is not None:
            if secure:
                raise ValueError("a proxy is not supported with wss:// yet")
            host, port = parse_proxy(self.proxy)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.open_timeout)
        if secure:
            endpoint = wrapClientTLS(self.tls_options or optionsForClientTLS(host), endpoint)
        if callable(self.headers):
            endpoint = HeadersEndpoint(endpoint, self.headers, factory)
        return endpoint

    def _aimed(self, url: str) -> None:
        # The URL of the attempt under way: the one the next open is on.
        self.url = url

    def _connect_cancelled(self, cancelled: Deferred[None]) -> None:
        # Only a connect() still waiting for its first open can be cancelled.
        cancelled.errback(Failure(CancelledError()))
        self.close(1000, "connect() was cancelled")

    def add_route(self, path: str, handler: RouteHandler, replace: bool = False,
                  envelope: bool = False) -> None:
        """
        Call C{handler(data, context)} for messages whose path matches C{path}
        (exact, or with C{*} for one segment and C{#} for any number); with
        C{envelope=True}, C{handler(envelope, context)}, so that it can see
        the message's C{id} and L{reply}.  Raises L{RouteConflict} if C{path}
        is routed already, unless C{replace}.  The handler may return a
        Deferred or be a coroutine function.
        """
        self.router.add(path, (handler, envelope), replace=replace)

    def remove_route(self, path: str) -> None:
        """Remove the route for exactly C{path}; raises L{KeyError} if there is none."""
        self.router.remove(path)

    def send(self, path: str, data: Any) -> Deferred[None]:
        """
        Send C{{"path": path, "data": data}} (C{bytes} data goes as a binary
        message).  Fires when written to the connection; while disconnected
        and reconnecting, queues (L{QueueFull} past C{max_queue} messages or
        C{max_queue_bytes}); otherwise errbacks with L{NotConnected} or
        L{HandlerClosed}.
        """
        return self._send(Envelope(path=path, data=data))

    def reply(self, envelope: Envelope, data: Any) -> Deferred[None]:
        """
        Answer a message the server sent with an C{id} (its request): send
        C{{"path": envelope.path, "id": envelope.id, "data": data}}, as
        L{send} does.  Raises L{ValueError} if the message has no C{id}.
        """
        if envelope.id is None:
            raise ValueError(f"the message on {envelope.path!r} has no id: there is nothing to reply to")
        return self._send(Envelope(path=envelope.path, data=data, id=envelope.id))

    def request(self, path: str, data: Any, timeout: float | None = None) -> Deferred[Any]:
        """
        Send a message with a fresh C{id} and fire with the C{data} of the first
        incoming message carrying the same C{id}; errback with
        L{RequestTimeout} after C{timeout} seconds (from this call, queueing
        included), or L{RequestInterrupted} if the connection drops first.
        """
        seconds = self.request_timeout if timeout is None else timeout
        request_id, reply = self._requests.open(path, seconds)
        self._send(Envelope(path=path, data=data, id=request_id)).addErrback(
            lambda failure: self._requests.fail(request_id, failure)
        )
        return reply

    def close(self, code: int = 1000, reason: str = "") -> Deferred[None]:
        """
        Close with C{code} (1000 or 3000-4999) and C{reason} (at most 123 UTF-8
        bytes), stop reconnecting, and fail what waits (queued sends, requests,
        a pending connect) with L{HandlerClosed}.  Fires once closed.
        """
        if not (code == 1000 or 3000 <= code <= 4999):
            raise InvalidCloseCode(f"close code must be 1000 or 3000-4999, not {code}")
        if len(reason.encode("utf-8")) > 123:
            raise InvalidCloseCode("close reason must be at most 123 UTF-8 bytes")
        if self._closed is not None:
            return self._closed.when_fired()
        service = self._service
        if service is None:
            self.repeats.stop()
            return succeed(None)
        self._state = HandlerState.CLOSING
        self._closed = closed = OneShotObserver()
        done: Deferred[None] = closed.when_fired()
        error = HandlerClosed(f"the handler was closed ({code} {reason})".strip())
        self._fail_queue(error)
        self._requests.fail_all(error)
        if self._first_open is not None:
            self._first_open.fire(Failure(error))
        service.stop_retrying()
        protocol = self._protocol
        if protocol is not None:
            protocol.sendClose(code, reason or None)
            protocol.is_closed.addBoth(lambda _: self._stop_service(service))
        else:
            self._stop_service(service)
        return done

    def get_status(self) -> Status:
        protocol = self._protocol
        extensions = getattr(protocol, "websocket_extensions_in_use", None) or []
        return Status(
            connected=self.context.connected,
            last_ping=self._last_ping,
            reconnects=max(0, self._opens - 1),
            queued=len(self._queue),
            queued_bytes=self._queued_bytes,
            pending_requests=len(self._requests),
            handlers_in_flight=self._in_flight,
            reading_paused=self._reading_paused,
            compression=extensions[0].EXTENSION_NAME if extensions else None,
            subprotocol=self.context.subprotocol,
            **self._counts,
        )

    def on(self, event: str, callback: Callable[..., Any]) -> Subscription:
        return self.events.on(event, callback)

    @property
    def writable(self) -> bool:
        """Whether a send goes straight out: a connection is open (no closing
        handshake begun) and its write buffer is not full."""
        return self._open_protocol() is not None and not self._write_buffer_full

    def _open_protocol(self) -> HandlerProtocol | None:
        protocol = self._protocol
        return protocol if protocol is not None and protocol.can_send else None

    def registerProducer(self, producer: IPushProducer, streaming: bool = True) -> None:
        """
        Flow control for whoever feeds the handler: C{producer.pauseProducing()}
        is called while the handler is not L{writable} (disconnected, or the
        connection's buffer is full), C{resumeProducing()} once it is again;
        so the producer need not fill the offline queue.
        """
        if not streaming:
            raise ValueError("only streaming (push) producers can be registered")
        if self._producer is not None:
            raise RuntimeError("a producer is registered already")
        self._producer = producer
        self._producer_paused = False
        self._update_flow()

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.url is not None and self._state in _CAN_CONNECT:
            self.connect().addErrback(
                lambda failure: self._log.error(
                    "could not connect to {url}: {error}", url=self.url, error=failure.getErrorMessage()
                )
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close(1000, "going away")

    # -- called by HandlerProtocol ----------------------------------------

    def connection_opened(self, protocol: HandlerProtocol) -> None:
        """The opening handshake of C{protocol} completed."""
        if self._state in _CLOSED_BY_USER:
            protocol.sendClose(1000, "the handler was closed")
            return
        assert self._service is not None
        self._state = HandlerState.OPEN
        self._protocol = protocol
        self._write_buffer_full = False
        protocol.registerProducer(_TransportFlow(self._transport_full), True)
        self._service.connection_opened()
        context = self.context
        context.connection_id = uuid.uuid4().hex
        context.connected = True
        context.subprotocol = protocol.websocket_protocol_in_use
        self._opens += 1
        self._redirects = 0
        self._log.info(
            "connected to {url} (connection {connection_id})",
            url=self.url, connection_id=context.connection_id,
        )
        self._flush_queue(protocol)
        self.events.emit("open", context)
        self._update_flow()
        if self._first_open is not None:
            self._first_open.fire(None)

    def connection_closed(self, protocol: HandlerProtocol, clean: bool, code: int | None,
                          reason: str | None) -> None:
        """C{protocol}'s connection ended, opened or not."""
        if protocol is not self._protocol:
            rejection = protocol.rejection
            if rejection is not None:
                why = f"WebSocket handshake failed: {rejection}"
            else:
                why = f"WebSocket handshake failed: {protocol.ended_by or reason or 'connection closed'} (code {code})"
            if self._service is not None:
                self._service.connection_failed(why)
            self._log.info("{why}", why=why)
            if rejection is not None and self._state is HandlerState.CONNECTING:
                self._handshake_rejected(rejection)
            return
        self._protocol = None
        if self._state is HandlerState.OPEN:
            self._state = HandlerState.CONNECTING
        self._reading_paused = False  # that transport is gone; a new one is read at once
        self.context.connected = False
        code, reason = self._ending(protocol, code, reason)
        if protocol.closedByMe and code in _PROTOCOL_ERRORS:
            self._counts["protocol_errors"] += 1
        if self._service is not None:
            self._service.connection_failed(f"connection closed: {code} {reason or ''}".strip())
        if code == CLOSE_MESSAGE_TOO_BIG:
            self._log.warn(
                "closed the connection: an incoming message passed max_message_size "
                "({limit} bytes); code 1009",
                limit=self.max_message_size,
            )
        else:
            self._log.info("connection {connection_id} closed: {code} {reason}",
                           connection_id=self.context.connection_id, code=code, reason=reason or "")
        self._requests.fail_all(RequestInterrupted(f"the connection closed ({code} {reason or ''})".strip()))
        self._update_flow()
        self.events.emit("close", self.context, code, reason)
        if protocol.remoteCloseCode in self.fatal_close_codes and self._state is HandlerState.CONNECTING:
            assert self._service is not None
            self._service.stop_retrying()
            self._gave_up(Failure(FatalClose(protocol.remoteCloseCode, protocol.remoteCloseReason)))

    def closing_handshake_began(self, protocol: HandlerProtocol) -> None:
        """A close frame went either way: nothing more can be sent on C{protocol}."""
        if protocol is self._protocol:
            self.context.connected = False
            self._update_flow()

    def heartbeat(self) -> None:
        """A ping or a pong arrived."""
        self._last_ping = self.clock.seconds()

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """A message arrived: a reply to a request, or one to route."""
        count = self._count("messages_received")
        context = self.context
        context.last_message_at = self.clock.seconds()
        try:
            envelope = check_envelope(self.codec.decode(payload, is_binary))
        except InvalidMessage as error:
            count = self._count("invalid_messages")
            self.repeats.emit("invalid_messages", LogLevel.warn,
                              "dropped an invalid message ({count} so far): {error}", error=error, count=count)
            self.events.emit("error", error, context)
            return
        if self._requests.is_ours(envelope.id):
            assert envelope.id is not None
            if not self._requests.answer(envelope.id, envelope.data):
                self._count("late_replies")
                self._log.info("dropped a late reply to request {id} on {path!r}",
                               id=envelope.id, path=envelope.path)
            return
        if self._held or self._in_flight >= self.max_concurrent_handlers:
            # At the bound: hold the message (at most the rest of this read)
            # and stop reading, so that TCP pushes back on the server.
            self._held.append(envelope)
            self._pause_reading()
            return
        self._dispatch(envelope)

    # -- inside -------------------------------------------------------------

    def _count(self, name: str) -> int:
        count = self._counts[name] + 1
        self._counts[name] = count
        return count

    def _handshake_rejected(self, rejection: HandshakeRejected) -> None:
        """What a refused handshake means: a client error (4xx but 408 and
        429) or a redirect will not change by retrying: give up at once;
        429 and 503 may say when to come back (C{Retry-After}, at most
        C{max_delay}); the rest is retried like a network error."""
        service = self._service
        assert service is not None
        status = rejection.status
        if status in _REDIRECTS and rejection.location and self._redirects < MAX_REDIRECTS:
            parts = urlsplit(urljoin(self.url or "", rejection.location))
            target = urlunsplit(parts._replace(scheme=_WS_SCHEMES.get(parts.scheme, parts.scheme)))
            try:
                self._targets.redirect(self.url or "", target, self._endpoint(target, self._targets.factory))
            except ValueError as error:
                self._log.warn("not following the redirect to {target}: {error}", target=target, error=error)
            else:
                self._redirects += 1
                self._log.info("{url} redirects ({status}) to {target}: following",
                               url=self.url, status=status, target=target)
                service.retry_after(0.0)
                return
        if 300 <= status < 500 and status not in _RETRIED_STATUSES:
            service.stop_retrying()
            self._gave_up(Failure(rejection))
            return
        seconds = _retry_after(rejection.headers.get("retry-after"), self.clock.seconds())
        if seconds is not None:
            service.retry_after(min(seconds, self._max_delay))

    @staticmethod
    def _ending(protocol: HandlerProtocol, code: int | None, reason: str | None) -> tuple[int | None, str | None]:
        """The code and reason that ended a connection, whichever side sent
        the first close frame (Autobahn reports the peer's echo, often
        without a reason, or 1006 when TCP ended before the echo), and the
        deadline this side missed, if any."""
        local, remote = protocol.localCloseCode, protocol.remoteCloseCode
        local_reason = (protocol.localCloseReason or b"").decode("utf-8", "replace") or None
        if local is not None and (protocol.closedByMe or remote is None):
            code, reason = local, local_reason
        elif remote is not None:
            code, reason = remote, protocol.remoteCloseReason
        if protocol.ended_by is not None:
            # After a close frame, keep its reason; without one, Autobahn's
            # "closed uncleanly" says less than the deadline does.
            reason = f"{reason}; then {protocol.ended_by}" if reason and (local or remote) else protocol.ended_by
        return code, reason

    def _flush_queue(self, protocol: HandlerProtocol) -> None:
        """Write what waited, in order, until the write buffer is full again;
        one message that fails is errbacked alone; if the connection closes
        meanwhile, the rest waits for the next one."""
        queue = self._queue
        while queue and protocol.can_send and not self._write_buffer_full:
            payload, is_binary, sent = queue.popleft()
            self._queued_bytes -= len(payload)
            failure = self._write(protocol, payload, is_binary)
            if failure is None:
                sent.callback(None)
            else:
                sent.errback(failure)

    def _transport_full(self, full: bool) -> None:
        self._write_buffer_full = full
        if not full and self._protocol is not None:
            self._flush_queue(self._protocol)
        self._update_flow()

    def _update_flow(self) -> None:
        producer = self._producer
        if producer is None:
            return
        writable = self.writable
        if writable and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()
        elif not writable and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()

    def _retry_scheduled(self, attempt: int, delay: float) -> None:
        self._count("retries")
        self.events.emit("retry", attempt, delay, self.context)

    def _dispatch(self, envelope: Envelope) -> None:
        context = self.context
        self.events.emit("message", envelope, context)
        route = self.router.match(envelope.path)
        if route is None:
            count = self._count("unrouted_messages")
            self.repeats.emit("unrouted_messages", LogLevel.info,
                              "no route for path {path!r} ({count} unrouted so far)",
                              path=envelope.path, count=count)
            self.events.emit("unrouted", envelope, context)
            return
        where = f"handler for {envelope.path!r}"
        handler, whole = route
        try:
            result = handler(envelope if whole else envelope.data, context)
        except Exception:
            self.handler_failed(where, Failure())
            return
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            self._in_flight += 1
            result.addErrback(lambda failure: self.handler_failed(where, failure))
            result.addBoth(self._handler_done)

    def _handler_done(self, result: object) -> None:
        self._in_flight -= 1
        held = self._held
        while held and self._in_flight < self.max_concurrent_handlers:
            self._dispatch(held.popleft())
        if not held and self._reading_paused:
            # Still the connection that was paused: connection_closed clears the flag.
            self._reading_paused = False
            assert self._protocol is not None
            cast(IPushProducer, self._protocol.transport).resumeProducing()

    def _pause_reading(self) -> None:
        if self._reading_paused:
            return
        self._reading_paused = True
        self._log.info(
            "{count} handler calls in flight (max_concurrent_handlers): "
            "not reading until one ends", count=self._in_flight,
        )
        assert self._protocol is not None
        cast(IPushProducer, self._protocol.transport).pauseProducing()

    # -- sending ----------------------------------------------------------

    def _send(self, envelope: Envelope) -> Deferred[None]:
        try:
            payload, is_binary = self.codec.encode(envelope)
        except (TypeError, ValueError):
            return fail()
        if self.max_send_size is not None and len(payload) > self.max_send_size:
            return fail(MessageTooLarge(
                f"a message of {len(payload)} bytes to {envelope.path!r} passes "
                f"max_send_size={self.max_send_size}"
            ))
        state = self._state
        if state in _CLOSED_BY_USER:
            return fail(HandlerClosed("the handler was closed"))
        protocol = self._open_protocol()
        if protocol is not None and not self._queue and not self._write_buffer_full:
            failure = self._write(protocol, payload, is_binary)
            return succeed(None) if failure is None else fail(failure)
        # Queue: while reconnecting, or while the open connection's write
        # buffer is past its high-water mark (so that a loop of sends is
        # paced by the peer's reading, and memory stays bounded).
        if not (state is HandlerState.OPEN or (state is HandlerState.CONNECTING and self.reconnect)):
            return fail(NotConnected(f"not connected; cannot send to {envelope.path!r}"))
        if len(self._queue) >= self.max_queue:
            return fail(QueueFull(f"{self.max_queue} messages already wait for the connection"))
        if self._queued_bytes + len(payload) > self.max_queue_bytes:
            return fail(QueueFull(
                f"{self._queued_bytes} bytes already wait for the connection; "
                f"{len(payload)} more would pass max_queue_bytes={self.max_queue_bytes}"
            ))
        entry: tuple[bytes, bool, Deferred[None]]

        def cancelled(_: Deferred[None]) -> None:
            # A queued send that is cancelled leaves the queue.
            queue = self._queue
            for index, each in enumerate(queue):
                if each is entry:
                    del queue[index]
                    self._queued_bytes -= len(payload)
                    return

        sent: Deferred[None] = Deferred(cancelled)
        entry = (payload, is_binary, sent)
        self._queue.append(entry)
        self._queued_bytes += len(payload)
        return sent

    def _write(self, protocol: HandlerProtocol, payload: bytes, is_binary: bool) -> Failure | None:
        """Write one message; what Autobahn raises is returned, never raised,
        so that one message cannot affect the others."""
        try:
            protocol.send_unbounded(payload, is_binary)
        except Exception:
            failure = Failure()
            self._log.warn("could not send a message: {error}", error=failure.getErrorMessage())
            return failure
        self._count("messages_sent")
        return None

    # -- endings ------------------------------------------------------------

    def _fail_queue(self, error: WebSocketError) -> None:
        queue, self._queue = self._queue, deque()
        self._queued_bytes = 0
        for _, _, sent in queue:
            sent.errback(error)

    def _gave_up(self, failure: Failure) -> None:
        service, self._service = self._service, None
        self._state = HandlerState.GIVEN_UP
        assert service is not None
        service.stopService()
        self._fail_queue(cast(WebSocketError, failure.value))
        if self._first_open is not None:
            self._first_open.fire(failure)
        self.events.emit("error", failure.value, self.context)

    def _stop_service(self, service: ReconnectingClientService) -> None:
        closed = self._closed
        assert closed is not None

        def stopped(_: object) -> None:
            self._service = None
            self._state = HandlerState.CLOSED
            self.repeats.stop()
            closed.fire(None)

        service.stopService().addBoth(stopped)
