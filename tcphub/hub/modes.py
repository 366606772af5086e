"""
Ready-made hub behaviours, each a small L{HubProtocol} subclass: what the
C{--mode} option of the plugin picks, and examples of the C{messageReceived} hook.
"""

from __future__ import annotations

from tcphub.hub.protocol import HubProtocol


class EchoProtocol(HubProtocol):
    """Sends every message back to its sender."""

    def messageReceived(self, payload: bytes) -> None:
        self.sendMessage(payload)


class BroadcastProtocol(HubProtocol):
    """A chat room: every message goes to every other client.  A client that
    ends its input (C{shutdown(SHUT_WR)}) stays a listener until it closes or
    times out."""

    def messageReceived(self, payload: bytes) -> None:
        self.broadcastMessage(payload)

    def inputEnded(self) -> None:
        """Stay a receiver."""


MODES: dict[str, type[HubProtocol]] = {
    "echo": EchoProtocol,
    "broadcast": BroadcastProtocol,
    # Messages go only to the event subscribers, e.g. the bridge's upstream.
    "none": HubProtocol,
}
