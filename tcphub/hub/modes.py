"""
Ready-made hub behaviours, each a small L{HubProtocol} subclass: what the
C{--mode} option of the plugin picks, and examples of the C{messageReceived} hook.
"""

from __future__ import annotations

import re
from weakref import WeakKeyDictionary

from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from tcphub.errors import TcpHubError
from tcphub.hub.protocol import DRAINING, OPEN, HubProtocol
from tcphub.hub.structured import StructuredProtocol


class EchoProtocol(HubProtocol):
    """Sends every message back to its sender."""

    def messageReceived(self, payload: bytes) -> None:
        self.sendMessage(payload)


class BroadcastProtocol(HubProtocol):
    """A chat room: every message goes to every other client.  A client that
    ends its input (C{shutdown(SHUT_WR)}) stays a listener until it closes or
    times out."""

    def messageReceived(self, payload: bytes) -> None:
        self.broadcastMessage(payload)

    def inputEnded(self) -> None:
        """Stay a receiver."""




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
        """Give C{name} to C{owner}; False if another has it."""
        key = name.casefold()
        if self._owners.setdefault(key, owner) is not owner:
            return False
        return True

    def release(self, name: str, owner: object) -> None:
        key = name.casefold()
        if self._owners.get(key) is owner:
            del self._owners[key]


_NICKS: WeakKeyDictionary[Factory, _Nicks] = WeakKeyDictionary()


def _nicks_of(hub: Factory) -> _Nicks:
    """The nick table of C{hub}'s chat (made when its first client comes)."""
    nicks = _NICKS.get(hub)
    if nicks is None:
        nicks = _NICKS[hub] = _Nicks()
    return nicks


LOBBY = "lobby"
_HELP = (b"* commands: /nick NAME, /join ROOM, /leave [ROOM], /who (the current room), /rooms; "
         b"any other line goes to the current room")


class ChatProtocol(HubProtocol):
    """
    A chat people can use with C{nc}: each client starts in #lobby as
    C{guest-XXXXXX}; a line goes to the others in its current room as
    C{#room <nick> text}; commands: C{/nick NAME}, C{/join ROOM} (also makes
    it the current room; the others are kept), C{/leave [ROOM]}, C{/who}, C{/rooms}.
    """

    __slots__ = ("nick", "room")

    nick: str
    room: str | None
    """The room a plain line goes to (the last one joined)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.nick = f"guest-{self.client_id[:6]}"
        self.room = None
        nicks = _nicks_of(self.factory)
        if not nicks.take(self.nick, self):  # a guest-… nick /nick took first
            self.nick = f"guest-{self.client_id}"
            nicks.take(self.nick, self)
        self._say(f"* welcome, {self.nick}")
        self._join(LOBBY)
        self.sendMessage(_HELP)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state in (OPEN, DRAINING):
            for room in self.rooms:
                self._announce(room, f"* {self.nick} left #{room}")
            _nicks_of(self.factory).release(self.nick, self)
        super().connectionLost(reason)

    def messageReceived(self, payload: bytes) -> None:
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
        if not name or len(name) > 32 or not name.isprintable() or " " in name:
            self._say("* a nick is 1 to 32 printable characters, without spaces")
            return
        nicks = _nicks_of(self.factory)
        if not nicks.take(name, self):
            self._say(f"* {name} is taken: choose another nick")
            return
        old, self.nick = self.nick, name
        if old.casefold() != name.casefold():
            nicks.release(old, self)
        self._say(f"* you are now {name}")
        for room in self.rooms:
            self._announce(room, f"* {old} is now {name}")

    def _join_command(self, room: str) -> None:
        try:
            self._join(room)
        except TcpHubError as error:  # InvalidRoomName, RoomLimitReached
            self._say(f"* cannot join: {error}")

    def _leave(self, room: str) -> None:
        room = room or self.room or ""
        if room not in self.rooms:
            self._say(f"* you are not in #{room}")
            return
        self.leave(room)
        self._announce(room, f"* {self.nick} left #{room}")
        rooms = self.rooms
        self.room = rooms[-1] if rooms else None
        self._say(f"* you left #{room}" + (f"; now in #{self.room}" if self.room else "; you are in no room"))

    def _who(self, _: str) -> None:
        if self.room is None:
            self._say("* you are in no room: /join ROOM")
            return
        hub = self.factory
        nicks = [getattr(hub.protocol_for(info.id), "nick", info.id) for info in hub.members(self.room)]
        self._say(f"* in #{self.room}: {', '.join(nicks)}")

    def _rooms(self, _: str) -> None:
        rooms = sorted(self.factory.rooms().items())
        self._say("* rooms: " + ", ".join(f"#{room} ({count})" for room, count in rooms))

    _COMMANDS = {"/nick": _nick, "/join": _join_command, "/leave": _leave, "/who": _who, "/rooms": _rooms}

    # -- inside ---------------------------------------------------------------

    def _join(self, room: str) -> None:
        self.join(room)
        self.room = room
        self._say(f"* you are in #{room}")
        self._announce(room, f"* {self.nick} joined #{room}")

    def _say(self, text: str) -> None:
        self.sendMessage(printable(text).encode("utf-8"))

    def _announce(self, room: str, text: str) -> None:
        self.broadcastMessage(printable(text).encode("utf-8"), room=room)


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
