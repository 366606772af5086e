"""
How a byte stream is cut into messages, and how a message is put on the wire.

Each L{Framing} pairs an C{encode} (payload to wire bytes, done once per
broadcast) with a decoder that buffers partial frames and enforces the length limit in
time linear in the bytes received (Twisted's netstring receiver; our own for
int32 and lines, whose receivers in L{twisted.protocols.basic} re-copy their
buffer on every read).  A decoder reports to
a L{FrameSink}: C{frameReceived} for each complete payload, C{frameError} once
for bytes that cannot be decoded, after which the connection should be closed.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Protocol

from tcphub._upstream.twisted_parts import NetstringParser
from tcphub.errors import (
    FrameTooLong,
    FramingError,
    MalformedFrame,
    UnframeableMessage,
)

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
    """
    The decoding half of a framing, one per connection, fed with its bytes.

    Decoding must cost time linear in the bytes fed, however a frame is cut
    into reads: a peer trickling a large frame must not make each read re-copy
    what came before.
    """

    @property
    def partial(self) -> bool:
        """True while a frame has begun and is not complete (the hub's
        C{frame_timeout} runs meanwhile)."""

    def dataReceived(self, data: bytes) -> None:
        """Decode C{data}, reporting frames and errors to the sink."""

    def inputEnded(self) -> int:
        """The peer will send nothing more: report a last frame if the
        buffered bytes make one, and return how many bytes of an unfinished
        frame it held are dropped (a peer that crashed ends its input anywhere)."""


class Framing:
    """A wire format for messages. Subclass to add one; register it in L{FRAMINGS}."""

    name: ClassVar[str]

    def encode(self, payload: bytes) -> bytes:
        """Return C{payload} as it goes on the wire, or raise L{UnframeableMessage}."""
        raise NotImplementedError

    def check(self, payload: bytes) -> None:
        """Raise L{UnframeableMessage} if C{encode} cannot carry C{payload}
        (a member whose transport frames messages itself, a WebSocket, may
        send what a stream member could not)."""

    def payload(self, frame: bytes) -> bytes:
        """The payload of a C{frame} that C{encode} made (for a member whose
        transport frames messages itself)."""
        raise NotImplementedError

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        """Return a fresh decoder for one connection."""
        raise NotImplementedError


_INT32 = struct.Struct(">I")


class _Int32Decoder:
    """
    Int32 frames.  Twisted's C{Int32StringReceiver} joins its whole buffer to
    each new read, so a frame of n bytes arriving in k reads costs O(n*k);
    here a frame cut by a read grows in a C{bytearray} (amortised O(1) per
    byte, whatever the size of the reads) and is copied out once.
    """

    __slots__ = ("_sink", "_max", "_head", "_body", "_need", "_broken")

    def __init__(self, sink: FrameSink, max_frame: int) -> None:
        self._sink = sink
        self._max = max_frame
        self._head = b""  # a length prefix cut by the end of a read
        self._body: bytearray | None = None  # the payload so far of a frame cut by a read
        self._need = 0  # payload bytes the body still lacks
        self._broken = False

    @property
    def partial(self) -> bool:
        return self._body is not None or bool(self._head)

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        # Offsets into data, never slices of the rest of it: a read is copied
        # once at most, whatever its frames.
        offset = 0
        end = len(data)
        if self._head:
            head = self._head
            missing = 4 - len(head)
            if end < missing:
                self._head = head + data
                return
            (length,) = _INT32.unpack(head + data[:missing])
            self._head = b""
            if length > self._max:
                self._fail(length)
                return
            self._body = bytearray()
            self._need = length
            offset = missing
        body = self._body
        if body is not None:
            need = self._need
            if end - offset < need:
                body += memoryview(data)[offset:]
                self._need = need - (end - offset)
                return
            body += memoryview(data)[offset : offset + need]
            self._body = None
            offset += need
            self._sink.frameReceived(bytes(body))
        unpack = _INT32.unpack_from
        sink = self._sink
        while end - offset >= 4:
            (length,) = unpack(data, offset)
            if length > self._max:
                self._fail(length)
                return
            start = offset + 4
            offset = start + length
            if offset > end:
                self._body = bytearray(memoryview(data)[start:])
                self._need = offset - end
                return
            sink.frameReceived(data[start:offset])
        if offset < end:
            self._head = data[offset:]

    def _fail(self, length: int) -> None:
        self._broken = True
        self._sink.frameError(FrameTooLong(length, self._max))

    def inputEnded(self) -> int:
        dropped = len(self._body) if self._body is not None else len(self._head)
        self._body = None
        self._head = b""
        self._broken = True
        return dropped


class Int32Framing(Framing):
    """A 4-byte big-endian length prefix, then the payload."""

    name = "int32"

    def encode(self, payload: bytes) -> bytes:
        if len(payload) > 0xFFFFFFFF:
            raise UnframeableMessage(f"{len(payload)} bytes do not fit an int32 length prefix")
        return _INT32.pack(len(payload)) + payload

    def payload(self, frame: bytes) -> bytes:
        return frame[4:]

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _Int32Decoder(sink, max_frame)


class _LineDecoder:
    """
    Lines ended by C{\\n}, with one C{\\r} before it removed.  Unlike
    Twisted's C{LineOnlyReceiver}, which joins and splits its whole buffer on
    every read, a line cut by reads grows in a C{bytearray} and each byte is
    searched once.  The C{\\r} of C{\\r\\n} does not count toward C{max_frame}.
    """

    __slots__ = ("_sink", "_max", "_rest", "_broken")

    def __init__(self, sink: FrameSink, max_frame: int) -> None:
        self._sink = sink
        self._max = max_frame
        # The start of a line cut by reads; created when first needed.
        self._rest: bytearray | None = None
        self._broken = False

    @property
    def partial(self) -> bool:
        return bool(self._rest)

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        rest = self._rest
        lines = data.split(b"\n")
        last = lines.pop()
        if rest:
            if not lines:
                rest += last
                self._check_partial()
                return
            # The first piece ends the line begun in earlier reads.
            rest += lines[0]
            lines[0] = bytes(rest)
            rest.clear()
        limit = self._max
        sink = self._sink
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > limit:
                self._fail(len(line))
                return
            sink.frameReceived(line)
            if self._broken:
                return
        if last:
            if rest is None:
                rest = self._rest = bytearray()
            rest += last
            self._check_partial()

    def _line(self, line: bytes) -> bool:
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > self._max:
            self._fail(len(line))
            return False
        self._sink.frameReceived(line)
        return not self._broken

    def _check_partial(self) -> None:
        # A partial line may be one byte over: the \r of a coming \r\n.
        rest = self._rest or b""
        size = len(rest)
        if size > self._max and (size > self._max + 1 or rest[-1:] != b"\r"):
            self._fail(size)

    def _fail(self, size: int) -> None:
        self._broken = True
        self._rest = None
        self._sink.frameError(FrameTooLong(size, self._max))

    def inputEnded(self) -> int:
        """An unterminated last line is a line, as when reading a text file."""
        if self._rest and not self._broken:
            line = bytes(self._rest)
            self._rest.clear()
            self._line(line)
        return 0


class LineFraming(Framing):
    """Lines ended by C{\\n}; a C{\\r} before it is tolerated and removed."""

    name = "line"

    def encode(self, payload: bytes) -> bytes:
        self.check(payload)
        return payload + b"\n"

    def check(self, payload: bytes) -> None:
        if b"\n" in payload:
            raise UnframeableMessage("a line frame cannot carry a newline byte")

    def payload(self, frame: bytes) -> bytes:
        return frame[:-1]

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _LineDecoder(sink, max_frame)


class _NetstringDecoder:
    """Twisted's netstring parser (linear already), through its adapter."""

    __slots__ = ("_sink", "_max", "_parser")

    def __init__(self, sink: FrameSink, max_frame: int) -> None:
        self._sink = sink
        self._max = max_frame
        self._parser = NetstringParser(max_frame, sink.frameReceived, self._too_long, self._malformed)

    @property
    def partial(self) -> bool:
        return self._parser.partial

    def dataReceived(self, data: bytes) -> None:
        self._parser.dataReceived(data)

    def inputEnded(self) -> int:
        dropped = self._parser.unfinished()
        self._parser.stop()
        return dropped

    def _too_long(self) -> None:
        self._sink.frameError(FrameTooLong(None, self._max))

    def _malformed(self, message: str) -> None:
        self._sink.frameError(MalformedFrame(f"invalid netstring: {message}"))


class NetstringFraming(Framing):
    """Netstrings: C{<decimal length>:<payload>,}."""

    name = "netstring"

    def encode(self, payload: bytes) -> bytes:
        return b"%d:%s," % (len(payload), payload)

    def payload(self, frame: bytes) -> bytes:
        return frame[frame.index(b":") + 1:-1]

    def decoder(self, sink: FrameSink, max_frame: int) -> FrameDecoder:
        return _NetstringDecoder(sink, max_frame)


class _RawDecoder:
    partial = False

    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink

    def inputEnded(self) -> int:
        """Nothing is ever buffered."""
        return 0

    def dataReceived(self, data: bytes) -> None:
        self._sink.frameReceived(data)


class RawFraming(Framing):
    """No framing: every chunk read from the socket is one message.

    Chunks are at most the reactor's read size, so C{max_frame} does not apply.
    """

    name = "raw"

    def encode(self, payload: bytes) -> bytes:
        return payload

    def payload(self, frame: bytes) -> bytes:
        return frame

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
