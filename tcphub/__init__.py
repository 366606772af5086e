"""tcphub: a TCP hub server and a WebSocket client handler for Twisted."""

from tcphub.errors import (
    ClientDisconnected,
    ConnectionLimitReached,
    FrameTooLong,
    FramingError,
    HandlerError,
    IdleTimeout,
    MalformedFrame,
    SlowConsumer,
    TcpHubError,
    UnframeableMessage,
    UnknownClient,
)
from tcphub.framing import FRAMINGS, Framing
from tcphub.metrics import ClientInfo, Metrics
from tcphub.modes import BroadcastProtocol, EchoProtocol
from tcphub.server import HubFactory, HubProtocol, TcpServer

__all__ = [
    "FRAMINGS",
    "BroadcastProtocol",
    "ClientDisconnected",
    "ClientInfo",
    "ConnectionLimitReached",
    "EchoProtocol",
    "FrameTooLong",
    "Framing",
    "FramingError",
    "HandlerError",
    "HubFactory",
    "HubProtocol",
    "IdleTimeout",
    "MalformedFrame",
    "Metrics",
    "SlowConsumer",
    "TcpHubError",
    "TcpServer",
    "UnframeableMessage",
    "UnknownClient",
]
