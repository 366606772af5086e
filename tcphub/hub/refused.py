"""
L{RefusedConnection}: what a connection over a connection limit runs
instead of the hub's protocol, so that a refused connection never reaches
your protocol's hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub.errors import ConnectionLimitReached
from tcphub.hub.protocol import REFUSED

if TYPE_CHECKING:
    from tcphub.hub.factory import HubFactory

__all__ = ["RefusedConnection"]


@implementer(IHalfCloseableProtocol)
class RefusedConnection(Protocol):
    """
    What a connection over a connection limit gets instead of the hub's
    protocol (see L{HubFactory.buildProtocol}): it is counted and aborted
    as it is made, ignores what it receives, and tells the hub when it is
    gone.  Your protocol's hooks never run for it.
    """

    state = REFUSED
    transport: Any

    def __init__(self, hub: HubFactory, error: ConnectionLimitReached) -> None:
        self.factory = hub
        self.error = error

    def connectionMade(self) -> None:
        self.factory.refused(self, self.error)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Ignored: the connection is being aborted."""

    def readConnectionLost(self) -> None:
        """Ignored, as its data is."""

    def writeConnectionLost(self) -> None:
        """Ignored."""

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.client_gone(self)
