"""
L{AdminService}: the operations port, a read-only C{twisted.web} site beside
a hub, a WebSocket handler, or both (a gateway).

  - C{GET /healthz}: 200 while the process runs (never asks for the token);
  - C{GET /readyz}: 200 while the hub listens and accepts (for a handler
    alone: while its connection is open); 503 from the moment a shutdown
    begins, while the hub drains, so that a load balancer stops sending
    clients before the hub closes them;
  - C{GET /metrics}: the Prometheus text format (L{TcpHubCollector});
  - C{GET /varz}: JSON: version, effective options, counters, uptime;
  - C{GET /connz}: JSON: a page of the client table (C{limit}, C{offset},
    C{sort}, C{order}) and the last clients that left, with why;
  - C{GET /}: a live page drawing the rates and the table (no asset from
    the internet);
  - C{POST /drain}: stop as SIGTERM does (a lame duck: C{/readyz} 503 at
    once, the hub's drain, then the process ends); only with a C{token}.

With a C{token}, every path but C{/healthz}, C{/readyz} and the page itself
(which holds no data and asks for the token) requires C{Authorization:
Bearer <token>}.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import asdict
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from tcphub._reactor import default_reactor
from tcphub._secrets import redact_url
from tcphub._site import BodylessSite, SiteService, method_not_allowed
from tcphub.hub.addresses import format_address
from tcphub.hub.service import parse_endpoints
from tcphub._version import version
from tcphub.ops import views
from tcphub.ops.collector import TcpHubCollector

if TYPE_CHECKING:
    from tcphub.api.service import ApiService
    from tcphub.bus.redis import RedisBus
    from tcphub.hub.service import TcpServer
    from tcphub.web.service import WebSocketMembers
    from tcphub.ws.handler import WebSocketHandler

__all__ = ["AdminService"]


class _Path(Resource):
    """One path: C{render} returns (status, content type, body)."""

    isLeaf = True

    def __init__(self, admin: AdminService, render: Callable[[Request], tuple[int, str, bytes]],
                 open_to_all: bool = False) -> None:
        super().__init__()
        self._admin = admin
        self._render = render
        self._open = open_to_all

    def render_GET(self, request: Request) -> bytes:
        if not self._open and not self._admin.authorized(request):
            return _unauthorized(request)
        try:
            status, content_type, body = self._render(request)
        except views.BadQuery as error:
            status, content_type, body = 400, "text/plain; charset=utf-8", f"400: {error}\n".encode()
        return _answer(request, status, content_type, body)

    def render_POST(self, request: Request) -> bytes:
        return method_not_allowed(request, b"GET, HEAD", b"path")


class _Drain(Resource):
    """C{POST /drain}: the lame duck's stop, as SIGTERM (or SIGUSR2) asks
    for it; only on a port with a token (else anyone who reaches the port
    could stop the hub: 403)."""

    isLeaf = True

    def __init__(self, admin: AdminService) -> None:
        super().__init__()
        self._admin = admin

    def render_POST(self, request: Request) -> bytes:
        admin = self._admin
        if not admin.has_token:
            return _answer(request, 403, "text/plain; charset=utf-8",
                           b"403: POST /drain needs an admin token (--admin-token-file): without one, anyone "
                           b"who reaches this port could stop the hub\n")
        if not admin.authorized(request):
            return _unauthorized(request)
        admin.drain(format_address(request.getClientAddress()))
        return _answer(request, 202, "text/plain; charset=utf-8", b"draining\n")

    def render_GET(self, request: Request) -> bytes:
        return method_not_allowed(request, b"POST", b"path")


def _unauthorized(request: Request) -> bytes:
    request.setHeader(b"www-authenticate", b'Bearer realm="tcphub"')
    return _answer(request, 401, "text/plain; charset=utf-8", b"401: this path needs Authorization: Bearer <token>\n")


def _answer(request: Request, status: int, content_type: str, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    return body


CONNZ_FRESH = 1.0
"""Seconds a /connz page is answered again as it was (the live page's
period): requests hammering it cost the hub one page per query a second,
whatever their number."""
_CONNZ_CACHED = 32  # pages kept at once (different queries)


def _shown(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as /varz shows them: every URL's secrets as ***."""
    def shown(value: Any) -> Any:
        if isinstance(value, str) and "://" in value:
            return redact_url(value)
        if isinstance(value, (list, tuple)):
            return [shown(each) for each in value]
        if isinstance(value, (set, frozenset)):
            return sorted(shown(each) for each in value)
        return value

    return {key: shown(value) for key, value in options.items()}


def _json(document: Any, indent: int | None = 1) -> tuple[int, str, bytes]:
    """200 and C{document}; indented for a reader, or compact (C{indent=None}:
    the C encoder, more than twice as fast, for a document as large as a page
    of C{/connz})."""
    return 200, "application/json", json.dumps(document, indent=indent).encode("utf-8") + b"\n"


def _query_int(request: Request, name: str, default: int) -> int:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return default
    text = values[0].decode("ascii", "replace")
    try:
        return int(text)
    except ValueError:
        raise views.BadQuery(f"{name} takes a whole number, not {text!r}") from None


def _query_str(request: Request, name: str, default: str) -> str:
    values = (request.args or {}).get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else default


class AdminService(SiteService):
    """
    The operations port on C{endpoint} (a Twisted server endpoint string or
    object; bind it to loopback unless C{token} is set), reading C{hub} (a
    L{TcpServer}) and/or C{upstream} (a L{WebSocketHandler}), and the C{bus}
    (a L{RedisBus}) that joins the hub with others.  C{options} is
    shown as is by C{/varz} (the effective settings, for the operator).
    C{stop} is what C{POST /drain} calls, a turn after it answers: the
    reactor's C{stop}, which stops every service as SIGTERM does (the
    default).
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: str | IStreamServerEndpoint,
        *,
        hub: TcpServer | None = None,
        upstream: WebSocketHandler | None = None,
        bus: RedisBus | None = None,
        web: WebSocketMembers | None = None,
        api: ApiService | None = None,
        token: str | None = None,
        options: Mapping[str, Any] | None = None,
        reactor: Any = None,
        stop: Callable[[], object] | None = None,
    ) -> None:
        if hub is None and upstream is None:
            raise ValueError("AdminService needs a hub, an upstream handler, or both")
        if token is not None and not token:
            raise ValueError("token cannot be empty: give none to leave the port open")
        reactor = reactor if reactor is not None else default_reactor()
        endpoints = parse_endpoints(reactor, endpoint, "admin")
        self.hub = hub
        self.upstream = upstream
        self.bus = bus
        self.web = web
        self.options = dict(options or {})
        self._token = token.encode("utf-8") if token is not None else None
        self._draining = False
        self._stop = stop if stop is not None else reactor.stop
        self._connz_cache: dict[tuple[str, str, int, int], tuple[float, tuple[int, str, bytes]]] = {}
        self._reactor = reactor
        root = Resource()
        root.putChild(b"", _Path(self, self._page, open_to_all=True))
        root.putChild(b"healthz", _Path(self, lambda request: (200, "text/plain", b"ok\n"), open_to_all=True))
        # Load balancers and orchestrators probe without credentials.
        root.putChild(b"readyz", _Path(self, self._readyz, open_to_all=True))
        root.putChild(b"metrics", _Path(self, self._metrics))
        root.putChild(b"varz", _Path(self, self._varz))
        root.putChild(b"connz", _Path(self, self._connz))
        root.putChild(b"drain", _Drain(self))
        site = BodylessSite(root, clock=self._clock())
        site.methods = (b"GET", b"HEAD", b"POST")  # POST: /drain only; elsewhere a 405
        self._http = {"admin": site.counters}
        if web is not None:
            self._http["websocket"] = web.site.counters
        if api is not None:
            self._http["api"] = api.site.counters
        self._registry = CollectorRegistry(auto_describe=False)
        # The process_* and python_info every Prometheus user expects, from prometheus_client itself.
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        self._registry.register(TcpHubCollector(hub.factory if hub is not None else None, upstream,
                                                self._clock(), bus=bus,
                                                web=web.members.counters if web is not None else None,
                                                http=self._http, api=api.counters if api is not None else None))
        if hub is not None:
            hub.reserve_descriptors(site.max_connections)
        site.noisy = False
        site.displayTracebacks = False
        super().__init__(reactor, site, endpoints, "admin")

    def _clock(self) -> Any:
        return self.hub.factory.clock if self.hub is not None else self._reactor

    # -- what the paths answer --------------------------------------------------

    @property
    def has_token(self) -> bool:
        """Whether the port asks for a token."""
        return self._token is not None

    def drain(self, asker: str) -> None:
        """Stop as SIGTERM does (L{_Drain}): C{/readyz} says 503 from now
        on; the stop comes a turn later, once the answer is on its way.
        Asked again while draining: nothing more."""
        if self._draining:
            return
        self._draining = True
        self._log.info("draining: asked by POST /drain from {asker}; shutting down as for SIGTERM",
                       asker=asker)
        self._reactor.callLater(0, self._stop)

    def authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    @property
    def ready(self) -> bool:
        """Whether new clients are welcome (what C{/readyz} says)."""
        if self._draining:
            return False
        if self.bus is not None and not self._bus_up():
            return False  # its members would not reach the other nodes' members
        if self.hub is not None:
            return self.hub.accepting
        assert self.upstream is not None
        return self.upstream.get_status().connected

    def _readyz(self, request: Request) -> tuple[int, str, bytes]:
        if self.ready:
            return 200, "text/plain", b"ready\n"
        if self._draining:
            return 503, "text/plain", b"draining\n"
        if self.bus is not None and not self._bus_up():
            status = self.bus.status()
            return 503, "text/plain", (f"bus disconnected: Redis at {self.bus.url} is {status.publisher}"
                                       f"{'' if status.subscribed else ', not subscribed'}\n").encode("utf-8")
        return 503, "text/plain", b"not ready\n"

    def _bus_up(self) -> bool:
        """Whether this node is one hub with the others: publishing and subscribed."""
        assert self.bus is not None
        status = self.bus.status()
        return status.publisher in ("flowing", "paused") and status.subscribed

    def _metrics(self, request: Request) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)

    def _varz(self, request: Request) -> tuple[int, str, bytes]:
        upstream = None
        if self.upstream is not None:
            upstream = {"url": redact_url(self.upstream.url or ""), "state": self.upstream.state.value,
                        **asdict(self.upstream.get_status())}
        return _json(views.varz(
            version=version(),
            options=_shown(self.options),
            limits=self._limits(),
            metrics=self.hub.get_metrics() if self.hub is not None else None,
            upstream=upstream,
            bus=None if self.bus is None else {**asdict(self.bus.status()),
                                               "cluster_rooms": self.bus.cluster_rooms()},
            websocket=None if self.web is None else asdict(self.web.members.counters),
            http={port: asdict(counted) for port, counted in self._http.items()},
            now=self._clock().seconds(),
        ))

    def _limits(self) -> dict[str, Any] | None:
        """The hub's limits as in force (max_connections may have been
        lowered to fit the open-file limit)."""
        if self.hub is None:
            return None
        hub = self.hub.factory
        return {
            "max_connections": hub.max_connections,
            "max_connections_per_ip": hub.max_connections_per_ip,
            "max_frame": hub.max_frame,
            "max_pending": hub.max_pending,
            "timeout": hub.timeout,
            "frame_timeout": hub.frame_timeout,
            "max_rate": hub.max_rate,
            "max_burst": hub.max_burst,
            "framing": hub.framing.name,
            "drain_timeout": self.hub.drain_timeout,
        }

    def _connz(self, request: Request) -> tuple[int, str, bytes]:
        if self.hub is None:
            return 404, "text/plain; charset=utf-8", b"404: no hub in this process: /connz lists a hub's clients\n"
        limit, offset = _query_int(request, "limit", 100), _query_int(request, "offset", 0)
        sort, order = _query_str(request, "sort", "connected"), _query_str(request, "order", "asc")
        views.check_connz(limit=limit, offset=offset, sort=sort, order=order)
        now = self._clock().seconds()
        key = (sort, order, offset, limit)
        cached = self._connz_cache.get(key)
        if cached is not None and now - cached[0] < CONNZ_FRESH:
            return cached[1]
        total, page = self.hub.page(sort, order == "desc", offset, limit)
        answer = _json(views.connz(page, self.hub.factory.closed_connections(), total=total,
                                   now=now, limit=limit, offset=offset, sort=sort, order=order), indent=None)
        if len(self._connz_cache) >= _CONNZ_CACHED and key not in self._connz_cache:
            self._connz_cache.clear()
        self._connz_cache[key] = (now, answer)
        return answer

    def _page(self, request: Request) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", files("tcphub.ops").joinpath("page.html").read_bytes()

    # -- lifecycle ----------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Answer 503 on C{/readyz} at once; keep answering while the hub
        drains; then close the port."""
        super().stopService()
        self._draining = True
        drained = self.hub.when_stopped() if self.hub is not None else succeed(None)

        return drained.addCallback(lambda _: self.close_ports())
