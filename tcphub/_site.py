"""
L{SiteService}: a C{twisted.web} site on one or more server endpoints, as
the operations port and the WebSocket members' port both are; and
L{BodylessSite}, the site both serve, which refuses a request body before
reading it (C{twisted.web} would read a body of any declared length, and
spool a large one to a temporary file, before any resource or token check
sees the request), and paces each address's requests (C{twisted.web}
answers every request a connection pipelined in one reactor turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request, Site

from tcphub._metric_fields import COUNTER
from tcphub._observer import OneShotObserver
from tcphub._repeats import RepeatedLog
from tcphub.errors import ListenFailed
from tcphub.hub.protocol import format_address
from tcphub.hub.rate import TokenBucket

__all__ = ["BodylessSite", "HttpCounters", "SiteService", "method_not_allowed"]


def method_not_allowed(request: Request, allowed: bytes, where: bytes = b"port") -> bytes:
    """A 405 naming the C{allowed} methods of this C{where} (port, or
    path), in plain text (not twisted.web's HTML page, nor its 501 for a
    method it does not know): its body."""
    request.setResponseCode(405)
    request.setHeader(b"allow", allowed)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"405: this " + where + b" answers " + allowed + b" only\n"

@dataclass
class HttpCounters:
    """What an HTTP port refuses and holds back, on C{/metrics} (by port) and C{/varz}."""

    refused_bodies: int = field(default=0, metadata=COUNTER)
    """Requests that declared a body (413)."""
    refused_connections: int = field(default=0, metadata=COUNTER)
    """Connections past the port's cap or their address's (503)."""
    slow_requests: int = field(default=0, metadata=COUNTER)
    """Connections whose request head did not arrive whole in time (aborted)."""
    paced_requests: int = field(default=0, metadata=COUNTER)
    """Requests that waited for their address's request rate."""


_TOO_LARGE = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
              b"Content-Length: 38\r\nConnection: close\r\n\r\n413: this port takes no request body\n")


class _Discard:
    """Where the bytes of a refused body go (those already read with the
    headers): nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class _BodylessRequest(Request):
    """A request whose body, if it declares one, is refused with a 413
    before a byte of it is read, and the connection closed; whose method,
    if not GET or HEAD, is a 405 (twisted.web answers a method it does not
    know with a 501 "Huh?"); and which is answered when its address's
    request bucket has a token (until then the connection's next requests
    wait unread, as twisted.web keeps them while one is being answered)."""

    _paced: IDelayedCall | None = None

    def process(self) -> None:
        site: BodylessSite = cast(Any, self.channel).site
        wait = site.take_request_token(self.getClientAddress())
        if wait:
            self._paced = site.clock.callLater(wait, self._due)
            return
        self._answer()

    def _due(self) -> None:
        self._paced = None
        self.process()

    def render(self, resrc: Any) -> None:
        """As C{Request.render}, but a HEAD answers the headers its GET would,
        without the "I think I'll eat it" line twisted.web logs for every
        HEAD of a resource that has only C{render_GET}."""
        if self.method != b"HEAD":
            super().render(resrc)
            return
        try:
            body = resrc.render(self)
        except Exception:
            self.processingFailed(Failure())
            return
        if body is NOT_DONE_YET:
            return
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(b"")  # http.Request.write sends no body for a HEAD
        self.finish()

    def connectionLost(self, reason: Failure) -> None:
        call, self._paced = self._paced, None
        if call is not None:
            call.cancel()
        super().connectionLost(reason)

    def _answer(self) -> None:
        methods = cast(Any, self.channel).site.methods
        if self.method not in methods:
            self.write(method_not_allowed(self, b", ".join(methods)))
            self.finish()
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        if length == 0:
            super().gotLength(length)
            return
        # A declared length, or chunked (None): no path of this site takes a body.
        self.content = _Discard()
        transport: Any = self.channel.transport
        transport.write(_TOO_LARGE)
        transport.loseConnection()
        site: Any = cast(Any, self.channel).site
        site.counters.refused_bodies += 1
        site.repeats.emit("refused_bodies", LogLevel.warn,
                          "refused a request body from {peer} ({length} bytes declared): "
                          "this port takes none ({count} so far)",
                          peer=format_address(transport.getPeer()),
                          length="chunked, unknown" if length is None else length, count=site.counters.refused_bodies)


_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 30\r\nConnection: close\r\n\r\n503: too many HTTP connections\n")

DEFAULT_MAX_HTTP_CONNECTIONS = 256
"""HTTP connections a port holds open at once (before any upgrade)."""
DEFAULT_MAX_HTTP_CONNECTIONS_PER_ADDRESS = 16
"""HTTP connections one address holds open at once on a port."""
DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a request's whole head may take to arrive."""
DEFAULT_MAX_REQUEST_RATE = 10.0
"""Requests a second one address has answered on a port, once its burst is spent."""
DEFAULT_MAX_REQUEST_BURST = 40
"""Requests one address may have answered at once on a port."""


class _GuardedChannel(HTTPChannel):
    """
    An HTTP connection held to the site's bounds: it counts against the
    site's cap and its address's, and each request's head must arrive whole
    within C{request_timeout} (an idle timeout alone lets a client that
    sends one byte a second hold the connection for ever).
    """

    site: BodylessSite
    transport: Any
    _deadline: IDelayedCall | None = None
    _counted = False
    _host: str | None = None
    _awaiting_request_line = True
    request_target: bytes = b""
    """The target (path and query) of the request being read, from its
    request line, for a request that decides before its body is read."""

    def lineReceived(self, line: bytes) -> None:
        if self._awaiting_request_line and line:
            self._awaiting_request_line = False
            parts = line.split(b" ")
            self.request_target = parts[1] if len(parts) == 3 else b""
        super().lineReceived(line)

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        peer = self.transport.getPeer()
        if not site.admit(peer):
            self.transport.write(_FULL)
            self.transport.loseConnection()
            return
        self._counted = True
        self._host = getattr(peer, "host", None)
        self._arm()

    def _arm(self) -> None:
        self._deadline = self.site.clock.callLater(self.site.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _too_slow(self) -> None:
        self._deadline = None
        site = self.site
        site.counters.slow_requests += 1
        site.repeats.emit("slow_requests", LogLevel.warn,
                          "closed an HTTP connection from {peer}: no whole request within {timeout:g} s "
                          "({count} so far)", peer=format_address(self.transport.getPeer()),
                          timeout=site.request_timeout, count=site.counters.slow_requests)
        self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        self._disarm()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        self._awaiting_request_line = True
        super().requestDone(request)
        if self.persistent and self._counted and self._deadline is None and self.transport is not None:
            self._arm()  # the next request of a kept-alive connection has its own deadline

    def upgraded(self) -> None:
        """The connection is no longer HTTP (a WebSocket took it over): it
        counts against the member limits from now on.  Its request never
        finishes: the channel lets go of it, so that both are freed as soon
        as the upgrade is done, not later by the cycle collector."""
        self._disarm()
        self._release()
        self.requests = []

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.site.release(self._host)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self._release()
        super().connectionLost(reason)


class BodylessSite(Site):
    """A C{Site} whose requests take no body (see L{_BodylessRequest}) and
    whose connections are bounded in number and time (see
    L{_GuardedChannel}), and whose requests are paced per address:
    C{max_request_burst} at once, then C{max_request_rate} a second (the
    others wait their turn, unread; see L{_BodylessRequest}; None: not
    paced, for a port whose requests are bounded otherwise).
    L{counters} counts the refusals and the waits."""

    requestFactory = _BodylessRequest
    protocol = _GuardedChannel  # type: ignore[assignment]
    methods: tuple[bytes, ...] = (b"GET", b"HEAD")
    """The methods answered; any other is a 405."""

    def __init__(self, resource: Any, *args: Any, clock: Any,
                 max_connections: int = DEFAULT_MAX_HTTP_CONNECTIONS,
                 max_connections_per_address: int = DEFAULT_MAX_HTTP_CONNECTIONS_PER_ADDRESS,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 max_request_rate: float | None = DEFAULT_MAX_REQUEST_RATE,
                 max_request_burst: int = DEFAULT_MAX_REQUEST_BURST, **kwargs: Any) -> None:
        if (max_request_rate is not None and not max_request_rate > 0) or max_request_burst < 1:
            raise ValueError(f"max_request_rate must be > 0 and max_request_burst >= 1, "
                             f"not {max_request_rate!r} and {max_request_burst!r}")
        super().__init__(resource, *args, **kwargs)
        self.clock = clock
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.request_timeout = request_timeout
        self.counters = HttpCounters()
        self.max_request_rate = max_request_rate
        self.max_request_burst = max_request_burst
        self.repeats = RepeatedLog(self._log, clock)
        self._open = 0
        self._per_address: dict[str, int] = {}
        self._buckets: dict[str | None, TokenBucket] = {}

    def take_request_token(self, peer: Any) -> float:
        """Take a request token of C{peer}'s address: C{0.0}, or (taking
        none) the seconds until its next one is due, counted."""
        if self.max_request_rate is None:
            return 0.0
        host = getattr(peer, "host", None)
        now = self.clock.seconds()
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= 2 * self.max_connections:
                self._forget_rested(now)
            bucket = self._buckets[host] = TokenBucket(self.max_request_rate, self.max_request_burst, now)
        wait = bucket.take(now)
        if wait:
            self.counters.paced_requests += 1
            self.repeats.emit("paced_requests", LogLevel.warn,
                              "paced HTTP requests from {peer}: more than {burst} at once or {rate:g} a "
                              "second wait their turn ({count} so far)", peer=format_address(peer),
                              burst=self.max_request_burst, rate=self.max_request_rate,
                              count=self.counters.paced_requests)
        return wait

    def _forget_rested(self, now: float) -> None:
        """Drop the buckets of addresses with no connection open whose burst
        is whole again (a fresh bucket would be the same); if that leaves
        too many still, those of every address with no connection open."""
        idle = [host for host in self._buckets if host not in self._per_address]
        for host in idle:
            if self._buckets[host].full(now):
                del self._buckets[host]
        if len(self._buckets) >= 2 * self.max_connections:
            for host in idle:
                self._buckets.pop(host, None)

    def admit(self, peer: Any) -> bool:
        """Whether a new connection from C{peer} fits the caps (counted if it does)."""
        host = getattr(peer, "host", None)
        per_address = self._per_address.get(host, 0) if host is not None else 0
        if self._open >= self.max_connections or per_address >= self.max_connections_per_address:
            self.counters.refused_connections += 1
            self.repeats.emit("refused_http", LogLevel.warn,
                              "refused an HTTP connection from {peer}: {open} open, {mine} from it "
                              "(at most {limit} and {per_address} from one address; {count} so far)",
                              peer=format_address(peer), open=self._open, mine=per_address,
                              limit=self.max_connections, per_address=self.max_connections_per_address,
                              count=self.counters.refused_connections)
            return False
        self._open += 1
        if host is not None:
            self._per_address[host] = per_address + 1
        return True

    def release(self, host: str | None) -> None:
        """A counted connection from C{host} closed, or was upgraded."""
        self._open -= 1
        if host is not None:
            left = self._per_address.get(host, 1) - 1
            if left:
                self._per_address[host] = left
            else:
                self._per_address.pop(host, None)

    _log = Logger()

    def log(self, request: Any) -> None:
        """The access log: every request at debug (twisted.web writes each at
        info, a line per failed token guess); a refusal (4xx, 5xx) once per
        burst of its status at info, then counted."""
        code = getattr(request, "code", 0)
        peer = format_address(request.getClientAddress())
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")
        self._log.debug("{peer} {method} {path} {code}", peer=peer, method=method, path=path, code=code)
        if code >= 400:
            self.repeats.emit(f"http_{code}", LogLevel.info, "HTTP {code} for {method} {path} from {peer}",
                              code=code, method=method, path=path, peer=peer)

    def stopFactory(self) -> None:
        self.repeats.stop()
        super().stopFactory()


class SiteService(Service):
    """
    Serves C{site} on C{endpoints}.  Under twistd the ports are bound before
    the reactor runs, so that one that cannot be bound ends twistd with
    L{ListenFailed}; L{when_listening} fires once every port listens.
    """

    _log = Logger()

    def __init__(self, reactor: Any, site: BodylessSite, endpoints: list[tuple[str, IStreamServerEndpoint]],
                 what: str) -> None:
        if not endpoints:
            raise ValueError(f"{what} needs at least one endpoint")
        self._reactor = reactor
        self.site = site
        self.endpoints = endpoints
        self._what = what
        self._ports: list[IListeningPort] = []
        self._attempt: Deferred[list[IListeningPort]] | None = None
        self._listening = OneShotObserver()

    def when_listening(self) -> Deferred[None]:
        """Fires once every port listens; errbacks with L{ListenFailed}."""
        return self._listening.when_fired()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failure: list[Failure] = []
        self._listen().addErrback(failure.append)
        if failure:
            failure[0].raiseException()

    def startService(self) -> None:
        super().startService()
        if self._attempt is None:
            self._listen().addErrback(lambda failure: self._log.error("{error}", error=failure.value))

    def _listen(self) -> Deferred[list[IListeningPort]]:
        attempts = [endpoint.listen(self.site) for _, endpoint in self.endpoints]
        self._attempt = gatherResults(attempts, consumeErrors=True)
        return self._attempt.addCallbacks(self._listened, self._failed, errbackArgs=(attempts,))

    def _listened(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        self._ports = ports
        self._listening.fire(None)
        for port in ports:
            self._reactor.callWhenRunning(self._log.info, "tcphub {what} listening on {address}",
                                          what=self._what, address=format_address(port.getHost()))
        return ports

    def _failed(self, failure: Failure, attempts: list[Deferred[IListeningPort]]) -> Failure:
        for attempt in attempts:  # a half-open site is worse than none
            attempt.addCallbacks(lambda port: port.stopListening() if port is not None else None,
                                 lambda _: None)
        first = cast(FirstError, failure.value)
        description = self.endpoints[first.index][0]
        error = ListenFailed(f"tcphub {self._what} cannot listen on {description}: "
                             f"{first.subFailure.getErrorMessage()}")
        error.__cause__ = first.subFailure.value
        self._listening.fire(Failure(error))
        return Failure(error)

    @property
    def port(self) -> int:
        """The first bound port number (useful with port 0)."""
        if not self._ports:
            raise RuntimeError(f"the {self._what} port is not listening")
        return int(getattr(self._ports[0].getHost(), "port"))

    def close_ports(self) -> Deferred[Any]:
        """Stop listening (the connections stay)."""
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])
