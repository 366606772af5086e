"""
L{SendQueue}: a handler's outgoing side.  Messages go straight to the open
connection while its write buffer has room; else (reconnecting, or the
peer not reading) they wait here, bounded in count and bytes, each with a
Deferred that fires when written and that takes it out of the queue if
cancelled.  A producer that feeds the handler is paused while nothing can
be written, so that it need not fill the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub.errors import QueueFull, WebSocketError

__all__ = ["SendQueue"]

Writer = Callable[[Any, bytes, bool], "Failure | None"]
"""Writes one message on a connection; returns what it raised, never raises."""


@implementer(IPushProducer)
class _TransportFlow:
    """Registered on a connection's transport, which tells it when its write
    buffer is full (pause) and drained (resume)."""

    def __init__(self, full: Callable[[bool], None]) -> None:
        self._full = full

    def pauseProducing(self) -> None:
        self._full(True)

    def resumeProducing(self) -> None:
        self._full(False)

    def stopProducing(self) -> None:
        self._full(True)


class SendQueue:
    """The queue, the connection it writes to (if one is open), and the
    flow control of whoever feeds it."""

    def __init__(self, max_queue: int, max_queue_bytes: int, write: Writer) -> None:
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self._write = write
        self._queue: deque[tuple[bytes, bool, Deferred[None]]] = deque()
        self.queued_bytes = 0
        """Bytes of the messages waiting."""
        self._connection: Any = None
        self._full = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def writable(self) -> bool:
        """Whether a message goes straight out: a connection can send and its
        write buffer is not full."""
        connection = self._connection
        return connection is not None and connection.can_send and not self._full

    # -- the connection ------------------------------------------------------

    def attach(self, connection: Any) -> None:
        """A connection opened: write what waited, then what comes (the
        caller updates the flow once it has said so)."""
        self._connection = connection
        self._full = False
        connection.registerProducer(_TransportFlow(self._transport_full), True)
        self.flush()

    def detach(self) -> None:
        """The connection is gone: messages wait for the next one (the
        caller updates the flow once it has said so)."""
        self._connection = None

    def flush(self) -> None:
        """Write what waited, in order, until the write buffer is full again;
        one message that fails is errbacked alone; if the connection closes
        meanwhile, the rest waits for the next one."""
        queue, connection = self._queue, self._connection
        while queue and connection is not None and connection.can_send and not self._full:
            payload, is_binary, sent = queue.popleft()
            self.queued_bytes -= len(payload)
            failure = self._write(connection, payload, is_binary)
            if failure is None:
                sent.callback(None)
            else:
                sent.errback(failure)

    def _transport_full(self, full: bool) -> None:
        self._full = full
        if not full:
            self.flush()
        self.update_flow()

    # -- sending --------------------------------------------------------------

    def send(self, payload: bytes, is_binary: bool, may_queue: bool,
             not_connected: Callable[[], WebSocketError]) -> Deferred[None]:
        """Write C{payload} now if nothing waits and the connection can take
        it; else queue it if C{may_queue} (L{QueueFull} past the bounds),
        or fail with C{not_connected()}."""
        connection = self._connection
        if not self._queue and self.writable:
            failure = self._write(connection, payload, is_binary)
            return succeed(None) if failure is None else fail(failure)
        if not may_queue:
            return fail(not_connected())
        if len(self._queue) >= self.max_queue:
            return fail(QueueFull(f"{self.max_queue} messages already wait for the connection"))
        if self.queued_bytes + len(payload) > self.max_queue_bytes:
            return fail(QueueFull(
                f"{self.queued_bytes} bytes already wait for the connection; "
                f"{len(payload)} more would pass max_queue_bytes={self.max_queue_bytes}"
            ))
        entry: tuple[bytes, bool, Deferred[None]]

        def cancelled(_: Deferred[None]) -> None:
            # A queued send that is cancelled leaves the queue.
            for index, each in enumerate(self._queue):
                if each is entry:
                    del self._queue[index]
                    self.queued_bytes -= len(payload)
                    return

        sent: Deferred[None] = Deferred(cancelled)
        entry = (payload, is_binary, sent)
        self._queue.append(entry)
        self.queued_bytes += len(payload)
        return sent

    def fail_all(self, error: WebSocketError) -> None:
        """Fail every waiting message with C{error}."""
        queue, self._queue = self._queue, deque()
        self.queued_bytes = 0
        for _, _, sent in queue:
            sent.errback(error)

    # -- the producer that feeds the handler ----------------------------------

    def register_producer(self, producer: IPushProducer) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is registered already")
        self._producer = producer
        self._producer_paused = False
        self.update_flow()

    def unregister_producer(self) -> None:
        self._producer = None

    def update_flow(self) -> None:
        """Pause the producer while nothing can be written, resume it after."""
        producer = self._producer
        if producer is None:
            return
        writable = self.writable
        if writable and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()
        elif not writable and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
