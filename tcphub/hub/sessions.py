"""
L{Sessions}: the members' sessions of one hub, so that a member whose
connection drops comes back as itself: the same identity, the same rooms,
and, with the rooms' history, every message it missed (Centrifugo's
recovery, socket.io's connection state recovery).

A session is live while a connection owns it; when that connection is lost
it is parked for the hub's C{resume_window} seconds on the hub's clock
(less if its identity expires sooner), its rooms held (their numbering and
history kept though no member is left); a connection that presents its id
takes it back, once (it goes on under its own id).  A connection that
presents the id of a live session takes it over: the other connection
(half-open, or the same client's before a network change) is closed.  Pure bookkeeping, with no I/O: the
protocol says what a member is told.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Final, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel

from tcphub._repeats import RepeatedLog
from tcphub.hub.identity import Identity
from tcphub.hub.metrics import HubCounters

__all__ = ["DEFAULT_RESUME_WINDOW", "MAX_SESSION_ID", "SessionOwner", "SessionState", "Sessions"]

DEFAULT_RESUME_WINDOW: Final = 120.0
"""Seconds a dropped member's session waits to be resumed."""
MAX_SESSION_ID: Final = 64
"""The longest session id looked up, in characters (the hub's own are 32)."""


@dataclass(frozen=True)
class SessionState:
    """What a session keeps of its member between connections."""

    name: str
    """What the member was called (its identity's name, or a chat nick)."""
    rooms: dict[str, tuple[str, int]]
    """Each room the member was in: the room's epoch and the offset of the
    last message sent to the member (it may not have had all of those)."""
    identity: Identity | None = None
    """Who it authenticated as; None: a guest of an open hub."""

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity is not None else None


class SessionOwner(Protocol):
    """The connection that owns a live session."""

    @property
    def user(self) -> str | None:
        """Who it authenticated as, if anyone."""

    def hand_over(self) -> SessionState:
        """Give the session up to another connection: close this one, and
        do not park the session when it is lost."""


class Sessions:
    """
    The sessions of one hub: at most C{limit} parked (past it, the one
    parked longest goes first), each for C{window} seconds on C{clock}.
    C{hold(room)} keeps a room for a parked member (False if the room is
    gone), C{release(room)} lets it go; both are the hub's.
    """

    def __init__(self, clock: IReactorTime, window: float, limit: int, counters: HubCounters,
                 repeats: RepeatedLog, hold: Callable[[str], bool], release: Callable[[str], None]) -> None:
        self.window = window
        self._clock = clock
        self._limit = limit
        self._counters = counters
        self._repeats = repeats
        self._hold = hold
        self._release = release
        self._live: dict[str, SessionOwner] = {}
        self._parked: OrderedDict[str, tuple[SessionState, IDelayedCall]] = OrderedDict()

    @property
    def parked(self) -> int:
        """How many sessions wait to be resumed."""
        return len(self._parked)

    def open(self, owner: SessionOwner) -> str:
        """A new session, live on C{owner}; returns its id (32 URL-safe
        characters, 192 random bits: it is a credential)."""
        session_id = secrets.token_urlsafe(24)
        self._live[session_id] = owner
        return session_id

    def end(self, session_id: str) -> None:
        """The live session is over (its member is not to come back as it)."""
        self._live.pop(session_id, None)

    def park(self, session_id: str, state: SessionState) -> None:
        """The live session's connection is lost: keep C{state} for the
        window, or until the identity expires if sooner (not at all if it
        has, nor once the hub stops)."""
        if self._live.pop(session_id, None) is None:  # cleared: the hub stops
            return
        wait = self.window
        if state.identity is not None and state.identity.expires is not None:
            wait = min(wait, state.identity.expires - self._clock.seconds())
        if wait <= 0:
            return
        rooms = {room: place for room, place in state.rooms.items() if self._hold(room)}
        if len(self._parked) >= self._limit:
            self._expire(next(iter(self._parked)))
        state = SessionState(state.name, rooms, state.identity)
        self._parked[session_id] = (state, self._clock.callLater(wait, self._expire, session_id))

    def take(self, session_id: str, taker: SessionOwner, user: str | None, peer: str) -> SessionState | None:
        """What the session C{session_id} kept, its rooms held until
        L{release}; the id is spent (the taker goes on under its own, so a
        stolen id serves once at most).  None if there is no such session,
        or it is not C{user}'s (when the taker has authenticated already):
        counted in C{sessions_refused} and logged once per burst, with the
        taker's C{peer} address (never the id)."""
        parked = self._parked.get(session_id)
        if parked is not None:
            state, call = parked
            if user is not None and state.user != user:
                self._refused(peer)
                return None
            del self._parked[session_id]
            call.cancel()
        else:
            owner = self._live.get(session_id)
            if owner is None or owner is taker or (user is not None and owner.user != user):
                self._refused(peer)
                return None
            del self._live[session_id]
            handed = owner.hand_over()
            state = SessionState(handed.name, {room: place for room, place in handed.rooms.items()
                                               if self._hold(room)}, handed.identity)
        self._counters.add("sessions_resumed")
        return state

    def release(self, state: SessionState) -> None:
        """Let go of the rooms a taken session held."""
        for room in state.rooms:
            self._release(room)

    def clear(self) -> None:
        """The hub stops: forget every session (those live are not parked)."""
        for session_id in list(self._parked):
            state, call = self._parked.pop(session_id)
            call.cancel()
            self.release(state)
        self._live.clear()

    def _refused(self, peer: str) -> None:
        count = self._counters.add("sessions_refused")
        self._repeats.emit("sessions_refused", LogLevel.info,
                           "refused to resume a session for {peer}: no such session ({count} so far)",
                           peer=peer, count=count)

    def _expire(self, session_id: str) -> None:
        state, call = self._parked.pop(session_id)
        if call.active():
            call.cancel()
        self.release(state)
        self._counters.add("sessions_expired")
