"""
The C{twistd tcphub-ws} plugin: a monitoring client that connects to a
WebSocket server, stays connected, and logs every message it receives.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from tcphub._reactor import default_reactor
from tcphub._plugin import (
    add_header_file,
    header_line,
    trusting,
    ADMIN_OPTIONS,
    LOG_OPTIONS,
    PluginProcess,
    admin_service,
    check_admin,
    choice,
    log_observer,
    number,
    stop_when_given_up,
    ws_url,
)
from tcphub.ws.envelope import Envelope
from tcphub.ws.handler import ConnectionContext, WebSocketHandler
from tcphub.ws.reconnect import BACKOFFS

_log = Logger(namespace="tcphub.ws")
PREVIEW = 200


class Options(usage.Options):
    synopsis = "--url ws://HOST:PORT/PATH [options]"
    longdesc = (
        "Connect to a WebSocket server, reconnect with backoff when the "
        "connection drops, and log every JSON message received with its path "
        "and connection id."
    )

    optParameters = [
        ["max-retries", None, None, "retries in a row before giving up [default: never give up, as a daemon "
         "should through an upstream's routine restart]", number("max-retries", int, minimum=0)],
        ["backoff", None, "exponential", f"delay between retries: {', '.join(BACKOFFS)}",
         choice("backoff", BACKOFFS)],
        ["ping-interval", None, 30.0, "seconds between pings (0 disables them)",
         number("ping-interval", float, minimum=0)],
        ["max-message-size", None, 1024 * 1024, "largest message accepted, in bytes",
         number("max-message-size", int, minimum=1)],
        ["open-timeout", None, 10.0, "seconds for TCP and the opening handshake",
         number("open-timeout", float, above=0)],
        ["ping-timeout", None, None, "seconds a pong may take [default: the ping interval, at most 10]",
         number("ping-timeout", float, above=0)],
        ["initial-delay", None, 1.0, "seconds before the first retry (at most: full jitter)",
         number("initial-delay", float, minimum=0)],
        ["max-delay", None, 30.0, "longest delay between retries, in seconds",
         number("max-delay", float, minimum=0)],
        ["origin", None, None, "the Origin header of the handshake"],
        ["proxy", None, None, "connect through this HTTP CONNECT proxy, host:port (ws:// only)"],
        ["ca-file", None, None, "trust the CA certificates in this PEM file for wss:// (a private CA)"],
        *ADMIN_OPTIONS,
        *LOG_OPTIONS,
    ]
    optFlags = [
        ["no-reconnect", None, "exit on the first failure instead of retrying"],
        ["no-compression", None, "do not offer permessage-deflate"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["url"] = None
        self["urls"] = []
        self["header"] = {}
        self["fatal-close-code"] = set()
        self["secret-headers"] = set()
        self["subprotocol"] = []

    def opt_url(self, url: str) -> None:
        """The server's ws:// or wss:// URL (required); repeat it to name
        standby servers, tried in turn when the one before does not answer."""
        try:
            ws_url("url")(url)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["urls"].append(url)
        self["url"] = self["urls"][0]

    opt_u = opt_url

    def opt_header(self, header: str) -> None:
        """Add a handshake header, 'Name: value' (repeatable); /varz shows
        the value of Authorization, Cookie and the like as ***, and ps shows
        it whole: give secret ones with --header-file."""
        name, value = header_line("--header", header)
        self["header"][name] = value

    def opt_header_file(self, path: str) -> None:
        """Add the handshake headers of this file, 'Name: value' a line
        (blank lines and # comments skipped), each a secret: /varz shows ***."""
        add_header_file(self, "header-file", path)

    def opt_fatal_close_code(self, code: str) -> None:
        """A close code from the server that ends reconnecting (repeatable), e.g. 4001 for a revoked token."""
        try:
            self["fatal-close-code"].add(number("fatal-close-code", int, minimum=1000, maximum=4999)(code))
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    def opt_subprotocol(self, name: str) -> None:
        """Offer this subprotocol in the handshake (repeatable, in order of preference)."""
        self["subprotocol"].append(name)

    def postOptions(self) -> None:
        if not self["url"]:
            raise usage.UsageError("--url is required, e.g. --url ws://127.0.0.1:8765/")
        if self["ca-file"] is not None and not self["url"].startswith("wss:"):
            raise usage.UsageError("--ca-file goes with a wss:// --url")
        if self["proxy"] is not None and self["url"].startswith("wss:"):
            raise usage.UsageError("--proxy is not supported with a wss:// --url yet")
        self["tls-options"] = trusting(self["url"], self["ca-file"], "ca-file")
        check_admin(self)


def _log_message(envelope: Envelope, context: ConnectionContext) -> None:
    data = repr(envelope.data)
    if len(data) > PREVIEW:
        data = data[:PREVIEW] + "..."
    _log.info(
        "message on {path} from connection {connection_id}: {data}",
        path=envelope.path, connection_id=context.connection_id, data=data,
    )


def makeService(config: Options, reactor: Any = None) -> PluginProcess:
    """The handler as the service named "tcphub-ws", and with --admin the
    operations port, named "admin"."""
    if reactor is None:
        reactor = default_reactor()
    handler = WebSocketHandler(
        url=config["urls"],
        reconnect=not config["no-reconnect"],
        max_retries=config["max-retries"],
        fatal_close_codes=frozenset(config["fatal-close-code"]),
        backoff=config["backoff"],
        ping_interval=config["ping-interval"],
        max_message_size=config["max-message-size"],
        compression=not config["no-compression"],
        open_timeout=config["open-timeout"],
        ping_timeout=config["ping-timeout"],
        initial_delay=config["initial-delay"],
        max_delay=config["max-delay"],
        headers=config["header"] or None,
        subprotocols=config["subprotocol"],
        origin=config["origin"],
        proxy=config["proxy"],
        tls_options=config["tls-options"],
        reactor=reactor,
    )
    handler.on("message", _log_message)
    handler.setName("tcphub-ws")
    stop_when_given_up(handler, reactor)
    admin = admin_service(config, reactor, upstream=handler)
    return PluginProcess(handler, reactor, *admin, log_observer=log_observer(config), listeners=admin)
