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

Several hubs joined through Redis share the parked sessions through a
L{SessionStore} (the bus): a member whose node dropped it, or drained,
comes back on any node as itself, and gets what it missed from the rooms'
streams.  One whose node still holds its connection (half-open, or the same
client's before a network change) is handed over: that node closes the old
connection and puts the session in the store for the one it came back to.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel

from tcphub._repeats import RepeatedLog
from tcphub.hub.identity import Identity
from tcphub.hub.metrics import HubCounters

__all__ = ["DEFAULT_RESUME_WINDOW", "MAX_SESSION_ID", "SessionOwner", "SessionState", "SessionStore", "Sessions",
           "StoredSession", "session_digest"]

DEFAULT_RESUME_WINDOW: Final = 120.0
"""Seconds a dropped member's session waits to be resumed."""
MAX_SESSION_ID: Final = 64
"""The longest session id looked up, in characters (the hub's own are 32)."""


def session_digest(session_id: str) -> str:
    """What the hubs say of a session id to one another (SHA-256, in hex):
    never the id itself, which is a credential."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


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


@dataclass(frozen=True)
class StoredSession:
    """A session parked by another node, as the store gives it back."""

    state: SessionState
    """Its name, identity and rooms (their epochs and offsets its old node's)."""
    client_id: str
    """The member's client id on its old node (what it excluded itself from)."""
    places: dict[str, object]
    """Where it stood in each room, for the store's catch-up (None: not known)."""


class SessionStore(Protocol):
    """Where parked sessions are kept for every node (the bus, in Redis)."""

    def keep(self, session_id: str, state: SessionState, client_id: str, wait: float) -> Deferred[bool]:
        """Keep C{state} for C{wait} seconds, with where the member stood in
        each of its rooms: True once kept, False if it could not be (never
        an error)."""

    def take(self, session_id: str) -> Deferred[StoredSession | None]:
        """The session kept under C{session_id}, gone from the store (so
        that it serves once); None if there is none."""

    def give_back(self, session_id: str, stored: StoredSession, wait: float) -> Deferred[bool]:
        """Keep a session L{take}n from the store again as it was (its
        places its old node's), for C{wait} seconds: its taker's connection
        closed before it was resumed.  True once kept (never an error)."""

    def ask_handover(self, session_id: str) -> Deferred[bool]:
        """Ask the other hubs for the session C{session_id}, live on one of
        them (L{Sessions.hand_over_to_store}): True once it is in the store
        (L{take} it), False if none has it live (never an error)."""


class SessionOwner(Protocol):
    """The connection that owns a live session."""

    @property
    def user(self) -> str | None:
        """Who it authenticated as, if anyone."""

    @property
    def client_id(self) -> str:
        """Its client id (what the store keeps, for a catch-up on another hub)."""

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
        self._digests: dict[str, str] = {}
        """With a L{store}: each live session's id by its L{session_digest}, for another hub's handover."""
        self._parked: OrderedDict[str, tuple[SessionState, IDelayedCall]] = OrderedDict()
        self.store: SessionStore | None = None
        """Where parked sessions are also kept for the other hubs (the relay's, if it keeps them)."""
        self._stored: set[str] = set()
        """The parked sessions the store has too: one it no longer has was taken on another hub."""
        self._stopping = False
        """The hub stops: a session whose connection is lost goes to the store only (if it has one)."""

    @property
    def parked(self) -> int:
        """How many sessions wait to be resumed."""
        return len(self._parked)

    def open(self, owner: SessionOwner) -> str:
        """A new session, live on C{owner}; returns its id (32 URL-safe
        characters, 192 random bits: it is a credential)."""
        session_id = secrets.token_urlsafe(24)
        self._live[session_id] = owner
        if self.store is not None:
            self._digests[session_digest(session_id)] = session_id
        return session_id

    def end(self, session_id: str) -> None:
        """The live session is over (its member is not to come back as it)."""
        self._unlive(session_id)

    def _unlive(self, session_id: str) -> SessionOwner | None:
        """The live session's owner, the session no longer live; None if it was not."""
        owner = self._live.pop(session_id, None)
        if owner is not None and self._digests:
            self._digests.pop(session_digest(session_id), None)
        return owner

    def park(self, session_id: str, state: SessionState, client_id: str | None = None) -> None:
        """The live session's connection is lost: keep C{state} for the
        window, or until the identity expires if sooner (not at all if it
        has, nor once the hub stops); in the L{store} too, if the hub has
        one and the member's C{client_id} is given (the protocol resumes
        sessions of other hubs' members)."""
        if self._unlive(session_id) is None:  # ended, or handed over
            return
        wait = self._wait(state)
        if wait <= 0:
            return
        kept = None
        if self.store is not None and client_id is not None:
            kept = self.store.keep(session_id, state, client_id, wait)
        if self._stopping:  # drained: the member comes back on another hub, if at all
            return
        rooms = {room: place for room, place in state.rooms.items() if self._hold(room)}
        self._keep_here(session_id, SessionState(state.name, rooms, state.identity), wait)
        if kept is not None:
            kept.addCallback(self._kept, session_id)

    def _kept(self, kept: bool, session_id: str) -> None:
        if kept and session_id in self._parked:
            self._stored.add(session_id)

    def take_anywhere(self, session_id: str, taker: SessionOwner, user: str | None,
                      peer: str) -> Deferred[SessionState | StoredSession | None]:
        """L{take}, on a hub whose sessions the other hubs share (a
        L{store}): this hub's own parked session if the store still has it,
        else the store's (another hub's member; L{SessionState} rooms are
        then not held); None if neither has it, or it was taken on another
        hub meanwhile.  One neither has may be live on another hub: it is
        asked for (L{SessionStore.ask_handover}), and taken from the store
        once handed over.  While the store cannot be asked, this hub's
        only; without a store, L{take}'s answer at once."""
        store = self.store
        if store is None:
            return succeed(self.take(session_id, taker, user, peer))

        def first(stored: StoredSession | None) -> Deferred[SessionState | StoredSession | None]:
            # (A session the store had, L{_stored}, is parked here: neither here nor there is asked for.)
            if stored is None and session_id not in self._parked and session_id not in self._live:
                return store.ask_handover(session_id).addCallback(again).addCallback(decide)
            return succeed(decide(stored))

        def again(handed: bool) -> Deferred[StoredSession | None]:
            return store.take(session_id) if handed else succeed(None)

        def decide(stored: StoredSession | None) -> SessionState | StoredSession | None:
            if stored is None and session_id in self._stored:  # resumed on another hub
                self._forget(session_id)
                self._refused(peer)
                return None
            if stored is None or session_id in self._parked:
                return self.take(session_id, taker, user, peer)
            if user is not None and stored.state.user != user:
                self._refused(peer)
                return None
            self._counters.add("sessions_resumed")
            return stored

        return store.take(session_id).addCallbacks(first, lambda _: self.take(session_id, taker, user, peer))

    def give_back(self, session_id: str, taken: SessionState | StoredSession) -> None:
        """A session L{take_anywhere} gave is not resumed after all (its
        taker's connection closed while the store answered): parked again
        for the window, where it was, so that its member may try again;
        this hub's own keeps its rooms held.  Let go once the hub stops."""
        if isinstance(taken, StoredSession):
            wait = self._wait(taken.state)
            if self.store is not None and wait > 0:
                self.store.give_back(session_id, taken, wait)
            return
        wait = self._wait(taken)
        if wait <= 0 or self._stopping:
            self.release(taken)
            return
        self._keep_here(session_id, taken, wait)

    def _wait(self, state: SessionState) -> float:
        """How long a session is kept: the window, or until its identity expires if sooner."""
        identity = state.identity
        if identity is not None and identity.expires is not None:
            return min(self.window, identity.expires - self._clock.seconds())
        return self.window

    def _keep_here(self, session_id: str, state: SessionState, wait: float) -> None:
        """Park C{state} on this hub for C{wait} seconds (the oldest parked goes first past the limit)."""
        if len(self._parked) >= self._limit:
            self._expire(next(iter(self._parked)))
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
            self._stored.discard(session_id)
            call.cancel()
        else:
            owner = self._live.get(session_id)
            if owner is None or owner is taker or (user is not None and owner.user != user):
                self._refused(peer)
                return None
            self._unlive(session_id)
            handed = owner.hand_over()
            state = SessionState(handed.name, {room: place for room, place in handed.rooms.items()
                                               if self._hold(room)}, handed.identity)
        self._counters.add("sessions_resumed")
        return state

    def hand_over_to_store(self, digest: str) -> Deferred[bool]:
        """Another hub asks for the live session whose id has this
        L{session_digest} (its member is back there): if its connection is
        here, it is handed over (that connection is closed, as when a member
        takes its session over here) and the session put in the L{store} for
        the window; True once it is there, False if it is not live here."""
        session_id = self._digests.get(digest)
        store = self.store
        if session_id is None or store is None:
            return succeed(False)
        owner = self._unlive(session_id)
        assert owner is not None  # a digest is kept only for a live session
        client_id, state = owner.client_id, owner.hand_over()
        wait = self._wait(state)
        if wait <= 0:
            return succeed(False)
        return store.keep(session_id, state, client_id, wait)

    def release(self, state: SessionState) -> None:
        """Let go of the rooms a taken session held."""
        for room in state.rooms:
            self._release(room)

    def start(self) -> None:
        """The hub starts (again): sessions are parked here."""
        self._stopping = False

    def clear(self) -> None:
        """The hub stops: forget every parked session; those live are parked
        in the L{store} only as their connections close (a drained member
        comes back on another hub), or, without a store, not at all."""
        for session_id in list(self._parked):
            state, call = self._parked.pop(session_id)
            call.cancel()
            self.release(state)
        if self.store is None:
            self._live.clear()
        self._stopping = True
        self._stored.clear()

    def store_lost(self) -> None:
        """The store lost what it kept (a Redis restarted empty): a session
        parked here that it lacks now was not taken elsewhere, and serves
        here (only: the other hubs cannot know it)."""
        self._stored.clear()

    def _refused(self, peer: str) -> None:
        count = self._counters.add("sessions_refused")
        self._repeats.emit("sessions_refused", LogLevel.info,
                           "refused to resume a session for {peer}: no such session ({count} so far)",
                           peer=peer, count=count)

    def _expire(self, session_id: str) -> None:
        self._forget(session_id)
        self._counters.add("sessions_expired")

    def _forget(self, session_id: str) -> None:
        self._stored.discard(session_id)
        state, call = self._parked.pop(session_id)
        if call.active():
            call.cancel()
        self.release(state)
