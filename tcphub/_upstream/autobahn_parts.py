"""
Adapters to private parts of Autobahn (see L{tcphub._upstream}).  Imported
only where WebSocket is used.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol

__all__ = ["FailureHooks", "parse_frames", "unfinished"]


def parse_frames(protocol: Any, data: bytes) -> None:
    """Feed C{data} to Autobahn's frame parser: what C{dataReceived} does,
    without the debug line it builds for every read."""
    protocol._dataReceived(data)


def unfinished(protocol: Any) -> bool:
    """Whether Autobahn holds part of a frame or of a fragmented message
    (C{data}, C{current_frame}, C{inside_message})."""
    return bool(protocol.data) or protocol.current_frame is not None or bool(protocol.inside_message)


class FailureHooks(WebSocketServerProtocol):
    """
    A server protocol whose peer's faults reach one hook: Autobahn fails a connection that
    broke the protocol through three private methods, after which it sends
    its close code (1009, 1007, 1002); each is turned into one public hook,
    L{peerFailed}, called after Autobahn's own handling.  Each frame that
    begins is told to L{frameBegan} (Autobahn bounds a message's size, not
    its number of fragments, nor frames in time).
    """

    def peerFailed(self, kind: str, reason: str, size: int | None = None, limit: int | None = None) -> None:
        """Override: C{kind} is C{"too_big"} (with the message's C{size} and
        the C{limit}), C{"invalid_payload"} or C{"protocol_violation"}."""

    def frameBegan(self, control: bool, continuation: bool) -> None:
        """Override: a frame begins (a control frame, or a data frame that
        continues a message already begun)."""

    def onFrameBegin(self) -> None:
        frame: Any = self.current_frame
        control = frame.opcode > 7
        self.frameBegan(control, not control and bool(self.inside_message))
        super().onFrameBegin()

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)
        self.peerFailed("too_big", reason, msg_size, max_msg_size)

    def _invalid_payload(self, reason: str) -> bool:
        result: bool = super()._invalid_payload(reason)
        self.peerFailed("invalid_payload", reason)
        return result

    def _protocol_violation(self, reason: str) -> bool:
        result: bool = super()._protocol_violation(reason)
        self.peerFailed("protocol_violation", reason)
        return result
