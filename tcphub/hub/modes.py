"""
Ready-made hub behaviours, each a small L{HubProtocol} subclass: what the
C{--mode} option of the plugin picks, and examples of the C{messageReceived} hook.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from tcphub.errors import AuthRefused, TcpHubError
from tcphub.hub.authflow import Authentication, refuses_room
from tcphub.hub.identity import Identity
from tcphub.hub.messages import IMessageTransport
from tcphub.hub.metrics import Drop
from tcphub.hub.protocol import DRAINING, OPEN, HubProtocol
from tcphub.hub.rooms import Kept
from tcphub.hub.sessions import SessionState, StoredSession
from tcphub.hub.structured import StructuredProtocol


class EchoProtocol(HubProtocol):
    """Sends every message back to its sender."""

    __slots__ = ()

    def messageReceived(self, payload: bytes) -> None:
        self.sendMessage(payload)


class BroadcastProtocol(HubProtocol):
    """A chat room: every message goes to every other client."""

    __slots__ = ()

    def messageReceived(self, payload: bytes) -> None:
        self.broadcastMessage(payload)




_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """C{text} with every C0 and C1 control character but tab shown as
    C{\\xNN}: a line from one C{nc} user cannot move another's cursor,
    clear their screen or retitle their terminal."""
    return _CONTROLS.sub(lambda control: f"\\x{ord(control.group()):02x}", text)


class _Nicks:
    """The nicks in use on one hub, compared without case: one owner (the
    chat's clients reach it through L{_nicks_of}), a name taken at most once."""

    def __init__(self) -> None:
        self._owners: dict[str, object] = {}

    def take(self, name: str, owner: object) -> bool:
        """Give C{name} to C{owner} (a connection, or a user: equal owners
        share it); False if another has it."""
        return bool(self._owners.setdefault(name.casefold(), owner) == owner)

    def release(self, name: str, owner: object) -> None:
        key = name.casefold()
        if self._owners.get(key) == owner:
            del self._owners[key]


_NICKS: WeakKeyDictionary[Factory, _Nicks] = WeakKeyDictionary()


def _nicks_of(hub: Factory) -> _Nicks:
    """The nick table of C{hub}'s chat (made when its first client comes)."""
    nicks = _NICKS.get(hub)
    if nicks is None:
        nicks = _NICKS[hub] = _Nicks()
    return nicks


_WHY = {
    Drop.TIMED_OUT: "idle",
    Drop.SLOW_CONSUMER: "not reading",
    Drop.PROTOCOL_ERROR: "line too long or malformed",
    Drop.FRAME_TIMEOUT: "unfinished line",
}
"""What the chat says of each way the hub drops a member."""

LOBBY = "lobby"
_HELP = (b"* commands: /nick NAME, /join ROOM, /leave [ROOM], /who (the current room), /rooms, /help, /quit; "
         b"any other line goes to the current room")


class ChatProtocol(HubProtocol):
    """
    A chat people can use with C{nc}: each client starts in #lobby as
    C{guest-XXXXXX}; a line goes to the others in its current room as
    C{#room <nick> text}; commands: C{/nick NAME}, C{/join ROOM} (also makes
    it the current room; the others are kept), C{/leave [ROOM]}, C{/who}, C{/rooms}.

    With the hub's C{auth} set, a client must first send C{/auth TOKEN}
    (see L{Authentication}); its nick is then its identity's name, and it
    joins and sees only the rooms its identity allows.

    A WebSocket member (the chat page) is told its session, C{* session S};
    connected again with C{?resume=S} within the hub's C{resume_window}, it
    is welcomed back (C{* welcome back, NICK}) with its nick and rooms and
    every line it missed, or told what could not be given back.
    """

    __slots__ = ("nick", "nick_shared", "room", "identity", "session", "_authentication")

    nick: str
    room: str | None
    """The room a plain line goes to (the last one joined)."""
    identity: Identity | None
    """Who the client authenticated as (None on an open hub, or before /auth)."""
    nick_shared: bool
    """Whether the nick is claimed on every hub this one is joined with (a /nick under a relay)."""
    session: str | None
    """The id of a WebSocket member's session (None for a C{nc} user, who
    cannot resume, and until a member of a hub that asks for tokens has one)."""

    def connectionMade(self) -> None:
        self.identity = None  # before the hub's client table reads the user
        self._authentication: Authentication | None = None
        self.session = None
        super().connectionMade()
        self.nick = f"guest-{self.client_id[:6]}"
        self.nick_shared = False
        self.room = None
        hub = self.factory
        if hub.auth is not None:
            self._authentication = Authentication(hub, self, self.client_id,
                                                  getattr(self.transport.getPeer(), "host", None), self.address)
            self._authentication.start()
        asked = self.transport.resume if IMessageTransport.providedBy(self.transport) else None
        if asked is None:
            self._welcome()
        else:  # the session may be another hub's, asked of Redis: what the page says meanwhile waits
            self.waitBeforeReading()
            hub.sessions.take_anywhere(asked, self, None, self.address).addCallback(self._taken, asked)

    def _welcome(self) -> None:
        if self._authentication is not None:
            self._say("* welcome: this hub asks who you are: /auth TOKEN")
            return
        self._take_guest_nick()
        self._say(f"* welcome, {self.nick}")
        self._join(LOBBY, then=self._welcomed)

    def _welcomed(self) -> None:
        self.sendMessage(_HELP)
        self._open_session()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._authentication is not None:
            self._authentication.stop()
        if self.state in (OPEN, DRAINING) or self.dropped_for is not None:  # a dropped client is GONE already
            why = "" if self.dropped_for is None else f" ({_WHY[self.dropped_for]})"
            for room in self.rooms:
                self._announce(room, f"* {self.nick} left #{room}{why}")
            _nicks_of(self.factory).release(self.nick, self._nick_owner)
            if self.factory.relay is not None and self.nick_shared:
                self.factory.relay.release_name(self.nick, self.client_id)
        self._park()  # before the rooms are left, so that they are held
        super().connectionLost(reason)

    def _park(self) -> None:
        if self.session is not None:
            self.factory.sessions.park(self.session, self._state(), self.client_id)
            self.session = None

    def hand_over(self) -> SessionState:
        """The page resumed this session on another connection (the hub had
        not seen this one go, half-open): leave the rooms and let go of the
        nick without a word (the member is still there, on the other), and
        drop this one (nothing of it is announced as it goes)."""
        state = self._state()
        for room in self.rooms:
            self.leave(room)
        _nicks_of(self.factory).release(self.nick, self._nick_owner)
        if self.factory.relay is not None and self.nick_shared:
            self.factory.relay.release_name(self.nick, self.client_id)
        self.session = None
        self.sendNow(b"* this session was resumed on another connection")
        self.abortConnection()
        return state

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity is not None else None

    @property
    def presence(self) -> object:
        """The nick, for C{/who} on every hub joined with this one."""
        return self.nick

    @property
    def _nick_owner(self) -> object:
        # With identities a name is the user's (two windows of one user share it).
        return self.identity.user if self.identity is not None else self

    # -- what the authentication says (AuthOwner) --------------------------------

    def auth_taken(self, identity: Identity, context: object) -> None:
        if self.identity is not None:
            self.identity = identity
            self._say("* your token is renewed")
            return
        self._take_identity(identity)
        self._say(f"* welcome, {self.nick}")
        if identity.may_enter(LOBBY):
            self._join(LOBBY, then=self._welcomed)
        else:
            self._say("* you are in no room: /join ROOM")
            self._welcomed()

    def auth_refused(self, refused: AuthRefused, context: object, closing: bool) -> None:
        self._say(f"* {refused.code}: {refused.reason}")
        if closing:
            if self.session is not None:  # its credentials are over, and so is its session
                self.factory.sessions.end(self.session)
                self.session = None
            self.loseConnection()

    # -- sessions -------------------------------------------------------------

    def _open_session(self) -> None:
        """A WebSocket member (the page) gets a session, and is told its id."""
        if IMessageTransport.providedBy(self.transport):
            self.session = self.factory.sessions.open(self)
            self._say(f"* session {self.session}")

    def _state(self) -> SessionState:
        return SessionState(self.nick, self.factory.places(self), self.identity)

    def _taken(self, taken: SessionState | StoredSession | None, session_id: str) -> None:
        """What the store said of the session the page asked for."""
        if self.state != OPEN:
            if taken is not None:  # gone meanwhile: parked again, for the page to try again
                self.factory.sessions.give_back(session_id, taken)
            return
        self._resumed(taken).addCallback(lambda _: self.readAfterWait())

    def _resumed(self, taken: SessionState | StoredSession | None) -> Deferred[None]:
        """Take back the session the page asked for (the handshake's
        C{?resume=}): the nick, the rooms (the current one last), and the
        lines missed in each (from the rooms' streams, if it was another
        hub's); if there is no such session, the member is told, and
        welcomed as a new one.  Fires once it is all said."""
        hub = self.factory
        if taken is None:
            self._say("* could not resume your session (it expired, or the server restarted): "
                      "what was said meanwhile is not shown")
            self._welcome()
            return succeed(None)
        state = taken.state if isinstance(taken, StoredSession) else taken
        if state.identity is not None:  # its session is its credentials
            assert self._authentication is not None
            self._authentication.resumed(state.identity)
            self._take_identity(state.identity)
        else:
            self._take_guest_nick()
            if state.name != self.nick:
                self._nick(state.name)
        self._say(f"* welcome back, {self.nick}")
        whys: dict[str, str | None] = {}

        def entered(room: str) -> None:
            self._entered(room)
            if whys[room] is not None:
                self._say(f"* #{room}: some of what was said while you were away is lost ({whys[room]})")

        def done(_: object = None) -> None:
            if self.room is None:
                self._say("* you are in no room: /join ROOM")
            self._open_session()

        if not isinstance(taken, StoredSession):
            for room, (epoch, sent) in state.rooms.items():  # joined under this same identity: allowed
                whys[room] = hub.rejoin(self.client_id, room, epoch, sent)
                entered(room)
            hub.sessions.release(state)
            done()
            return succeed(None)

        def all_back(_: object) -> None:  # another hub's: the rooms' streams gave what it missed
            for room in state.rooms:
                if room in self.rooms:
                    entered(room)
            done()

        def recovered(why_not: str | None, room: str) -> None:
            whys[room] = why_not

        return gatherResults([hub.recover(self.client_id, room, taken).addCallback(recovered, room)
                              for room in state.rooms]).addCallback(all_back)

    @classmethod
    def publication(cls, room: str, sender: str, payload: bytes, data: Any, offset: int,
                    epoch: str) -> bytes:
        """A line as from a member named C{sender}: C{#room <sender> text}."""
        text = printable(payload.decode("utf-8", "backslashreplace"))
        return f"#{printable(room)} <{printable(sender)}> {text}".encode("utf-8")

    def replayFrame(self, room: str, kept: Kept) -> bytes:
        """A line of the room's history with the time it was said: C{[14:02 UTC] #room <nick> text}."""
        framing = self.factory.framing
        when = time.strftime("%H:%M", time.gmtime(kept.at))
        return framing.encode(f"[{when} UTC] ".encode("ascii") + framing.payload(kept.frame))

    def goingAway(self) -> None:
        """This hub drains: say so, then close (the page reconnects by itself,
        and resumes its session, parked now as it stands, on another hub)."""
        self._park()
        self._say("* this server is going away: reconnect to carry on")
        super().goingAway()

    def dropping(self, reason: Drop, error: TcpHubError) -> None:
        """Tell the client why, if its socket takes the line at once."""
        self.sendNow(printable(f"* closing: {_WHY[reason]}: {error}").encode("utf-8"))

    # -- messages in ----------------------------------------------------------

    def messageReceived(self, payload: bytes) -> None:
        authentication = self._authentication
        if authentication is not None and (self.identity is None or payload.startswith(b"/auth ")):
            command, _, token = payload.decode("utf-8", "replace").partition(" ")
            if command == "/auth":
                authentication.present(token.strip(), None)
            else:
                authentication.refuse_unauthenticated("authenticate first: /auth TOKEN", None)
            return
        if payload.startswith(b"/"):
            command, _, argument = payload.decode("utf-8", "replace").partition(" ")
            handler = self._COMMANDS.get(command)
            if handler is None:
                self.sendMessage(b"* unknown command " + command.encode() + b"; " + _HELP[2:])
            else:
                handler(self, argument.strip())
        elif self.room is None:
            self._say("* you are in no room: /join ROOM")
        else:
            text = printable(payload.decode("utf-8", "backslashreplace"))
            self.broadcastMessage(f"#{printable(self.room)} <{self.nick}> {text}".encode("utf-8"), room=self.room)

    # -- commands -------------------------------------------------------------

    def _nick(self, name: str) -> None:
        if self.identity is not None:
            self._say("* your nick is your token's name")
            return
        if not name or len(name) > 32 or not name.isprintable() or " " in name:
            self._say("* a nick is 1 to 32 printable characters, without spaces")
            return
        nicks = _nicks_of(self.factory)
        if not nicks.take(name, self):
            self._say(f"* {name} is taken: choose another nick")
            return
        relay = self.factory.relay
        if relay is None:
            self._renamed(name)
            return
        # Joined with other hubs: the name must be free on every one of them.
        relay.claim_name(name, self.client_id).addCallback(self._claimed, name)

    def _claimed(self, free: bool, name: str) -> None:
        relay = self.factory.relay
        assert relay is not None
        mine = name.casefold() == self.nick.casefold()
        if self.state not in (OPEN, DRAINING):  # gone while Redis answered
            if not mine:
                _nicks_of(self.factory).release(name, self)
            if free:
                relay.release_name(name, self.client_id)
            return
        if not free:
            if not mine:
                _nicks_of(self.factory).release(name, self)
            self._say(f"* {name} is taken: choose another nick")
            return
        self._renamed(name)

    def _renamed(self, name: str) -> None:
        old, self.nick = self.nick, name
        relay = self.factory.relay
        if old.casefold() != name.casefold():
            _nicks_of(self.factory).release(old, self)
            if relay is not None and self.nick_shared:
                relay.release_name(old, self.client_id)
        self.nick_shared = relay is not None
        self.presenceChanged()
        self._say(f"* you are now {name}")
        for room in self.rooms:
            self._announce(room, f"* {old} is now {name}")

    def _join_command(self, room: str) -> None:
        room = room.removeprefix("#")  # "/join #general" names #general
        if self.identity is not None and refuses_room(self.factory, self.identity, room):
            self._say(f"* cannot join #{room}: it is not among your rooms")
            return
        try:
            self._join(room)
        except TcpHubError as error:  # InvalidRoomName, RoomLimitReached
            self._say(f"* cannot join: {error}")

    def _leave(self, room: str) -> None:
        room = room.removeprefix("#") or self.room or ""
        if room not in self.rooms:
            self._say(f"* you are not in #{room}")
            return
        self.leave(room)
        self._announce(room, f"* {self.nick} left #{room}")
        rooms = self.rooms
        self.room = rooms[-1] if rooms else None
        self._say(f"* you left #{room}" + (f"; now in #{self.room}" if self.room else "; you are in no room"))

    def _who(self, _: str) -> None:
        room = self.room
        if room is None:
            self._say("* you are in no room: /join ROOM")
            return
        nicks = self.factory.member_presence(room)
        relay = self.factory.relay
        if relay is None:
            self._said_who(nicks, room)
        else:  # joined with other hubs: their members too (as of their last heartbeat)
            relay.cluster_presence(room).addCallback(lambda theirs: self._said_who(nicks + theirs, room))

    def _said_who(self, nicks: list[object], room: str) -> None:
        if self.state == OPEN:  # what another node wrote that is no nick is skipped
            self._say(f"* in #{room}: {', '.join(nick for nick in nicks if isinstance(nick, str))}")

    def _rooms(self, _: str) -> None:
        relay = self.factory.relay  # joined with other hubs: their rooms too
        rooms = sorted((relay.cluster_rooms() if relay is not None else self.factory.rooms()).items())
        if self.identity is not None:  # the others' rooms are not for it to know
            rooms = [(room, count) for room, count in rooms if self.identity.may_enter(room)]
        self._say("* rooms: " + ", ".join(f"#{room} ({count})" for room, count in rooms))

    def _auth(self, _: str) -> None:
        self._say("* this hub asks for no token")

    def _help(self, _: str) -> None:
        self.sendMessage(_HELP)

    def _quit(self, _: str) -> None:
        self._say("* bye")
        self.loseConnection()

    _COMMANDS = {"/nick": _nick, "/join": _join_command, "/leave": _leave, "/who": _who, "/rooms": _rooms,
                 "/auth": _auth, "/help": _help, "/quit": _quit}

    # -- inside ---------------------------------------------------------------

    # A guest's or an identity's nick is taken before the member is in any
    # room: no room's list shows it yet (no presenceChanged).

    def _take_guest_nick(self) -> None:
        nicks = _nicks_of(self.factory)
        if not nicks.take(self.nick, self):  # a guest-… nick /nick took first
            self.nick = f"guest-{self.client_id}"
            nicks.take(self.nick, self)

    def _take_identity(self, identity: Identity) -> None:
        self.identity = identity
        nicks = _nicks_of(self.factory)
        self.nick = identity.name
        if not nicks.take(self.nick, identity.user):  # another user's display name: show who
            self.nick = f"{identity.name}~{identity.user}"
            nicks.take(self.nick, identity.user)

    def _join(self, room: str, then: Callable[[], None] | None = None) -> None:
        """Join C{room} and say so once the hub reads its messages from the
        other hubs (L{whenFollowing}), then C{then}."""
        already = room in self.rooms
        self.join(room)

        def entered() -> None:
            self._entered(room, already)
            if then is not None:
                then()

        self.whenFollowing(room, entered)

    def _entered(self, room: str, already: bool = False) -> None:
        """C{room} is the current one now; the others are told, unless it was one's already."""
        self.room = room
        self._say(f"* you are in #{room}")
        if not already:  # back to a room one is in: it becomes the current one, nobody is told
            self._announce(room, f"* {self.nick} joined #{room}")

    def _say(self, text: str) -> None:
        self.sendMessage(printable(text).encode("utf-8"))

    def _announce(self, room: str, text: str) -> None:
        self.announce(printable(text).encode("utf-8"), room)


MODES: dict[str, type[HubProtocol]] = {
    "echo": EchoProtocol,
    "broadcast": BroadcastProtocol,
    # The line chat with nicks, rooms and commands, for nc.
    "chat": ChatProtocol,
    # Messages go only to the event subscribers, e.g. the bridge's upstream.
    "none": HubProtocol,
    # JSON envelopes for programs: auth, rooms, publish (tcphub.hub.structured).
    "hub": StructuredProtocol,
}
