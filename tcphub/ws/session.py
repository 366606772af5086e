"""
L{HubSession}: a L{WebSocketHandler}'s place in the rooms of a tcphub in
C{--mode hub}, kept across reconnects.  It joins rooms for its user, notes
the epoch and offset of every delivery it sees, and each time the handler
connects again it authenticates again (with the token it was given) and
joins each room with C{since}: the hub replays what was missed, in order,
before any live message, and says whether that was all (C{recovered}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

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

    C{token}, if given, is sent as C{hub.auth} each time the connection
    opens again.  C{rejoined(room, reply)} is called with each room's
    C{hub.join} reply after a reconnect: C{reply["recovered"]} is False
    (with a C{reason}) if the member missed messages the hub could not give.
    """

    _log = Logger()

    def __init__(self, handler: WebSocketHandler, token: str | None = None,
                 rejoined: Callable[[str, dict[str, Any]], object] | None = None) -> None:
        self._handler = handler
        self._token = token
        self._rejoined = rejoined
        self._places: dict[str, tuple[str | None, int]] = {}
        """Each room joined: the epoch and offset of the last message seen in it."""
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
        return reply

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
