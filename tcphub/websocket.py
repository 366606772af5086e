"""
The WebSocket handler: L{HandlerProtocol}, an Autobahn client protocol that
hands every event to its handler, and L{WebSocketHandler}, the service that
keeps one connection up, routes incoming messages by path, queues sends while
disconnected and matches replies to requests.

Extend it by subclassing L{HandlerProtocol} (Autobahn's hooks C{onOpen},
C{onMessage}, C{onPing}, C{onPong}, C{onClose}; call super) and passing the
class as C{protocol=}, or by subscribing to the handler's events.
"""

from __future__ import annotations

import inspect
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.util import parse_url
from OpenSSL.SSL import Error as TLSError
from service_identity import VerificationError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub import _checks
from tcphub._bursts import first_of_a_burst
from tcphub._observer import OneShotObserver
from tcphub.envelope import Envelope, decode, encode
from tcphub.errors import (
    ConnectionClosed,
    FatalClose,
    HandlerClosed,
    HandlerError,
    InvalidCloseCode,
    InvalidMessage,
    MessageTooLarge,
    NotConnected,
    QueueFull,
    RequestTimeout,
    WebSocketError,
)
from tcphub.events import Events, Subscription
from tcphub.reconnect import ReconnectingClientService, backoff_policy
from tcphub.routing import Router

__all__ = ["ConnectionContext", "HandlerProtocol", "Status", "WebSocketHandler"]

RouteHandler = Callable[[Any, "ConnectionContext"], Any]

CLOSE_MESSAGE_TOO_BIG = 1009
# Close codes with which this side fails a connection the peer broke:
# protocol error, unsupported data, invalid payload (bad UTF-8), too big.
_PROTOCOL_ERRORS = frozenset({1002, 1003, 1007, 1009})


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


@dataclass(frozen=True)
class Status:
    connected: bool
    retries: int
    """Reconnection attempts scheduled over the handler's life."""
    messages_sent: int
    messages_received: int
    last_ping: float | None
    """When the last ping or pong was seen, in the handler clock's seconds."""
    reconnects: int
    """Connections opened after the first one."""
    queued: int
    queued_bytes: int
    pending_requests: int
    handlers_in_flight: int
    """Route handlers whose Deferred (or coroutine) has not ended yet."""
    reading_paused: bool
    """Whether reading stopped because C{max_concurrent_handlers} calls are in flight."""
    invalid_messages: int
    unrouted_messages: int
    handler_errors: int
    late_replies: int
    protocol_errors: int
    """Connections this side closed because the peer broke the protocol
    (close codes 1002, 1003, 1007, 1009)."""
    compression: str | None
    """The negotiated compression extension, e.g. C{permessage-deflate}."""


class HandlerProtocol(WebSocketClientProtocol):
    """
    One WebSocket connection; reports everything to C{factory.handler}.

    Its deadlines run on the handler's clock, not on Autobahn's timers
    (txaio's batched timer truncates deadlines to whole seconds, so they fire
    up to 1 s early and a sub-second interval fires at once): the opening
    handshake within C{open_timeout} of the TCP connection, a ping every
    C{ping_interval} answered within C{ping_timeout}, and the closing
    handshake, from the first close frame either way to the end of TCP,
    within C{close_timeout}.  A deadline missed aborts the connection, and
    the C{close} event says which.
    """

    factory: WebSocketClientFactory
    ended_by: str | None = None
    """Why this side aborted the connection, if it did (a deadline missed)."""
    _opened = False
    _reply_start = b""
    _open_call: IDelayedCall | None = None
    _ping_call: IDelayedCall | None = None
    _pong_call: IDelayedCall | None = None
    _close_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        handler = self.factory.handler
        self._open_call = handler.clock.callLater(handler.open_timeout, self._missed, "_open_call",
                                                  f"opening handshake timeout ({handler.open_timeout} s)")

    def dataReceived(self, data: bytes) -> None:
        if not self._opened and len(self._reply_start) < _REPLY_PREVIEW:
            # The start of the server's answer, to say what was wrong with it.
            self._reply_start += data[: _REPLY_PREVIEW - len(self._reply_start)]
        super().dataReceived(data)

    def onOpen(self) -> None:
        self._opened = True
        self._cancel("_open_call")
        handler = self.factory.handler
        if handler.ping_interval:
            self._ping_call = handler.clock.callLater(handler.ping_interval, self._ping)
        handler._opened(self)

    def _ping(self) -> None:
        handler = self.factory.handler
        self._ping_call = handler.clock.callLater(handler.ping_interval, self._ping)
        if self.can_send:
            self.sendPing()
            if self._pong_call is None:
                self._pong_call = handler.clock.callLater(
                    handler.ping_timeout, self._missed, "_pong_call",
                    f"ping timeout: no pong within {handler.ping_timeout} s",
                )

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if self._close_call is None and self.transport is not None:
            handler = self.factory.handler
            self._close_call = handler.clock.callLater(
                handler.close_timeout, self._missed, "_close_call",
                f"closing handshake timeout ({handler.close_timeout} s)",
            )

    def _missed(self, timer: str, why: str) -> None:
        setattr(self, timer, None)
        self.ended_by = why
        self.dropConnection(abort=True)

    def _cancel(self, timer: str) -> None:
        call = getattr(self, timer)
        if call is not None:
            setattr(self, timer, None)
            if call.active():
                call.cancel()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.handler._received(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        super().onPing(payload)
        self.factory.handler._heartbeat()

    def onPong(self, payload: bytes) -> None:
        self._cancel("_pong_call")
        self.factory.handler._heartbeat()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        # The closing handshake starts: nothing more can be sent on this connection.
        self.factory.handler._closing_handshake(self)
        return super().onCloseFrame(code, reasonRaw)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.handler._closed(self, wasClean, code, reason)

    @property
    def can_send(self) -> bool:
        """Whether messages can be sent: open, and no closing handshake begun."""
        return self.state == self.STATE_OPEN

    def send_unbounded(self, payload: bytes, is_binary: bool) -> None:
        """C{sendMessage} without Autobahn's check of the outgoing size against
        C{maxMessagePayloadSize}, which raises after compressing (leaving the
        compressor's state ahead of the peer's): that option bounds what we
        receive; the handler's C{max_send_size} bounds what we send, before
        anything is queued."""
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(payload, isBinary=is_binary)
        finally:
            self.maxMessagePayloadSize = limit

    # Turned off (see the class docstring), but a subclass may turn them on;
    # Autobahn can leave them scheduled past the connection.
    _AUTOBAHN_TIMERS = (
        "openHandshakeTimeoutCall",
        "closeHandshakeTimeoutCall",
        "serverConnectionDropTimeoutCall",
        "autoPingPendingCall",
        "autoPingTimeoutCall",
    )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for timer in ("_open_call", "_ping_call", "_pong_call", "_close_call"):
            self._cancel(timer)
        if not self._opened and self.ended_by is None:
            self.ended_by = _handshake_failure(reason.value, self._reply_start)
        super().connectionLost(reason)
        for name in self._AUTOBAHN_TIMERS:
            call = getattr(self, name, None)
            if call is not None:
                setattr(self, name, None)
                try:
                    call.cancel()
                except (AttributeError, AlreadyCalled, AlreadyCancelled):
                    pass  # already run; txaio's batched calls say so with AttributeError


_REPLY_PREVIEW = 64


def _identity(mismatch: object) -> str:
    name = getattr(getattr(mismatch, "mismatched_id", None), "hostname", None)
    if isinstance(name, bytes):
        return name.decode("ascii", "replace")
    return str(name if name is not None else mismatch)


def _handshake_failure(error: BaseException, reply_start: bytes) -> str | None:
    """What went wrong before a connection opened, when Autobahn's own reason
    ("peer dropped the TCP connection") would not say; None when it does."""
    if isinstance(error, VerificationError):
        names = ", ".join(_identity(mismatch) for mismatch in error.errors)
        return f"TLS: the server's certificate is not valid for {names}"
    if isinstance(error, TLSError):
        reasons = [entry[2] for entry in error.args[0] if len(entry) > 2] if error.args else []
        cause = "; ".join(reasons) or str(error)
        if "certificate verify failed" in cause:
            cause += (" (the server's certificate is self-signed or from a CA this "
                      "machine does not trust: pass tls_options with its CA)")
        return f"TLS: {cause}"
    if reply_start and not reply_start.startswith(b"HTTP/"):
        return f"the server's answer to the opening handshake is not HTTP: {reply_start!r}"
    if not reply_start:
        return "the server closed the connection before answering the opening handshake"
    return None


@implementer(IPushProducer)
class _TransportFlow:
    """Registered on a connection's transport, which tells it when its write
    buffer is full (pause) and drained (resume)."""

    def __init__(self, handler: WebSocketHandler) -> None:
        self._handler = handler

    def pauseProducing(self) -> None:
        self._handler._transport_full(True)

    def resumeProducing(self) -> None:
        self._handler._transport_full(False)

    def stopProducing(self) -> None:
        self._handler._transport_full(True)


def _accept_deflate(response: PerMessageDeflateResponse) -> PerMessageDeflateResponseAccept | None:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


class WebSocketHandler(Service):
    """
    A WebSocket client that routes JSON messages by path and stays connected.

    As a service (C{setServiceParent}), it connects to C{url} on start and
    closes on stop; without a C{url}, call L{connect} yourself.

    Events (L{on}): C{open(context)}, C{close(context, code, reason)},
    C{retry(attempt, delay, context)} when a reconnection is scheduled,
    C{message(envelope, context)} for every valid incoming message,
    C{unrouted(envelope, context)}, C{error(error, context)}.
    """

    _log = Logger()

    def __init__(
        self,
        reconnect: bool = True,
        max_retries: int | None = 5,
        backoff: str = "exponential",
        ping_interval: float = 30.0,
        *,
        url: str | None = None,
        ping_timeout: float | None = None,
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        jitter: float = 0.1,
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
        tls_options=None,
        protocol: type[HandlerProtocol] = HandlerProtocol,
        clock: IReactorTime | None = None,
        reactor=None,
    ) -> None:
        _checks.flag("reconnect", reconnect)
        if max_retries is not None:
            _checks.number("max_retries", max_retries, minimum=0, integer=True)
        _checks.number("ping_interval", ping_interval, minimum=0)
        if ping_timeout is not None:
            _checks.number("ping_timeout", ping_timeout, above=0)
        _checks.number("initial_delay", initial_delay, minimum=0)
        _checks.number("max_delay", max_delay, minimum=0)
        _checks.number("jitter", jitter, minimum=0, maximum=1)
        _checks.number("open_timeout", open_timeout, above=0)
        _checks.number("close_timeout", close_timeout, above=0)
        _checks.number("min_uptime", min_uptime, minimum=0)
        _checks.number("max_concurrent_handlers", max_concurrent_handlers, minimum=1, integer=True)
        fatal_close_codes = frozenset(fatal_close_codes)
        for fatal in fatal_close_codes:
            _checks.number("fatal_close_codes", fatal, minimum=1000, maximum=4999, integer=True)
        _checks.number("request_timeout", request_timeout, above=0)
        _checks.number("max_message_size", max_message_size, minimum=1, integer=True)
        if max_send_size is not None:
            _checks.number("max_send_size", max_send_size, minimum=1, integer=True)
        _checks.number("max_queue", max_queue, minimum=0, integer=True)
        _checks.number("max_queue_bytes", max_queue_bytes, minimum=0, integer=True)
        if tls_options is not None and url is not None and not url.startswith("wss:"):
            raise ValueError(f"tls_options is given, but {url!r} is not a wss:// URL")
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.reconnect = reconnect
        self.max_retries = max_retries if reconnect else 0
        self.backoff = backoff
        self._retry_policy = backoff_policy(
            backoff, initial_delay=initial_delay, max_delay=max_delay, jitter=jitter
        )
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout if ping_timeout is not None else min(ping_interval, 10.0)
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.min_uptime = min_uptime
        self.fatal_close_codes = fatal_close_codes
        self.max_concurrent_handlers = max_concurrent_handlers
        self.max_message_size = max_message_size
        self.max_send_size = max_send_size
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.request_timeout = request_timeout
        self.compression = compression
        self.tls_options = tls_options
        self.protocol = protocol
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.reactor = reactor
        self.context = ConnectionContext()
        self.router: Router[RouteHandler] = Router()
        self.events = Events(
            ("open", "close", "retry", "message", "unrouted", "error"), self._event_failed
        )
        self._service: ReconnectingClientService | None = None
        self._protocol: HandlerProtocol | None = None
        self._first_open: OneShotObserver | None = None
        self._closing: OneShotObserver | None = None
        self._queue: deque[tuple[bytes, bool, Deferred[None]]] = deque()
        self._queued_bytes = 0
        self._requests: dict[str, tuple[Deferred[Any], IDelayedCall]] = {}
        self._request_prefix = uuid.uuid4().hex[:12] + "-"
        self._request_counter = 0
        self._counts = dict.fromkeys(
            ("retries", "messages_sent", "messages_received", "reconnects", "invalid_messages",
             "unrouted_messages", "handler_errors", "late_replies", "protocol_errors"),
            0,
        )
        self._last_ping: float | None = None
        self._in_flight = 0
        self._held: deque[Envelope] = deque()
        self._reading_paused = False
        self._opened_once = False
        self._write_buffer_full = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False

    # -- the public API -------------------------------------------------

    def connect(self, url: str | None = None) -> Deferred[None]:
        """
        Connect to C{url} (ws:// or wss://).  Fires on the first open; errbacks
        with L{RetryLimitReached} when the retries are used up (at once, after
        the first failure, with C{reconnect=False}), or L{HandlerClosed}.
        """
        if self._service is not None:
            raise RuntimeError("connect() was called already: close() the handler first")
        url = url or self.url
        if url is None:
            raise ValueError("no URL to connect to")
        try:
            secure, host, port, _, _, _ = parse_url(url)
        except Exception as error:
            raise ValueError(f"not a WebSocket URL: {url!r} ({error})") from None
        if self.tls_options is not None and not secure:
            raise ValueError(f"tls_options is given, but {url!r} is not a wss:// URL")
        self.url = url
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.open_timeout)
        if secure:
            endpoint = wrapClientTLS(self.tls_options or optionsForClientTLS(host), endpoint)
        self._service = ReconnectingClientService(
            endpoint,
            self._factory(url),
            backoff=self._retry_policy,
            max_retries=self.max_retries,
            confirm_open=True,
            min_uptime=self.min_uptime,
            clock=self.clock,
        )
        self._first_open = OneShotObserver()
        self._closing = None
        self._service.when_given_up().addErrback(self._gave_up)
        self._service.on_retry = self._retry_scheduled
        self._service.startService()
        return self._first_open.when_fired()

    def add_route(self, path: str, handler: RouteHandler, replace: bool = False) -> None:
        """
        Call C{handler(data, context)} for messages whose path matches C{path}
        (exact, or with C{*} for one segment and C{#} for any number).  Raises
        L{RouteConflict} if C{path} is routed already, unless C{replace}.
        The handler may return a Deferred or be a coroutine function.
        """
        self.router.add(path, handler, replace=replace)

    def remove_route(self, path: str) -> None:
        """Remove the route for exactly C{path}; raises L{KeyError} if there is none."""
        self.router.remove(path)

    def send(self, path: str, data: Any) -> Deferred[None]:
        """
        Send C{{"path": path, "data": data}} (C{bytes} data goes as a binary
        message).  Fires when written to the connection; while disconnected
        and reconnecting, queues (L{QueueFull} past C{max_queue} messages or
        C{max_queue_bytes}); otherwise
        errbacks with L{NotConnected} or L{HandlerClosed}.
        """
        return self._send(Envelope(path=path, data=data))

    def request(self, path: str, data: Any, timeout: float | None = None) -> Deferred[Any]:
        """
        Send a message with a fresh C{id} and fire with the C{data} of the first
        incoming message carrying the same C{id}; errback with
        L{RequestTimeout} after C{timeout} seconds (from this call, queueing
        included), or L{ConnectionClosed} if the connection drops first.
        """
        self._request_counter += 1
        request_id = f"{self._request_prefix}{self._request_counter}"
        reply: Deferred[Any] = Deferred()
        seconds = self.request_timeout if timeout is None else timeout
        timer = self.clock.callLater(seconds, self._request_expired, request_id, path, seconds)
        self._requests[request_id] = (reply, timer)
        self._send(Envelope(path=path, data=data, id=request_id)).addErrback(
            lambda failure: self._end_request(request_id, failure)
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
        if self._closing is not None:
            return self._closing.when_fired()
        service = self._service
        if service is None:
            return succeed(None)
        self._closing = closing = OneShotObserver()
        done = closing.when_fired()
        error = HandlerClosed(f"the handler was closed ({code} {reason})".strip())
        self._fail_queue(error)
        self._fail_requests(error)
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
            queued=len(self._queue),
            queued_bytes=self._queued_bytes,
            pending_requests=len(self._requests),
            handlers_in_flight=self._in_flight,
            reading_paused=self._reading_paused,
            compression=extensions[0].EXTENSION_NAME if extensions else None,
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
        if self.url is not None and self._service is None:
            self.connect().addErrback(
                lambda failure: self._log.error(
                    "could not connect to {url}: {error}", url=self.url, error=failure.getErrorMessage()
                )
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close(1000, "going away")

    # -- what the protocol reports ----------------------------------------

    def _factory(self, url: str) -> WebSocketClientFactory:
        factory = WebSocketClientFactory(url, reactor=self.reactor)
        factory.protocol = self.protocol
        factory.handler = self
        options: dict[str, Any] = {
            # The protocol keeps every deadline on the handler's clock.
            "openHandshakeTimeout": 0,
            "closeHandshakeTimeout": 0,
            "serverConnectionDropTimeout": 0,
            "autoPingInterval": 0,
            "maxMessagePayloadSize": self.max_message_size,
            "maxFramePayloadSize": self.max_message_size,
            # Fail with a close frame (1009 for an over-size message), not by
            # dropping TCP, so that the peer learns why.
            "failByDrop": False,
        }
        if self.compression:
            options["perMessageCompressionOffers"] = [PerMessageDeflateOffer()]
            options["perMessageCompressionAccept"] = _accept_deflate
        factory.setProtocolOptions(**options)
        return factory

    def _opened(self, protocol: HandlerProtocol) -> None:
        if self._closing is not None:
            protocol.sendClose(1000, "the handler was closed")
            return
        self._protocol = protocol
        self._write_buffer_full = False
        protocol.registerProducer(_TransportFlow(self), True)
        self._service.connection_opened()
        context = self.context
        context.connection_id = uuid.uuid4().hex
        context.connected = True
        if self._opened_once:
            self._counts["reconnects"] += 1
        self._opened_once = True
        self._log.info(
            "connected to {url} (connection {connection_id})",
            url=self.url, connection_id=context.connection_id,
        )
        self._flush_queue(protocol)
        self.events.emit("open", context)
        self._update_flow()
        if self._first_open is not None:
            self._first_open.fire(None)

    def _closed(self, protocol: HandlerProtocol, clean: bool, code: int | None, reason: str | None) -> None:
        if protocol is not self._protocol:
            why = f"WebSocket handshake failed: {protocol.ended_by or reason or 'connection closed'} (code {code})"
            if self._service is not None:
                self._service.connection_failed(why)
            self._log.info("{why}", why=why)
            return
        self._protocol = None
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
        self._fail_requests(ConnectionClosed(f"the connection closed ({code} {reason or ''})".strip()))
        self._update_flow()
        self.events.emit("close", self.context, code, reason)
        if protocol.remoteCloseCode in self.fatal_close_codes and self._service is not None:
            self._service.stop_retrying()
            self._gave_up(Failure(FatalClose(protocol.remoteCloseCode, protocol.remoteCloseReason)))

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
        """Write what waited for a connection, in order; one message that
        fails is errbacked alone; if the connection closes meanwhile, the
        rest waits for the next one."""
        queue = self._queue
        while queue and protocol.can_send:
            payload, is_binary, sent = queue.popleft()
            self._queued_bytes -= len(payload)
            failure = self._write(protocol, payload, is_binary)
            if failure is None:
                sent.callback(None)
            else:
                sent.errback(failure)

    def _closing_handshake(self, protocol: HandlerProtocol) -> None:
        if protocol is self._protocol:
            self.context.connected = False
            self._update_flow()

    def _transport_full(self, full: bool) -> None:
        self._write_buffer_full = full
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
        self._counts["retries"] += 1
        self.events.emit("retry", attempt, delay, self.context)

    def _heartbeat(self) -> None:
        self._last_ping = self.clock.seconds()

    def _received(self, payload: bytes, is_binary: bool) -> None:
        self._counts["messages_received"] += 1
        context = self.context
        context.last_message_at = self.clock.seconds()
        try:
            envelope = decode(payload, is_binary)
        except InvalidMessage as error:
            self._counts["invalid_messages"] += 1
            if first_of_a_burst(self._counts["invalid_messages"]):
                self._log.warn("dropped an invalid message ({count} so far): {error}",
                               error=error, count=self._counts["invalid_messages"])
            self.events.emit("error", error, context)
            return
        if envelope.id is not None and envelope.id.startswith(self._request_prefix):
            self._reply_received(envelope)
            return
        if self._held or self._in_flight >= self.max_concurrent_handlers:
            # At the bound: hold the message (at most the rest of this read)
            # and stop reading, so that TCP pushes back on the server.
            self._held.append(envelope)
            self._pause_reading()
            return
        self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> None:
        context = self.context
        self.events.emit("message", envelope, context)
        handler = self.router.match(envelope.path)
        if handler is None:
            self._counts["unrouted_messages"] += 1
            if first_of_a_burst(self._counts["unrouted_messages"]):
                self._log.info("no route for path {path!r} ({count} unrouted so far)",
                               path=envelope.path, count=self._counts["unrouted_messages"])
            self.events.emit("unrouted", envelope, context)
            return
        try:
            result = handler(envelope.data, context)
        except Exception:
            self._handler_failed(f"handler for {envelope.path!r}", Failure())
            return
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            self._in_flight += 1
            result.addErrback(lambda failure: self._handler_failed(f"handler for {envelope.path!r}", failure))
            result.addBoth(self._handler_done)

    def _handler_done(self, result: object) -> None:
        self._in_flight -= 1
        held = self._held
        while held and self._in_flight < self.max_concurrent_handlers:
            self._dispatch(held.popleft())
        if not held and self._reading_paused:
            # Still the connection that was paused: _closed clears the flag.
            self._reading_paused = False
            self._protocol.transport.resumeProducing()

    def _pause_reading(self) -> None:
        if self._reading_paused:
            return
        self._reading_paused = True
        self._log.info(
            "{count} handler calls in flight (max_concurrent_handlers): "
            "not reading until one ends", count=self._in_flight,
        )
        self._protocol.transport.pauseProducing()

    def _reply_received(self, envelope: Envelope) -> None:
        pending = self._requests.pop(envelope.id, None)
        if pending is None:
            self._counts["late_replies"] += 1
            self._log.info("dropped a late reply to request {id} on {path!r}",
                           id=envelope.id, path=envelope.path)
            return
        reply, timer = pending
        timer.cancel()
        reply.callback(envelope.data)

    # -- sending ----------------------------------------------------------

    def _send(self, envelope: Envelope) -> Deferred[None]:
        try:
            payload, is_binary = encode(envelope)
        except (TypeError, ValueError):
            return fail()
        if self.max_send_size is not None and len(payload) > self.max_send_size:
            return fail(MessageTooLarge(
                f"a message of {len(payload)} bytes to {envelope.path!r} passes "
                f"max_send_size={self.max_send_size}"
            ))
        if self._closing is not None:
            return fail(HandlerClosed("the handler was closed"))
        protocol = self._open_protocol()
        if protocol is not None and not self._queue:
            failure = self._write(protocol, payload, is_binary)
            return succeed(None) if failure is None else fail(failure)
        if self._service is None or not self.reconnect:
            return fail(NotConnected(f"not connected; cannot send to {envelope.path!r}"))
        if len(self._queue) >= self.max_queue:
            return fail(QueueFull(f"{self.max_queue} messages already wait for the connection"))
        if self._queued_bytes + len(payload) > self.max_queue_bytes:
            return fail(QueueFull(
                f"{self._queued_bytes} bytes already wait for the connection; "
                f"{len(payload)} more would pass max_queue_bytes={self.max_queue_bytes}"
            ))
        sent: Deferred[None] = Deferred()
        self._queue.append((payload, is_binary, sent))
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
        self._counts["messages_sent"] += 1
        return None

    # -- endings ------------------------------------------------------------

    def _request_expired(self, request_id: str, path: str, seconds: float) -> None:
        reply, _ = self._requests.pop(request_id)
        reply.errback(RequestTimeout(f"no reply to the request on {path!r} within {seconds} s"))

    def _end_request(self, request_id: str, failure: Failure) -> None:
        pending = self._requests.pop(request_id, None)
        if pending is not None:
            reply, timer = pending
            timer.cancel()
            reply.errback(failure)

    def _fail_requests(self, error: WebSocketError) -> None:
        for request_id in list(self._requests):
            self._end_request(request_id, Failure(error))

    def _fail_queue(self, error: WebSocketError) -> None:
        queue, self._queue = self._queue, deque()
        self._queued_bytes = 0
        for _, _, sent in queue:
            sent.errback(error)

    def _gave_up(self, failure: Failure) -> None:
        service, self._service = self._service, None
        service.stopService()
        self._fail_queue(failure.value)
        if self._first_open is not None:
            self._first_open.fire(failure)
        self.events.emit("error", failure.value, self.context)

    def _stop_service(self, service: ReconnectingClientService) -> None:
        closing = self._closing

        def stopped(_: object) -> None:
            if self._service is service:
                self._service = None
            closing.fire(None)

        service.stopService().addBoth(stopped)

    def _handler_failed(self, where: str, failure: Failure) -> None:
        self._counts["handler_errors"] += 1
        if first_of_a_burst(self._counts["handler_errors"]):
            self._log.failure("{where} raised (the connection stays up; {count} so far)",
                              failure, where=where, count=self._counts["handler_errors"])
        error = HandlerError.from_failure(where, failure)
        if not where.startswith("error event"):
            self.events.emit("error", error, self.context)

    def _event_failed(self, event: str, failure: Failure) -> None:
        self._handler_failed(f"{event} event callback", failure)

