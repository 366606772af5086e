"""
Members whose transport carries whole messages rather than a byte stream (a
WebSocket connection, served by L{tcphub.web}).  The hub stays ignorant of
what carries them: such a transport provides L{IMessageTransport}, and a
L{HubProtocol} on it takes each C{dataReceived} as one message and hands each
frame to the transport alone.

What the hub sends is framed once for every member (C{Framing.encode}); the
transport gets the frame and takes the framing off (C{Framing.payload}).
"""

from __future__ import annotations

from typing import Final

from twisted.internet.interfaces import ITransport
from zope.interface import Attribute

from tcphub.hub.framing import FrameSink
from tcphub.hub.outbox import Outbox

__all__ = ["IMessageTransport", "MessageDecoder", "MessageOutbox"]


class IMessageTransport(ITransport):
    """
    A transport of whole messages.  C{write(frame)} takes one frame of the
    hub's framing and delivers its payload as one message; C{writeSequence}
    takes several, each one message.  Each C{dataReceived} it makes is one
    message, and one the hub's framing can carry to the stream members
    (C{Framing.check}): the transport refuses the others itself, telling its
    peer why in its own protocol's terms.  Like a TCP transport it is a consumer (it pauses its registered
    producer when its peer does not read), a push producer (pausing it stops
    reading), and it has C{abortConnection}.
    """

    kind = Attribute("What carries the messages, for the client table: e.g. C{'websocket'}.")
    credentials = Attribute("A token the peer presented as it connected (a WebSocket handshake's "
                            "C{Authorization: Bearer}), or None.")
    resume = Attribute("The id of a session the peer asked to take back as it connected (a WebSocket "
                       "handshake's C{?resume=S}: a page cannot send a message before the hub "
                       "greets it), or None.")

    def closeWith(code: int, reason: str) -> None:  # noqa: N805 (an interface method has no self)
        """Say why the coming C{loseConnection} closes, in the transport's own
        protocol (for WebSocket: a close code, 4000-4999 for the application's)."""


class MessageDecoder:
    """The decoder of a message transport's member: each read is a message
    (checked against the hub's framing by the transport)."""

    __slots__ = ("_sink",)
    partial: Final = False

    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink

    def dataReceived(self, data: bytes) -> None:
        self._sink.frameReceived(data)

    def inputEnded(self) -> int:
        """Nothing is ever buffered."""
        return 0


class MessageOutbox(Outbox):
    """The outbox of a message transport: frames are handed over each on its
    own (never joined), so that each stays one message."""

    __slots__ = ()

    def _write_many(self, frames: list[bytes]) -> None:
        self.transport.writeSequence(frames)
