"""
Who is in which room: pure bookkeeping (no Twisted, no I/O), bounded by the
length of a room's name and the rooms one member may be in; and, for each
room, the sequence number of its last message and (if asked) the last
messages themselves, bounded in count, bytes and age.  The hub's factory owns one
and says what membership means for delivery and events.
"""

from __future__ import annotations

from collections import deque
from typing import Collection, Generic, Hashable, Iterable, NamedTuple, TypeVar

from tcphub.errors import InvalidRoomName, RoomLimitReached

__all__ = ["DEFAULT_MAX_ROOMS_PER_CLIENT", "DEFAULT_ROOM_HISTORY_BYTES", "MAX_ROOM_NAME", "Kept", "Rooms", "check_room"]

MAX_ROOM_NAME = 128
DEFAULT_MAX_ROOMS_PER_CLIENT = 100
DEFAULT_ROOM_HISTORY_BYTES = 64 * 1024

M = TypeVar("M", bound=Hashable)


class Kept(NamedTuple):
    """One message of a room's history."""

    offset: int
    """Its number in the room (1, 2, ...)."""
    frame: bytes
    """The message as it was sent on the wire, framing included."""
    at: float
    """When it was sent, in seconds since the epoch on the hub's clock."""


def check_room(room: object) -> str:
    """Return C{room} if it can name a room; raise L{InvalidRoomName}."""
    if not isinstance(room, str) or not room or len(room) > MAX_ROOM_NAME:
        raise InvalidRoomName(
            f"a room is named by 1 to {MAX_ROOM_NAME} characters, not {room!r:.80}"
        )
    return room


class Rooms(Generic[M]):
    """
    Rooms of members, each room an ordered set (members in the order they
    joined), each member's rooms likewise.  An empty room does not exist,
    unless it is held (L{hold}): then it keeps its numbering and history
    for the members expected back.
    """

    def __init__(self, max_rooms_per_member: int = DEFAULT_MAX_ROOMS_PER_CLIENT,
                 history: int = 0, history_bytes: int = DEFAULT_ROOM_HISTORY_BYTES, history_ttl: float = 0) -> None:
        self.max_rooms_per_member = max_rooms_per_member
        self.history_size = history
        self.history_bytes = history_bytes
        self.history_ttl = history_ttl
        """Seconds a message stays in its room's history (0: until count or bytes push it out)."""
        self._members: dict[str, dict[M, None]] = {}
        self._rooms: dict[M, dict[str, None]] = {}
        self._sequence: dict[str, int] = {}
        self._history: dict[str, deque[Kept]] = {}
        self._history_size: dict[str, int] = {}
        self._expired: dict[str, int] = {}
        """Each room's offset of the last message its history let go for its age."""
        self._generation: dict[str, int] = {}
        self._holds: dict[str, int] = {}
        self._created = 0
        self.changes = 0
        """How many times a room was made or forgotten: who saw L{names} at
        this count has nothing new to see there while it stays."""

    def join(self, member: M, room: str) -> bool:
        """Put C{member} in C{room}; False if it was there already.  Raises
        L{InvalidRoomName}, or L{RoomLimitReached} past the member's bound."""
        check_room(room)
        rooms = self._rooms.get(member)
        if rooms is not None and room in rooms:
            return False
        if rooms is not None and len(rooms) >= self.max_rooms_per_member:
            raise RoomLimitReached(
                f"already in {len(rooms)} rooms (max_rooms_per_client={self.max_rooms_per_member})"
            )
        self._rooms.setdefault(member, {})[room] = None
        members = self._members.get(room)
        if members is None:
            members = self._make(room)
        members[member] = None
        return True

    def leave(self, member: M, room: str) -> bool:
        """Take C{member} out of C{room}; False if it was not there."""
        rooms = self._rooms.get(member)
        if rooms is None or room not in rooms:
            return False
        del rooms[room]
        if not rooms:
            del self._rooms[member]
        members = self._members[room]
        del members[member]
        if not members and room not in self._holds:
            self._forget(room)
        return True

    def hold(self, room: str, create: bool = False) -> bool:
        """Keep C{room}, with its numbering and history, even once it has no
        members, until as many L{release}s; False (nothing held) if it does
        not exist, unless C{create}: then it is made, empty."""
        if room not in self._members:
            if not create:
                return False
            self._make(check_room(room))
        self._holds[room] = self._holds.get(room, 0) + 1
        return True

    def release(self, room: str) -> None:
        """Undo one L{hold} of C{room}; the room goes if it is then empty and unheld."""
        holds = self._holds[room] - 1
        if holds:
            self._holds[room] = holds
            return
        del self._holds[room]
        if not self._members[room]:
            self._forget(room)

    def _make(self, room: str) -> dict[M, None]:
        # A room new here numbers its messages from 1, under a new generation.
        members: dict[M, None] = {}
        self._members[room] = members
        self._created += 1
        self.changes += 1
        self._generation[room] = self._created
        return members

    def _forget(self, room: str) -> None:
        self.changes += 1
        # An empty room is gone, and its numbering and history with it.
        del self._members[room]
        del self._generation[room]
        self._sequence.pop(room, None)
        self._history.pop(room, None)
        self._history_size.pop(room, None)
        self._expired.pop(room, None)

    def record(self, room: str, message: bytes, at: float) -> int | None:
        """Number a message sent to C{room} at time C{at} (1, 2, ...) and keep
        it in the room's history if history is on; None if the room does not exist."""
        if room not in self._members:
            return None
        sequence = self._sequence.get(room, 0) + 1
        self._sequence[room] = sequence
        if self.history_size and len(message) <= self.history_bytes:
            history = self._history.setdefault(room, deque())
            history.append(Kept(sequence, message, at))
            size = self._history_size.get(room, 0) + len(message)
            while len(history) > self.history_size or size > self.history_bytes:
                size -= len(history.popleft().frame)
            self._history_size[room] = size
            self._age(room, at)
        return sequence

    def _age(self, room: str, now: float) -> None:
        """Let go of the messages of C{room}'s history older than C{history_ttl} at C{now}."""
        history = self._history.get(room)
        if not self.history_ttl or not history:
            return
        oldest = now - self.history_ttl
        while history and history[0].at < oldest:
            kept = history.popleft()
            self._history_size[room] -= len(kept.frame)
            self._expired[room] = kept.offset

    def sequence(self, room: str) -> int:
        """The number of the last message sent to C{room} (0 if none, or no such room)."""
        return self._sequence.get(room, 0)

    def generation(self, room: str) -> int:
        """Which room of this name it is: a room made anew (after it emptied)
        numbers its messages from 1 again, under a new generation (0: no such room)."""
        return self._generation.get(room, 0)

    def history(self, room: str, now: float | None = None) -> list[Kept]:
        """The room's last messages, oldest first; at C{now}, none older than C{history_ttl}."""
        if now is not None:
            self._age(room, now)
        return list(self._history.get(room, ()))

    def expired_through(self, room: str) -> int:
        """The offset of the last message of C{room} its history let go for
        its age (0: none): a member that missed it cannot have it back."""
        return self._expired.get(room, 0)

    def leave_all(self, member: M) -> list[str]:
        """Take C{member} out of every room; return them, in the order joined."""
        left = list(self._rooms.get(member, ()))
        for room in left:
            self.leave(member, room)
        return left

    def members(self, room: str) -> Iterable[M]:
        """The members of C{room}, in the order they joined (none if it does not exist)."""
        return self._members.get(room, {}).keys()

    def size(self, room: str) -> int:
        """How many members C{room} has (0 if it does not exist)."""
        return len(self._members.get(room, ()))

    def rooms_of(self, member: M) -> tuple[str, ...]:
        return tuple(self._rooms.get(member, ()))

    def names(self) -> Collection[str]:
        """Every room that exists, held ones without members included."""
        return self._members.keys()

    def counts(self) -> dict[str, int]:
        """Each room with members and their number (a held room without any is left out)."""
        return {room: len(members) for room, members in self._members.items() if members}

    @property
    def room_count(self) -> int:
        """Rooms with at least one member."""
        return len(self._members) - sum(1 for room in self._holds if not self._members[room])

    @property
    def membership_count(self) -> int:
        """Memberships across all rooms (a client in 3 rooms counts 3)."""
        return sum(len(rooms) for rooms in self._rooms.values())
