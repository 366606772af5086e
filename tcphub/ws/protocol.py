"""
L{HandlerProtocol}, one WebSocket connection of a L{WebSocketHandler}, and
L{HandlerFactory}, the Autobahn client factory that carries the handler
(typed, instead of an attribute hung on Autobahn's factory).

Extend it by subclassing L{HandlerProtocol} (Autobahn's hooks C{onOpen},
C{onMessage}, C{onPing}, C{onPong}, C{onClose}; call super) and passing the
class as C{protocol=} to the handler.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, cast
from typing import Protocol as TypingProtocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from OpenSSL.SSL import Error as TLSError
from service_identity import VerificationError
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from zope.interface import implementer

from tcphub.errors import HandshakeRejected
from tcphub.ws.options import Headers, HandlerOptions, parse_proxy

__all__ = ["ConnectionListener", "Headers", "HeadersEndpoint", "HandlerFactory", "HandlerProtocol", "parse_proxy"]

class ConnectionListener(TypingProtocol):
    """What a L{HandlerProtocol} reports to (its handler): one method per
    moment of a connection's life."""

    def connection_opened(self, protocol: HandlerProtocol) -> None:
        """The opening handshake of C{protocol} completed."""

    def connection_closed(self, protocol: HandlerProtocol, clean: bool, code: int | None,
                          reason: str | None) -> None:
        """C{protocol}'s connection ended, opened or not."""

    def closing_handshake_began(self, protocol: HandlerProtocol) -> None:
        """A close frame went either way: nothing more can be sent on C{protocol}."""

    def heartbeat(self) -> None:
        """A ping or a pong arrived."""

    def message_received(self, protocol: HandlerProtocol, payload: bytes, is_binary: bool) -> None:
        """A message arrived on C{protocol}."""


def _proxy(proxy: str | None) -> dict[str, Any] | None:
    if proxy is None:
        return None
    host, port = parse_proxy(proxy)
    return {"host": host, "port": port}


class HandlerProtocol(WebSocketClientProtocol):
    """
    One WebSocket connection; reads its settings from C{factory.options},
    keeps its deadlines on C{factory.clock}, and reports everything to
    C{factory.handler} (a L{ConnectionListener}).

    Its deadlines run on the handler's clock, not on Autobahn's timers
    (txaio's batched timer truncates deadlines to whole seconds, so they fire
    up to 1 s early and a sub-second interval fires at once): the opening
    handshake within C{open_timeout} of the TCP connection, a ping every
    C{ping_interval} answered within C{ping_timeout}, and the closing
    handshake, from the first close frame either way to the end of TCP,
    within C{close_timeout}.  A deadline missed aborts the connection, and
    the C{close} event says which.
    """

    factory: HandlerFactory
    rejection: HandshakeRejected | None = None
    """The server's refusal of the opening handshake (an HTTP status other than 101), if it refused."""
    maxMessagePayloadSize: int
    """Autobahn's bound on an incoming message (the handler's C{max_message_size})."""
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
        timeout = self.factory.options.open_timeout
        self._open_call = self.factory.clock.callLater(timeout, self._missed, "_open_call",
                                                       f"opening handshake timeout ({timeout} s)")

    def dataReceived(self, data: bytes) -> None:
        if not self._opened and len(self._reply_start) < _REPLY_PREVIEW:
            # The start of the server's answer, to say what was wrong with it.
            self._reply_start += data[: _REPLY_PREVIEW - len(self._reply_start)]
        super().dataReceived(data)

    def onOpen(self) -> None:
        self._opened = True
        self._cancel("_open_call")
        interval = self.factory.options.ping_interval
        if interval:
            self._ping_call = self.factory.clock.callLater(interval, self._ping)
        self.factory.handler.connection_opened(self)

    def _ping(self) -> None:
        options, clock = self.factory.options, self.factory.clock
        self._ping_call = clock.callLater(options.ping_interval, self._ping)
        if self.can_send:
            self.sendPing()
            if self._pong_call is None:
                timeout = options.effective_ping_timeout
                self._pong_call = clock.callLater(timeout, self._missed, "_pong_call",
                                                  f"ping timeout: no pong within {timeout} s")

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if self._close_call is None and self.transport is not None:
            timeout = self.factory.options.close_timeout
            self._close_call = self.factory.clock.callLater(timeout, self._missed, "_close_call",
                                                            f"closing handshake timeout ({timeout} s)")

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
        self.factory.handler.message_received(self, payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        super().onPing(payload)
        self.factory.handler.heartbeat()

    def onPong(self, payload: bytes) -> None:
        self._cancel("_pong_call")
        self.factory.handler.heartbeat()

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        # The closing handshake starts: nothing more can be sent on this connection.
        self.factory.handler.closing_handshake_began(self)
        return super().onCloseFrame(code, reasonRaw)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.handler.connection_closed(self, wasClean, code, reason)

    def ending(self, code: int | None, reason: str | None) -> tuple[int | None, str | None]:
        """The code and reason that ended this connection (Autobahn's
        C{onClose} gives C{code} and C{reason}), whichever side sent the
        first close frame (Autobahn reports the peer's echo, often without a
        reason, or 1006 when TCP ended before the echo), and the deadline
        this side missed, if any."""
        local, remote = self.localCloseCode, self.remoteCloseCode
        local_reason = (self.localCloseReason or b"").decode("utf-8", "replace") or None
        if local is not None and (self.closedByMe or remote is None):
            code, reason = local, local_reason
        elif remote is not None:
            code, reason = remote, self.remoteCloseReason
        if self.ended_by is not None:
            # After a close frame, keep its reason; without one, Autobahn's
            # "closed uncleanly" says less than the deadline does.
            reason = f"{reason}; then {self.ended_by}" if reason and (local or remote) else self.ended_by
        return code, reason

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
        if not self._opened:
            self.rejection = _rejection(getattr(self, "http_status_line", None),
                                        getattr(self, "http_headers", None))
        if not self._opened and self.ended_by is None:
            self.ended_by = _handshake_failure(cast(BaseException, reason.value), self._reply_start)
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


def _rejection(status_line: str | None, headers: Any) -> HandshakeRejected | None:
    """The server's answer, if it was an HTTP status other than 101."""
    parts = (status_line or "").split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit() or parts[1] == "101":
        return None
    reason = parts[2] if len(parts) > 2 else ""
    return HandshakeRejected(int(parts[1]), reason, {str(k): str(v) for k, v in dict(headers or {}).items()})


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


def _accept_deflate(response: PerMessageDeflateResponse) -> PerMessageDeflateResponseAccept | None:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


class HandlerFactory(WebSocketClientFactory):
    """
    Autobahn's client factory for one handler: builds its C{protocol} class,
    with Autobahn's own timers off (the protocol keeps every deadline on the
    handler's clock), the handler's size limit, failing by close frame,
    permessage-deflate offered if the handler asks for compression, and the
    handler's handshake options (origin, subprotocols, user agent, proxy;
    the headers are set before each attempt, see L{HeadersEndpoint}).
    """

    protocol: type[HandlerProtocol]  # type: ignore[assignment]

    def __init__(self, handler: ConnectionListener, options: HandlerOptions, clock: IReactorTime,
                 url: str, reactor: Any) -> None:
        super().__init__(
            url,
            origin=options.origin,
            protocols=list(options.subprotocols) or None,
            useragent=options.user_agent,
            headers=dict(options.headers) if isinstance(options.headers, Mapping) else None,
            proxy=_proxy(options.proxy),
            reactor=reactor,
        )
        self.handler = handler
        """Told of every moment of each connection's life."""
        self.options = options
        """The handler's settings, which its connections read."""
        self.clock = clock
        """The clock of every deadline (the handler's)."""
        self.protocol = options.protocol
        self._handshake = {
            "origin": options.origin,
            "protocols": list(options.subprotocols) or None,
            "useragent": options.user_agent,
            "proxy": _proxy(options.proxy),
        }
        settings: dict[str, Any] = {
            "openHandshakeTimeout": 0,
            "closeHandshakeTimeout": 0,
            "serverConnectionDropTimeout": 0,
            "autoPingInterval": 0,
            "maxMessagePayloadSize": options.max_message_size,
            "maxFramePayloadSize": options.max_message_size,
            # Fail with a close frame (1009 for an over-size message), not by
            # dropping TCP, so that the peer learns why.
            "failByDrop": False,
        }
        if options.compression:
            settings["perMessageCompressionOffers"] = [PerMessageDeflateOffer()]
            settings["perMessageCompressionAccept"] = _accept_deflate
        self.setProtocolOptions(**settings)

    def aim(self, url: str) -> None:
        """Make the next handshake for C{url} (one of several the handler
        fails over between), keeping the handshake options and headers."""
        self.setSessionParameters(url, headers=self.headers, **self._handshake)
        if ":" in self.host:
            # Autobahn writes Host (and a proxy's CONNECT) as host:port; an
            # IPv6 literal needs its brackets there (RFC 7230, section 5.4).
            self.host = f"[{self.host}]"


@implementer(IStreamClientEndpoint)
class HeadersEndpoint:
    """Sets a L{HandlerFactory}'s handshake headers from a callable before
    each connection attempt (a token fetched anew on every reconnect); a
    callable that fails fails the attempt, which is retried like any other.
    (The factory given to C{connect} is ClientService's wrapper of it.)"""

    def __init__(self, endpoint: IStreamClientEndpoint, headers: Callable[[], Any],
                 factory: HandlerFactory) -> None:
        self._endpoint = endpoint
        self._headers = headers
        self._factory = factory

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def connect(headers: Mapping[str, str]) -> Deferred[Any]:
            self._factory.headers = dict(headers)
            return self._endpoint.connect(factory)

        return maybeDeferred(self._headers).addCallback(connect)
