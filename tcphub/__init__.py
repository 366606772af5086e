"""
tcphub: a TCP hub server and a WebSocket client handler for Twisted.

The hub's names are imported with the package; the WebSocket half's, the
bridge's, the browser members' and the bus's when first used, so that a hub
without them does not load Autobahn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tcphub.errors import (
    AddressLimitReached,
    AuthRefused,
    BusError,
    BusQueueFull,
    ClientDisconnected,
    ConnectionLimitReached,
    DescriptorLimitReached,
    FatalClose,
    FrameTimeout,
    FrameTooLong,
    FramingError,
    HandlerClosed,
    HandlerError,
    HandshakeRejected,
    IdleTimeout,
    InvalidCloseCode,
    InvalidMessage,
    InvalidRoomName,
    InvalidRoute,
    ListenFailed,
    MalformedFrame,
    MessageTooLarge,
    NodeIdInUse,
    NotRecovered,
    NotConnected,
    OriginRejected,
    PingTimeout,
    QueueFull,
    RequestInterrupted,
    RequestRefused,
    RequestTimeout,
    RetryLimitReached,
    RoomError,
    RoomLimitReached,
    SecretUnreadable,
    RouteConflict,
    SlowConsumer,
    TcpHubError,
    UnframeableMessage,
    UnknownClient,
    WebSocketError,
)
from tcphub.hub.factory import HubFactory
from tcphub.hub.framing import FRAMINGS, Framing
from tcphub.hub.metrics import ClientInfo, Drop, Metrics
from tcphub.hub.modes import BroadcastProtocol, EchoProtocol
from tcphub.hub.protocol import HubProtocol
from tcphub.hub.service import TcpServer

if TYPE_CHECKING:
    from tcphub.bridge import Bridge
    from tcphub.bus.redis import RedisBus
    from tcphub.ws.handler import ConnectionContext, HandlerState, Status, WebSocketHandler
    from tcphub.ws.options import HandlerOptions
    from tcphub.ws.session import HubSession
    from tcphub.ws.protocol import HandlerProtocol
    from tcphub.web.service import WebSocketMembers
    from tcphub.ws.reconnect import ReconnectingClientService, exponential_backoff, linear_backoff

_LAZY = {
    "Bridge": "tcphub.bridge",
    "RedisBus": "tcphub.bus.redis",
    "ConnectionContext": "tcphub.ws.handler",
    "HandlerState": "tcphub.ws.handler",
    "Status": "tcphub.ws.handler",
    "WebSocketHandler": "tcphub.ws.handler",
    "HubSession": "tcphub.ws.session",
    "HandlerProtocol": "tcphub.ws.protocol",
    "HandlerOptions": "tcphub.ws.options",
    "ReconnectingClientService": "tcphub.ws.reconnect",
    "exponential_backoff": "tcphub.ws.reconnect",
    "linear_backoff": "tcphub.ws.reconnect",
    "WebSocketMembers": "tcphub.web.service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tcphub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AddressLimitReached",
    "AuthRefused",
    "BusError",
    "BusQueueFull",
    "Bridge",
    "BroadcastProtocol",
    "ClientDisconnected",
    "ClientInfo",
    "ConnectionContext",
    "ConnectionLimitReached",
    "DescriptorLimitReached",
    "Drop",
    "EchoProtocol",
    "FRAMINGS",
    "FatalClose",
    "FrameTimeout",
    "FrameTooLong",
    "Framing",
    "FramingError",
    "HandlerClosed",
    "HandlerError",
    "HandshakeRejected",
    "HandlerOptions",
    "HandlerProtocol",
    "HandlerState",
    "HubFactory",
    "HubProtocol",
    "IdleTimeout",
    "InvalidCloseCode",
    "InvalidMessage",
    "InvalidRoomName",
    "InvalidRoute",
    "ListenFailed",
    "MalformedFrame",
    "MessageTooLarge",
    "Metrics",
    "NodeIdInUse",
    "NotRecovered",
    "NotConnected",
    "OriginRejected",
    "PingTimeout",
    "QueueFull",
    "ReconnectingClientService",
    "RedisBus",
    "RequestInterrupted",
    "RequestRefused",
    "RequestTimeout",
    "RetryLimitReached",
    "RoomError",
    "RoomLimitReached",
    "SecretUnreadable",
    "RouteConflict",
    "SlowConsumer",
    "Status",
    "TcpHubError",
    "TcpServer",
    "UnframeableMessage",
    "UnknownClient",
    "WebSocketError",
    "WebSocketHandler",
    "HubSession",
    "WebSocketMembers",
    "exponential_backoff",
    "linear_backoff",
]
