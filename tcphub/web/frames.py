"""
The WebSocket framing of RFC 6455 as a server speaks it, without I/O:
L{FrameParser} cuts what a client sends into messages and control frames,
L{encode} builds the frames the server sends.  Every rule a client can
break is a L{Violation}, with the close code the server answers it with.
"""

from __future__ import annotations

from typing import Final, Iterator, Union

from tcphub.errors import FramingError, FrameTooLong, MalformedFrame

__all__ = [
    "BINARY", "CLOSE", "CONTINUATION", "MESSAGE", "PART", "PING", "PONG", "TEXT",
    "Event", "FrameParser", "Violation", "close_payload", "encode", "parse_close",
]

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

MESSAGE: Final = 0x100
"""The kind of the event of a whole message (its payload, and whether it was text)."""
PART: Final = 0x101
"""The kind of the event of a data frame that leaves its message unfinished."""

Event = Union[tuple[int, bytes], tuple[int, bytes, bool]]
"""(kind, payload) of a control frame (C{CLOSE}, C{PING}, C{PONG}) or of
a C{PART}, or (C{MESSAGE}, payload, text) of a whole message."""

_MAX_CONTROL: Final = 125
_CLOSE_CODES: Final = frozenset([1000, 1001, 1002, 1003, *range(1007, 1015)])


class Violation(Exception):
    """A client broke RFC 6455: the server closes with C{code} (1002, a
    protocol error; 1007, invalid text; 1008, a policy; 1009, too big),
    and the hub counts C{error}."""

    def __init__(self, code: int, error: FramingError) -> None:
        super().__init__(code, str(error))
        self.code = code
        self.error = error


def _malformed(reason: str) -> Violation:
    return Violation(1002, MalformedFrame(reason))


# Parser states, as in twisted.protocols.basic: what the next bytes are.
_HEAD: Final = 0
"""The two bytes every frame begins with."""
_REST: Final = 1
"""The extended length and the mask, C{_want} bytes in all."""
_PAYLOAD: Final = 2
"""The frame's payload, C{_want} bytes."""


class FrameParser:
    """
    Cuts a client's bytes into frames and frames into messages.  A frame's
    payload is read only once its header said its length: one longer than
    C{max_message} (with what its message already holds) is refused before
    its payload is read; so is a message in more than C{max_fragments}
    frames.  Bytes are kept in one buffer appended to, and a frame is
    unmasked in one operation: the work per byte does not grow with a
    frame's size, however it is cut into reads.
    """

    __slots__ = ("_max_message", "_max_fragments", "_buffer", "_state", "_want",
                 "_opcode", "_final", "_size", "_mask", "_parts", "_message_opcode", "_message_size")

    def __init__(self, max_message: int, max_fragments: int) -> None:
        self._max_message = max_message
        self._max_fragments = max_fragments
        self._buffer = bytearray()
        self._state = _HEAD
        self._want = 2
        self._opcode = 0
        self._final = True
        self._size = 0
        self._mask = b""
        self._parts: list[bytes] = []
        self._message_opcode = 0
        self._message_size = 0

    @property
    def unfinished(self) -> bool:
        """Whether part of a frame, or of a message in fragments, is held."""
        return bool(self._buffer) or bool(self._parts)

    def feed(self, data: bytes) -> Iterator[Event]:
        """
        The events of the frames C{data} finishes, in order.  Raises
        L{Violation} at the first broken rule; the events before it have
        been given.  A caller that stops iterating (its connection closed)
        leaves the rest unread, which is what it wants.
        """
        buffer = self._buffer
        buffer += data
        while len(buffer) >= self._want:
            want = self._want
            if self._state == _HEAD:
                first, second = buffer[0], buffer[1]
                del buffer[:2]  # from a bytearray's front: no copy of the rest
                self._head(first, second)
                continue
            taken = bytes(buffer[:want])
            del buffer[:want]
            if self._state == _REST:
                self._rest(taken)
                continue
            yield self._payload(taken)

    def _head(self, first: int, second: int) -> None:
        if first & 0x70:
            raise _malformed("a frame with a reserved bit set (no extension was agreed)")
        if not second & 0x80:
            raise _malformed("a client's frame that is not masked")
        opcode, final, size = first & 0x0F, bool(first & 0x80), second & 0x7F
        if opcode >= CLOSE:
            if opcode > PONG:
                raise _malformed(f"a frame of reserved opcode {opcode}")
            if not final:
                raise _malformed("a control frame in fragments")
            if size > _MAX_CONTROL:
                raise _malformed(f"a control frame of more than {_MAX_CONTROL} bytes")
        elif opcode == CONTINUATION:
            if not self._parts:
                raise _malformed("a continuation frame with no message to continue")
        elif opcode > BINARY:
            raise _malformed(f"a frame of reserved opcode {opcode}")
        elif self._parts:
            raise _malformed("a new message before the last one's final frame")
        if opcode < CLOSE and len(self._parts) >= self._max_fragments:
            raise Violation(1008, MalformedFrame(f"a message in more than {self._max_fragments} frames"))
        self._opcode, self._final = opcode, final
        self._state = _REST
        self._size = size
        self._want = 4 + (2 if size == 126 else 8 if size == 127 else 0)

    def _rest(self, rest: bytes) -> None:
        size = self._size
        if size >= 126:
            size = int.from_bytes(rest[:-4], "big")
            if size >> 63:
                raise _malformed("a frame length with its most significant bit set")
        self._mask = rest[-4:]
        if self._opcode < CLOSE:
            total = self._message_size + size
            if total > self._max_message:
                raise Violation(1009, FrameTooLong(total, self._max_message))
        self._state = _PAYLOAD
        self._want = size

    def _payload(self, masked: bytes) -> Event:
        payload = _unmask(masked, self._mask)
        self._state, self._want = _HEAD, 2
        opcode = self._opcode
        if opcode >= CLOSE:
            return (opcode, payload)
        if opcode != CONTINUATION:
            self._message_opcode = opcode
        if not self._final:
            self._parts.append(payload)
            self._message_size += len(payload)
            return (PART, payload)
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts = []
            self._message_size = 0
        text = self._message_opcode == TEXT
        if text:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise Violation(1007, MalformedFrame("a text message that is not valid UTF-8")) from None
        return (MESSAGE, payload, text)


def _unmask(data: bytes, mask: bytes) -> bytes:
    """C{data} XOR the repeated 4-byte C{mask}, in one operation on integers."""
    size = len(data)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def encode(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (what a server sends) of C{payload}."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return head + payload


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a client's close frame (None: it gave none)."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise _malformed("a close frame of one byte")
    code = int.from_bytes(payload[:2], "big")
    if code not in _CLOSE_CODES and not 3000 <= code <= 4999:
        raise _malformed(f"a close frame with code {code}, which no endpoint may send")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise Violation(1007, MalformedFrame("a close frame whose reason is not valid UTF-8")) from None
    return code, reason


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: C{code}, and C{reason} cut to the 123 bytes
    a control frame leaves it (at a character's boundary)."""
    encoded = reason.encode("utf-8")[:_MAX_CONTROL - 2].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + encoded
