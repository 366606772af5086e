"""
L{HubSession}: a L{WebSocketHandler}'s place in the rooms of a tcphub in
C{--mode hub}, kept across reconnects.  It joins rooms for its user, notes
the hub's session id and the epoch and offset of every delivery it sees,
and each time the handler connects again it resumes the session
(C{hub.resume}, with the offsets it saw): the same user and name, the same
rooms, and what was missed replayed in order before any live message, with
whether that was all (C{recovered}).  When the hub no longer has the
session (past its C{--resume-window}, restarted, another node), it
authenticates again (with the token it was given) and joins each room with
C{since}, which recovers the messages as far as the room's history goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcphub.errors import RequestRefused

if TYPE_CHECKING:
    from tcphub.ws.envelope import Envelope
    from tcphub.ws.handler import WebSocketHandler
    from tcphub.ws.status import ConnectionContext

__all__ = ["HubSession"]

ROOM_PREFIX = "room."


class HubSession:
    """
    Rooms of a hub, joined through C{handler} (made with
    C{error_path="hub.error"}, so that a refusal errbacks its request).

    C{token}, if given, is sent as C{hub.auth} when the connection opens
    again and the session cannot be resumed.  C{rejoined(room, reply)} is
    called for each room after a reconnect, with the room's part of the
    C{hub.resume} reply or its C{hub.join} reply: C{reply["recovered"]} is
    False (with a C{reason}) if the member missed messages the hub could not
    give, and C{reason} is C{"refused"} for a room its identity may no
    longer enter (it is not joined again).
    """

    _log = Logger()

    def __init__(self, handler: WebSocketHandler, token: str | None = None,
                 rejoined: Callable[[str, dict[str, Any]], object] | None = None) -> None:
        self._handler = handler
        self._token = token
        self._rejoined = rejoined
        self._places: dict[str, tuple[str | None, int]] = {}
        """Each room joined: the epoch and offset of the last message seen in it."""
        self._session: str | None = None
        """The hub's id of this member's session, from its last reply that had one."""
        self._opened = False
        handler.on("open", self._open)
        handler.on("message", self._seen)

    @property
    def rooms(self) -> dict[str, tuple[str | None, int]]:
        """Each room joined, with the epoch and offset of the last message seen in it."""
        return dict(self._places)

    def join(self, room: str) -> Deferred[dict[str, Any]]:
        """Join C{room}; fires with the hub's reply (errbacks with L{RequestRefused})."""
        joined: Deferred[dict[str, Any]] = self._handler.request("hub.join", {"room": room})
        return joined.addCallback(self._joined, room)

    def leave(self, room: str) -> Deferred[Any]:
        """Leave C{room}; it is not joined again after a reconnect."""
        self._places.pop(room, None)
        return self._handler.request("hub.leave", {"room": room})

    def _joined(self, reply: dict[str, Any], room: str) -> dict[str, Any]:
        self._places[room] = (reply.get("epoch"), reply.get("offset", 0))
        self._note(reply)
        return reply

    def _note(self, reply: dict[str, Any]) -> None:
        if isinstance(reply.get("session"), str):
            self._session = reply["session"]

    def _seen(self, envelope: Envelope, context: ConnectionContext) -> None:
        if not envelope.path.startswith(ROOM_PREFIX) or not isinstance(envelope.data, dict):
            return
        room, offset = envelope.data.get("room"), envelope.data.get("offset")
        if room in self._places and type(offset) is int:
            self._places[room] = (envelope.data.get("epoch", self._places[room][0]), offset)

    def _open(self, context: ConnectionContext) -> None:
        if not self._opened:  # the first connection: the application joins
            self._opened = True
            return
        if self._session is None:
            self._rejoin()
            return
        offsets = {room: offset for room, (_, offset) in self._places.items()}
        self._handler.request("hub.resume", {"session": self._session, "offsets": offsets}).addCallbacks(
            self._resumed, self._not_resumed)

    def _resumed(self, reply: dict[str, Any]) -> None:
        self._note(reply)
        for room, place in reply.get("rooms", {}).items():
            if room in self._places:
                self._back({"room": room, **place}, room)
        for room in reply.get("refused", ()):
            if self._places.pop(room, None) is not None and self._rejoined is not None:
                self._rejoined(room, {"room": room, "recovered": False, "reason": "refused"})

    def _not_resumed(self, failure: Failure) -> None:
        if isinstance(failure.value, RequestRefused) and failure.value.code == "unknown_session":
            self._session = None
            self._rejoin()
            return
        self._failed(failure, "hub.resume")

    def _rejoin(self) -> None:
        """Authenticate again, and join each room with where it was."""
        if self._token is not None:
            self._handler.request("hub.auth", {"token": self._token}).addErrback(self._failed, "hub.auth")
        for room, (epoch, offset) in list(self._places.items()):
            data: dict[str, Any] = {"room": room}
            if epoch is not None:
                data["since"] = {"epoch": epoch, "offset": offset}
            self._handler.request("hub.join", data).addCallbacks(
                self._back, self._failed, callbackArgs=(room,), errbackArgs=("hub.join",))

    def _back(self, reply: dict[str, Any], room: str) -> None:
        self._joined(reply, room)
        if self._rejoined is not None:
            self._rejoined(room, reply)

    def _failed(self, failure: Failure, path: str) -> None:
        # The connection dropped again (the next open tries again), or the hub refused.
        self._log.warn("{path} after a reconnect failed: {error}", path=path, error=failure.value)
