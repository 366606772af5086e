"""
L{StructuredProtocol}, the hub's face for programs (C{--mode hub}): every
message is one JSON object in the WebSocket handler's envelope,
C{{"path": ..., "data": ..., "id": ...}}, so that
L{tcphub.ws.WebSocketHandler} is a client of the hub as it is (its
C{request()} for the operations, its wildcard routes for the rooms).

Operations (a reply carries the request's C{id}; its path is the request's
on success, L{ERROR_PATH} on a refusal)::

    hub.auth    {"token": T}           -> {"user": U, "name": N, "session": S}
    hub.resume  {"session": S, "offsets": {R: n}?}
                                       -> {"session": S, "user": U, "name": N,
                                           "rooms": {R: {"epoch", "offset", "members", "recovered", "reason"?}},
                                           "refused": [R...]}
    hub.join    {"room": R, "since": {"epoch": E, "offset": N}?}
                                       -> {"room": R, "members": n, "epoch": E, "offset": n, "session": S,
                                           "recovered": true/false (with since), "reason": why not}
    hub.leave   {"room": R}            -> {"room": R}
    hub.publish {"room": R, "data": D} -> {"room": R, "offset": n}
    hub.who     {"room": R}            -> {"room": R, "members": [{"user", "name"}...], "total": n}

A message published to room R reaches its other members as
C{{"path": "room.R", "data": {"room": R, "from": U, "name": N, "offset": n, "epoch": E, "data": D}}}:
each room numbers its messages 1, 2, ... within its epoch (a room made anew,
or a restarted hub, has another).  A member back after a drop joins with the
last epoch and offset it saw as C{since}: with C{--room-history} covering
what it missed, it gets those messages, in order and before any live one,
and C{recovered: true}; otherwise C{recovered: false} and a C{reason}
(C{epoch_changed}, C{history_lost}, C{offset_ahead}, C{cluster}: joined
with other hubs through a relay that may lose their messages unawares,
Redis pub/sub), and it knows it missed something.

Each member has a session (its id, C{S}, is in every C{hub.auth},
C{hub.join} and C{hub.resume} reply): when its connection drops, the hub keeps its
identity and rooms for C{resume_window} seconds (L{tcphub.hub.sessions}).
A member back within that sends C{hub.resume} first: it is the same user
with the same name, back in the same rooms, and for each room gets what it
missed as after a C{since} (from the last offset the hub sent it, or the
C{offsets} it says it saw, which are exact when the connection cut
messages in flight); rooms its identity may no longer enter are
C{refused}.  A session is taken back once: its id is a credential, spent
by a resume (the reply gives the member's id from then on).
A refusal is C{{"path": "hub.error", "id": ..., "data": {"code": C, "reason": text, "path": P}}}.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Final

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from tcphub.errors import AuthRefused, InvalidRoomName, RoomLimitReached
from tcphub.hub.authflow import Authentication, refuses_room
from tcphub.hub.identity import Identity, RoomPatterns
from tcphub.hub.messages import IMessageTransport
from tcphub.hub.protocol import OPEN, HubProtocol
from tcphub.hub.rooms import check_room
from tcphub.hub.sessions import MAX_SESSION_ID, SessionState, StoredSession

__all__ = ["ERROR_PATH", "FORBIDDEN_CLOSE", "MAX_WHO", "RECONNECT_PATH", "ROOM_PATH", "StructuredProtocol", "UNAUTHENTICATED_CLOSE"]

ERROR_PATH: Final = "hub.error"
"""The path of every refusal."""
RECONNECT_PATH: Final = "hub.reconnect"
"""Sent before this hub closes the connection as it drains: reconnect (another hub takes it)."""
ROOM_PATH: Final = "room."
"""What the path of a room's delivery begins with (C{room.<name>}: route C{room.#})."""
MAX_WHO: Final = 1000
"""The most members a C{hub.who} reply lists (C{total} says how many there are)."""
MAX_ID: Final = 128
"""The longest request C{id} taken, in characters."""
UNAUTHENTICATED_CLOSE: Final = 4001
"""The WebSocket close code of a member closed for its credentials (missing, bad, expired)."""
FORBIDDEN_CLOSE: Final = 4003
"""The WebSocket close code of a member whose credentials are good but refused (a backend's 403)."""

_ANYWHERE = RoomPatterns(["*"])


class StructuredProtocol(HubProtocol):
    """
    The structured protocol (see the module docstring).  With the hub's
    C{auth} set, a member must send C{hub.auth} within C{auth_timeout};
    anything else first is refused and the member closed, the reason sent
    first.  A member whose token expires may send a fresh one; past its
    expiry plus C{auth_grace} it is closed (see L{Authentication}).

    Hooks for a subclass: L{authenticated}, called with the identity once a
    token is taken; L{handlers}, the operations by path (add to a copy).
    """

    identity: Identity | None = None
    """Who the member is; None until it authenticates (when the hub asks)."""
    session: str | None = None
    """The id of the member's session (None until it has an identity, and
    once the session is over: handed to another connection, or closed by the hub)."""
    _authentication: Authentication | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        hub = self.factory
        if hub.auth is None:
            self.identity = Identity(user=self.client_id, name=f"guest-{self.client_id[:6]}", rooms=_ANYWHERE)
            self.session = hub.sessions.open(self)
            return
        self._authentication = Authentication(hub, self, self.client_id,
                                              getattr(self.transport.getPeer(), "host", None), self.address)
        self._authentication.start()
        if IMessageTransport.providedBy(self.transport) and self.transport.credentials is not None:
            self._authentication.present(self.transport.credentials, ("hub.auth", None))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._authentication is not None:
            self._authentication.stop()
        self._park()  # before the rooms are left, so that they are held
        super().connectionLost(reason)

    def _park(self) -> None:
        if self.session is not None:
            self.factory.sessions.park(self.session, self._state(), self.client_id)
            self.session = None

    def hand_over(self) -> SessionState:
        """Another connection took this member's session (L{SessionOwner}):
        it is told, and closed; the session goes with the other."""
        state = self._state()
        self.session = None
        self._refuse(None, None, "session_taken", "this session was resumed on another connection",
                     counted=True)
        self.loseConnection()
        return state

    def _state(self) -> SessionState:
        assert self.identity is not None  # a member has a session once it has an identity
        return SessionState(self.identity.name, self.factory.places(self), self.identity)

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity is not None else None

    # -- hooks ------------------------------------------------------------------

    def authenticated(self, identity: Identity) -> None:
        """Called once a token is taken (again for a fresh one)."""

    # -- messages in --------------------------------------------------------------

    def messageReceived(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):
            self._refuse(None, None, "bad_message", "a message is one JSON object")
            return
        if not isinstance(message, dict) or not isinstance(message.get("path"), str):
            self._refuse(None, None, "bad_message", 'a message is a JSON object with a "path" string')
            return
        path: str = message["path"]
        request_id = message.get("id")
        if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID):
            self._refuse(path, None, "bad_message", f'"id" is a string of at most {MAX_ID} characters')
            return
        if self.identity is None and path not in ("hub.auth", "hub.resume"):
            assert self._authentication is not None
            self._authentication.refuse_unauthenticated('authenticate first: hub.auth {"token": …}',
                                                        (path, request_id))
            return
        operation = self.handlers.get(path)
        if operation is None:
            self._refuse(path, request_id, "unknown_path", f"no operation {path[:80]!r}: hub.auth, "
                         "hub.resume, hub.join, hub.leave, hub.publish, hub.who")
            return
        data = message.get("data")
        if not isinstance(data, dict):
            self._refuse(path, request_id, "bad_message", '"data" is a JSON object')
            return
        operation(self, path, request_id, data)

    @classmethod
    def relayedPayload(cls, room: str, payload: bytes, offset: int, epoch: str) -> bytes:
        """A delivery another hub made, with this hub's offset and epoch
        (parsed once per hub, not per member)."""
        try:
            delivery = json.loads(payload)
            delivery["data"]["offset"], delivery["data"]["epoch"] = offset, epoch
        except (ValueError, RecursionError, TypeError, KeyError):
            return payload  # not a delivery of this protocol: as it is
        return _encode(delivery)

    @classmethod
    def publication(cls, room: str, sender: str, payload: bytes, data: Any, offset: int,
                    epoch: str) -> bytes:
        """A delivery as from a member whose user and name are C{sender}."""
        return _encode({"path": ROOM_PATH + room, "data": {"room": room, "from": sender, "name": sender,
                                                           "offset": offset, "epoch": epoch, "data": data}})

    # -- what the authentication says (AuthOwner) ----------------------------------

    def auth_taken(self, identity: Identity, context: tuple[str, str | None]) -> None:
        self.identity = identity
        self.presenceChanged()  # a fresh token may name the member otherwise
        if self.session is None:
            self.session = self.factory.sessions.open(self)
        self._reply(*context, {"user": identity.user, "name": identity.name, "session": self.session})
        self.authenticated(identity)

    def auth_refused(self, refused: AuthRefused, context: tuple[str, str | None] | None, closing: bool) -> None:
        path, request_id = context if context is not None else (None, None)
        self._refuse(path, request_id, refused.code, refused.reason, counted=True)
        if closing:
            if self.session is not None:  # its credentials are over, and so is its session
                self.factory.sessions.end(self.session)
                self.session = None
            if IMessageTransport.providedBy(self.transport):
                code = FORBIDDEN_CLOSE if refused.code == "forbidden" else UNAUTHENTICATED_CLOSE
                self.transport.closeWith(code, refused.reason[:120])
            self.loseConnection()

    # -- operations ---------------------------------------------------------------

    def _auth(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        if self._authentication is None:  # an open hub: every member is a guest already
            assert self.identity is not None
            self._reply(path, request_id, {"user": self.identity.user, "name": self.identity.name,
                                           "session": self.session})
            return
        self._authentication.present(data.get("token"), (path, request_id))

    def _join(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        room = self._room(path, request_id, data)
        if room is None:
            return
        since = data.get("since")
        if since is not None and not (
                isinstance(since, dict) and isinstance(since.get("epoch"), str)
                and type(since.get("offset")) is int and since["offset"] >= 0):
            self._refuse(path, request_id, "bad_request",
                         '"since" is {"epoch": a string, "offset": a whole number}')
            return
        hub = self.factory
        why_not: str | None = None
        try:
            if since is not None and room not in self.rooms:
                why_not = hub.rejoin(self.client_id, room, since["epoch"], since["offset"])
            else:
                hub.join(self.client_id, room)
        except RoomLimitReached as error:
            self._refuse(path, request_id, "room_limit", str(error))
            return

        def joined() -> None:
            reply: dict[str, Any] = {"room": room, "members": hub.room_size(room), "epoch": hub.room_epoch(room),
                                     "offset": hub.room_sequence(room), "session": self.session}
            if since is not None:
                reply.update(self._joined(room, why_not))
            self._reply(path, request_id, reply)

        self.whenFollowing(room, joined)

    def _resume_session(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        session, offsets = data.get("session"), data.get("offsets", {})
        if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_ID:
            self._refuse(path, request_id, "bad_request", f'"session" is a string of 1 to {MAX_SESSION_ID} characters')
            return
        if not isinstance(offsets, dict) or len(offsets) > self.factory.max_rooms_per_client or not all(
                type(offset) is int and offset >= 0 for offset in offsets.values()):
            self._refuse(path, request_id, "bad_request",
                         '"offsets" is {room: the offset of the last message seen in it}, a whole number each')
            return
        if self.rooms:
            self._refuse(path, request_id, "bad_request", "resume before joining any room")
            return
        hub = self.factory
        user = self.user if self._authentication is not None else None
        self.waitBeforeReading()  # what it asks next must find it resumed, and come after the reply

        def taken(state: SessionState | StoredSession | None) -> None:
            if self.state == OPEN:
                self._resumed(path, request_id, offsets, state).addCallback(lambda _: self.readAfterWait())
            elif state is not None:  # gone meanwhile: parked again, for the member to try again
                hub.sessions.give_back(session, state)

        hub.sessions.take_anywhere(session, self, user, self.address).addCallback(taken)  # at once without a store

    def _resumed(self, path: str, request_id: str | None, offsets: dict[str, int],
                 taken: SessionState | StoredSession | None) -> Deferred[None]:
        """A session taken (L{_resume_session}): this hub's own, or (another
        hub's) a stored one, whose rooms are recovered from the relay;
        fires once the member has had the reply."""
        if taken is None:
            self._refuse(path, request_id, "unknown_session",
                         "no such session: it expired, was resumed already, or never was", counted=True)
            return succeed(None)
        hub = self.factory
        state = taken.state if isinstance(taken, StoredSession) else taken
        if self.session is None:
            self.session = hub.sessions.open(self)
        assert state.identity is not None  # every session of this protocol has one
        if self._authentication is None:  # an open hub: the guest it was
            self.identity = state.identity
        elif self.identity is None:  # the session is its credentials
            self.identity = state.identity
            self._authentication.resumed(state.identity)
        identity = self.identity  # a fresh token's, if it gave one: its rooms are checked
        refused = [room for room in state.rooms if refuses_room(hub, identity, room)]
        back = [room for room in state.rooms if room not in refused]
        refused += back[hub.max_rooms_per_client:]  # another hub's member may have been in more
        back = back[:hub.max_rooms_per_client]
        rooms: dict[str, dict[str, Any]] = {}

        def reply(_: object = None) -> None:
            self._reply(path, request_id, {"session": self.session, "user": identity.user, "name": identity.name,
                                           "rooms": {room: rooms[room] for room in back}, "refused": refused})

        if not isinstance(taken, StoredSession):
            for room in back:
                epoch, sent = state.rooms[room]
                rooms[room] = self._joined(room, hub.rejoin(self.client_id, room, epoch, offsets.get(room, sent)))
            hub.sessions.release(state)
            reply()
            return succeed(None)

        def recovered(why_not: str | None, room: str) -> None:
            rooms[room] = self._joined(room, why_not)

        return gatherResults([hub.recover(self.client_id, room, taken, offsets.get(room)).addCallback(recovered, room)
                              for room in back]).addCallback(reply)

    def _joined(self, room: str, why_not: str | None) -> dict[str, Any]:
        """Where C{room} stands for a member back in it, and whether it got all it missed."""
        hub = self.factory
        joined: dict[str, Any] = {"epoch": hub.room_epoch(room), "offset": hub.room_sequence(room),
                                  "members": hub.room_size(room), "recovered": why_not is None}
        if why_not is not None:
            joined["reason"] = why_not
        return joined

    def _leave(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        room = self._room(path, request_id, data, permission=False)
        if room is None:
            return
        if room not in self.rooms:
            self._refuse(path, request_id, "not_in_room", f"not in room {room[:80]!r}")
            return
        self.leave(room)
        self._reply(path, request_id, {"room": room})

    def _publish(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        room = self._room(path, request_id, data)
        if room is None:
            return
        if room not in self.rooms:
            self._refuse(path, request_id, "not_in_room", f"join room {room[:80]!r} to publish to it")
            return
        assert self.identity is not None
        hub = self.factory
        offset = hub.room_sequence(room) + 1
        delivery = {"path": ROOM_PATH + room,
                    "data": {"room": room, "from": self.identity.user, "name": self.identity.name,
                             "offset": offset, "epoch": hub.room_epoch(room), "data": data.get("data")}}
        self.broadcastMessage(_encode(delivery), room=room)
        self._reply(path, request_id, {"room": room, "offset": offset})

    def _who(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        room = self._room(path, request_id, data)
        if room is None:
            return
        hub = self.factory
        members = hub.member_presence(room, MAX_WHO)
        relay = hub.relay
        if relay is None:
            self._said_who(path, request_id, room, members, hub.room_size(room))
        else:  # joined with other hubs: their members too (as of their last heartbeat)
            relay.cluster_presence(room).addCallback(
                lambda theirs: self._said_who(path, request_id, room, members + theirs,
                                              relay.cluster_rooms().get(room, 0)))

    def _said_who(self, path: str, request_id: str | None, room: str, members: list[object], total: int) -> None:
        if self.state != OPEN:
            return
        # What another node wrote that is no member of this protocol's is skipped.
        listed = [member for member in members if isinstance(member, dict) and
                  isinstance(member.get("user"), str) and isinstance(member.get("name"), str)]
        self._reply(path, request_id, {"room": room, "members": listed[:MAX_WHO], "total": total})

    @property
    def presence(self) -> object:
        """The member's user and name, for C{hub.who} on every hub joined with this one."""
        identity = self.identity
        return None if identity is None else {"user": identity.user, "name": identity.name}

    handlers: dict[str, Callable[[StructuredProtocol, str, str | None, dict[str, Any]], None]] = {
        "hub.auth": _auth,
        "hub.resume": _resume_session,
        "hub.join": _join,
        "hub.leave": _leave,
        "hub.publish": _publish,
        "hub.who": _who,
    }
    """The operations, by path: each called with C{(path, id, data)}."""

    # -- inside -------------------------------------------------------------------


    def _room(self, path: str, request_id: str | None, data: dict[str, Any], permission: bool = True) -> str | None:
        """The request's room, if it names one this member may enter; else None, refused."""
        try:
            room = check_room(data.get("room"))
        except InvalidRoomName as error:
            self._refuse(path, request_id, "bad_room", str(error))
            return None
        assert self.identity is not None
        if permission and refuses_room(self.factory, self.identity, room):
            self._refuse(path, request_id, "forbidden", f"room {room[:80]!r} is not among yours", counted=True)
            return None
        return room

    def goingAway(self) -> None:
        """C{{"path": "hub.reconnect"}} before the close: this hub is draining,
        another will take the client.  Its session is parked first, as it
        stands now (with where it stands in each room's stream: what this
        hub reads from now on it no longer sends it, and the hub it resumes
        on gives it)."""
        self._park()
        self.sendMessage(_encode({"path": RECONNECT_PATH, "data": {"reason": "this server is going away"}}))
        super().goingAway()

    def _reply(self, path: str, request_id: str | None, data: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"path": path, "data": data}
        if request_id is not None:
            reply["id"] = request_id
        self.sendMessage(_encode(reply))

    def _refuse(self, path: str | None, request_id: str | None, code: str, reason: str,
                counted: bool = False) -> None:
        if not counted:
            self.factory.counters.add("bad_requests")
        refusal: dict[str, Any] = {"path": ERROR_PATH, "data": {"code": code, "reason": reason, "path": path}}
        if request_id is not None:
            refusal["id"] = request_id
        self.sendMessage(_encode(refusal))


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
