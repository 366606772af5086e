"""
L{StreamBook}: the bookkeeping of a bus on Redis Streams, kept apart from
its I/O.  Pure: no Twisted, no sockets.

The bus writes a room's messages to the room's own stream and everything
else (whole-hub broadcasts, sends, disconnects) to the hub's stream, and a
node reads the hub's stream and the streams of the rooms it has members in,
as socket.io's Redis Streams adapter would if it read only the rooms an
instance serves.  The book says:

  - where the node stands in each stream it reads (the id of the last entry
    read), and which streams it must first find the end of (a room new here
    is read from its end as it is then);
  - the number of each message this process writes to a stream (1, 2, ... per
    stream), so that a reader takes each once and counts the gaps;
  - the last number a reader has had from each process in each stream;
  - where a member stands in a room's stream (L{Place}) when its session is
    parked, and (L{CatchUp}) what it missed since, for the node it comes
    back on, whichever that is.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Callable, Collection, NamedTuple, Sequence

from tcphub.bus import codec
from tcphub.bus.resp import bulk
from tcphub.errors import BusError, NotRecovered

__all__ = ["CatchUp", "Place", "StreamBook", "Taken", "stream_id"]

_NUMBERED_STREAMS = 10_000
"""Streams a process numbers its messages in before it takes a new name
(readers then know it as a new process): the numbering stays bounded."""
_SEEN = 16_384
"""(process, stream) pairs whose last number a reader keeps (the oldest forgotten first)."""
_START = b"0-0"
"""The position before a stream's first entry."""


class Taken(NamedTuple):
    """What a reader makes of a message's number."""

    fresh: bool
    """Not had before (else a copy: a publish sent again after a lost reply)."""
    missed: int
    """How many of the process's messages to this stream never came before it."""


class Place(NamedTuple):
    """Where a member stood in a room's stream as its connection dropped:
    it had every message of the stream up to C{position} that was for it,
    and, of the messages its node wrote (as C{instance}), those numbered up
    to C{seq}: a node gives its own messages to its members at once, before
    they are in the stream."""

    position: bytes | None
    """None: this node was still finding the stream's end (the member had nothing of it from the stream)."""
    instance: str
    seq: int


def stream_id(entry: bytes) -> tuple[int, int]:
    """A stream entry's id (C{ms-seq}) as what orders it."""
    ms, _, seq = entry.partition(b"-")
    return int(ms), int(seq or 0)


class StreamBook:
    """The positions, numbers and seen numbers of one node's bus; C{room_key}
    names a room's stream, C{hub_key} the hub's."""

    def __init__(self, hub_key: bytes, room_key: Callable[[str], bytes]) -> None:
        self.hub_key = hub_key
        self._room_key = room_key
        self.instance = self._new_instance()
        """This process's name in what it writes (it changes when the numbering would outgrow its bound)."""
        self._numbers: dict[bytes, int] = {}
        self._positions: dict[bytes, bytes] = {}
        self._followed: int | None = None
        """The count of the rooms' changes at the last L{follow} (None: look again)."""
        self._keys: dict[str, bytes] = {}
        """Each room's stream, as named last (a node with many rooms names them all at every read)."""
        self._written: dict[bytes, tuple[bytes, bytes, bytes]] = {}
        """Each stream read, as RESP writes it in the C{XREAD}, with its position as written."""
        self._locating: set[bytes] = set()
        self._seen: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    @staticmethod
    def _new_instance() -> str:
        return uuid.uuid4().hex[:12]

    # -- writing ---------------------------------------------------------------

    def stream_of(self, room: str | None) -> bytes:
        """The stream a message goes to: its room's, or (no room) the hub's."""
        return self.hub_key if room is None else self._room_key(room)

    def number(self, key: bytes) -> tuple[str, int]:
        """This process's name and the number of its next message to C{key}."""
        numbers = self._numbers
        if key not in numbers and len(numbers) >= _NUMBERED_STREAMS:
            self.instance, numbers = self._new_instance(), {}
            self._numbers = numbers
        seq = numbers[key] = numbers.get(key, 0) + 1
        return self.instance, seq

    def place(self, room: str) -> Place:
        """Where this node's members of C{room} stand in its stream now."""
        key = self._room_key(room)
        return Place(self._positions.get(key), self.instance, self._numbers.get(key, 0))

    def locating(self, room: str) -> bool:
        """Whether the end of C{room}'s stream is being found."""
        return self._room_key(room) in self._locating

    # -- reading ---------------------------------------------------------------

    def position(self, key: bytes) -> bytes | None:
        """The last entry of C{key} read (None: not read, or its end not found yet)."""
        return self._positions.get(key)

    @property
    def started(self) -> bool:
        """Whether the hub's stream has a position (the node has read, or found its end)."""
        return self.hub_key in self._positions

    def follow(self, rooms: Collection[str], changes: int | None = None) -> list[bytes]:
        """Read the hub's stream and those of the C{rooms} here now (a room
        no longer here is forgotten): the rooms' streams whose end must be
        found before they are read, which are being found from now on.
        C{changes} counts the changes to the rooms (their making and going):
        given as at the last call, and none failed to be found meanwhile,
        nothing is new (the rooms are not walked again)."""
        if changes is not None and changes == self._followed:
            return []
        self._followed = changes
        names, room_key = self._keys, self._room_key
        if len(names) > 2 * len(rooms) + 64:  # rooms gone: their names go too
            self._keys = names = {room: names[room] for room in rooms if room in names}
        wanted = {self.hub_key: None}
        for room in rooms:
            key = names.get(room)
            if key is None:
                key = names[room] = room_key(room)
            wanted[key] = None
        positions = self._positions
        for key in [key for key in positions if key not in wanted]:
            del positions[key]
            self._written.pop(key, None)
        to_locate = [key for key in wanted if key not in positions and key not in self._locating]
        self._locating.update(to_locate)
        return to_locate

    def read_command(self, count: int, block_ms: int) -> bytes:
        """The C{XREAD} of every stream followed from its position (the
        hub's first), as RESP writes it: each stream's name and position
        are written once, and again only when the position moves."""
        written = self._written
        names, places = [], []
        for key, position in self._positions.items():
            known = written.get(key)
            if known is None or known[1] is not position:
                known = written[key] = (bulk(key) if known is None else known[0], position, bulk(position))
            names.append(known[0])
            places.append(known[2])
        return b"".join([b"*%d\r\n" % (6 + 2 * len(names)), bulk(b"XREAD"), bulk(b"COUNT"), bulk(b"%d" % count),
                         bulk(b"BLOCK"), bulk(b"%d" % block_ms), bulk(b"STREAMS"), *names, *places])

    def new_room(self, room: str) -> bytes | None:
        """A room is here now: its stream, if its end must be found (it is
        neither read nor being found), and it is then being found."""
        key = self._room_key(room)
        if key in self._positions or key in self._locating:
            return None
        self._locating.add(key)
        return key

    def located(self, key: bytes, last: bytes | None) -> None:
        """C{key}'s last entry is C{last} (None: the stream is empty): read from after it."""
        self._locating.discard(key)
        self._positions[key] = last if last is not None else _START
        self._followed = None  # its room may have gone meanwhile: look again

    def unlocated(self, key: bytes) -> None:
        """Finding C{key}'s end failed: it is asked again at the next L{follow}."""
        self._locating.discard(key)
        self._followed = None

    def read_to(self, key: bytes, last: bytes) -> None:
        """Entries up to C{last} of C{key} were read."""
        if key in self._positions or key == self.hub_key:
            self._positions[key] = last

    def take(self, instance: str, seq: int, key: bytes) -> Taken:
        """A message numbered C{seq} by C{instance} read from C{key}."""
        seen = self._seen
        last = seen.pop((instance, key), None)
        if last is not None and seq <= last:
            seen[instance, key] = last
            return Taken(False, 0)
        seen[instance, key] = seq
        if len(seen) > _SEEN:
            seen.popitem(last=False)
        return Taken(True, 0 if last is None else seq - last - 1)


class CatchUp:
    """
    What a member back after a drop missed of one room, gathered from the
    room's stream (C{XRANGE}s, as many as it takes) by the node it is back
    on: every message after its L{Place} that was for it (neither a
    notice, nor one that excluded its old client id C{exclude}, nor one of
    its old node's that it had already), in the stream's order, up to where
    this node's reader stands; what comes after, the reader gives it live.
    More than C{limit} messages or C{limit_bytes} in all is too much to
    give (L{NotRecovered} C{history_lost}), as a room's history bounds what
    a member recovers on one node; and one whose id is older than
    C{oldest_ms} (milliseconds, the ids' clock) is older than the history
    keeps (C{history_expired}).
    """

    def __init__(self, place: Place, exclude: str, limit: int, limit_bytes: int,
                 oldest_ms: int | None = None) -> None:
        self._place = place
        self._exclude = exclude
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._size = 0
        assert place.position is not None
        self._checked = place.position == _START
        """Whether the member's position is known to be still in the stream
        (the first range starts at it: its entry must be there, or what
        came after it may have been trimmed)."""
        self._last: bytes = place.position
        self.missed: list[bytes] = []
        """The payloads gathered so far, oldest first."""
        self._oldest_ms = oldest_ms

    @property
    def start(self) -> bytes:
        """Where the next C{XRANGE} starts: at the member's position the
        first time (to check it is still there), after the last entry since."""
        return self._last if not self._checked else b"(" + self._last

    def take(self, entries: Sequence[tuple[bytes, Sequence[bytes]]], full: bool, reader_at: bytes) -> bool:
        """One C{XRANGE}'s C{entries} (C{full}: as many as it was asked
        for, so there may be more), this node's reader being at
        C{reader_at}: True once every message up to C{reader_at} is
        gathered, False if another range is needed.  Raises L{NotRecovered}."""
        if not self._checked:
            if not entries or entries[0][0] != self._last:
                raise NotRecovered("history_lost", "the room's stream no longer holds the member's place "
                                   "(trimmed, or expired)")
            entries = entries[1:]
            self._checked = True
        upto = stream_id(reader_at)
        if upto < stream_id(self._last):
            return False  # this node reads behind the member's old one: the reader first catches up
        for entry_id, fields in entries:
            position = stream_id(entry_id)
            if position > upto:
                return True
            self._last = entry_id
            if self._gather(fields[1] if len(fields) == 2 else b"") and self._oldest_ms is not None \
                    and position[0] < self._oldest_ms:
                raise NotRecovered("history_expired", "a message the member missed is older than the "
                                   "room's history keeps")
        return not full and stream_id(self._last) >= upto

    def _gather(self, data: bytes) -> bool:
        """Keep the message C{data} if the member missed it; whether it did."""
        try:
            message = codec.decode(data)
        except BusError:
            return False  # counted by the reader, which reads it too
        place = self._place
        if message.kind != codec.BROADCAST or message.room is None or self._exclude in message.exclude:
            return False
        if message.instance == place.instance and message.seq is not None and message.seq <= place.seq:
            return False
        self.missed.append(message.payload)
        self._size += len(message.payload)
        if len(self.missed) > self._limit or self._size > self._limit_bytes:
            raise NotRecovered("history_lost", f"the member missed more than the room's history keeps "
                               f"({self._limit} messages, {self._limit_bytes} bytes)")
        return True
