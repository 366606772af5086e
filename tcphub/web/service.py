"""
L{WebSocketMembers}: a C{twisted.web} site that lets browsers (and any
WebSocket client) join a hub as members, beside its TCP clients:

  - C{/ws}: the WebSocket; each connection is a member (see L{tcphub.web.member});
  - C{/}: a small chat page that joins the hub (no asset from the internet),
    or, with C{web_root}, the files of that directory.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request

from tcphub import _checks
from tcphub._reactor import default_reactor
from tcphub._site import (
    DEFAULT_MAX_HTTP_CONNECTIONS,
    DEFAULT_MAX_HTTP_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_REQUEST_BURST,
    DEFAULT_MAX_REQUEST_RATE,
    BodylessSite,
    SiteService,
)
from tcphub.hub.service import parse_endpoints
from tcphub.web.files import WebRoot
from tcphub.web.limits import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
)
from tcphub.web.member import MemberFactory
from tcphub.web.origins import OriginPolicy
from tcphub.web.upgrade import MemberResource

if TYPE_CHECKING:
    from tcphub.hub.service import TcpServer

__all__ = ["WebSocketMembers"]


class _Page(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self._body


class WebSocketMembers(SiteService):
    """
    Serves C{hub}'s WebSocket members on C{endpoint} (a Twisted server
    endpoint string or object, or several: C{ssl:...} for C{wss://}).

    C{allowed_origins}: the pages (C{https://chat.example.com}, or C{*}) whose
    scripts may connect; by default only pages served from this same host
    and port, reached by an address, C{localhost} or one of C{public_names}
    (the names the port is served under: same origin judged by the C{Host}
    header alone is open to DNS rebinding).  A handshake without an C{Origin}
    header (not a browser) is allowed.  C{web_root}: a directory served at C{/} instead of the chat
    page.  C{ping_interval} (None: no pings), C{ping_timeout} and
    C{close_timeout} are in seconds, on the hub's clock.  Before its upgrade
    a connection is an HTTP one, bounded: at most C{max_handshakes} at once,
    C{max_handshakes_per_address} from one address, and paced to
    C{max_handshake_burst}, then C{max_handshake_rate} a second (None: not
    paced); raise them for many members behind one address (a NAT, a proxy,
    a load generator).
    """

    def __init__(
        self,
        hub: TcpServer,
        endpoint: str | IStreamServerEndpoint | Sequence[str | IStreamServerEndpoint],
        *,
        allowed_origins: Iterable[str] = (),
        public_names: Iterable[str] = (),
        web_root: str | None = None,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        max_handshakes: int = DEFAULT_MAX_HTTP_CONNECTIONS,
        max_handshakes_per_address: int = DEFAULT_MAX_HTTP_CONNECTIONS_PER_ADDRESS,
        max_handshake_rate: float | None = DEFAULT_MAX_REQUEST_RATE,
        max_handshake_burst: int = DEFAULT_MAX_REQUEST_BURST,
        reactor: Any = None,
    ) -> None:
        reactor = reactor if reactor is not None else default_reactor()
        endpoints = parse_endpoints(reactor, endpoint, "websocket")
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins takes a collection of origins, not one: "
                            f"allowed_origins=[{allowed_origins!r}]")
        factory = hub.factory
        self.members = MemberFactory(
            factory,
            origins=OriginPolicy(allowed_origins, public_names),
            ping_interval=_checks.seconds_or_none("ping_interval", ping_interval),
            ping_timeout=_checks.number("ping_timeout", ping_timeout, above=0),
            close_timeout=_checks.number("close_timeout", close_timeout, above=0),
        )
        if web_root is not None:
            _checks.directory("web_root", web_root)
            root: Resource = WebRoot(web_root)
        else:
            root = Resource()
            root.putChild(b"", _Page(files("tcphub.web").joinpath("page.html").read_bytes()))
        root.putChild(b"ws", MemberResource(self.members))
        http_timeout = _checks.number("http_timeout", http_timeout, above=0)
        site = BodylessSite(root, timeout=http_timeout, reactor=factory.clock, clock=factory.clock,
                            request_timeout=http_timeout,
                            max_connections=_checks.count("max_handshakes", max_handshakes, minimum=1),
                            max_connections_per_address=_checks.count(
                                "max_handshakes_per_address", max_handshakes_per_address, minimum=1),
                            max_request_rate=max_handshake_rate,
                            max_request_burst=_checks.count("max_handshake_burst", max_handshake_burst, minimum=1))
        # HTTP connections before their upgrade use descriptors too (members count as clients).
        hub.reserve_descriptors(site.max_connections)
        site.noisy = False
        site.displayTracebacks = False
        super().__init__(reactor, site, endpoints, "websocket")

    def stopService(self) -> Deferred[Any]:
        """Stop taking new members; those connected go with the hub's drain."""
        super().stopService()
        return self.close_ports()
