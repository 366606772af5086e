"""
L{WebSocketHandler}, the service that keeps one WebSocket connection up
(reconnecting with backoff, up to a retry limit), routes incoming JSON
messages by path, queues sends while disconnected, and matches replies to
requests.  Its connections are L{HandlerProtocol}s (see L{tcphub.ws.protocol}).

Extend it by subclassing L{HandlerProtocol} and passing the class as
C{protocol=}, or by subscribing to the handler's events.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Sequence, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcphub._observer import OneShotObserver
from tcphub._reactor import default_reactor
from tcphub._repeats import RepeatedLog
from tcphub._secrets import redact_url
from tcphub.errors import (
    FatalClose,
    HandlerClosed,
    HandshakeRejected,
    InvalidCloseCode,
    MessageTooLarge,
    NotConnected,
    RequestInterrupted,
    WebSocketError,
)
from tcphub.events import Events, HandlerFailures, Subscription
from tcphub.ws.connector import Connector, check_fit
from tcphub.ws.envelope import Codec, Envelope
from tcphub.ws.options import HandlerOptions
from tcphub.ws.protocol import HandlerFactory, HandlerProtocol
from tcphub.ws.reconnect import ReconnectingClientService
from tcphub.ws.requests import PendingRequests
from tcphub.ws.routing import Router
from tcphub.ws.inbound import Inbound, RouteHandler
from tcphub.ws.sendqueue import SendQueue
from tcphub.ws.status import CAN_CONNECT, CLOSED_BY_USER, ConnectionContext, HandlerState, Status

__all__ = ["ConnectionContext", "HandlerState", "Status", "WebSocketHandler"]

CLOSE_MESSAGE_TOO_BIG = 1009
# Close codes with which this side fails a connection the peer broke:
# protocol error, unsupported data, invalid payload (bad UTF-8), too big.
_PROTOCOL_ERRORS = frozenset({1002, 1003, 1007, 1009})


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
        backoff: Any = "exponential",
        ping_interval: float = 30.0,
        *,
        url: str | Sequence[str] | None = None,
        options: HandlerOptions | None = None,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        **settings: Any,
    ) -> None:
        """
        C{reconnect}, C{max_retries}, C{backoff}, C{ping_interval} and the
        keyword C{settings} are the fields of L{HandlerOptions} (an unknown
        name is a L{TypeError}); or pass C{options} made beforehand.
        C{url}: one URL, or several to fail over between, for L{connect}
        and for starting as a service.
        """
        if options is None:
            options = HandlerOptions(reconnect=reconnect, max_retries=max_retries, backoff=backoff,
                                     ping_interval=ping_interval, **settings)
        elif settings:
            raise TypeError(f"pass the settings in options or as arguments, not both: {sorted(settings)}")
        self.options = options
        """The handler's settings (frozen; see L{HandlerOptions})."""
        urls = [url] if isinstance(url, str) else list(url or ())
        if urls:
            check_fit(urls[0], urls[0].startswith("wss:"), options)
        if reactor is None:
            reactor = default_reactor()
        self.url = urls[0] if urls else None
        """The URL connected to (or tried last)."""
        self.urls = urls
        """The URLs connect() tries in turn, when given several."""
        self.codec: Codec = options.codec
        """How messages map to envelopes (see L{tcphub.ws.envelope.Codec})."""
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
        self._connector: Connector | None = None
        self._protocol: HandlerProtocol | None = None
        self._first_open: OneShotObserver | None = None
        self._closed: OneShotObserver | None = None
        self._sends = SendQueue(options.max_queue, options.max_queue_bytes, self._write)
        self._requests = PendingRequests(self.clock, self.options.error_path)
        self._counts = dict.fromkeys(
            ("retries", "messages_sent", "messages_received", "invalid_messages",
             "unrouted_messages", "handler_errors", "late_replies", "protocol_errors"),
            0,
        )
        self._opens = 0
        self._last_ping: float | None = None
        self._inbound = Inbound(codec=self.codec, router=self.router, requests=self._requests,
                                events=self.events, repeats=self.repeats, handler_failed=self.handler_failed,
                                count=self._count, context=self.context, limit=options.max_concurrent_handlers)

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
        if self._state not in CAN_CONNECT:
            raise RuntimeError(f"the handler is {self._state.value}: close() it before connecting again")
        urls = [url] if isinstance(url, str) else list(url or self.urls)
        if not urls:
            raise ValueError("no URL to connect to")
        self.urls = urls
        options = self.options
        factory = HandlerFactory(self, options, self.clock, urls[0], self.reactor)
        connector = self._connector = Connector(urls, options, factory, self.reactor, self._aimed)
        self.url = urls[0]
        service = self._service = ReconnectingClientService(
            connector,
            factory,
            backoff=options.retry_policy(),
            max_retries=options.max_retries,
            confirm_open=True,
            min_uptime=options.min_uptime,
            round_size=len(connector),
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
        seconds = self.options.request_timeout if timeout is None else timeout
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
        self._sends.fail_all(error)
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
            queued=len(self._sends),
            queued_bytes=self._sends.queued_bytes,
            pending_requests=len(self._requests),
            handlers_in_flight=self._inbound.in_flight,
            reading_paused=self._inbound.reading_paused,
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
        return self._sends.writable

    def registerProducer(self, producer: IPushProducer, streaming: bool = True) -> None:
        """
        Flow control for whoever feeds the handler: C{producer.pauseProducing()}
        is called while the handler is not L{writable} (disconnected, or the
        connection's buffer is full), C{resumeProducing()} once it is again;
        so the producer need not fill the offline queue.
        """
        if not streaming:
            raise ValueError("only streaming (push) producers can be registered")
        self._sends.register_producer(producer)

    def unregisterProducer(self) -> None:
        self._sends.unregister_producer()

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.url is not None and self._state in CAN_CONNECT:
            self.connect().addErrback(
                lambda failure: self._log.error(
                    "could not connect to {url}: {error}", url=redact_url(self.url or ""),
                    error=failure.getErrorMessage()
                )
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close(1000, "going away")

    # -- called by HandlerProtocol ----------------------------------------

    def connection_opened(self, protocol: HandlerProtocol) -> None:
        """The opening handshake of C{protocol} completed."""
        if self._state in CLOSED_BY_USER:
            protocol.sendClose(1000, "the handler was closed")
            return
        assert self._service is not None
        self._state = HandlerState.OPEN
        self._protocol = protocol
        self._service.connection_opened()
        context = self.context
        context.connection_id = uuid.uuid4().hex
        context.connected = True
        context.subprotocol = protocol.websocket_protocol_in_use
        self._opens += 1
        assert self._connector is not None
        self._connector.opened()
        self._log.info(
            "connected to {url} (connection {connection_id})",
            url=redact_url(self.url or ""), connection_id=context.connection_id,
        )
        self._sends.attach(protocol)
        self.events.emit("open", context)
        self._sends.update_flow()
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
        self._sends.detach()
        if self._state is HandlerState.OPEN:
            self._state = HandlerState.CONNECTING
        self._inbound.connection_lost()
        self.context.connected = False
        code, reason = protocol.ending(code, reason)
        if protocol.closedByMe and code in _PROTOCOL_ERRORS:
            self._counts["protocol_errors"] += 1
        if self._service is not None:
            self._service.connection_failed(f"connection closed: {code} {reason or ''}".strip())
        if code == CLOSE_MESSAGE_TOO_BIG:
            self._log.warn(
                "closed the connection: an incoming message passed max_message_size "
                "({limit} bytes); code 1009",
                limit=self.options.max_message_size,
            )
        else:
            self._log.info("connection {connection_id} closed: {code} {reason}",
                           connection_id=self.context.connection_id, code=code, reason=reason or "")
        self._requests.fail_all(RequestInterrupted(f"the connection closed ({code} {reason or ''})".strip()))
        self._sends.update_flow()
        self.events.emit("close", self.context, code, reason)
        if protocol.remoteCloseCode in self.options.fatal_close_codes and self._state is HandlerState.CONNECTING:
            assert self._service is not None
            self._service.stop_retrying()
            self._gave_up(Failure(FatalClose(protocol.remoteCloseCode, protocol.remoteCloseReason)))

    def closing_handshake_began(self, protocol: HandlerProtocol) -> None:
        """A close frame went either way: nothing more can be sent on C{protocol}."""
        if protocol is self._protocol:
            self.context.connected = False
            self._sends.update_flow()

    def heartbeat(self) -> None:
        """A ping or a pong arrived."""
        self._last_ping = self.clock.seconds()

    def message_received(self, protocol: HandlerProtocol, payload: bytes, is_binary: bool) -> None:
        """A message arrived on C{protocol}: a reply to a request, or one to route."""
        self._count("messages_received")
        self.context.last_message_at = self.clock.seconds()
        self._inbound.received(payload, is_binary, cast(IPushProducer, protocol.transport))

    # -- inside -------------------------------------------------------------

    def _count(self, name: str) -> int:
        count = self._counts[name] + 1
        self._counts[name] = count
        return count

    def _handshake_rejected(self, rejection: HandshakeRejected) -> None:
        """Act on what the connector says a refused handshake means."""
        service, connector = self._service, self._connector
        assert service is not None and connector is not None
        refusal = connector.refused(self.url or "", rejection, self.clock.seconds())
        if refusal.unfollowed is not None:
            self._log.warn("not following the redirect to {target}", target=refusal.unfollowed)
        if refusal.redirected_to is not None:
            self._log.info("{url} redirects ({status}) to {target}: following",
                           url=redact_url(self.url or ""), status=rejection.status,
                           target=redact_url(refusal.redirected_to))
        if refusal.final:
            service.stop_retrying()
            self._gave_up(Failure(rejection))
        elif refusal.delay is not None:
            service.retry_after(refusal.delay)


    def _retry_scheduled(self, attempt: int, delay: float) -> None:
        self._count("retries")
        self.events.emit("retry", attempt, delay, self.context)

    # -- sending ----------------------------------------------------------

    def _send(self, envelope: Envelope) -> Deferred[None]:
        try:
            payload, is_binary = self.codec.encode(envelope)
        except (TypeError, ValueError):
            return fail()
        limit = self.options.max_send_size
        if limit is not None and len(payload) > limit:
            return fail(MessageTooLarge(
                f"a message of {len(payload)} bytes to {envelope.path!r} passes max_send_size={limit}"
            ))
        state = self._state
        if state in CLOSED_BY_USER:
            return fail(HandlerClosed("the handler was closed"))
        # Queued while reconnecting, or while the open connection's write
        # buffer is past its high-water mark (so that a loop of sends is
        # paced by the peer's reading, and memory stays bounded).
        may_queue = state is HandlerState.OPEN or (state is HandlerState.CONNECTING and self.options.reconnect)
        return self._sends.send(payload, is_binary, may_queue,
                                lambda: NotConnected(f"not connected; cannot send to {envelope.path!r}"))

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

    def _gave_up(self, failure: Failure) -> None:
        service, self._service = self._service, None
        self._state = HandlerState.GIVEN_UP
        assert service is not None
        service.stopService()
        self._sends.fail_all(cast(WebSocketError, failure.value))
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
