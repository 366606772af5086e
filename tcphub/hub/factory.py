"""
L{HubFactory}: the hub's state (the client table, counters, events and
limits) and its API: send to one client, broadcast to all, disconnect,
pause and resume reading, snapshots and metrics.
"""

from __future__ import annotations

import heapq
import uuid
import math
from collections import deque
from typing import Any, Callable, Collection, Iterable, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from tcphub import _checks
from tcphub._deadlines import Timetable
from tcphub._observer import OneShotObserver
from tcphub._reactor import default_reactor
from tcphub._repeats import RepeatedLog
from tcphub.errors import (
    AddressLimitReached,
    ClientDisconnected,
    ConnectionLimitReached,
    DescriptorLimitReached,
    NotRecovered,
    TcpHubError,
    UnframeableMessage,
    UnknownClient,
)
from tcphub.events import Events, HandlerFailures, Subscription
from tcphub.hub.framing import Framing, get_framing
from tcphub.hub.identity import Authenticator, FailedAttempts
from tcphub.hub.metrics import ClientInfo, ClosedConnection, HubCounters, Metrics, Traffic
from tcphub.hub.outbox import WRITE, Countdown, ReadBatch
from tcphub.hub.addresses import check_payload, format_address
from tcphub.hub.protocol import OPEN, HubProtocol
from tcphub.hub.refused import RefusedConnection
from tcphub.hub.relay import Relay
from tcphub.hub.rooms import DEFAULT_MAX_ROOMS_PER_CLIENT, DEFAULT_ROOM_HISTORY_BYTES, Kept, Rooms
from tcphub.hub.sessions import DEFAULT_RESUME_WINDOW, Sessions, StoredSession
from tcphub.hub.surface import HubSurface

__all__ = ["HubFactory"]

DEFAULT_MAX_FRAME = 64 * 1024
DEFAULT_MAX_PENDING = 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_DRAIN_TIMEOUT = 5.0
DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_CLOSED_HISTORY = 100
DEFAULT_AUTH_TIMEOUT = 10.0
"""Seconds a member has to authenticate, when the hub asks it to."""
DEFAULT_AUTH_GRACE = 25.0
"""Seconds a member stays past its token's expiry, to send a fresh one."""


PAGE_KEYS: dict[str, Callable[[HubProtocol], float]] = {
    "connected": lambda client: client.connected_at,
    # The longest idle is the one least recently active.
    "idle": lambda client: -client.active,
    "bytes_received": lambda client: client.bytes_received,
    "bytes_sent": lambda client: client.bytes_sent,
    "messages_received": lambda client: client.messages_received,
    "messages_sent": lambda client: client.messages_sent,
    "pending_bytes": lambda client: client.pending_bytes,
    "held_bytes": lambda client: client.held_bytes,
}
"""What L{HubFactory.page} sorts by: each read from a client where it lives."""


class HubFactory(Factory):
    """
    The hub's state: the client table, counters, events and limits.

    Events (subscribe with L{on}, which returns a L{Subscription}):
      - C{connection(client: ClientInfo)}
      - C{data(client_id: str, payload: bytes)}
      - C{disconnect(client_id: str, reason: Failure)}
      - C{error(client_id: str | None, error: TcpHubError)}
      - C{join(client_id: str, room: str)}
      - C{leave(client_id: str, room: str, reason: str)}: C{"left"}, or
        C{"disconnected"} for each room of a client that goes (before its
        C{disconnect} event)
      - C{presence(client_id: str, rooms: tuple[str, ...])}: what the client
        shows in its rooms' lists changed (L{HubProtocol.presenceChanged})

    Its clients call the methods under "called by HubProtocol"; nothing else
    should.  C{counters}, C{batch} and C{repeats} are the hub's and its
    protocols' own: the rooms beside the hub (browser members, the bus) use
    L{surface} and keep counters of their own.
    """

    protocol: type[HubProtocol] = HubProtocol  # type: ignore[assignment]
    noisy = False  # TcpServer logs its own line with the bound address.
    _log = Logger()

    def __init__(
        self,
        *,
        protocol: type[HubProtocol] | None = None,
        framing: str | Framing = "line",
        max_frame: int = DEFAULT_MAX_FRAME,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_ip: int | None = None,
        timeout: float | None = None,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        max_rate: float | None = None,
        max_burst: int | None = None,
        keep_alive: bool = True,
        allow_half_open: bool = False,
        closed_history: int = DEFAULT_CLOSED_HISTORY,
        max_rooms_per_client: int = DEFAULT_MAX_ROOMS_PER_CLIENT,
        room_history: int = 0,
        room_history_bytes: int = DEFAULT_ROOM_HISTORY_BYTES,
        room_history_ttl: float = 0,
        auth: Authenticator | None = None,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        auth_grace: float = DEFAULT_AUTH_GRACE,
        resume_window: float = DEFAULT_RESUME_WINDOW,
        clock: IReactorTime | None = None,
    ) -> None:
        if protocol is not None:
            self.protocol = protocol
        if max_rate is not None:
            _checks.number("max_rate", max_rate, above=0)
            if max_burst is None:
                max_burst = max(1, math.ceil(max_rate))
        elif max_burst is not None:
            raise ValueError("max_burst goes with max_rate")
        self.framing = get_framing(framing)
        self.max_frame = _checks.count("max_frame", max_frame)
        self.max_pending = _checks.count("max_pending", max_pending)
        self.max_connections = _checks.count("max_connections", max_connections)
        self.max_connections_per_ip = _checks.count_or_none("max_connections_per_ip", max_connections_per_ip)
        self.timeout = _checks.seconds_or_none("timeout", timeout)
        self.frame_timeout = _checks.seconds_or_none("frame_timeout", frame_timeout)
        self.max_rate = max_rate
        self.max_burst = _checks.count_or_none("max_burst", max_burst)
        self.keep_alive = _checks.flag("keep_alive", keep_alive)
        self.allow_half_open = _checks.flag("allow_half_open", allow_half_open)
        """Whether a client that ends its input stays as a receiver (Node's
        C{allowHalfOpen}); by default it is closed once its replies are written."""
        self.auth = auth
        """What checks members' tokens (L{tcphub.hub.identity}); None: the hub is open."""
        self.auth_attempts = FailedAttempts()
        """Failed authentications by address (each may fail 10 times at once, then once a second)."""
        self.auth_timeout = _checks.number("auth_timeout", auth_timeout, above=0)
        self.auth_grace = _checks.number("auth_grace", auth_grace, minimum=0)
        self.clock: IReactorTime = clock if clock is not None else default_reactor()
        self.idle_deadlines: Timetable[HubProtocol] = Timetable(self.clock, lambda client: client.idle_due())
        """Every client's idle deadline (C{timeout}) on one timer, not a C{DelayedCall} each (about 450 bytes)."""
        self.counters = HubCounters()
        self.batch = ReadBatch(self.counters, self.clock)
        """Gathers what the hub writes while it handles a read (see L{ReadBatch})."""
        self.repeats = RepeatedLog(self._log, self.clock)
        """Logs each kind of fault once, then once per interval while it repeats."""
        self.surface = HubSurface(self.clock, self.batch, self.repeats, self.report)
        """What the rooms beside the hub (browser members, the bus) use of it."""
        self.handler_failed = HandlerFailures(
            self.repeats, lambda: self.counters.add("handler_errors"), self.report, "the hub goes on"
        )
        """Called with C{(where, failure, client_id)} when a hook raised."""
        self.events = Events(("connection", "data", "disconnect", "error", "join", "leave", "presence"),
                             self.handler_failed.event_failed)
        self.max_rooms_per_client = _checks.count("max_rooms_per_client", max_rooms_per_client)
        self._rooms: Rooms[HubProtocol] = Rooms(
            self.max_rooms_per_client,
            history=_checks.count("room_history", room_history, minimum=0),
            history_bytes=_checks.count("room_history_bytes", room_history_bytes, minimum=0),
            history_ttl=_checks.number("room_history_ttl", room_history_ttl, minimum=0),
        )
        self.sessions = Sessions(self.clock, _checks.number("resume_window", resume_window, minimum=0),
                                 self.max_connections, self.counters, self.repeats, self._rooms.hold,
                                 self._rooms.release)
        """The members' sessions, kept C{resume_window} seconds after a drop
        for a protocol that resumes them (the structured protocol's C{hub.resume})."""
        self.started_at: float | None = None
        self.epoch = uuid.uuid4().hex[:8]
        """Names this hub's room numbering: a room's offsets count on only
        within one epoch (the numbers and history live in this process)."""
        self.log_connections = False
        """Whether each connect and disconnect is logged (at debug): off, they
        cost nothing (a log event filtered out still costs its formatting
        and filter: with it, the churn bench made 8,200 connections a second,
        without, 11,200); the plugin turns it on with C{--log-level debug}."""
        self._pausers: set[object] = set()
        """The owners of a L{pause_reading} not yet lifted."""
        self.relay: Relay | None = None
        """The other hubs this one is joined with (L{join_relay}), if any."""
        self.id_prefix = ""
        """What every client id begins with: the node's id and a dash, once joined."""
        self._clients: dict[str, HubProtocol] = {}
        # Connections that are not in the client table (refused ones, until
        # they are gone): stop() waits for these too.
        self._refused: set[RefusedConnection] = set()
        self._per_ip: dict[str, int] = {}
        self._hosts: dict[str, str] = {}  # client id -> host, when max_connections_per_ip is set
        self._all_gone: OneShotObserver | None = None
        self._going_away: tuple[IDelayedCall, Deferred[None]] | None = None
        """While L{go_away} spreads the clients: the call that tells the next, and what fires at the last."""
        self._departed: dict[str, list[int]] = {}
        """Each kind's traffic of the clients gone: bytes and messages in, out."""
        self._closed: deque[ClosedConnection] = deque(
            maxlen=_checks.count("closed_history", closed_history, minimum=0)
        )

    def join_relay(self, relay: Relay, node_id: str) -> None:
        """Join other hubs through C{relay}: from now on every broadcast is
        relayed, a send to a client of another hub goes through it, and client
        ids begin with C{node_id} and a dash (so that the others know where a
        client is).  Only before any client connects."""
        if self._clients or self._refused:
            raise RuntimeError("join_relay before any client connects: their ids would not say where they are")
        self.relay = relay
        self.id_prefix = f"{_checks.node_id('node_id', node_id)}-"
        self.sessions.store = relay.session_store

    def limit_connections(self, allowed: int) -> None:
        """Admit at most C{allowed} clients, fewer than C{max_connections}:
        what the process's descriptor limit leaves room for."""
        self.max_connections = min(self.max_connections, max(1, allowed))

    def startFactory(self) -> None:
        self.started_at = self.clock.seconds()
        self.sessions.start()

    def stopFactory(self) -> None:
        self.repeats.stop()
        self.sessions.clear()

    # -- the public API -------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any]) -> Subscription:
        """Subscribe to an event; see the class docstring for the arguments."""
        return self.events.on(event, callback)

    def send(self, client_id: str, data: bytes) -> Deferred[None]:
        """
        Send one message to one client.  Fires once it is handed to the client's
        transport, which waits while the client does not read; errbacks with
        L{UnknownClient}, L{ClientDisconnected} (or L{SlowConsumer}), or
        L{UnframeableMessage}.
        """
        check_payload(data, "send")
        client = self._clients.get(client_id)
        if client is None:
            if self.relay is not None and self.relay.send(client_id, data):
                return succeed(None)
            return fail(UnknownClient(client_id))
        try:
            frame = self.framing.encode(data)
        except UnframeableMessage:
            return fail()
        waiter: Deferred[None] = Deferred()
        if client.deliver(frame, waiter):
            return succeed(None)
        return waiter

    def broadcast(self, data: bytes, exclude: Iterable[str] = (), room: str | None = None) -> Deferred[None]:
        """
        Send one message to every client (of C{room}, if given: the cost is
        the room's size, not the hub's) not in C{exclude}, framed once.  Fires
        when every receiver has taken it or gone; clients that leave meanwhile
        do not fail it.  Errbacks only with L{UnframeableMessage}.  Raises
        L{TypeError} for C{str} data, or one id given as C{exclude} instead of
        a collection of ids.
        """
        check_payload(data, "broadcast")
        if isinstance(exclude, (str, bytes)):
            raise TypeError(
                f"broadcast's exclude takes a collection of client ids, not one id: "
                f"exclude=[{exclude!r}]"
            )
        excluded = frozenset(exclude)
        try:
            frame = self.framing.encode(data)
        except UnframeableMessage:
            return fail()
        if self.relay is not None:
            self.relay.broadcast(data, excluded, room)
        return self._broadcast(frame, excluded, room)

    def broadcast_local(self, data: bytes, exclude: Iterable[str] = (), room: str | None = None,
                        notice: bool = False) -> Deferred[None]:
        """L{broadcast} to this hub's clients only: what a relay calls with
        another hub's broadcast (a C{notice}: see L{broadcast_frame}).  A
        message to a room is numbered as this hub numbers it
        (L{HubProtocol.relayedPayload}): a member's offsets are its hub's."""
        if room is not None and not notice:
            data = self.protocol.relayedPayload(room, data, self.room_sequence(room) + 1, self.room_epoch(room))
        try:
            frame = self.framing.encode(data)
        except UnframeableMessage:
            return fail()
        return self._broadcast(frame, frozenset(exclude), room, notice)

    def _broadcast(self, frame: bytes, excluded: frozenset[str], room: str | None,
                   notice: bool = False) -> Deferred[None]:
        countdown = self.broadcast_frame(frame, excluded, room=room, notice=notice)
        if countdown is None:
            return succeed(None)
        countdown.tick()
        return countdown.done

    def broadcast_frame(
        self, frame: bytes, excluded: frozenset[str] = frozenset(), skip: HubProtocol | None = None,
        room: str | None = None, notice: bool = False, waited: bool = True,
    ) -> Countdown | None:
        """
        Deliver an encoded C{frame} to every client (of C{room}, if given) but
        C{skip} and the C{excluded} ids.  A message to a room is numbered and
        kept in its history; a C{notice} (who joined, who left) is neither.
        Returns None if every receiver took it at once, or if it is not
        C{waited} for (a queueing receiver then queues it with no one to
        tell); else a countdown for the queueing ones, still held once (the
        caller ticks it).  The hot path: for a receiver in mode WRITE, the
        frame joins its outbox's C{frames} inline; the batch writes them
        when it ends.
        """
        countdown = None
        batch = self.batch
        dirty = batch.dirty
        if room is None:
            receivers = tuple(self._clients.values())
        else:
            if not notice:
                self._rooms.record(room, frame, self.clock.seconds())
            receivers = tuple(self._rooms.members(room))
        batch.begin()
        try:
            for client in receivers:
                if client is skip or (excluded and client.client_id in excluded):
                    continue
                outbox = client.outbox
                if outbox is None:
                    outbox = client.first_outbox()
                if outbox is not None and outbox.mode == WRITE:
                    frames = outbox.frames
                    if frames is None:
                        outbox.frames = [frame]
                        dirty.append(outbox)
                    else:
                        frames.append(frame)
                else:
                    # Queued (or, for a closing client, refused: the
                    # countdown is ticked at once).
                    if waited:
                        if countdown is None:
                            countdown = Countdown()
                            countdown.remaining = 1
                        countdown.remaining += 1
                    client.deliver(frame, countdown)
        finally:
            batch.end()
        return countdown

    def disconnect(self, client_id: str) -> Deferred[None]:
        """Close one client's connection after its queued output; fires when it is gone."""
        client = self._clients.get(client_id)
        if client is None:
            return fail(UnknownClient(client_id))
        client.loseConnection()
        return client.whenLost()

    def connections_by_kind(self) -> dict[str, int]:
        """Clients connected now by what carries them (C{tcp}, C{tls}, C{unix},
        C{websocket}): a scan of the table, for a scrape."""
        counts: dict[str, int] = {}
        for client in self._clients.values():
            kind = client.kind
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    @property
    def client_count(self) -> int:
        """How many clients are connected now."""
        return len(self._clients)

    def traffic_by_kind(self) -> dict[str, Traffic]:
        """Each kind's bytes and messages in and out since the hub started:
        the clients gone (summed as they left) and a scan of those here, for
        a scrape, so that the path of a message counts nothing more."""
        totals = {kind: list(counts) for kind, counts in self._departed.items()}
        for client in self._clients.values():
            _add_traffic(totals.setdefault(client.kind, [0, 0, 0, 0]), client)
        return {kind: Traffic(*counts) for kind, counts in totals.items()}

    def disconnect_user(self, user: str) -> list[str]:
        """Close every client of this hub that authenticated as C{user}; their ids."""
        gone = [client.client_id for client in self._clients.values() if client.user == user]
        for client_id in gone:
            self._clients[client_id].loseConnection()
        return gone

    @property
    def reading_paused(self) -> bool:
        """Whether some owner holds L{pause_reading}."""
        return bool(self._pausers)

    def pause_reading(self, owner: object = None) -> None:
        """Stop taking messages from every client, and from those who connect,
        until C{owner} calls L{resume_reading} (see L{HubProtocol.pauseReading}).
        Each owner holds a pause of its own (a gateway's stalled upstream, a
        bus whose queue is full): the hub reads again once none holds one."""
        paused = self.reading_paused
        self._pausers.add(owner)
        if not paused:
            for client in list(self._clients.values()):
                client.hubPausedReading()

    def resume_reading(self, owner: object = None) -> None:
        """Lift C{owner}'s L{pause_reading}; a client that its protocol paused
        itself (L{HubProtocol.pauseReading}) stays paused."""
        if owner not in self._pausers:
            return
        self._pausers.discard(owner)
        if not self._pausers:
            for client in list(self._clients.values()):
                client.hubResumedReading()

    def join(self, client_id: str, room: str, replay_after: int | None = 0) -> None:
        """Put a client in C{room} (created by its first member), emit
        C{join}, and send it the room's history (with C{room_history}) after
        offset C{replay_after} (None: none of it); nothing if it is there
        already.  Raises L{UnknownClient}, L{InvalidRoomName}, or
        L{RoomLimitReached} past C{max_rooms_per_client}."""
        client = self._clients.get(client_id)
        if client is None:
            raise UnknownClient(client_id)
        if self._rooms.join(client, room):
            self.events.emit("join", client_id, room)
            if replay_after is None:
                return
            # The room's history, oldest first, before anything sent to it from now on.
            for kept in self._rooms.history(room, self.clock.seconds()):
                if kept.offset > replay_after:
                    client.deliver(client.replayFrame(room, kept))

    def leave(self, client_id: str, room: str) -> None:
        """Take a client out of C{room} (gone once empty) and emit C{leave};
        nothing if it was not there.  Raises L{UnknownClient}."""
        client = self._clients.get(client_id)
        if client is None:
            raise UnknownClient(client_id)
        if self._rooms.leave(client, room):
            self.events.emit("leave", client_id, room, "left")

    def room_epoch(self, room: str) -> str:
        """What C{room}'s offsets count within: this process's L{epoch} and
        which room of that name it is (a room that empties and is made again
        numbers from 1 anew, under a new epoch).  A member that knows an
        epoch and offset can tell whether it missed anything."""
        return f"{self.epoch}.{self._rooms.generation(room)}"

    def room_sequence(self, room: str) -> int:
        """The number of the last message sent to C{room}: messages to a room
        are numbered 1, 2, ... for as long as it has members (0: none yet)."""
        return self._rooms.sequence(room)

    @property
    def room_history_ttl(self) -> float:
        """Seconds a message stays in its room's history (0: until the count or bytes push it out)."""
        return self._rooms.history_ttl

    def room_history(self, room: str) -> list[Kept]:
        """The last C{room_history} messages of C{room} (at most
        C{room_history_bytes} in all, none older than C{room_history_ttl}
        seconds), oldest first: notices are not kept."""
        return self._rooms.history(room, self.clock.seconds())

    def unrecoverable(self, room: str, epoch: str, offset: int) -> str | None:
        """Why the messages of C{room} after C{offset} of C{epoch} cannot all
        be given to a member back after a drop: C{cluster} (joined through a
        relay that may lose other hubs' messages unawares), C{epoch_changed},
        C{offset_ahead}, C{history_expired} (one it missed is older than
        C{room_history_ttl}), C{history_lost}; None if they can (the
        history holds every one)."""
        if self.relay is not None and not self.relay.lossless:
            return "cluster"
        if epoch != self.room_epoch(room):  # another node's epoch, too
            return "epoch_changed"
        last = self.room_sequence(room)
        if offset > last:
            return "offset_ahead"
        history = self._rooms.history(room, self.clock.seconds())
        if offset < self._rooms.expired_through(room):
            return "history_expired"
        # Every one after it, with none missing (a message over the history's
        # byte bound is not kept), or the member would miss one unawares.
        missed = [kept.offset for kept in history if kept.offset > offset]
        if missed != list(range(offset + 1, last + 1)):
            return "history_lost"
        return None

    def rejoin(self, client_id: str, room: str, epoch: str, offset: int) -> str | None:
        """Put a client back in C{room} after a drop, where it was (C{offset}
        of C{epoch}): the messages it missed come first, in order, if the
        history holds all of them; else none of them, and why not is
        returned (see L{unrecoverable}) and counted in C{unrecovered}.
        Raises as L{join} does."""
        why_not = self.unrecoverable(room, epoch, offset)
        self.join(client_id, room, None if why_not is not None else offset)
        if why_not is not None:
            self.counters.add("unrecovered")
        return why_not

    def recover(self, client_id: str, room: str, stored: StoredSession, seen: int | None = None
                ) -> Deferred[str | None]:
        """Put a client back in C{room} after a drop on another hub (its
        C{stored} session): what it missed comes first, from the relay
        (L{Relay.catch_up}, at most C{room_history} messages and
        C{room_history_bytes}), then what this hub gets from then on.
        C{seen}, the offset of the last message the member says it had on
        its old hub, if less than the last one sent it there, says that
        some were lost on the way, which this hub cannot name: none are
        given.  Fires with None if it got all it missed, else why not
        (C{history_lost}, C{offset_ahead}, C{unavailable}), counted in
        C{unrecovered}; the client is in the room either way (unless it
        left meanwhile).  Raises L{InvalidRoomName}."""
        relay = self.relay
        assert relay is not None and relay.session_store is not None
        self._rooms.hold(room, create=True)  # read from now on, so that the catch-up ends where the reader stands
        _, sent = stored.state.rooms[room]
        if seen is not None and seen != sent:
            caught: Deferred[list[bytes]] = fail(NotRecovered(
                "history_lost" if seen < sent else "offset_ahead",
                f"the member had up to {seen} of the {sent} messages its old hub sent it"))
        else:
            caught = relay.catch_up(room, stored.places[room], stored.client_id, self._rooms.history_size,
                                    self._rooms.history_bytes, self.room_history_ttl)

        def back(missed: list[bytes]) -> str | None:
            client = self._clients.get(client_id)
            if client is not None:
                offset, epoch = self.room_sequence(room), self.room_epoch(room)
                self.batch.begin()  # what it missed goes out as one write, as a read's output does
                try:
                    for payload in missed:
                        try:
                            client.deliver(self.framing.encode(self.protocol.relayedPayload(room, payload, offset,
                                                                                            epoch)))
                        except UnframeableMessage:
                            continue
                    self.join(client_id, room, None)
                finally:
                    self.batch.end()
            self._rooms.release(room)
            return None

        def not_back(failure: Failure) -> str:
            failure.trap(NotRecovered)
            back([])
            self.counters.add("unrecovered")
            return cast(NotRecovered, failure.value).reason

        return caught.addCallbacks(back, not_back)

    def history_lost(self) -> None:
        """Messages of other hubs were lost on their way here (the relay
        says so): every room's history has a hole, so every room's epoch
        changes, and a member back with an offset of before is told it
        cannot recover."""
        self.epoch = uuid.uuid4().hex[:8]

    def rooms(self) -> dict[str, int]:
        """Every room with its number of members."""
        return self._rooms.counts()

    def room_names(self) -> Collection[str]:
        """Every room here, those held for members expected back
        (L{tcphub.hub.sessions}) included: what a relay reads for this hub."""
        return self._rooms.names()

    @property
    def room_changes(self) -> int:
        """How many times a room was made here or went: while it stays the
        same, L{room_names} does too (a relay need not look again)."""
        return self._rooms.changes

    def members(self, room: str) -> list[ClientInfo]:
        """Snapshots of C{room}'s members, in the order they joined (none if no such room)."""
        return [client.info() for client in self._rooms.members(room)]

    def presence_changed(self, client: HubProtocol) -> None:
        """What C{client} shows in its rooms' lists changed (L{HubProtocol.presenceChanged}):
        emit C{presence} with its rooms, if it is in any."""
        rooms = self._rooms.rooms_of(client)
        if rooms:
            self.events.emit("presence", client.client_id, rooms)

    def member_presence(self, room: str, limit: int | None = None) -> list[object]:
        """What C{room}'s list of members shows of each member here
        (L{HubProtocol.presence}: the chat's nicks...), at most C{limit},
        in the order they joined; those not listed are left out."""
        shown: list[object] = []
        for client in self._rooms.members(room):
            if limit is not None and len(shown) >= limit:
                break
            if (presence := client.presence) is not None:
                shown.append(presence)
        return shown

    def presence_by_id(self, room: str, client_ids: Iterable[str] | None = None) -> dict[str, object]:
        """What C{room}'s list shows of each member here (None: nothing), by
        client id, in the order they joined; with C{client_ids}, of those of
        them that are members (the bus writes only the lines that changed)."""
        if client_ids is None:
            return {client.client_id: client.presence for client in self._rooms.members(room)}
        members = self._rooms.members(room)
        clients = self._clients
        return {client_id: client.presence for client_id in client_ids
                if (client := clients.get(client_id)) is not None and client in members}

    def room_size(self, room: str) -> int:
        """How many members C{room} has here (0 if it does not exist)."""
        return self._rooms.size(room)

    def places(self, client: HubProtocol) -> dict[str, tuple[str, int]]:
        """Where a client stands in each of its rooms: the room's epoch and
        the number of its last message (what a session keeps, to resume)."""
        return {room: (self.room_epoch(room), self._rooms.sequence(room)) for room in self._rooms.rooms_of(client)}

    def rooms_of(self, client: HubProtocol) -> tuple[str, ...]:
        """The rooms of one client, in the order it joined them."""
        return self._rooms.rooms_of(client)

    def protocol_for(self, client_id: str) -> HubProtocol:
        """The protocol of a connected client, for subclasses that talk to
        their peers (a chat's nicknames); raises L{UnknownClient}."""
        try:
            return self._clients[client_id]
        except KeyError:
            raise UnknownClient(client_id) from None

    def has_client(self, client_id: str) -> bool:
        """Whether C{client_id} is connected to this hub."""
        return client_id in self._clients

    def clients(self) -> list[ClientInfo]:
        """Snapshots of every connected client."""
        return [client.info() for client in self._clients.values()]

    def page(self, sort: str, descending: bool, offset: int, limit: int) -> tuple[int, list[ClientInfo]]:
        """C{(clients in all, snapshots of the page)}: the clients ordered by
        C{sort} (a key of L{PAGE_KEYS}; ties by id), from C{offset}, at most
        C{limit}.  Each key is read where it lives and only the page is
        snapshotted: O(n log(offset + limit)), not a snapshot per client."""
        key_of = PAGE_KEYS[sort]
        pick = heapq.nlargest if descending else heapq.nsmallest
        first = pick(offset + limit, self._clients.values(),
                     key=lambda client: (key_of(client), client.client_id))
        return len(self._clients), [client.info() for client in first[offset:]]

    def client(self, client_id: str) -> ClientInfo:
        """A snapshot of one client; raises L{UnknownClient}."""
        try:
            return self._clients[client_id].info()
        except KeyError:
            raise UnknownClient(client_id) from None

    def closed_connections(self) -> list[ClosedConnection]:
        """The last C{closed_history} clients that left, newest first, with why."""
        return list(reversed(self._closed))

    def get_metrics(self) -> Metrics:
        uptime = 0.0 if self.started_at is None else self.clock.seconds() - self.started_at
        return self.counters.snapshot(connections=len(self._clients), uptime=uptime,
                                      rooms=self._rooms.room_count,
                                      room_members=self._rooms.membership_count,
                                      sessions_parked=self.sessions.parked)

    def close_all(self, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> Deferred[None]:
        """
        Close every connection once its queued output is written; after
        C{drain_timeout} seconds abort those still open.  Fires when none is left.
        """
        going_away, self._going_away = self._going_away, None
        if going_away is not None:  # the rest are closed now, told or not
            going_away[0].cancel()
            going_away[1].callback(None)
        if not self._clients and not self._refused:
            return succeed(None)
        if self._all_gone is None:
            self._all_gone = OneShotObserver()
        done: Deferred[None] = self._all_gone.when_fired()
        # The refused ones are being aborted already.
        for client in list(self._clients.values()):
            client.loseConnection()
        deadline = self.clock.callLater(drain_timeout, self._abort_stragglers)

        def cancel_deadline(result: object) -> object:
            if deadline.active():
                deadline.cancel()
            return result

        return done.addBoth(cancel_deadline)

    def go_away(self, spread: float) -> Deferred[None]:
        """
        Tell every client to reconnect elsewhere (L{HubProtocol.goingAway}),
        one after another over C{spread} seconds, so that the hubs that take
        them are not hit by all at once; fires once the last is told.  The
        clients close after their queued output; L{close_all} then waits for them.
        """
        clients = list(self._clients.values())
        if not clients:
            return succeed(None)
        done: Deferred[None] = Deferred()
        step = spread / len(clients)

        def tell(index: int) -> None:
            client = clients[index]
            if client.state == OPEN:
                client.goingAway()
            if index + 1 == len(clients):
                self._going_away = None
                done.callback(None)
            else:
                self._going_away = (self.clock.callLater(step, tell, index + 1), done)

        tell(0)
        return done

    def count_descriptor_refusal(self) -> None:
        """A connection was closed by Twisted for want of a file descriptor
        (EMFILE), before the hub saw it: count it, log it once per burst."""
        count = self.counters.add("descriptor_refusals")
        error = DescriptorLimitReached(
            f"{count} connections refused so far: no file descriptor "
            "left (EMFILE); raise the open-file limit (ulimit -n) or lower max_connections"
        )
        self.repeats.emit("descriptor_refusals", LogLevel.warn, "{error}", error=error)
        self.report(None, error)

    # -- called by HubProtocol --------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """The protocol of a new connection: an instance of C{protocol}, or,
        over C{max_connections} or C{max_connections_per_ip}, a
        L{RefusedConnection} that aborts it, so that a refused connection
        never reaches your protocol's hooks."""
        error = None if addr is None else self.refusal(addr)
        if error is not None:
            return RefusedConnection(self, error)
        return cast("Protocol | None", super().buildProtocol(addr))

    def refusal(self, addr: IAddress) -> ConnectionLimitReached | None:
        """Why a connection from C{addr} may not join now, if it may not (a
        transport with a handshake of its own asks before it answers it)."""
        if len(self._clients) >= self.max_connections:
            return ConnectionLimitReached(
                f"refused {format_address(addr)}: {self.max_connections} clients connected"
            )
        host = getattr(addr, "host", None)
        if self.max_connections_per_ip is not None and host is not None:
            count = self._per_ip.get(host, 0)
            if count >= self.max_connections_per_ip:
                return AddressLimitReached(
                    f"refused {format_address(addr)}: {count} clients connected from "
                    f"{host} (max_connections_per_ip={self.max_connections_per_ip})"
                )
        return None

    def refused(self, connection: RefusedConnection, error: ConnectionLimitReached) -> None:
        """A refused connection is made: count it, say so once per burst,
        report it, and wait for it to go."""
        self._refused.add(connection)
        self.count_refusal(error, format_address(connection.transport.getPeer()))

    def count_refusal(self, error: ConnectionLimitReached, address: str | None = None) -> None:
        """A connection (from C{address}) was refused for C{error} (here, or by a transport
        before it reached the hub): count it, say so once per burst, report it."""
        self.counters.add("rejected")
        if isinstance(error, AddressLimitReached):
            self.counters.rejected_per_ip += 1
        self.repeats.emit("refused", LogLevel.warn, "{error}", error=error, address=address,
                          error_type=type(error).__name__)
        self.report(None, error)

    def client_connected(self, client: HubProtocol) -> None:
        """An admitted client joins the table."""
        self._clients[client.client_id] = client
        if self.max_connections_per_ip is not None:
            host = getattr(client.transport.getPeer(), "host", None)
            if host is not None:
                self._per_ip[host] = self._per_ip.get(host, 0) + 1
                self._hosts[client.client_id] = host
        self.counters.accepted += 1
        if self.log_connections:
            self._log.debug("client {client_id} connected from {address}",
                            client_id=client.client_id, address=client.address)
        if self.events.has("connection"):
            self.events.emit("connection", client.info())

    def client_disconnected(self, client: HubProtocol, reason: Failure,
                            departure: ClientDisconnected | None) -> None:
        """An admitted client's connection is gone; C{departure} is what the
        hub dropped it for, if it did."""
        for room in self._rooms.leave_all(client):
            self.events.emit("leave", client.client_id, room, "disconnected")
        del self._clients[client.client_id]
        _add_traffic(self._departed.setdefault(client.kind, [0, 0, 0, 0]), client)
        if self._closed.maxlen:
            why = departure if departure is not None else reason.value
            self._closed.append(ClosedConnection(
                id=client.client_id, address=client.address, connected=client.connected_at,
                closed=self.clock.seconds(), bytes_received=client.bytes_received,
                bytes_sent=client.bytes_sent, messages_received=client.messages_received,
                messages_sent=client.messages_sent, reason=f"{type(why).__name__}: {why}", user=client.user,
            ))
        host = self._hosts.pop(client.client_id, None)
        if host is not None:
            left = self._per_ip[host] - 1
            if left:
                self._per_ip[host] = left
            else:
                del self._per_ip[host]
        if self.log_connections:
            self._log.debug("client {client_id}{user} disconnected: {reason}", client_id=client.client_id,
                            user="" if client.user is None else f" ({client.user})",
                            reason=reason.getErrorMessage())
        self.events.emit("disconnect", client.client_id, reason)
        self.client_gone(client)

    def client_gone(self, client: HubProtocol | RefusedConnection) -> None:
        """A connection, admitted or refused, is gone."""
        self._refused.discard(client)
        if not self._clients and not self._refused and self._all_gone is not None:
            all_gone, self._all_gone = self._all_gone, None
            all_gone.fire(None)

    def report(self, client_id: str | None, error: TcpHubError) -> None:
        """Emit C{error} on the C{error} event."""
        self.events.emit("error", client_id, error)

    def _abort_stragglers(self) -> None:
        for client in list(self._clients.values()):
            self._log.info("aborting {address}: still open after the drain timeout",
                           address=client.address)
            client.abortConnection()


def _add_traffic(counts: list[int], client: HubProtocol) -> None:
    """Add C{client}'s traffic to C{counts} (as L{Traffic}'s fields, in order)."""
    counts[0] += client.bytes_received
    counts[1] += client.bytes_sent
    counts[2] += client.messages_received
    counts[3] += client.messages_sent
