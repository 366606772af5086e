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
        ["url", "u", None, "the server's ws:// or wss:// URL (required)", ws_url("url")],
        ["max-retries", None, 5, "retries in a row before giving up",
         number("max-retries", int, minimum=0)],
        ["backoff", None, "exponential", f"delay between retries: {', '.join(BACKOFFS)}",
         choice("backoff", BACKOFFS)],
        ["ping-interval", None, 30.0, "seconds between pings (0 disables them)",
         number("ping-interval", float, minimum=0)],
        ["max-message-size", None, 1024 * 1024, "largest message accepted, in bytes",
         number("max-message-size", int, minimum=1)],
        *ADMIN_OPTIONS,
        *LOG_OPTIONS,
    ]
    optFlags = [
        ["no-reconnect", None, "exit on the first failure instead of retrying"],
        ["no-compression", None, "do not offer permessage-deflate"],
    ]

    def postOptions(self) -> None:
        if not self["url"]:
            raise usage.UsageError("--url is required, e.g. --url ws://127.0.0.1:8765/")
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
        url=config["url"],
        reconnect=not config["no-reconnect"],
        max_retries=config["max-retries"],
        backoff=config["backoff"],
        ping_interval=config["ping-interval"],
        max_message_size=config["max-message-size"],
        compression=not config["no-compression"],
        reactor=reactor,
    )
    handler.on("message", _log_message)
    handler.setName("tcphub-ws")
    stop_when_given_up(handler, reactor)
    admin = admin_service(config, reactor, upstream=handler)
    return PluginProcess(handler, reactor, *admin, log_observer=log_observer(config), listeners=admin)
