"""
L{TcpServer}, the hub as a Twisted service: it listens on one or more
endpoints, fits the process's descriptor limit to C{max_connections}, and
stops by closing its ports and then every client, after a drain.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence, cast

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure

from tcphub import _checks
from tcphub._observer import OneShotObserver
from tcphub._reactor import default_reactor
from tcphub._upstream.twisted_parts import is_emfile_recovery
from tcphub.errors import ListenFailed
from tcphub.events import Subscription
from tcphub.hub import descriptors
from tcphub.hub.factory import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_CLOSED_HISTORY,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PENDING,
    HubFactory,
)
from tcphub.hub.identity import Authenticator
from tcphub.hub.framing import Framing
from tcphub.hub.metrics import ClientInfo, Metrics
from tcphub.hub.protocol import HubProtocol, format_address
from tcphub.hub.rooms import DEFAULT_MAX_ROOMS_PER_CLIENT, DEFAULT_ROOM_HISTORY_BYTES, Kept
from tcphub.hub.sessions import DEFAULT_RESUME_WINDOW

__all__ = ["DEFAULT_BACKLOG", "TcpServer", "check_host", "parse_endpoints"]

# Twisted and Node use 50, which a burst of a few hundred connects overflows:
# the kernel then drops the handshakes and the clients stall on SYN-ACK retries.
DEFAULT_BACKLOG = 511
# Descriptors kept free beside the clients: listening ports, log files, the
# upstream connection, the reactor's own.
DESCRIPTOR_RESERVE = 64
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


def parse_endpoints(reactor: Any, endpoint: str | IStreamServerEndpoint | Sequence[str | IStreamServerEndpoint],
                    what: str) -> list[tuple[str, IStreamServerEndpoint]]:
    """Each endpoint (a string is parsed; a bad one raises L{ValueError}
    naming C{what}) with its description for the logs."""
    given = [endpoint] if isinstance(endpoint, str) or IStreamServerEndpoint.providedBy(endpoint) else endpoint
    parsed = []
    for each in given:
        if isinstance(each, str):
            try:
                parsed.append((each, serverFromString(reactor, each)))
            except Exception as error:
                raise ValueError(f"{what} endpoint {each!r}: {error}") from None
        else:
            parsed.append((repr(each), each))
    return parsed


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

    C{timeout} is in seconds (Node's C{socket.setTimeout} takes milliseconds);
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
        drain_grace: float = 0.0,
        drain_spread: float = 0.0,
        closed_history: int = DEFAULT_CLOSED_HISTORY,
        max_rooms_per_client: int = DEFAULT_MAX_ROOMS_PER_CLIENT,
        room_history: int = 0,
        room_history_bytes: int = DEFAULT_ROOM_HISTORY_BYTES,
        room_history_ttl: float = 0,
        allow_half_open: bool = False,
        auth: Authenticator | None = None,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        resume_window: float = DEFAULT_RESUME_WINDOW,
        protocol: type[HubProtocol] = HubProtocol,
        endpoint: str | IStreamServerEndpoint | Sequence[str | IStreamServerEndpoint] | None = None,
        raise_descriptor_limit: bool = True,
        clock: IReactorTime | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            reactor = default_reactor()
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
            closed_history=closed_history,
            max_rooms_per_client=max_rooms_per_client,
            room_history=room_history,
            room_history_bytes=room_history_bytes,
            room_history_ttl=room_history_ttl,
            max_rate=max_rate,
            max_burst=max_burst,
            keep_alive=keep_alive,
            allow_half_open=allow_half_open,
            auth=auth,
            auth_timeout=auth_timeout,
            resume_window=resume_window,
            clock=clock if clock is not None else reactor,
        )
        self.drain_timeout = _checks.number("drain_timeout", drain_timeout, minimum=0)
        self.drain_grace = _checks.number("drain_grace", drain_grace, minimum=0)
        self.drain_spread = _checks.number("drain_spread", drain_spread, minimum=0)
        self._grace: Deferred[None] | None = None
        self._hurried = False
        self.raise_descriptor_limit = raise_descriptor_limit
        self._descriptor_watch: Callable[[dict], None] | None = None
        self._other_descriptors = 0
        self._reactor = reactor
        self.endpoints = self._endpoints(reactor, endpoint, port, host, backlog)
        self.listening_ports: list[IListeningPort] = []
        self._listening: OneShotObserver | None = None
        self._attempts: list[Deferred[IListeningPort]] | None = None
        self._listen_failure: ListenFailed | None = None
        self._stopped: OneShotObserver | None = None
        self._stopping = False

    def _endpoints(
        self,
        reactor: Any,
        endpoint: str | IStreamServerEndpoint | Sequence[str | IStreamServerEndpoint] | None,
        port: int,
        host: str,
        backlog: int,
    ) -> list[IStreamServerEndpoint]:
        self._descriptions: dict[int, str] = {}
        if endpoint is None:
            tcp = TCP6ServerEndpoint if isIPv6Address(host) else TCP4ServerEndpoint
            listening = tcp(reactor, port, backlog=backlog, interface=host)
            self._descriptions[id(listening)] = f"{host}:{port}"
            return [listening]
        endpoints = []
        for description, each in parse_endpoints(reactor, endpoint, "tcphub"):
            self._descriptions[id(each)] = description
            endpoints.append(each)
        return endpoints

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start listening; fires when every endpoint listens, errbacks if one fails."""
        if not self.running:
            self.startService()
        return self.when_listening()

    def stop(self) -> Deferred[None]:
        """Fires when the listening ports are closed and every client is gone."""
        if not self.running:
            return succeed(None)
        return self.stopService()

    def when_listening(self) -> Deferred[None]:
        """Fires once every endpoint listens; errbacks with why one could not."""
        if self._listening is None:
            self._listening = OneShotObserver()
        return self._listening.when_fired()

    def when_stopped(self) -> Deferred[None]:
        """Fires when the next stop (or the one under way) is complete: the
        ports closed and every client gone.  An operations port waits for it
        to keep answering during the drain.  At once if the hub is neither
        running nor stopping."""
        if not self.running and not self._stopping:
            return succeed(None)
        if self._stopped is None:
            self._stopped = OneShotObserver()
        return self._stopped.when_fired()

    @property
    def accepting(self) -> bool:
        """Listening, and not stopping: ready for new clients."""
        return bool(self.running and self.listening_ports)

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
            globalLogPublisher.addObserver(cast(ILogObserver, self._descriptor_watch))
        if self._attempts is None:  # not bound by privilegedStartService
            self._listen()

    def _fit_descriptor_limit(self) -> None:
        """Raise the soft RLIMIT_NOFILE toward the hard one as far as
        C{max_connections} needs; if even the hard limit is short, admit only
        as many clients as it leaves room for, and say so."""
        reserve = DESCRIPTOR_RESERVE + self._other_descriptors
        needed = self.factory.max_connections + reserve
        soft, hard = descriptors.limit()
        if soft >= needed:
            return
        raised = descriptors.raise_limit(needed)
        if raised > soft:
            self._log.info("raised the open-file limit from {soft} to {raised}", soft=soft, raised=raised)
        if raised < needed:
            allowed = max(1, raised - reserve)
            self._log.warn(
                "max_connections is {wanted}, but the open-file limit (ulimit -n) of {limit} "
                "leaves room for about {allowed} clients: more are refused and counted "
                "in 'rejected'; raise the hard limit to serve more",
                wanted=self.factory.max_connections, limit=raised, allowed=allowed,
            )
            self.factory.limit_connections(allowed)

    def reserve_descriptors(self, count: int) -> None:
        """Count C{count} more descriptors the process needs besides the
        hub's clients (an HTTP port's connections) in the open-file budget
        computed at start."""
        self._other_descriptors += count

    def _count_descriptor_refusals(self, event: dict) -> None:
        # Twisted closes a connection it cannot give a descriptor to (EMFILE)
        # inside its listening port, before any factory sees it; its log line
        # is the only trace, and it does not say which port: descriptors are
        # the process's, and so is this count.
        if self.listening_ports and is_emfile_recovery(event):
            self.factory.count_descriptor_refusal()

    def stopService(self) -> Deferred[None]:
        if self._descriptor_watch is not None:
            globalLogPublisher.removeObserver(cast(ILogObserver, self._descriptor_watch))
            self._descriptor_watch = None
        super().stopService()
        self._stopping = True
        listening, self._listening = self._listening, None
        self._attempts = None
        d = listening.when_fired() if listening is not None else succeed(None)
        d.addErrback(lambda _: None)
        if self.drain_grace and not self._hurried:
            # A lame duck: still serving while load balancers see /readyz's 503.
            d.addCallback(lambda _: self._wait_grace())
        d.addCallback(lambda _: self._close_ports())
        d.addCallback(lambda _: self.factory.go_away(0.0 if self._hurried else self.drain_spread)
                      if self.drain_spread or self.drain_grace else None)
        d.addCallback(lambda _: self.factory.close_all(self.drain_timeout))
        d.addCallback(lambda _: self._log.info("tcphub stopped"))
        d.addBoth(self._fire_stopped)
        return d

    def _wait_grace(self) -> Deferred[None]:
        self._log.info("draining: serving on for {grace:g} s while load balancers see this node is not ready, "
                       "then telling {clients} clients to reconnect elsewhere over {spread:g} s",
                       grace=self.drain_grace, clients=self.factory.client_count, spread=self.drain_spread)
        self._grace = deferLater(self.factory.clock, self.drain_grace)
        return self._grace.addBoth(self._graced)

    def _graced(self, result: object) -> None:
        self._grace = None

    def _close_ports(self) -> Deferred[Any]:
        ports, self.listening_ports = self.listening_ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])

    def hurry(self) -> None:
        """Skip the lame duck's C{drain_grace} and C{drain_spread} in the stop
        under way, or the next one: an operator's interrupt wants it now."""
        self._hurried = True
        grace = self._grace
        if grace is not None:
            grace.cancel()

    def _fire_stopped(self, result: object) -> object:
        self._stopping = False
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.fire(None)
        return result

    def _listen(self) -> None:
        if self._listening is None:
            self._listening = OneShotObserver()
        listening = self._listening
        self._listen_failure = None
        self._attempts = attempts = [endpoint.listen(self.factory) for endpoint in self.endpoints]

        def listened(ports: list[IListeningPort]) -> None:
            self.listening_ports = ports
            # Under twistd the ports are bound before the reactor runs and
            # installs its signal handlers: say "listening" once it does, so
            # that the line means ready to serve, and to be stopped.
            self._reactor.callWhenRunning(self._announce, ports)
            listening.fire(None)

        def failed(failure: Failure) -> None:
            # Close the endpoints that did listen: a half-started hub is worse than none.
            def close(port: IListeningPort | None) -> object:
                # A failed attempt holds None once gatherResults consumed its error.
                return port.stopListening() if port is not None else None

            for attempt in attempts:
                attempt.addCallbacks(close, lambda _: None)
            first = cast(FirstError, failure.value)
            cause = first.subFailure
            error = ListenFailed(
                f"tcphub cannot listen on {self._describe(self.endpoints[first.index])}: "
                f"{cause.getErrorMessage()}"
            )
            error.__cause__ = cause.value
            self._listen_failure = error
            self._log.error("{error}", error=error)
            self.factory.report(None, error)
            listening.fire(Failure(error))

        gatherResults(attempts, consumeErrors=True).addCallbacks(listened, failed)

    def _describe(self, endpoint: IStreamServerEndpoint) -> str:
        return self._descriptions.get(id(endpoint), repr(endpoint))

    def _announce(self, ports: list[IListeningPort]) -> None:
        for port in ports:
            self._log.info(
                "tcphub listening on {address} (framing={framing})",
                address=format_address(port.getHost()),
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
        address = self.address
        if not isinstance(address, (IPv4Address, IPv6Address)):
            raise RuntimeError(f"the server listens on {address}, which has no port number")
        return address.port

    # -- the hub's API, for those who hold the service ---------------------

    def on(self, event: str, callback: Callable[..., Any]) -> Subscription:
        return self.factory.on(event, callback)

    def send(self, client_id: str, data: bytes) -> Deferred[None]:
        return self.factory.send(client_id, data)

    def broadcast(self, data: bytes, exclude: Iterable[str] = (), room: str | None = None) -> Deferred[None]:
        return self.factory.broadcast(data, exclude, room)

    def join(self, client_id: str, room: str) -> None:
        self.factory.join(client_id, room)

    def leave(self, client_id: str, room: str) -> None:
        self.factory.leave(client_id, room)

    def rooms(self) -> dict[str, int]:
        return self.factory.rooms()

    def members(self, room: str) -> list[ClientInfo]:
        return self.factory.members(room)

    def room_sequence(self, room: str) -> int:
        return self.factory.room_sequence(room)

    def room_history(self, room: str) -> list[Kept]:
        return self.factory.room_history(room)

    def disconnect(self, client_id: str) -> Deferred[None]:
        return self.factory.disconnect(client_id)

    def clients(self) -> list[ClientInfo]:
        return self.factory.clients()

    def client(self, client_id: str) -> ClientInfo:
        return self.factory.client(client_id)

    def page(self, sort: str, descending: bool, offset: int, limit: int) -> tuple[int, list[ClientInfo]]:
        return self.factory.page(sort, descending, offset, limit)

    def get_metrics(self) -> Metrics:
        return self.factory.get_metrics()
