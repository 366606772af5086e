"""
C{/ws}: the opening handshake of RFC 6455 §4.2, answered on twisted.web's
HTTP channel, which then hands its TCP (or TLS) transport to a
L{MemberConnection}.  Until then the connection is an HTTP one, under the
site's limits; a handshake refused (malformed, the hub full, an origin not
allowed) is an HTTP answer, and the connection closes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from twisted.internet.interfaces import ISSLTransport
from twisted.logger import LogLevel
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tcphub.errors import OriginRejected
from tcphub.hub.protocol import format_address
from tcphub.hub.sessions import MAX_SESSION_ID

if TYPE_CHECKING:
    from tcphub.web.member import MemberFactory

__all__ = ["MemberResource", "accept_key"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: bytes) -> bytes:
    """The C{Sec-WebSocket-Accept} that answers C{Sec-WebSocket-Key: key}."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class _Refused(Exception):
    """A handshake answered in HTTP: C{status}, C{reason}, and headers to add."""

    def __init__(self, status: int, reason: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def _tokens(request: Request, name: bytes) -> set[bytes]:
    """The comma-separated tokens of every C{name} header, in lower case."""
    values = request.requestHeaders.getRawHeaders(name) or []
    return {token.strip().lower() for value in values for token in value.split(b",")}


def _key(request: Request) -> bytes:
    """C{Sec-WebSocket-Key} of a well-formed WebSocket handshake, or L{_Refused}."""
    if request.method != b"GET":
        raise _Refused(400, "a WebSocket handshake is a GET")
    if request.clientproto != b"HTTP/1.1":
        raise _Refused(400, "a WebSocket handshake is HTTP/1.1")
    if not request.getHeader(b"host"):
        raise _Refused(400, "no Host header")
    if b"upgrade" not in _tokens(request, b"connection"):
        raise _Refused(400, "no Connection: Upgrade header")
    if (request.requestHeaders.getRawHeaders(b"sec-websocket-version") or []) != [b"13"]:
        raise _Refused(426, "this server speaks WebSocket version 13", {b"Sec-WebSocket-Version": b"13"})
    keys = request.requestHeaders.getRawHeaders(b"sec-websocket-key") or []
    try:
        valid = len(keys) == 1 and len(base64.b64decode(keys[0].strip(), validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid:
        raise _Refused(400, "no Sec-WebSocket-Key header of 16 bytes in base64")
    return keys[0].strip()


class MemberResource(Resource):
    """C{/ws}: a WebSocket handshake makes a member of C{members}' hub; any
    other request is a 426."""

    isLeaf = True

    def __init__(self, members: MemberFactory) -> None:
        super().__init__()
        self._members = members

    def render(self, request: Request) -> bytes | int:
        if b"websocket" not in _tokens(request, b"upgrade"):
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"connection", b"Upgrade")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"426: this path takes a WebSocket upgrade\n"
        try:
            key = _key(request)
        except _Refused as refused:
            hub = self._members.hub
            self._members.counters.bad_handshakes += 1
            hub.surface.fault("bad_handshakes", LogLevel.info,
                              "refused a WebSocket handshake from {peer}: {code} {reason}",
                              peer=format_address(request.getClientAddress()),
                              code=refused.status, reason=refused.reason)
            return self._refuse(request, refused)
        try:
            self._admit(request)
        except _Refused as refused:
            return self._refuse(request, refused)
        self._take_over(request, key)
        return NOT_DONE_YET

    def _admit(self, request: Request) -> None:
        """The hub's limits and the origin policy; L{_Refused} if not admitted."""
        members = self._members
        hub = members.hub
        peer = request.getClientAddress()
        full = hub.refusal(peer)
        if full is not None:
            # Said in HTTP before the upgrade, not with a TCP reset after it.
            hub.count_refusal(full, format_address(peer))
            raise _Refused(503, "the hub is full")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        origin_text = None if origin is None else origin.decode("latin-1")
        secure = ISSLTransport.providedBy(request.transport)
        if not members.origins.allows(origin_text, None if host is None else host.decode("latin-1"), secure):
            address = format_address(peer)
            error = OriginRejected(f"refused a WebSocket from {address}: origin {origin_text!r} is not allowed")
            members.counters.rejected_origin += 1
            hub.surface.fault("rejected_origin", LogLevel.warn, "{error}", error=error,
                              address=address, origin=origin_text)
            hub.surface.report(error)
            raise _Refused(403, "origin not allowed")

    def _refuse(self, request: Request, refused: _Refused) -> int:
        """Answer in HTTP and close; written on the transport, not through
        twisted.web's request, whose access log would log again what the
        hub has logged (once per burst) and counted already."""
        body = f"{refused.status}: {refused.reason}\n".encode("utf-8")
        head = [f"HTTP/1.1 {refused.status} {refused.reason}".encode("utf-8"), b"Server: " + self._members.server,
                b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(body), b"Connection: close"]
        head += [name + b": " + value for name, value in refused.headers.items()]
        channel: Any = request.channel
        channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + (b"" if request.method == b"HEAD" else body))
        channel.loseConnection()
        return NOT_DONE_YET

    def _take_over(self, request: Request, key: bytes) -> None:
        """Answer 101, and hand the HTTP channel's transport to a member."""
        credentials = None
        scheme, _, token = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            # A program's credentials (a browser cannot set this header): the hub checks them at once.
            credentials = token.strip().decode("latin-1")
        resume = None
        asked = parse_qs(request.uri.partition(b"?")[2].decode("latin-1")).get("resume", [])
        if len(asked) == 1 and 0 < len(asked[0]) <= MAX_SESSION_ID:
            resume = asked[0]
        channel: Any = request.channel
        # The connection is a member's from now on, under the hub's limits, no longer an HTTP one.
        channel.upgraded()
        transport, channel.transport = channel.transport, None
        transport.unregisterProducer()
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nServer: " + self._members.server
                        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
                        + accept_key(key) + b"\r\n\r\n")
        connection = self._members.protocol(self._members, credentials, resume)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = connection
        elif isinstance(transport.protocol, ProtocolWrapper):
            transport.protocol.wrappedProtocol = connection
        else:
            transport.protocol = connection
        connection.makeConnection(transport)
        # twisted.web paused reading while it handled the request.
        transport.resumeProducing()
