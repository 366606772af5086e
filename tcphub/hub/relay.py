"""
L{Relay}: where a hub joined with others (several processes or machines as
one hub, see L{tcphub.bus}) tells them of what it sends.  The hub knows no
bus: it calls its relay, if it has one, for each broadcast (its own clients
have theirs already) and for each send to a client it does not hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from tcphub.hub.sessions import SessionStore

__all__ = ["Relay"]


class Relay(Protocol):
    @property
    def lossless(self) -> bool:
        """Whether every message of the other hubs reaches this one (or its
        loss is told, with L{HubFactory.history_lost}): then this hub's room
        history is whole, and a member back on this hub can recover from it."""

    @property
    def session_store(self) -> SessionStore | None:
        """Where the hubs keep their parked sessions for one another (None:
        each hub's sessions are its own): a member comes back on any hub,
        and gets what it missed there through L{catch_up}."""

    def catch_up(self, room: str, place: object, exclude: str, limit: int, limit_bytes: int,
                 max_age: float = 0) -> Deferred[list[bytes]]:
        """What a member back on this hub missed of C{room} (held here) since
        C{place}, where it stood on its old hub (a L{SessionStore}'s): the
        payloads, oldest first, but those that excluded C{exclude} (its old
        client id); at most C{limit} of them and C{limit_bytes} in all, none
        older than C{max_age} seconds (0: any age).  Errbacks with
        L{tcphub.errors.NotRecovered}."""

    def following(self, room: str) -> Deferred[None] | None:
        """Fires once this hub reads the other hubs' messages to C{room}, a
        room new here (None: it does already, or cannot now): a member told
        it is in the room gets every message published after that, on any hub."""

    def broadcast(self, payload: bytes, exclude: Iterable[str], room: str | None, notice: bool = False) -> None:
        """A broadcast this hub made: the other hubs give it to their clients
        (of C{room}) but those in C{exclude}; a C{notice} they do not number
        or keep in the room's history (L{HubProtocol.announce})."""

    def send(self, client_id: str, payload: bytes) -> bool:
        """A send to a client this hub does not hold: True if C{client_id}
        names another hub's client, and the message is on its way there (at
        most once); False if the id is no client's anywhere."""

    def disconnect(self, client_id: str | None, user: str | None) -> bool:
        """Close another hub's client C{client_id}, or every other hub's
        clients of C{user}: True if the request is on its way (a client id
        names another hub's client, or a user is given)."""

    def claim_name(self, name: str, owner: str) -> Deferred[bool]:
        """Claim C{name} (compared without case) for C{owner} across the
        hubs: True if it was free or is C{owner}'s already, False if
        another holds it.  Names are the chat's nicks."""

    def release_name(self, name: str, owner: str) -> None:
        """C{owner} no longer holds C{name} (nothing if another does)."""

    def cluster_presence(self, room: str) -> Deferred[list[object]]:
        """What C{room}'s list of members shows of its members on the other
        hubs (L{HubProtocol.presence}), as recently as this hub knows."""

    def cluster_rooms(self) -> dict[str, int]:
        """Every room of every hub joined with this one, with its members
        (this hub's as they are now, the others' as recently as it knows)."""
