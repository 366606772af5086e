"""
L{Inbound}: a handler's incoming side.  Each message is decoded by the
codec; a reply goes to the request that waits for it; the rest is routed by
path.  At most C{max_concurrent_handlers} asynchronous handler calls run at
once: past that, the rest of the read is held and reading stops, so that
TCP pushes back on the server.
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from tcphub._repeats import RepeatedLog
from tcphub.errors import InvalidMessage
from tcphub.events import Events, HandlerFailures
from tcphub.ws.envelope import Codec, Envelope, check_envelope
from tcphub.ws.requests import PendingRequests
from tcphub.ws.routing import Router
from tcphub.ws.status import ConnectionContext

__all__ = ["Inbound"]

RouteHandler = Callable[[Any, ConnectionContext], Any]


class Inbound:
    """Routes what arrives; counts through C{count(name)}; emits the
    handler's C{message}, C{unrouted} and C{error} events."""

    _log = Logger()

    def __init__(self, *, codec: Codec, router: Router[tuple[RouteHandler, bool]], requests: PendingRequests,
                 events: Events, repeats: RepeatedLog, handler_failed: HandlerFailures,
                 count: Callable[[str], int], context: ConnectionContext, limit: int) -> None:
        self._codec = codec
        self._router = router
        self._requests = requests
        self._events = events
        self._repeats = repeats
        self._handler_failed = handler_failed
        self._count = count
        self._context = context
        self._limit = limit
        self.in_flight = 0
        """Route handlers whose Deferred (or coroutine) has not ended yet."""
        self._held: deque[Envelope] = deque()
        self._paused: IPushProducer | None = None

    @property
    def reading_paused(self) -> bool:
        return self._paused is not None

    def connection_lost(self) -> None:
        """The transport that was paused is gone: a new one is read at once."""
        self._paused = None

    def received(self, payload: bytes, is_binary: bool, transport: IPushProducer) -> None:
        """A message arrived on C{transport}."""
        try:
            envelope = check_envelope(self._codec.decode(payload, is_binary))
        except InvalidMessage as error:
            count = self._count("invalid_messages")
            self._repeats.emit("invalid_messages", LogLevel.warn,
                               "dropped an invalid message ({count} so far): {error}", error=error, count=count)
            self._events.emit("error", error, self._context)
            return
        if self._requests.is_ours(envelope.id):
            assert envelope.id is not None
            if not self._requests.answer(envelope.id, envelope.data, envelope.path):
                self._count("late_replies")
                self._log.info("dropped a late reply to request {id} on {path!r}",
                               id=envelope.id, path=envelope.path)
            return
        if self._held or self.in_flight >= self._limit:
            # At the bound: hold the message (at most the rest of this read)
            # and stop reading, so that TCP pushes back on the server.
            self._held.append(envelope)
            self._pause(transport)
            return
        self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> None:
        context = self._context
        self._events.emit("message", envelope, context)
        route = self._router.match(envelope.path)
        if route is None:
            # Routine for a handler that takes only some of a feed: each one
            # at debug, and a line at info per burst.
            count = self._count("unrouted_messages")
            self._log.debug("no route for path {path!r} ({count} unrouted so far)", path=envelope.path, count=count)
            self._repeats.tally("unrouted_messages", LogLevel.info, "no route for path {path!r}", path=envelope.path)
            self._events.emit("unrouted", envelope, context)
            return
        where = f"handler for {envelope.path!r}"
        handler, whole = route
        try:
            result = handler(envelope if whole else envelope.data, context)
        except Exception:
            self._handler_failed(where, Failure())
            return
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            self.in_flight += 1
            result.addErrback(lambda failure: self._handler_failed(where, failure))
            result.addBoth(self._handler_done)

    def _handler_done(self, result: object) -> None:
        self.in_flight -= 1
        held = self._held
        while held and self.in_flight < self._limit:
            self._dispatch(held.popleft())
        paused = self._paused
        if not held and paused is not None:
            # Still the connection that was paused: connection_lost forgets it.
            self._paused = None
            paused.resumeProducing()

    def _pause(self, transport: IPushProducer) -> None:
        if self._paused is not None:
            return
        self._paused = transport
        self._log.info("{count} handler calls in flight (max_concurrent_handlers): "
                       "not reading until one ends", count=self.in_flight)
        transport.pauseProducing()
