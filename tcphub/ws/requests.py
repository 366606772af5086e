"""
Requests waiting for their replies: each gets a fresh id (a random prefix of
this handler, then a counter), a Deferred, and a deadline on the handler's
clock.  A reply is an incoming message carrying the same id.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from tcphub.errors import RequestRefused, RequestTimeout

__all__ = ["PendingRequests"]


class PendingRequests:
    """The requests of one handler that have no reply yet."""

    def __init__(self, clock: IReactorTime, error_path: str | None = None) -> None:
        self._clock = clock
        self._error_path = error_path
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._counter = 0
        self._waiting: dict[str, tuple[Deferred[Any], IDelayedCall]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, path: str, timeout: float) -> tuple[str, Deferred[Any]]:
        """A new request on C{path}: its id, and a Deferred that fires with the
        reply's data, or errbacks with L{RequestTimeout} after C{timeout} s."""
        self._counter += 1
        request_id = f"{self._prefix}{self._counter}"
        # Cancelling the reply frees the request at once.
        reply: Deferred[Any] = Deferred(lambda _: self._forget(request_id))
        timer = self._clock.callLater(timeout, self._expired, request_id, path, timeout)
        self._waiting[request_id] = (reply, timer)
        return request_id, reply

    def is_ours(self, message_id: str | None) -> bool:
        """Whether C{message_id} is one this handler gave a request (the
        reply to it, or a late one), not an id of the peer's own."""
        return message_id is not None and message_id.startswith(self._prefix)

    def answer(self, request_id: str, data: Any, path: str) -> bool:
        """Fire the request C{request_id} with C{data} (errback it with
        L{RequestRefused} if C{path} is the error path); False if it is not
        waiting any more (it timed out or failed: a late reply)."""
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return False
        reply, timer = waiting
        timer.cancel()
        if path == self._error_path:
            reply.errback(RequestRefused(data))
        else:
            reply.callback(data)
        return True

    def fail(self, request_id: str, failure: Failure) -> None:
        """Errback one request, if it still waits (its send failed)."""
        waiting = self._waiting.pop(request_id, None)
        if waiting is not None:
            reply, timer = waiting
            timer.cancel()
            reply.errback(failure)

    def fail_all(self, error: Exception) -> None:
        """Errback every request (the connection closed, or the handler did)."""
        for request_id in list(self._waiting):
            self.fail(request_id, Failure(error))

    def _forget(self, request_id: str) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is not None:
            waiting[1].cancel()

    def _expired(self, request_id: str, path: str, seconds: float) -> None:
        reply, _ = self._waiting.pop(request_id)
        reply.errback(RequestTimeout(f"no reply to the request on {path!r} within {seconds} s"))
