"""
The C{twistd tcphub} plugin: command-line options in, a L{TcpServer} out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from tcphub import _checks
from tcphub._reactor import default_reactor
from tcphub._secrets import read_secret_file, secret_from
from tcphub._plugin import (
    ADMIN_OPTIONS,
    add_header_file,
    header_line,
    trusting,
    LOG_OPTIONS,
    PluginProcess,
    admin_service,
    exit_when_given_up,
    check_admin,
    choice,
    log_observer,
    server_endpoint,
    stop_when_given_up,
    ws_url,
)
from tcphub._plugin import number as _number
from tcphub.api.limits import DEFAULT_IDEMPOTENCY_WINDOW
from tcphub.api.limits import DEFAULT_MAX_BODY as DEFAULT_API_MAX_BODY
from tcphub.api.limits import DEFAULT_MAX_RATE as DEFAULT_API_MAX_RATE
from tcphub.bridge import DEFAULT_UPSTREAM_PATH, DEFAULT_UPSTREAM_ROUTE, Bridge
from tcphub.bus.codec import TRANSPORTS
from tcphub.errors import SecretUnreadable
from tcphub.hub.identity import ALGORITHMS, DEFAULT_AUTH_URL_TIMEOUT, Authenticator
from tcphub.hub.factory import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PENDING,
)
from tcphub.hub.framing import FRAMINGS
from tcphub.hub.modes import MODES
from tcphub.hub.rooms import DEFAULT_ROOM_HISTORY_BYTES
from tcphub.hub.sessions import DEFAULT_RESUME_WINDOW
from tcphub.hub.service import DEFAULT_BACKLOG, TcpServer, check_host
from tcphub.web.limits import DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT
from tcphub.ws.reconnect import BACKOFFS

if TYPE_CHECKING:
    from tcphub.bus.redis import RedisBus
    from tcphub.web.service import WebSocketMembers
    from tcphub.ws.handler import WebSocketHandler

def _usage(check: Callable[[str, Any], Any], option: str, value: Any) -> None:
    """One of L{tcphub._checks}' rules, its error a usage error."""
    try:
        check(option, value)
    except ValueError as error:
        raise usage.UsageError(str(error)) from None


REDIS_PASSWORD_VARIABLE = "TCPHUB_REDIS_PASSWORD"
"""The environment variable the Redis password is read from when the URL has none."""
SENTINEL_PASSWORD_VARIABLE = "TCPHUB_REDIS_SENTINEL_PASSWORD"
"""The environment variable the Sentinels' password is read from, with a redis+sentinel:// URL."""


def redis_url(text: str) -> str:
    """A C{usage.Options} coercer for --redis."""
    from tcphub.bus.redis import redis_endpoint

    redis_endpoint(text)
    return text


_log = Logger(namespace="tcphub")

DEFAULT_PORT = 3000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 300.0


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a TCP hub: clients connect, their streams are cut into messages by "
        "--framing, and each message is echoed or broadcast to the other clients "
        "(--mode). The defaults make 'nc 127.0.0.1 3000' a chat with nicks and "
        "rooms (/nick, /join, /leave, /who, /rooms). With "
        "--upstream, the hub is a gateway: every message goes up a WebSocket, and "
        "what comes down goes to the clients."
    )

    optParameters = [
        ["port", "p", None, f"TCP port to listen on [default: {DEFAULT_PORT}]",
         _number("port", int, minimum=0, maximum=65535)],
        ["host", None, None, f"interface to listen on [default: {DEFAULT_HOST}]"],
        ["backlog", None, None, f"listen backlog [default: {DEFAULT_BACKLOG}]",
         _number("backlog", int, minimum=1, maximum=65535)],
        ["timeout", "t", None,
         f"seconds without traffic either way before a client is dropped (0 disables it) [default: "
         f"{DEFAULT_TIMEOUT:g}, or 0 in the chat: a quiet reader stays, and TCP keep-alive finds dead peers]",
         _number("timeout", float, minimum=0)],
        ["frame-timeout", None, DEFAULT_FRAME_TIMEOUT,
         "seconds a client has to finish a frame it began (0 disables it)",
         _number("frame-timeout", float, minimum=0)],
        ["framing", "f", "line", f"message framing: {', '.join(FRAMINGS)}",
         choice("framing", FRAMINGS)],
        ["mode", "m", None,
         f"what the hub does with a message: {', '.join(MODES)} "
         "[default: chat with line framing, broadcast with the others, none with --upstream]",
         choice("mode", MODES)],
        ["max-frame", None, DEFAULT_MAX_FRAME, "largest frame a client may send, in bytes",
         _number("max-frame", int, minimum=1)],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS, "clients connected at once",
         _number("max-connections", int, minimum=1)],
        ["max-connections-per-ip", None, None,
         "clients connected at once from one address [default: no limit]",
         _number("max-connections-per-ip", int, minimum=1)],
        ["max-rate", None, None,
         "messages per second a client may send; faster ones are paused, not dropped "
         "[default: no limit]", _number("max-rate", float, above=0)],
        ["max-burst", None, None,
         "messages a client may send at once above --max-rate [default: one second's worth]",
         _number("max-burst", int, minimum=1)],
        ["max-pending", None, DEFAULT_MAX_PENDING,
         "bytes queued for a client that does not read before it is dropped",
         _number("max-pending", int, minimum=1)],
        ["room-history", None, 0,
         "messages each room keeps and replays to a client that joins it (0: none)",
         _number("room-history", int, minimum=0)],
        ["room-history-bytes", None, DEFAULT_ROOM_HISTORY_BYTES,
         "bytes of history each room keeps at most", _number("room-history-bytes", int, minimum=0)],
        ["room-history-ttl", None, 0,
         "seconds a message stays in its room's history; a member back for one older cannot recover "
         "(history_expired) (0: until --room-history or --room-history-bytes pushes it out)",
         _number("room-history-ttl", float, minimum=0)],
        ["resume-window", None, DEFAULT_RESUME_WINDOW,
         "with --mode hub: seconds a dropped member's session (name, rooms, place in each) waits "
         "for it to come back with hub.resume (0: not kept)", _number("resume-window", float, minimum=0)],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "seconds to let queued output drain on shutdown",
         _number("drain-timeout", float, minimum=0)],
        ["drain-grace", None, None,
         "seconds a stopping hub (SIGTERM, SIGUSR2) serves on while load balancers see /readyz's 503 "
         "(default: 5 with --admin, else 0; an interrupt skips it)", _number("drain-grace", float, minimum=0)],
        ["drain-spread", None, 10.0,
         "seconds over which a stopping hub tells its clients, one after another, to reconnect elsewhere",
         _number("drain-spread", float, minimum=0)],
        ["web-root", None, None,
         "with --websocket: serve this directory's files at / instead of the chat page"],
        ["websocket-ping-interval", None, DEFAULT_PING_INTERVAL,
         "seconds between the hub's pings to WebSocket members (0: none)",
         _number("websocket-ping-interval", float, minimum=0)],
        ["websocket-ping-timeout", None, DEFAULT_PING_TIMEOUT,
         "seconds a WebSocket member has to answer a ping before it is dropped",
         _number("websocket-ping-timeout", float, above=0)],
        ["websocket-handshakes-per-address", None, 16,
         "WebSocket handshakes one address may have under way at once (raise it for many members "
         "behind one NAT or proxy)", _number("websocket-handshakes-per-address", int, minimum=1)],
        ["websocket-handshake-rate", None, 10.0,
         "WebSocket handshakes a second from one address past a burst of 40 (0: not paced)",
         _number("websocket-handshake-rate", float, minimum=0)],
        ["redis", None, None,
         "join the other hubs on this Redis as one hub: redis://host:port/db, rediss://…, "
         "unix:///path/to/redis.sock?db=N, or redis+sentinel://host:port[,host:port…]/master[/db] to follow "
         "Redis Sentinel's failovers", redis_url],
        ["redis-prefix", None, "tcphub",
         "with --redis: this deployment's name on the Redis, the prefix of its channel and keys (with the "
         "database number): deployments that share a Redis are apart by name or database"],
        ["redis-bus", None, "streams",
         "with --redis: how the nodes' messages cross Redis: pubsub (at most once: what a node misses "
         "while its connection is down is lost) or streams (a Redis Stream each node reads from where "
         "it left off: a dropped connection, or a Redis restarted with its AOF, costs a delay, not a "
         "message)", choice("redis-bus", TRANSPORTS)],
        ["redis-password-file", None, None,
         "with --redis: the Redis password, read from this file (or set $TCPHUB_REDIS_PASSWORD) rather "
         "than in the URL, which ps shows"],
        ["redis-sentinel-password-file", None, None,
         "with a redis+sentinel:// --redis: the Sentinels' own password (their requirepass), read from "
         "this file (or set $TCPHUB_REDIS_SENTINEL_PASSWORD)"],
        ["api", None, None,
         "serve the HTTP server API (/api/publish, /api/send, …) on this Twisted endpoint, e.g. "
         "tcp:8000:interface=127.0.0.1 [default: off]"],
        ["api-key-file", None, None, "with --api: its keys, 'NAME KEY' a line (required)"],
        ["api-max-body", None, DEFAULT_API_MAX_BODY, "with --api: the largest request body, in bytes",
         _number("api-max-body", int, minimum=1)],
        ["api-max-rate", None, DEFAULT_API_MAX_RATE, "with --api: requests a second one key may make",
         _number("api-max-rate", float, above=0)],
        ["idempotency-window", None, DEFAULT_IDEMPOTENCY_WINDOW,
         "with --api: seconds an idempotency key is remembered", _number("idempotency-window", float, above=0)],
        ["auth-jwt-key", None, None,
         "with --mode hub or chat: members authenticate with a JWT signed by this key: a file holding an HMAC "
         "secret, or a PEM public key for RS256/ES256/EdDSA"],
        ["auth-jwt-algorithm", None, "HS256",
         f"the JWT algorithms accepted, comma-separated, of {', '.join(ALGORITHMS)} (never none)"],
        ["auth-jwt-audience", None, None, "accept only JWTs whose aud claim names this audience"],
        ["auth-tokens", None, None,
         "with --mode hub or chat: members authenticate with a static token from this file, "
         "'TOKEN USER [ROOM-PATTERN ...]' a line"],
        ["auth-url", None, None,
         "with --mode hub or chat: a backend decides: the hub POSTs {token, peer} as JSON to this URL, which "
         "answers 200 {user, name, rooms} or 401/403 (slow, down or garbage: refused)"],
        ["auth-url-timeout", None, DEFAULT_AUTH_URL_TIMEOUT, "seconds the --auth-url backend has to answer",
         _number("auth-url-timeout", float, above=0)],
        ["auth-default-rooms", None, "*",
         "room patterns (comma-separated; * any run of characters, !pattern denies) of a token that "
         "names none"],
        ["auth-timeout", None, DEFAULT_AUTH_TIMEOUT, "seconds a member has to authenticate",
         _number("auth-timeout", float, above=0)],
        ["node-id", None, None, "with --redis: this hub's name in client ids, logs and metrics "
         "[default: random]"],
        ["upstream", None, None, "bridge the hub to this ws:// or wss:// URL", ws_url("upstream")],
        ["upstream-path", None, DEFAULT_UPSTREAM_PATH, "path of the messages sent upstream"],
        ["upstream-route", None, DEFAULT_UPSTREAM_ROUTE,
         "route (wildcards allowed) of the upstream messages for the clients"],
        ["upstream-max-retries", None, None,
         "upstream retries in a row before giving up and exiting [default: never give up]",
         _number("upstream-max-retries", int, minimum=0)],
        ["upstream-backoff", None, "exponential", f"upstream retry delays: {', '.join(BACKOFFS)}",
         choice("upstream-backoff", BACKOFFS)],
        ["upstream-ping-interval", None, 30.0, "seconds between upstream pings (0: none)",
         _number("upstream-ping-interval", float, minimum=0)],
        ["upstream-ca-file", None, None, "trust the CA certificates in this PEM file for a wss:// --upstream"],
        *ADMIN_OPTIONS,
        *LOG_OPTIONS,
    ]
    optFlags = [
        ["keepalive", None, "enable TCP keep-alive on client connections (the default)"],
        ["no-keepalive", None, "disable TCP keep-alive on client connections"],
        ["allow-half-open", None, "keep a client that ends its input (FIN) as a receiver, as Node's allowHalfOpen "
         "[default: it is closed once its replies are written]"],
        ["upstream-no-reconnect", None, "give up on the first upstream failure"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["websocket"] = []
        self["allowed-origin"] = []
        self["public-name"] = []
        self["upstream-header"] = {}
        self["upstream-secret-headers"] = set()
        self["upstream-subprotocol"] = []

    def opt_upstream_header(self, header: str) -> None:
        """Add a header to the upstream handshake, 'Name: value' (repeatable);
        ps shows it: give secret ones with --upstream-header-file."""
        name, value = header_line("--upstream-header", header)
        self["upstream-header"][name] = value

    def opt_upstream_header_file(self, path: str) -> None:
        """Add the upstream handshake headers of this file, 'Name: value' a line, each a secret."""
        add_header_file(self, "upstream-header-file", path, "upstream-header", "upstream-secret-headers")

    def opt_upstream_subprotocol(self, name: str) -> None:
        """Offer this subprotocol in the upstream handshake (repeatable, in order of preference)."""
        self["upstream-subprotocol"].append(name)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted server endpoint, e.g. tcp:3000:interface=127.0.0.1,
        ssl:3443:privateKey=key.pem:certKey=cert.pem or unix:/tmp/hub.sock
        (repeatable; replaces --port, --host and --backlog). Unlike --port,
        tcp:3000 alone listens on every interface: add interface=127.0.0.1."""
        self["listen"].append(server_endpoint("listen", description))

    def opt_websocket(self, description: str) -> None:
        """Let WebSocket clients (browsers) join the hub on this endpoint, at
        /ws, with a chat page at / (repeatable): e.g. tcp:8080:interface=127.0.0.1,
        or ssl:8443:privateKey=key.pem:certKey=cert.pem for wss://."""
        self["websocket"].append(server_endpoint("websocket", description))

    def opt_allowed_origin(self, origin: str) -> None:
        """A page origin (https://chat.example.com, or *) whose scripts may
        join over --websocket (repeatable) [default: the same host and port only]."""
        from tcphub.web.origins import OriginPolicy

        try:
            OriginPolicy([origin])
        except ValueError as error:
            raise usage.UsageError(f"--allowed-origin: {error}") from None
        self["allowed-origin"].append(origin)

    def opt_public_name(self, name: str) -> None:
        """A host name the --websocket port is served under (chat.example.com;
        repeatable): same-origin pages are welcome only under an address,
        localhost, or one of these (DNS rebinding)."""
        from tcphub.web.origins import OriginPolicy

        try:
            OriginPolicy(public_names=[name])
        except ValueError as error:
            raise usage.UsageError(f"--public-name: {error}") from None
        self["public-name"].append(name)

    def _redis_password(self) -> None:
        """The Redis password from --redis-password-file or the environment,
        in C{self["redis-password"]}; refused if the URL has one too."""
        self["redis-password"] = self["redis-sentinel-password"] = None
        if self["redis"] is None:
            for option in ("redis-password-file", "redis-sentinel-password-file"):
                if self[option] is not None:
                    raise usage.UsageError(f"--{option} goes with --redis")
            return
        from tcphub.bus.redis import redis_endpoint

        in_url = redis_endpoint(self["redis"])[2] is not None
        variable = None if in_url else REDIS_PASSWORD_VARIABLE
        try:
            password = secret_from("redis-password", given=None, path=self["redis-password-file"],
                                   variable=variable)
        except SecretUnreadable as error:
            raise usage.UsageError(str(error)) from None
        if password is not None and in_url:
            raise usage.UsageError("the Redis password is given twice: in the --redis URL and its file")
        self["redis-password"] = password
        sentinel = self["redis"].startswith("redis+sentinel:")
        if self["redis-sentinel-password-file"] is not None and not sentinel:
            raise usage.UsageError("--redis-sentinel-password-file goes with a redis+sentinel:// --redis")
        try:
            self["redis-sentinel-password"] = secret_from(
                "redis-sentinel-password", given=None, path=self["redis-sentinel-password-file"],
                variable=SENTINEL_PASSWORD_VARIABLE if sentinel else None)
        except SecretUnreadable as error:
            raise usage.UsageError(str(error)) from None

    def _api(self) -> None:
        """--api needs its keys; read them now, so that a bad file stops here."""
        if self["api"] is None:
            if self["api-key-file"] is not None:
                raise usage.UsageError("--api-key-file goes with --api")
            return
        server_endpoint("api", self["api"])
        if self["api-key-file"] is None:
            raise usage.UsageError("--api needs --api-key-file: the API answers only requests with a key")
        from tcphub.api.keys import ApiKeys

        try:
            self["api-keys"] = ApiKeys(self["api-key-file"])
        except (ValueError, SecretUnreadable) as error:
            raise usage.UsageError(str(error)) from None

    def _auth(self) -> None:
        """Read --auth-jwt-key or --auth-tokens (one of them, with --mode hub)
        into C{self["auth-key"]} and C{self["auth-tokens"]}."""
        self["auth-key"] = None
        given = [name for name in ("auth-jwt-key", "auth-tokens", "auth-url") if self[name] is not None]
        if not given:
            return
        if len(given) > 1:
            raise usage.UsageError(f"{' and '.join('--' + name for name in given)}: give one of them")
        if self["mode"] not in ("hub", "chat"):
            raise usage.UsageError(f"--{given[0]} goes with --mode hub or chat")
        self["auth-default-rooms"] = [each.strip() for each in self["auth-default-rooms"].split(",")
                                      if each.strip()]
        self["auth-jwt-algorithm"] = [each.strip() for each in self["auth-jwt-algorithm"].split(",")
                                      if each.strip()]
        if self["auth-jwt-key"] is not None:
            try:
                self["auth-key"] = read_secret_file("auth-jwt-key", self["auth-jwt-key"]).strip()
            except SecretUnreadable as error:
                raise usage.UsageError(str(error)) from None
            if not self["auth-key"]:
                raise usage.UsageError(f"--auth-jwt-key {self['auth-jwt-key']!r} is empty")
        try:
            _authenticator(self, default_reactor())  # a key or a file that cannot serve stops here
        except (ValueError, SecretUnreadable) as error:
            raise usage.UsageError(str(error)) from None

    def postOptions(self) -> None:
        if self["mode"] is None:
            if self["upstream"]:
                self["mode"] = "none"
            else:
                self["mode"] = "chat" if self["framing"] == "line" else "broadcast"
        if self["timeout"] is None:
            self["timeout"] = 0.0 if self["mode"] == "chat" and not self["no-keepalive"] else DEFAULT_TIMEOUT
        if self["keepalive"] and self["no-keepalive"]:
            raise usage.UsageError("--keepalive and --no-keepalive contradict each other")
        check_admin(self)
        self._redis_password()
        self._auth()
        self._api()
        if self["upstream-ca-file"] is not None and not (self["upstream"] or "").startswith("wss:"):
            raise usage.UsageError("--upstream-ca-file goes with a wss:// --upstream")
        self["upstream-tls-options"] = trusting(self["upstream"] or "", self["upstream-ca-file"], "upstream-ca-file")
        for name, default in (("redis-prefix", "tcphub"), ("redis-bus", "streams")):
            if self[name] != default and self["redis"] is None:
                raise usage.UsageError(f"--{name} goes with --redis")
        _usage(_checks.deployment, "--redis-prefix", self["redis-prefix"])
        if self["drain-grace"] is None:
            self["drain-grace"] = 5.0 if self["admin"] else 0.0
        if self["node-id"] is not None:
            if self["redis"] is None:
                raise usage.UsageError("--node-id goes with --redis")
            _usage(_checks.node_id, "--node-id", self["node-id"])
        if not self["websocket"]:
            given = [f"--{name}" for name in ("allowed-origin", "public-name", "web-root") if self[name]]
            if given:
                raise usage.UsageError(f"{', '.join(given)} goes with --websocket")
        elif self["web-root"] is not None:
            _usage(_checks.directory, "--web-root", self["web-root"])
        if self["max-burst"] is not None and self["max-rate"] is None:
            raise usage.UsageError("--max-burst goes with --max-rate")
        if self["host"] is not None:
            try:
                check_host(self["host"])
            except ValueError as error:
                raise usage.UsageError(f"--{error}") from None
        tcp_options = [f"--{name}" for name in ("port", "host", "backlog") if self[name] is not None]
        if self["listen"] and tcp_options:
            raise usage.UsageError(f"--listen replaces {', '.join(tcp_options)}: give one or the other")
        if self["port"] is None:
            self["port"] = DEFAULT_PORT
        if self["host"] is None:
            self["host"] = DEFAULT_HOST
        if self["backlog"] is None:
            self["backlog"] = DEFAULT_BACKLOG


def makeService(config: Options, reactor: Any = None) -> IService:
    """The hub (or, with --upstream, the gateway) as the service named
    "tcphub"; with --redis the bus, named "bus"; with --websocket the
    members' site, "websocket"; with --admin the operations port, "admin"."""
    if reactor is None:
        reactor = default_reactor()
    service, hub, upstream = _hub_service(config, reactor)
    if hub.factory.auth is None:
        reactor.callWhenRunning(_log.info, "tcphub auth off: anyone who reaches a port may join and publish "
                                "to any room (--auth-jwt-key, --auth-tokens or --auth-url to ask members "
                                "for a token)")
    bus = _bus_service(config, hub, reactor)
    members = _members_service(config, hub, reactor)
    api = _api_service(config, hub, bus[0] if bus else None, reactor)
    listening: list[Any] = [*members, *api, *admin_service(config, reactor, hub=hub, upstream=upstream,
                                                           bus=bus[0] if bus else None,
                                                           web=members[0] if members else None,
                                                           api=api[0] if api else None)]
    return PluginProcess(service, reactor, *bus, *listening, log_observer=log_observer(config),
                         listeners=[hub, *listening], on_interrupt=hub.hurry)


def _authenticator(config: Options, clock: Any) -> Authenticator | None:
    """What --auth-jwt-key or --auth-tokens asks for, if either."""
    from tcphub.hub.identity import JwtAuthenticator, TokenFile

    if config["auth-key"] is not None:
        return JwtAuthenticator(config["auth-key"], algorithms=config["auth-jwt-algorithm"],
                                audience=config["auth-jwt-audience"],
                                default_rooms=config["auth-default-rooms"], clock=clock)
    if config["auth-tokens"] is not None:
        return TokenFile(config["auth-tokens"], default_rooms=config["auth-default-rooms"])
    if config["auth-url"] is not None:
        from tcphub.hub.auth_backend import HttpAuthenticator

        return HttpAuthenticator(config["auth-url"], timeout=config["auth-url-timeout"],
                                 default_rooms=config["auth-default-rooms"], clock=clock, reactor=clock)
    return None


def _api_service(config: Options, hub: TcpServer, bus: RedisBus | None, reactor: Any) -> list[Any]:
    """With --api, the HTTP server API, named "api"."""
    if config["api"] is None:
        return []
    from tcphub.api.service import ApiService

    api = ApiService(config["api"], hub=hub, keys=config["api-keys"], bus=bus, max_body=config["api-max-body"],
                     max_rate=config["api-max-rate"], idempotency_window=config["idempotency-window"],
                     reactor=reactor)
    api.setName("api")
    return [api]


def _bus_service(config: Options, hub: TcpServer, reactor: Any) -> list[RedisBus]:
    """With --redis, the bus that joins this hub with the others, named "bus"."""
    if config["redis"] is None:
        return []
    from tcphub.bus.redis import RedisBus

    bus = RedisBus(hub, config["redis"], node_id=config["node-id"], password=config["redis-password"],
                   sentinel_password=config["redis-sentinel-password"],
                   channel=config["redis-prefix"], transport=config["redis-bus"], reactor=reactor)
    exit_when_given_up(bus.when_refused(), reactor)
    bus.setName("bus")
    return [bus]


def _members_service(config: Options, hub: TcpServer, reactor: Any) -> list[WebSocketMembers]:
    """With --websocket, the site that lets browsers join the hub, named "websocket"."""
    if not config["websocket"]:
        return []
    # Imported when used: a hub without --websocket does not load Autobahn.
    from tcphub.web.service import WebSocketMembers

    members = WebSocketMembers(
        hub,
        config["websocket"],
        allowed_origins=config["allowed-origin"],
        public_names=config["public-name"],
        web_root=config["web-root"],
        ping_interval=config["websocket-ping-interval"] or None,
        ping_timeout=config["websocket-ping-timeout"],
        max_handshakes_per_address=config["websocket-handshakes-per-address"],
        max_handshake_rate=config["websocket-handshake-rate"] or None,
        reactor=reactor,
    )
    members.setName("websocket")
    return [members]


def _hub_service(config: Options, reactor: Any) -> tuple[IService, TcpServer, WebSocketHandler | None]:
    hub = TcpServer(
        port=config["port"],
        host=config["host"],
        backlog=config["backlog"],
        keep_alive=not config["no-keepalive"],
        allow_half_open=bool(config["allow-half-open"]),
        timeout=config["timeout"],
        frame_timeout=config["frame-timeout"],
        framing=config["framing"],
        max_frame=config["max-frame"],
        max_pending=config["max-pending"],
        max_connections=config["max-connections"],
        max_connections_per_ip=config["max-connections-per-ip"],
        max_rate=config["max-rate"],
        max_burst=config["max-burst"],
        drain_timeout=config["drain-timeout"],
        drain_grace=config["drain-grace"],
        drain_spread=config["drain-spread"],
        room_history=config["room-history"],
        room_history_bytes=config["room-history-bytes"],
        room_history_ttl=config["room-history-ttl"],
        protocol=MODES[config["mode"]],
        auth=_authenticator(config, reactor),
        auth_timeout=config["auth-timeout"],
        resume_window=config["resume-window"],
        endpoint=config["listen"] or None,
        reactor=reactor,
    )
    hub.factory.log_connections = config["log-level"] == "debug"
    if config["upstream"] is None:
        hub.setName("tcphub")
        return hub, hub, None
    # Imported when used: a hub without --upstream does not load Autobahn.
    from tcphub.ws.handler import WebSocketHandler

    upstream = WebSocketHandler(
        url=config["upstream"],
        reconnect=not config["upstream-no-reconnect"],
        max_retries=config["upstream-max-retries"],
        backoff=config["upstream-backoff"],
        ping_interval=config["upstream-ping-interval"],
        headers=config["upstream-header"] or None,
        subprotocols=config["upstream-subprotocol"],
        tls_options=config["upstream-tls-options"],
        reactor=reactor,
    )
    stop_when_given_up(upstream, reactor)
    gateway = Bridge(hub, upstream, config["upstream-path"], config["upstream-route"])
    gateway.setName("tcphub")
    return gateway, hub, upstream
