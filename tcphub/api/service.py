"""
L{ApiService}: the HTTP server API on its own port.  Every request carries
an API key (L{ApiKeys}); bodies are JSON of at most C{max_body} bytes;
each key has a request rate, and the port a bound on requests in
progress.  Every refusal is a JSON error with a stable C{code}, and every
answer is counted by endpoint and status (L{ApiCounters}).

    POST /api/publish    {"room" | "all": true, "data" | "text" | "base64", "idempotency_key"?}
    POST /api/broadcast  {"rooms": [...], ...}: each room its own result
    POST /api/send       {"client", "data" | "text" | "base64"}
    POST /api/disconnect {"client" | "user", "reason"?}
    GET  /api/presence?room=R
    GET  /api/history?room=R&since=N&limit=L
    GET  /api/rooms
"""

from __future__ import annotations

import base64
import binascii
import json
from io import BytesIO
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tcphub._reactor import default_reactor
from tcphub._site import BodylessSite, SiteService, _BodylessRequest
from tcphub.api.idempotency import DONE, MAX_KEY, NEW, LocalOnce, Once, RedisOnce
from tcphub.api.keys import ApiKeys
from tcphub.api.limits import DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_MAX_BODY, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_RATE
from tcphub.errors import BusError, InvalidRoomName, UnframeableMessage, UnknownClient
from tcphub.hub.addresses import format_address
from tcphub.hub.rate import TokenBucket
from tcphub.hub.rooms import check_room
from tcphub.hub.service import parse_endpoints

if TYPE_CHECKING:
    from tcphub.bus.redis import RedisBus
    from tcphub.hub.service import TcpServer

__all__ = ["ENDPOINTS", "ApiCounters", "ApiError", "ApiService"]

MAX_ROOMS: Final = 1000
"""The most rooms one C{broadcast} names."""
MAX_HISTORY: Final = 1000
"""The most messages one C{history} answer holds."""
ENDPOINTS: Final = ("publish", "broadcast", "send", "disconnect", "presence", "history", "rooms")
_GETS: Final = frozenset({"presence", "history", "rooms"})


class ApiError(Exception):
    """A refusal: the HTTP C{status}, a stable C{code}, a C{reason} for people."""

    def __init__(self, status: int, code: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class ApiCounters:
    """Answers by endpoint and status (bounded: the endpoints are known,
    anything else is C{other}; statuses are the few this API gives)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], int] = {}

    def count(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.answers[key] = self.answers.get(key, 0) + 1


def _endpoint(target: bytes) -> str:
    path = urlsplit(target.decode("ascii", "replace")).path
    name = path[len("/api/"):] if path.startswith("/api/") else ""
    return name if name in ENDPOINTS else "other"


def _error_body(error: ApiError) -> bytes:
    return json.dumps({"error": {"code": error.code, "reason": error.reason}}).encode("utf-8") + b"\n"


class _ApiRequest(_BodylessRequest):
    """Decides before its body is read: the key, the length, the key's
    rate and the port's load; then reads a body it took into memory."""

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        api: ApiSite = channel.site
        endpoint = _endpoint(channel.request_target)
        try:
            name = api.keys.name_of(self.requestHeaders)
            if name is None:
                raise ApiError(401, "unauthorized", "this API needs a key: Authorization: Bearer KEY, or X-API-Key")
            if length is None:
                raise ApiError(411, "length_required", "a body is sent with its Content-Length")
            if length > api.max_body:
                raise ApiError(413, "too_large", f"a body is at most {api.max_body} bytes")
            api.take(name)
        except ApiError as error:
            self.content = BytesIO()
            api.refuse_early(channel.transport, endpoint, error)
            return
        self.api_key_name = name
        self.content = BytesIO()


class ApiSite(BodylessSite):
    """The API's site: POST allowed, bodies bounded by C{max_body}, no
    pacing per address (a key's rate bounds it)."""

    requestFactory = _ApiRequest
    methods = (b"GET", b"HEAD", b"POST")
    _log = Logger()

    def __init__(self, resource: Any, *, keys: ApiKeys, clock: Any, max_body: int, max_rate: float,
                 max_concurrent: int, **kwargs: Any) -> None:
        super().__init__(resource, clock=clock, max_request_rate=None, **kwargs)
        self.keys = keys
        self.max_body = max_body
        self.max_rate = max_rate
        self.max_concurrent = max_concurrent
        self.in_progress = 0
        self.api_counters = ApiCounters()
        self._key_buckets: dict[str, TokenBucket] = {}  # per key name: as many as there are keys

    def take(self, name: str) -> None:
        """Admit one more request of key C{name}, or raise the 429 / 503."""
        now = self.clock.seconds()
        bucket = self._key_buckets.get(name)
        if bucket is None:
            bucket = self._key_buckets[name] = TokenBucket(self.max_rate, max(1, int(self.max_rate)), now)
        wait = bucket.take(now)
        if wait:
            raise ApiError(429, "rate_limited", f"more than {self.max_rate:g} requests a second with this key",
                           retry_after=wait)
        if self.in_progress >= self.max_concurrent:
            raise ApiError(503, "busy", f"{self.max_concurrent} requests in progress", retry_after=1.0)

    def refuse_early(self, transport: Any, endpoint: str, error: ApiError) -> None:
        """Answer C{error} before the body is read, and close."""
        body = _error_body(error)
        head = [f"HTTP/1.1 {error.status} {_REASONS.get(error.status, 'Refused')}",
                "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
        if error.retry_after is not None:
            head.append(f"Retry-After: {_seconds(error.retry_after)}")
        transport.write("\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body)
        transport.loseConnection()
        self.counted(endpoint, error.status, error, format_address(transport.getPeer()))

    def counted(self, endpoint: str, status: int, error: ApiError, peer: str) -> None:
        """Count an early refusal's answer, and log it."""
        self.api_counters.count(endpoint, status)
        self.refused(endpoint, error, peer)

    def refused(self, endpoint: str, error: ApiError, peer: str) -> None:
        """Log a refusal, once per burst of its code."""
        self.repeats.emit(f"api_{error.code}", LogLevel.info, "API {status} {code} on {endpoint} from {peer}",
                          status=error.status, code=error.code, endpoint=endpoint, peer=peer)


def _seconds(retry_after: float) -> str:
    """A C{Retry-After} value: whole seconds, rounded up, at least 1."""
    return str(max(1, round(retry_after + 0.4999)))


_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict", 411: "Length Required",
            413: "Content Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}


class _Api(Resource):
    """The endpoints under C{/api/}."""

    isLeaf = True

    def __init__(self, service: ApiService) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Request) -> Any:
        return self._render(request, get=True)

    def render_HEAD(self, request: Request) -> Any:
        return self._render(request, get=True)

    def render_POST(self, request: Request) -> Any:
        return self._render(request, get=False)

    def _render(self, request: Request, get: bool) -> Any:
        site = cast(ApiSite, cast(Any, request.channel).site)
        endpoint = _endpoint(request.uri)
        site.in_progress += 1
        answered = maybeDeferred(self._answer, request, endpoint, get)
        answered.addCallbacks(self._respond, self._refused, callbackArgs=(request, site, endpoint),
                              errbackArgs=(request, site, endpoint))
        return NOT_DONE_YET

    def _answer(self, request: Request, endpoint: str, get: bool) -> Any:
        if endpoint == "other":
            raise ApiError(404, "unknown_endpoint", f"no endpoint {request.path.decode('ascii', 'replace')[:80]!r}: "
                           f"/api/{', /api/'.join(ENDPOINTS)}")
        if (endpoint in _GETS) != get:
            raise ApiError(405, "method_not_allowed", f"/api/{endpoint} answers "
                           f"{'GET' if endpoint in _GETS else 'POST'}")
        operation = getattr(self._service, f"_{endpoint}")
        if get:
            query = {key: values[0] for key, values in parse_qs(urlsplit(request.uri.decode(
                "ascii", "replace")).query).items()}
            return operation(query)
        assert request.content is not None
        try:
            body = json.loads(request.content.getvalue())
        except (ValueError, RecursionError):
            raise ApiError(400, "bad_json", "the body is one JSON object") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the body is one JSON object")
        return operation(body, cast(Any, request).api_key_name)

    def _respond(self, document: Any, request: Request, site: ApiSite, endpoint: str) -> None:
        self._finish(request, site, endpoint, 200, json.dumps(document).encode("utf-8") + b"\n")

    def _refused(self, failure: Failure, request: Request, site: ApiSite, endpoint: str) -> None:
        if failure.check(ApiError):
            error = cast(ApiError, failure.value)
        else:
            site._log.failure("the HTTP API failed on /api/{endpoint}", failure, endpoint=endpoint)
            error = ApiError(500, "internal", "the hub failed to answer: see its log")
        if error.retry_after is not None:
            request.setHeader(b"retry-after", _seconds(error.retry_after).encode("ascii"))
        site.refused(endpoint, error, format_address(request.getClientAddress()))
        self._finish(request, site, endpoint, error.status, _error_body(error))

    def _finish(self, request: Request, site: ApiSite, endpoint: str, status: int, body: bytes) -> None:
        site.in_progress -= 1
        site.api_counters.count(endpoint, status)
        if request.finished or request.channel is None:  # the client left meanwhile
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()


def _payload(body: dict[str, Any], structured: bool) -> tuple[bytes, Any]:
    """C{(the bytes published, the JSON value a structured member gets)}."""
    given = [name for name in ("data", "text", "base64") if name in body]
    if len(given) != 1:
        raise ApiError(400, "bad_request", 'give one of "data" (any JSON), "text" (a string), "base64"')
    kind = given[0]
    value = body[kind]
    if kind == "data":
        return json.dumps(value, separators=(",", ":")).encode("utf-8"), value
    if not isinstance(value, str):
        raise ApiError(400, "bad_request", f'"{kind}" is a string')
    if kind == "text":
        return value.encode("utf-8"), value
    if structured:
        raise ApiError(400, "bad_request", 'the hub carries JSON (--mode hub): publish "data" or "text"')
    try:
        return base64.b64decode(value, validate=True), None
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", '"base64" is not base64') from None


def _room(value: object) -> str:
    try:
        return check_room(value)
    except InvalidRoomName as error:
        raise ApiError(400, "bad_room", str(error)) from None


class ApiService(SiteService):
    """
    The HTTP API of C{hub} (a L{TcpServer}) on C{endpoint}, for the keys of
    C{keys}; C{bus} (a L{RedisBus}) makes presence, rooms, sends,
    disconnects and idempotency cluster-wide.
    """

    def __init__(self, endpoint: str | IStreamServerEndpoint, *, hub: TcpServer, keys: ApiKeys,
                 bus: RedisBus | None = None, max_body: int = DEFAULT_MAX_BODY,
                 max_rate: float = DEFAULT_MAX_RATE, max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW, reactor: Any = None) -> None:
        reactor = reactor if reactor is not None else default_reactor()
        self.hub = hub.factory
        self.bus = bus
        self.once: Once = (RedisOnce(bus, idempotency_window) if bus is not None
                           else LocalOnce(idempotency_window, self.hub.clock))
        # One leaf for every path: an unknown one is a JSON 404 like any refusal.
        site = ApiSite(_Api(self), keys=keys, clock=self.hub.clock, max_body=max_body, max_rate=max_rate,
                       max_concurrent=max_concurrent)
        site.noisy = False
        site.displayTracebacks = False
        hub.reserve_descriptors(site.max_connections)
        self.counters = site.api_counters
        super().__init__(reactor, site, parse_endpoints(reactor, endpoint, "api"), "api")

    # -- the endpoints: each returns its document, or a Deferred of it ------------

    def _publish(self, body: dict[str, Any], sender: str) -> Any:
        if body.get("all") is True and "room" not in body:
            return self._deliver_to_all(body, sender)
        room = _room(body.get("room"))
        key = body.get("idempotency_key")
        if key is None:
            return self._deliver(room, body, sender)
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            raise ApiError(400, "bad_request", f'"idempotency_key" is a string of 1 to {MAX_KEY} characters')
        return self.once.claim(f"{sender}:{key}").addCallbacks(
            self._claimed, self._once_unavailable, callbackArgs=(room, body, sender, f"{sender}:{key}"))

    def _claimed(self, claim: tuple[str, Any], room: str, body: dict[str, Any], sender: str, key: str) -> Any:
        state, first = claim
        if state == DONE:
            return first
        if state != NEW:
            raise ApiError(409, "in_progress", "a publish with this idempotency key is being made",
                           retry_after=1.0)
        try:
            result = self._deliver(room, body, sender)
        except Exception:
            self.once.abandon(key)
            raise
        self.once.complete(key, result)
        return result

    def _once_unavailable(self, failure: Failure) -> Failure:
        failure.trap(BusError)
        return Failure(ApiError(503, "unavailable", "Redis cannot be asked, so the idempotency key cannot be "
                                "checked: try again", retry_after=1.0))

    def _deliver(self, room: str, body: dict[str, Any], sender: str) -> dict[str, Any]:
        hub = self.hub
        protocol = hub.protocol
        payload, value = _payload(body, structured=_structured(protocol))
        offset = hub.room_sequence(room) + 1 if hub.room_size(room) else 0
        message = protocol.publication(room, sender, payload, value, offset, hub.room_epoch(room))
        try:
            hub.framing.check(message)
        except UnframeableMessage as error:
            raise ApiError(400, "unframeable", str(error)) from None
        hub.broadcast(message, room=room).addErrback(lambda _: None)  # a receiver that left is no error here
        return {"room": room, "offset": hub.room_sequence(room), "epoch": hub.room_epoch(room)}

    def _deliver_to_all(self, body: dict[str, Any], sender: str) -> dict[str, Any]:
        """To every member, in no room's order (the raw modes' members are in no room)."""
        hub = self.hub
        if _structured(hub.protocol):
            raise ApiError(400, "bad_request", 'the hub carries rooms (--mode hub): publish to a "room"')
        payload, _ = _payload(body, structured=False)
        try:
            hub.framing.check(payload)
        except UnframeableMessage as error:
            raise ApiError(400, "unframeable", str(error)) from None
        hub.broadcast(payload).addErrback(lambda _: None)
        return {"all": True, "epoch": hub.epoch}

    def _broadcast(self, body: dict[str, Any], sender: str) -> Any:
        rooms = body.get("rooms")
        if not isinstance(rooms, list) or not rooms or len(rooms) > MAX_ROOMS:
            raise ApiError(400, "bad_request", f'"rooms" is a list of 1 to {MAX_ROOMS} rooms')
        results = []
        for room in rooms:
            try:
                results.append(self._deliver(_room(room), body, sender))
            except ApiError as error:
                results.append({"room": room if isinstance(room, str) else None,
                                "error": {"code": error.code, "reason": error.reason}})
        return {"results": results}

    def _send(self, body: dict[str, Any], sender: str) -> Any:
        client = body.get("client")
        if not isinstance(client, str) or not client:
            raise ApiError(400, "bad_request", '"client" is a client id (see /connz)')
        payload, _ = _payload(body, structured=False)
        try:
            self.hub.framing.check(payload)
        except UnframeableMessage as error:
            raise ApiError(400, "unframeable", str(error)) from None

        def unknown(failure: Failure) -> Failure:
            if failure.check(UnknownClient):
                return Failure(ApiError(404, "unknown_client", f"no client {client[:80]!r}"))
            return Failure(ApiError(409, "client_gone", f"client {client[:80]!r} left before it got it"))

        return self.hub.send(client, payload).addCallbacks(lambda _: {"client": client}, unknown)

    def _disconnect(self, body: dict[str, Any], sender: str) -> Any:
        client, user = body.get("client"), body.get("user")
        if (client is None) == (user is None) or not isinstance(client or user, str):
            raise ApiError(400, "bad_request", 'give "client" (an id) or "user"')
        relay = self.hub.relay
        if client is not None:
            if self.hub.has_client(client):
                self.hub.disconnect(client).addErrback(lambda _: None)
            elif relay is None or not relay.disconnect(client, None):
                raise ApiError(404, "unknown_client", f"no client {client[:80]!r}")
            return {"disconnected": [client]}
        gone = self.hub.disconnect_user(cast(str, user))
        if relay is not None:
            relay.disconnect(None, user)  # and every other node's
        return {"disconnected": gone}

    def _presence(self, query: dict[str, str]) -> Any:
        room = _room(query.get("room"))
        members: Deferred[list[str]] | list[str] = (
            self.bus.cluster_members(room) if self.bus is not None
            else [info.id for info in self.hub.members(room)])
        if isinstance(members, list):
            return {"room": room, "members": members}
        return members.addCallback(lambda ids: {"room": room, "members": ids})

    def _history(self, query: dict[str, str]) -> Any:
        room = _room(query.get("room"))
        since, limit = _whole(query, "since", 0), _whole(query, "limit", 100)
        if not 1 <= limit <= MAX_HISTORY:
            raise ApiError(400, "bad_request", f"limit is 1 to {MAX_HISTORY}")
        if not self.hub.room_size(room):
            raise ApiError(404, "unknown_room", f"no room {room[:80]!r} on this hub")
        framing = self.hub.framing
        messages = [_message(kept.offset, kept.at, framing.payload(kept.frame))
                    for kept in self.hub.room_history(room) if kept.offset > since][:limit]
        return {"room": room, "epoch": self.hub.room_epoch(room), "offset": self.hub.room_sequence(room),
                "messages": messages}

    def _rooms(self, query: dict[str, str]) -> Any:
        rooms = self.bus.cluster_rooms() if self.bus is not None else self.hub.rooms()
        return {"rooms": rooms}


def _message(offset: int, at: float, payload: bytes) -> dict[str, Any]:
    """A message of a room's history, with when it was sent: its text if it
    is UTF-8, else its bytes in base64."""
    try:
        return {"offset": offset, "at": at, "text": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"offset": offset, "at": at, "base64": base64.b64encode(payload).decode("ascii")}


def _whole(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} is a whole number, not {text[:40]!r}") from None


def _structured(protocol: type) -> bool:
    from tcphub.hub.structured import StructuredProtocol

    return issubclass(protocol, StructuredProtocol)

