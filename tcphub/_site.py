"""
L{SiteService}: a C{twisted.web} site on one or more server endpoints, as
the operations port and the WebSocket members' port both are; and
L{BodylessSite}, the site both serve, which refuses a request body before
reading it (C{twisted.web} would read a body of any declared length, and
spool a large one to a temporary file, before any resource or token check
sees the request).
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from tcphub._observer import OneShotObserver
from tcphub._repeats import RepeatedLog
from tcphub.errors import ListenFailed
from tcphub.hub.protocol import format_address

__all__ = ["BodylessSite", "SiteService"]

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
    before a byte of it is read, and the connection closed; and whose
    method, if not GET or HEAD, is a 405 (twisted.web answers a method it
    does not know with a 501 "Huh?")."""

    def process(self) -> None:
        if self.method not in (b"GET", b"HEAD"):
            self.setResponseCode(405)
            self.setHeader(b"allow", b"GET, HEAD")
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.write(b"405: this port answers GET and HEAD only\n")
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
        site.refused_bodies += 1
        site.repeats.emit("refused_bodies", LogLevel.warn,
                          "refused a request body from {peer} ({length} bytes declared): "
                          "this port takes none ({count} so far)",
                          peer=format_address(transport.getPeer()),
                          length="chunked, unknown" if length is None else length, count=site.refused_bodies)



class BodylessSite(Site):
    """A C{Site} whose requests take no body (see L{_BodylessRequest});
    C{refused_bodies} counts the refusals."""

    requestFactory = _BodylessRequest

    def __init__(self, resource: Any, *args: Any, clock: Any, **kwargs: Any) -> None:
        super().__init__(resource, *args, **kwargs)
        self.refused_bodies = 0
        self.repeats = RepeatedLog(self._log, clock)

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

    def __init__(self, reactor: Any, site: Site, endpoints: list[tuple[str, IStreamServerEndpoint]],
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
