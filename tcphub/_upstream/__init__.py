"""
Every place where tcphub relies on a private part of Twisted,
one adapter each, so that an upgrade that changes one breaks one small
function here, and its test in C{tests/test_upstream.py}, which names the
upstream symbol, instead of silently breaking counting or reconnection.

  - L{tcphub._upstream.twisted_parts}: Twisted's transport buffer, its
    netstring parser's state, its EMFILE recovery log line, and twistd's
    choice of log destination.

L{PRIVATE_SYMBOLS} lists each symbol, for the test that checks them all.
"""

from __future__ import annotations

PRIVATE_SYMBOLS: tuple[tuple[str, str, str], ...] = (
    # (module, owner, attribute), each used by an adapter here.
    ("twisted.application.internet", "ClientService", "_log"),
    ("twisted.internet.abstract", "FileDescriptor", "dataBuffer"),
    ("twisted.internet.abstract", "FileDescriptor", "offset"),
    ("twisted.internet.abstract", "FileDescriptor", "_tempDataLen"),
    ("twisted.internet.abstract", "FileDescriptor", "_writeDisconnecting"),
    ("twisted.internet._newtls", "ConnectionMixin", "TLS"),
    ("twisted.internet.tcp", "_AbortingMixin", "_aborting"),
    ("twisted.protocols.basic", "NetstringReceiver", "_consumeData"),
    ("twisted.protocols.basic", "NetstringReceiver", "_handleParseError"),
    ("twisted.protocols.basic", "NetstringReceiver", "_TOO_LONG"),
    ("twisted.protocols.basic", "NetstringReceiver", "_PARSING_PAYLOAD"),
    ("twisted.protocols.basic", "NetstringReceiver", "_remainingData"),
    ("twisted.protocols.basic", "NetstringReceiver", "_currentPayloadSize"),
    ("twisted.protocols.basic", "NetstringReceiver", "_state"),
    ("twisted.scripts.twistd", "_SomeApplicationRunner", "loggerFactory"),
    ("twisted.application.app", "AppLogger", "_getLogObserver"),
)
