"""
L{HttpAuthenticator}: a backend of the application's decides who a member
is, as Centrifugo's connect proxy and NATS's auth callout do.  The hub POSTs
C{{"token": T, "peer": "host:port"}} as JSON to the backend's URL; the
backend answers 200 with C{{"user": U, "name": N?, "rooms": [patterns]?}},
or 401/403 (optionally with C{{"reason": text}}) to refuse.  Anything else
(no answer within the timeout, a refused connection, another status, an
answer that is not such JSON, or larger than L{MAX_ANSWER}) refuses too:
the hub fails closed.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from tcphub._secrets import redact_url
from tcphub.errors import AuthRefused
from tcphub.hub.identity import DEFAULT_AUTH_URL_TIMEOUT, MAX_TOKEN, Identity, RoomPatterns

__all__ = ["HttpAuthenticator", "MAX_ANSWER"]

MAX_ANSWER = 64 * 1024
"""The largest answer read from the backend, in bytes."""


class _Bounded(Protocol):
    """Reads a response body of at most L{MAX_ANSWER} bytes (C{readBody}
    would read any length)."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_ANSWER:
            self._parts = []
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._size > MAX_ANSWER:
            self._done.errback(AuthRefused("auth_unavailable",
                                           f"the auth backend answered more than {MAX_ANSWER} bytes"))
        elif reason.check(ResponseDone):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(AuthRefused("auth_unavailable", "the auth backend's answer was cut short"))


class HttpAuthenticator:
    """
    Asks the backend at C{url} (see the module docstring), within
    C{timeout} seconds on C{clock}, a connection of C{reactor}'s each time
    (none is kept open to close when the hub stops).  C{default_rooms}: the
    rooms of an answer that names none.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_AUTH_URL_TIMEOUT,
                 default_rooms: Sequence[str] = ("*",), clock: IReactorTime, reactor: Any) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--auth-url is an http:// or https:// URL, not {redact_url(url)!r}")
        if not timeout > 0:
            raise ValueError(f"the auth backend's timeout must be more than 0, not {timeout!r}")
        self.url = url
        self.timeout = timeout
        self._default_rooms = RoomPatterns(default_rooms)
        self._clock = clock
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def authenticate(self, token: str, peer: str) -> Deferred[Identity]:
        if len(token) > MAX_TOKEN:
            return fail(AuthRefused("invalid_token", f"a token is at most {MAX_TOKEN} characters"))
        body = json.dumps({"token": token, "peer": peer}).encode("utf-8")
        asked: Deferred[Any] = self._agent.request(
            b"POST", self.url.encode("ascii"),
            Headers({b"content-type": [b"application/json"], b"accept": [b"application/json"]}),
            _Body(body))
        asked.addCallback(self._answered)
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            asked.cancel()

        deadline = self._clock.callLater(self.timeout, expire)

        def settled(result: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            return result

        def unavailable(failure: Failure) -> Failure:
            if failure.check(AuthRefused):
                return failure
            why = f"no answer within {self.timeout:g} s" if expired else type(failure.value).__name__
            return Failure(AuthRefused("auth_unavailable", f"the auth backend cannot be asked: {why}"))

        return asked.addBoth(settled).addErrback(unavailable)

    def _answered(self, response: IResponse) -> Deferred[Identity]:
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_Bounded(done))
        return done.addCallback(self._identity, response.code)

    def _identity(self, body: bytes, status: int) -> Identity:
        try:
            answer = json.loads(body) if body else {}
        except ValueError:
            answer = None
        if status in (401, 403):
            reason = answer.get("reason") if isinstance(answer, dict) else None
            raise AuthRefused("invalid_token" if status == 401 else "forbidden",
                              reason[:200] if isinstance(reason, str) and reason else "refused by the auth backend")
        if status != 200:
            raise AuthRefused("auth_unavailable", f"the auth backend answered HTTP {status}")
        if not isinstance(answer, dict):
            raise AuthRefused("auth_unavailable", "the auth backend's answer is not a JSON object")
        user, name = answer.get("user"), answer.get("name", answer.get("user"))
        if not isinstance(user, str) or not user or len(user) > 256 or not isinstance(name, str) or not name:
            raise AuthRefused("auth_unavailable", "the auth backend's answer has no user (a string)")
        try:
            rooms = RoomPatterns(answer["rooms"]) if "rooms" in answer else self._default_rooms
        except (ValueError, TypeError):
            raise AuthRefused("auth_unavailable", "the auth backend's rooms are not a list of patterns") from None
        return Identity(user=user, name=name[:64], rooms=rooms)


@implementer(IBodyProducer)
class _Body:
    """A request body of known bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Written whole at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Written whole at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Written whole at once: nothing to stop."""
