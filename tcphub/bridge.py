"""
The gateway: a L{TcpServer} whose clients' messages go up a WebSocket, and
whose clients get what comes down it.

The JSON C{data} of the envelopes both ways::

    {"client": "<client id>", "text": "<payload as UTF-8>"}
    {"client": "<client id>", "base64": "<payload as base64>"}

A payload that is valid UTF-8 travels as C{text}, any other as C{base64};
either way it arrives byte for byte.  Upward (on C{upstream_path}) C{client}
is always the sender.  Downward (on paths matching C{upstream_route}) a
message naming a C{client} goes to that client, one without goes to all.

Flow control: the bridge is the upstream handler's producer.  While the
handler cannot write (no connection, or its buffer full), the hub stops
reading from its clients: what they send waits in their sockets, TCP pushes
back on them, and it flows up, in order, once the upstream is back.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub.errors import InvalidMessage, UnknownClient
from tcphub.hub.service import TcpServer

if TYPE_CHECKING:
    # Types only: this module is imported by the hub's plugin for its defaults.
    from tcphub.ws.handler import ConnectionContext, WebSocketHandler

__all__ = ["Bridge", "decode_payload", "encode_payload"]

DEFAULT_UPSTREAM_PATH = "hub.in"
DEFAULT_UPSTREAM_ROUTE = "hub.out.#"


def encode_payload(client_id: str | None, payload: bytes) -> dict[str, str]:
    """The JSON shape of one TCP message (see the module docstring)."""
    shape: dict[str, str] = {} if client_id is None else {"client": client_id}
    try:
        shape["text"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        shape["base64"] = base64.b64encode(payload).decode("ascii")
    return shape


def decode_payload(data: Any) -> tuple[str | None, bytes]:
    """C{(client id or None, payload)}; raise L{InvalidMessage} for any other shape."""
    if not isinstance(data, dict):
        raise InvalidMessage(f"bridge message data must be a JSON object, not {data!r:.80}")
    client_id = data.get("client")
    if client_id is not None and not isinstance(client_id, str):
        raise InvalidMessage(f"bridge message client must be a string, not {client_id!r:.80}")
    if isinstance(data.get("text"), str):
        return client_id, data["text"].encode("utf-8")
    if isinstance(data.get("base64"), str):
        try:
            return client_id, base64.b64decode(data["base64"], validate=True)
        except binascii.Error as error:
            raise InvalidMessage(f"bridge message base64 is invalid: {error}") from None
    raise InvalidMessage('bridge message data needs a "text" or a "base64" string')


@implementer(IPushProducer)
class Bridge(MultiService):
    """The hub and the upstream handler, as one service (both become its children)."""

    _log = Logger()

    def __init__(
        self,
        hub: TcpServer,
        upstream: WebSocketHandler,
        upstream_path: str = DEFAULT_UPSTREAM_PATH,
        upstream_route: str = DEFAULT_UPSTREAM_ROUTE,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.upstream = upstream
        self.upstream_path = upstream_path
        self.lost_upstream = 0
        """TCP messages that could not be sent upstream (after the upstream gave up or closed)."""
        self.undeliverable = 0
        """Upstream messages for a client who is not connected."""
        hub.setServiceParent(self)
        upstream.setServiceParent(self)
        hub.on("data", self._from_client)
        upstream.add_route(upstream_route, self._from_upstream)
        upstream.registerProducer(self, True)

    def _from_client(self, client_id: str, payload: bytes) -> None:
        self.upstream.send(self.upstream_path, encode_payload(client_id, payload)).addErrback(
            self._lost, client_id
        )

    def _from_upstream(self, data: Any, context: ConnectionContext) -> Deferred[None]:
        client_id, payload = decode_payload(data)
        if client_id is None:
            return self.hub.broadcast(payload)
        return self.hub.send(client_id, payload).addErrback(self._undeliverable, client_id)

    def _lost(self, failure: Failure, client_id: str) -> None:
        # Flow control keeps this from happening while the bridge runs; it
        # can when the upstream gives up or is closed.
        self.lost_upstream += 1
        self._log.warn(
            "a message from client {client_id} could not go upstream: {error}",
            client_id=client_id, error=failure.getErrorMessage(),
        )

    def _undeliverable(self, failure: Failure, client_id: str) -> None:
        failure.trap(UnknownClient)
        self.undeliverable += 1
        self._log.info("upstream message for client {client_id}, who is not connected",
                       client_id=client_id)

    # -- IPushProducer: the upstream handler says when it can take messages --

    def pauseProducing(self) -> None:
        self.hub.factory.pause_reading()

    def resumeProducing(self) -> None:
        self.hub.factory.resume_reading()

    def stopProducing(self) -> None:
        self.hub.factory.pause_reading()
