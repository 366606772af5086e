"""
Every place where tcphub relies on a private part of Twisted or Autobahn,
one adapter each, so that an upgrade that changes one breaks one small
function here, and its test in C{tests/test_upstream.py}, which names the
upstream symbol, instead of silently breaking counting or reconnection.

  - L{tcphub._upstream.twisted_parts}: Twisted's transport buffer, its
    netstring parser's state, its EMFILE recovery log line, and twistd's
    choice of log destination.
  - L{tcphub._upstream.autobahn_parts}: Autobahn's frame parser entry point
    and its three protocol-failure paths (imported only where WebSocket is
    used, so that a hub without it loads no Autobahn).

L{PRIVATE_SYMBOLS} lists each symbol, for the test that checks them all.
"""

from __future__ import annotations

PRIVATE_SYMBOLS: tuple[tuple[str, str, str], ...] = (
    # (module, owner, attribute), each used by an adapter here.
    ("twisted.application.internet", "ClientService", "_log"),
    ("twisted.internet.abstract", "FileDescriptor", "dataBuffer"),
    ("twisted.internet.abstract", "FileDescriptor", "offset"),
    ("twisted.internet.abstract", "FileDescriptor", "_tempDataLen"),
    ("twisted.protocols.basic", "NetstringReceiver", "_consumeData"),
    ("twisted.protocols.basic", "NetstringReceiver", "_handleParseError"),
    ("twisted.protocols.basic", "NetstringReceiver", "_TOO_LONG"),
    ("twisted.protocols.basic", "NetstringReceiver", "_PARSING_PAYLOAD"),
    ("twisted.protocols.basic", "NetstringReceiver", "_remainingData"),
    ("twisted.protocols.basic", "NetstringReceiver", "_currentPayloadSize"),
    ("twisted.protocols.basic", "NetstringReceiver", "_state"),
    ("twisted.scripts.twistd", "_SomeApplicationRunner", "loggerFactory"),
    ("twisted.application.app", "AppLogger", "_getLogObserver"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "_dataReceived"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "_max_message_size_exceeded"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "_invalid_payload"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "_protocol_violation"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "onFrameBegin"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "current_frame"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "inside_message"),
    ("autobahn.websocket.protocol", "WebSocketProtocol", "data"),
)
