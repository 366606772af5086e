"""
How a byte stream is cut into messages, and how a message is put on the wire.

Each L{Framing} pairs an C{encode} (payload to wire bytes, done once per
broadcast) with a decoder built on the receivers of L{twisted.protocols.basic},
which buffer partial frames and enforce the length limit.  A decoder reports to
a L{FrameSink}: C{frameReceived} for each complete payload, C{frameError} once
for bytes that cannot be decoded, after which the connection should be closed.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Protocol

from twisted.internet.interfaces import ITransport
from twisted.protocols import basic

from tcphub.errors import FrameTooLong, FramingError, MalformedFrame, UnframeableMessage

__all__ = [
    "FRAMINGS",
    "FrameDecoder",
    "FrameSink",
    "Framing",
    "Int32Framing",
    "LineFraming",
    "NetstringFraming",
    "RawFraming",
    "get_framing",
]


class FrameSink(Protocol):
    """What a decoder reports to (the hub protocol)."""

    def frameReceived(self, payload: bytes) -> None:
        """A complete frame arrived; C{payload} has the framing removed."""

    def frameError(self, error: FramingError) -> None:
        """The stream cannot be decoded any further."""


class FrameDecoder(Protocol):
    """The decoding half of a framing: fed with the connection's bytes."""

    def makeConnection(self, transport: ITransport) -> None: ...

    def dataReceived(self, data: bytes) -> None: ...


class Framing:
    """A wire format for messages. Subclass to add one; register it in L{FRAMINGS}."""

    name: ClassVar[str]

    def encode(self, payload: bytes) -> bytes:
        """Return C{payload} as it goes on the wire, or raise L{UnframeableMessage}."""
        raise NotImplementedError

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        """Return a fresh decoder for one connection."""
        raise NotImplementedError


class _Int32Decoder(basic.Int32StringReceiver):
    def __init__(self, sink: FrameSink, max_frame: int) -> None:
        self._sink = sink
        self.MAX_LENGTH = max_frame

    def makeConnection(self, transport: ITransport) -> None:
        """Nothing to set up: this decoder never touches the transport."""

    def stringReceived(self, string: bytes) -> None:
        self._sink.frameReceived(string)

    def lengthLimitExceeded(self, length: int) -> None:
        self._sink.frameError(FrameTooLong(length, self.MAX_LENGTH))


class Int32Framing(Framing):
    """A 4-byte big-endian length prefix, then the payload."""

    name = "int32"
    _prefix = struct.Struct(">I")

    def encode(self, payload: bytes) -> bytes:
        if len(payload) > 0xFFFFFFFF:
            raise UnframeableMessage(f"{len(payload)} bytes do not fit an int32 length prefix")
        return self._prefix.pack(len(payload)) + payload

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _Int32Decoder(sink, max_frame)


class _LineDecoder(basic.LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, sink: FrameSink, max_frame: int) -> None:
        self._sink = sink
        self.MAX_LENGTH = max_frame

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        self._sink.frameReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._sink.frameError(FrameTooLong(len(line), self.MAX_LENGTH))


class LineFraming(Framing):
    """Lines ended by C{\\n}; a C{\\r} before it is tolerated and removed."""

    name = "line"

    def encode(self, payload: bytes) -> bytes:
        if b"\n" in payload:
            raise UnframeableMessage("a line frame cannot carry a newline byte")
        return payload + b"\n"

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _LineDecoder(sink, max_frame)


class _NetstringDecoder(basic.NetstringReceiver):
    _error: basic.NetstringParseError | None = None

    def __init__(self, sink: FrameSink, max_frame: int) -> None:
        self._sink = sink
        self.MAX_LENGTH = max_frame

    def stringReceived(self, string: bytes) -> None:
        self._sink.frameReceived(string)

    def _consumeData(self) -> None:
        # NetstringReceiver swallows the parse error before calling
        # _handleParseError; keep it, to tell an over-long frame from garbage.
        try:
            super()._consumeData()
        except basic.NetstringParseError as error:
            self._error = error
            raise

    def _handleParseError(self) -> None:
        self.brokenPeer = 1
        message = str(self._error)
        if message == self._TOO_LONG % (self.MAX_LENGTH,):
            self._sink.frameError(FrameTooLong(None, self.MAX_LENGTH))
        else:
            self._sink.frameError(MalformedFrame(f"invalid netstring: {message}"))


class NetstringFraming(Framing):
    """Netstrings: C{<decimal length>:<payload>,}."""

    name = "netstring"

    def encode(self, payload: bytes) -> bytes:
        return b"%d:%s," % (len(payload), payload)

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _NetstringDecoder(sink, max_frame)


class _RawDecoder:
    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink

    def makeConnection(self, transport: ITransport) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self._sink.frameReceived(data)


class RawFraming(Framing):
    """No framing: every chunk read from the socket is one message.

    Chunks are at most the reactor's read size, so C{max_frame} does not apply.
    """

    name = "raw"

    def encode(self, payload: bytes) -> bytes:
        return payload

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _RawDecoder(sink)


FRAMINGS: dict[str, Framing] = {
    framing.name: framing
    for framing in (Int32Framing(), LineFraming(), NetstringFraming(), RawFraming())
}


def get_framing(framing: str | Framing) -> Framing:
    """Return the L{Framing} named C{framing} (or C{framing} itself if it is one)."""
    if isinstance(framing, Framing):
        return framing
    try:
        return FRAMINGS[framing]
    except KeyError:
        raise ValueError(
            f"unknown framing {framing!r}; choose one of {', '.join(sorted(FRAMINGS))}"
        ) from None
