"""
Who is in which room: pure bookkeeping (no Twisted, no I/O), bounded by the
length of a room's name and the rooms one member may be in.  The hub's
factory owns one and says what membership means for delivery and events.
"""

from __future__ import annotations

from typing import Generic, Hashable, Iterable, TypeVar

from tcphub.errors import InvalidRoomName, RoomLimitReached

__all__ = ["DEFAULT_MAX_ROOMS_PER_CLIENT", "MAX_ROOM_NAME", "Rooms", "check_room"]

MAX_ROOM_NAME = 128
DEFAULT_MAX_ROOMS_PER_CLIENT = 100

M = TypeVar("M", bound=Hashable)


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
    joined), each member's rooms likewise.  An empty room does not exist.
    """

    def __init__(self, max_rooms_per_member: int = DEFAULT_MAX_ROOMS_PER_CLIENT) -> None:
        self.max_rooms_per_member = max_rooms_per_member
        self._members: dict[str, dict[M, None]] = {}
        self._rooms: dict[M, dict[str, None]] = {}

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
        self._members.setdefault(room, {})[member] = None
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
        if not members:
            del self._members[room]
        return True

    def leave_all(self, member: M) -> list[str]:
        """Take C{member} out of every room; return them, in the order joined."""
        left = list(self._rooms.get(member, ()))
        for room in left:
            self.leave(member, room)
        return left

    def members(self, room: str) -> Iterable[M]:
        """The members of C{room}, in the order they joined (none if it does not exist)."""
        return self._members.get(room, {}).keys()

    def rooms_of(self, member: M) -> tuple[str, ...]:
        return tuple(self._rooms.get(member, ()))

    def counts(self) -> dict[str, int]:
        """Each room and its number of members."""
        return {room: len(members) for room, members in self._members.items()}

    @property
    def room_count(self) -> int:
        return len(self._members)

    @property
    def membership_count(self) -> int:
        """Memberships across all rooms (a client in 3 rooms counts 3)."""
        return sum(len(rooms) for rooms in self._rooms.values())
