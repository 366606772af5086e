"""
The C{reuseport:} server endpoint: C{reuseport:PORT[:interface=ADDR][:backlog=N]}
listens with C{SO_REUSEPORT}, so that several processes listen on one port and
the kernel spreads the connections across them (Linux 3.9+); with a bus they
are one hub.  Every process sharing the port must set the option (all of them
listen with C{reuseport:}).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "parse"]


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor: Any, port: int, backlog: int = 511, interface: str = "") -> None:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuseport: this system has no SO_REUSEPORT")
        self._reactor = reactor
        self._port = port
        self._backlog = backlog
        self._interface = interface

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = socket.AF_INET6 if isIPv6Address(self._interface) else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listening.bind((self._interface, self._port))
            listening.listen(self._backlog)
            listening.setblocking(False)
            # The reactor takes a duplicate of the descriptor.
            port = self._reactor.adoptStreamPort(listening.fileno(), family, factory)
        except OSError as error:
            return fail(CannotListenError(self._interface, self._port, error))
        finally:
            listening.close()
        return succeed(port)


def parse(reactor: Any, port: str, backlog: str = "511", interface: str = "") -> ReusePortEndpoint:
    """The parser behind C{reuseport:} (twisted/plugins/tcphub_endpoints.py)."""
    return ReusePortEndpoint(reactor, int(port), int(backlog), interface)
