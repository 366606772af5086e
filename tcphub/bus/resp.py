"""
A small Redis client protocol (RESP2), for the bus: commands go out as
arrays of bulk strings, pipelined; replies come back in order, bytes as
bytes (no decoding, no guessing at numbers), parsed in time linear in the
bytes received however they are cut into reads.  A subscribed connection's
pushed messages go to a callback instead.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Union

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcphub.errors import BusError

__all__ = ["RedisProtocol", "RedisReplyError", "Reply", "ReplyReader", "encode_command", "parse"]

Reply = Union[bytes, int, None, "RedisReplyError", list[Any]]

MAX_BULK = 512 * 1024 * 1024
"""Redis's own limit on a string."""


class RedisReplyError(BusError):
    """Redis answered a command with an error (C{-ERR ...})."""


class _Incomplete(Exception):
    """The buffer ends inside a reply; C{need} is the length it must reach first."""

    def __init__(self, need: int) -> None:
        self.need = need


def encode_command(args: tuple[bytes | str | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def bulk(data: bytes) -> bytes:
    """One argument of a command as RESP writes it: for a command whose
    parts are kept written (L{RedisProtocol.command_written})."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


_BULK = ord("$")
_ARRAY: Any = object()
"""What L{_header} returns for an array's header: its items follow."""

MAX_ITEMS = 1024 * 1024
"""The most items one array may have: Redis itself answers with fewer."""
MAX_DEPTH = 32
"""The deepest arrays may nest (the bus's replies nest two deep)."""


def _header(buffer: bytes | bytearray, at: int) -> tuple[Any, int, int]:
    """C{(value, count, after)} for the reply that begins at C{at}: a whole
    scalar as C{value}, or L{_ARRAY} and its C{count} of items (which follow
    from C{after}).  Raises L{_Incomplete} if the buffer ends first,
    L{BusError} if it is not RESP."""
    end = buffer.find(b"\r\n", at)
    if end < 0:
        raise _Incomplete(len(buffer) + 1)
    after = end + 2
    if buffer[at] == _BULK:  # the usual item, first: a bulk string of a known length
        try:
            size = int(buffer[at + 1:end])
        except ValueError:
            raise BusError(f"not a Redis reply: {bytes(buffer[at:end])[:40]!r}") from None
        if size < 0:
            return None, 0, after
        if size > MAX_BULK:
            raise BusError(f"a Redis reply of {size} bytes")
        if len(buffer) < after + size + 2:
            raise _Incomplete(after + size + 2)
        return bytes(buffer[after:after + size]), 0, after + size + 2
    kind, line = buffer[at:at + 1], bytes(buffer[at + 1:end])
    if kind == b"+":
        return line, 0, after
    if kind == b"-":
        return RedisReplyError(line.decode("utf-8", "replace")), 0, after
    try:
        number = int(line)
    except ValueError:
        raise BusError(f"not a Redis reply: {bytes(buffer[at:end])[:40]!r}") from None
    if kind == b":":
        return number, 0, after
    if kind == b"*":
        if number < 0:
            return None, 0, after
        if number > MAX_ITEMS:
            raise BusError(f"a Redis reply of {number} items")
        return (_ARRAY, number, after) if number else ([], 0, after)
    raise BusError(f"not a Redis reply: {bytes(buffer[at:end])[:40]!r}")


class ReplyReader:
    """
    Replies out of bytes however they are cut into reads, each byte looked
    at a bounded number of times: an array's items are kept as they come,
    so that a read ending inside a 20,000-item reply does not make the next
    one parse it again from its start (a bulk string still coming is not
    looked at again until its last byte is there).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need = 0
        self._open: list[tuple[list[Any], int]] = []
        """The arrays begun and not finished, outermost first, each with its count."""

    def feed(self, data: bytes) -> list[Reply]:
        """The replies that C{data} finishes, in order; raises L{BusError}
        for what is not RESP (the reader is then useless)."""
        buffer = self._buffer
        buffer += data
        replies: list[Reply] = []
        if len(buffer) < self._need:
            return replies
        self._need = 0
        at = 0
        try:
            while at < len(buffer):
                try:
                    value, count, at = _header(buffer, at)
                except _Incomplete as incomplete:
                    self._need = incomplete.need - at
                    break
                if value is _ARRAY:
                    if len(self._open) >= MAX_DEPTH:
                        raise BusError(f"a Redis reply nested more than {MAX_DEPTH} deep")
                    self._open.append(([], count))
                    continue
                while self._open:  # the value ends an item of the innermost open array
                    items, wanted = self._open[-1]
                    items.append(value)
                    if len(items) < wanted:
                        break
                    self._open.pop()
                    value = items
                else:
                    replies.append(value)
        finally:
            del buffer[:at]
        return replies


def parse(buffer: bytes | bytearray, at: int) -> tuple[Reply, int]:
    """The whole reply that begins at offset C{at} of C{buffer}, and the
    offset after it; raises L{BusError} if it is not RESP, or ends early."""
    try:
        value, count, after = _header(buffer, at)
    except _Incomplete:
        raise BusError(f"a Redis reply cut short at byte {len(buffer)}") from None
    if value is not _ARRAY:
        return value, after
    items = []
    for _ in range(count):
        item, after = parse(buffer, after)
        items.append(item)
    return items, after


class RedisProtocol(Protocol):
    """
    One connection to Redis.  L{command} pipelines a command and returns a
    Deferred of its reply (errback L{RedisReplyError}).  With C{on_push}, the
    connection is a subscriber's: the C{message} pushes of each read go
    there together, as C{(channel, data)} pairs, in order.  C{on_ready}
    is called with the protocol once connected (the bus subscribes there, so
    that every new connection subscribes again), C{on_lost} once it is gone.
    """

    transport: Any
    _log = Logger()

    def __init__(self, on_ready: Callable[[RedisProtocol], None], on_lost: Callable[[], None],
                 on_push: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> None:
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_push = on_push
        self._waiting: deque[Deferred[Reply]] = deque()
        self._reader = ReplyReader()
        self._pushes: list[tuple[bytes, bytes]] = []

    def connectionMade(self) -> None:
        self._on_ready(self)

    def command(self, *args: bytes | str | int) -> Deferred[Reply]:
        return self.command_written(encode_command(args))

    def command_written(self, command: bytes) -> Deferred[Reply]:
        """L{command}, given as RESP writes it (L{encode_command}; an array
        of L{bulk}s): a long command whose parts do not change is kept written."""
        d: Deferred[Reply] = Deferred()
        self._waiting.append(d)
        self.transport.write(command)
        return d

    def dataReceived(self, data: bytes) -> None:
        try:
            for reply in self._reader.feed(data):
                self._dispatch(reply)
        except BusError as error:
            self._log.error("dropping the connection to Redis: {error}", error=error)
            self._fail_all(Failure(error))
            self.transport.abortConnection()
            return
        pushes, self._pushes = self._pushes, []
        if pushes:
            assert self._on_push is not None
            self._on_push(pushes)

    def _dispatch(self, reply: Reply) -> None:
        if (self._on_push is not None and isinstance(reply, list) and len(reply) == 3
                and reply[0] == b"message"):
            self._pushes.append((reply[1], reply[2]))
            return
        if not self._waiting:
            raise BusError(f"a Redis reply nobody asked for: {reply!r:.60}")
        d = self._waiting.popleft()
        if isinstance(reply, RedisReplyError):
            d.errback(reply)
        else:
            d.callback(reply)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._fail_all(reason)
        self._on_lost()

    def _fail_all(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(reason)
