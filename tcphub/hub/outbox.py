"""
Each client's output has one owner, its L{Outbox}: the frames gathered while
the hub handles a read, the queue while the client does not read, the bound
on that queue, the sent-bytes counters, and a mode that says what a new frame
does.  L{HubProtocol} and the hub's broadcast loop both go through it.

The broadcast loop is the hub's hot path: it reads an outbox's documented
fields (C{mode}, C{frames}) and appends to them inline, instead of calling a
method per receiver.  Everything else calls the methods.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, ITransport

from tcphub._upstream.twisted_parts import write_now, write_sequence_now
from tcphub.errors import ClientDisconnected
from tcphub.hub.metrics import HubCounters

__all__ = ["CLOSED", "QUEUE", "WRITE", "Countdown", "Outbox", "ReadBatch", "Waiter"]

WRITE: Final = 0
"""The transport takes writes: a frame is written (or, while the hub
handles a read, added to C{frames})."""
QUEUE: Final = 1
"""The transport's buffer is full (the client does not read): a frame waits
in C{queue}, written in one piece when the transport asks for more."""
CLOSED: Final = 2
"""The client is leaving: a frame is refused.  A queue left from before is
still written if the client is closed gently."""


HANDOVER: Final = 64 * 1024
"""Bytes of a queue handed to a transport at once: Twisted's own buffer size,
past which a TCP transport pauses its producer."""


class Countdown:
    """One broadcast waiting on the queueing receivers it was queued for; its
    Deferred fires when each has written it or gone.  One per broadcast, not
    one Deferred per receiver: broadcasting is the hub's hot path."""

    __slots__ = ("remaining", "done")

    def __init__(self) -> None:
        self.remaining = 0
        self.done: Deferred[None] = Deferred()

    def tick(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.callback(None)


Waiter = Union[Deferred[None], Countdown, None]
"""Told when a queued frame is written (or its client goes): the Deferred of
a C{send}, the countdown of a broadcast, or nobody."""


def _written(waiter: Waiter) -> None:
    if isinstance(waiter, Countdown):
        waiter.tick()
    elif waiter is not None:
        waiter.callback(None)


def notify_gone(waiter: Waiter, departure: ClientDisconnected) -> None:
    """A frame for C{waiter} will never be written: a send fails with
    C{departure}; a broadcast does not fail because one receiver left."""
    if isinstance(waiter, Countdown):
        waiter.tick()
    elif waiter is not None:
        waiter.errback(departure)


class ReadBatch:
    """
    While the hub handles one client's read, what it writes to any client is
    gathered in that client's C{Outbox.frames} and handed to the transport as
    one write when the read is handled: a read of a hundred small messages
    makes one write per receiver, not a hundred.  One per hub.
    """

    __slots__ = ("depth", "dirty", "counters", "clock")

    def __init__(self, counters: HubCounters, clock: IReactorTime) -> None:
        self.depth = 0
        """Reads being handled (a handler can make another client's read
        happen at once, e.g. over an in-memory transport)."""
        self.dirty: list[Outbox] = []
        """The outboxes whose C{frames} hold something."""
        self.counters = counters
        self.clock = clock

    def begin(self) -> None:
        self.depth += 1

    def end(self) -> None:
        """The read is handled: once the outermost one is, write every batch."""
        self.depth -= 1
        if not self.depth and self.dirty:
            dirty, self.dirty = self.dirty, []
            now = self.clock.seconds()
            for outbox in dirty:
                outbox.flush(now)


class Outbox:
    """
    One client's output.  Its fields are read (and, for C{frames}, appended
    to) by the broadcast loop; everything else goes through the methods.

    Bytes and messages count as sent when they are handed to the transport,
    in L{_handed_over}; an abort takes back the bytes its peer never got.
    """

    __slots__ = ("transport", "batch", "mode", "frames", "queue", "queued_bytes", "waiters", "frames_queued",
                 "frames_handed", "bytes_sent", "messages_sent", "written_at", "held_back")

    def __init__(self, transport: ITransport, batch: ReadBatch, now: float) -> None:
        self.transport = transport
        self.batch = batch
        self.mode: int = WRITE
        """L{WRITE}, L{QUEUE} or L{CLOSED}."""
        self.frames: list[bytes] | None = None
        """Frames taken while the hub handles a read (then in C{batch.dirty})."""
        self.queue: deque[bytes] | None = None
        """Frames waiting for the transport; created when first needed (an
        empty deque costs 600 bytes per client)."""
        self.queued_bytes = 0
        self.waiters: deque[tuple[int, Waiter]] | None = None
        """Who to tell when a queued frame is handed over, if anyone: each
        with the count of C{frames_queued} its frame made.  Apart from the
        queue, since most frames have no waiter (a broadcastMessage, a
        sendMessage): a queued frame costs the queue one reference."""
        self.frames_queued = 0
        self.frames_handed = 0
        """Frames queued and handed over from the queue, since the outbox was made."""
        self.bytes_sent = 0
        self.messages_sent = 0
        self.written_at = now
        """When bytes were last handed to the transport (the idle timeout
        counts traffic both ways)."""
        self.held_back = False
        """Whether the transport has paused this output (in any mode)."""

    def write(self, frame: bytes) -> None:
        """Take a frame in mode L{WRITE}: into C{frames} while the hub handles
        a read, else straight to the transport."""
        batch = self.batch
        if batch.depth:
            if self.frames is None:
                self.frames = [frame]
                batch.dirty.append(self)
            else:
                self.frames.append(frame)
        else:
            self.written_at = batch.clock.seconds()
            self._handed_over(len(frame), 1)
            write_now(self.transport, frame)

    def enqueue(self, frame: bytes, waiter: Waiter) -> int:
        """Queue a frame in mode L{QUEUE}; returns the bytes now queued (the
        caller drops a client whose queue passes the hub's bound)."""
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        queue.append(frame)
        self.frames_queued += 1
        if waiter is not None:
            if self.waiters is None:
                self.waiters = deque()
            self.waiters.append((self.frames_queued, waiter))
        self.queued_bytes += len(frame)
        return self.queued_bytes

    def flush(self, now: float) -> None:
        """Hand C{frames} to the transport, as one write."""
        frames, self.frames = self.frames, None
        if not frames:
            return
        self.written_at = now
        if len(frames) == 1:
            frame = frames[0]
            self._handed_over(len(frame), 1)
            write_now(self.transport, frame)
            return
        size = sum(map(len, frames))
        self._handed_over(size, len(frames))
        self._write_many(frames)

    def _write_many(self, frames: list[bytes]) -> None:
        """Hand several frames to the transport at once."""
        if len(frames[0]) >= 1024:
            # Large frames: hand them over as they are, rather than copy them
            # all once more only for the transport to join them again.
            write_sequence_now(self.transport, frames)
        else:
            write_now(self.transport, b"".join(frames))

    def pause(self) -> None:
        """The transport's buffer is full: queue from now on."""
        self.held_back = True
        if self.mode == WRITE:
            self.mode = QUEUE

    def resume(self) -> None:
        """The transport wants more: the queue goes to it in writes of
        L{HANDOVER} bytes until it pauses us again, so that a slow client
        holds at most C{max_pending} queued here plus about a buffer's worth
        in the transport (not its whole queue twice over); the waiters of
        what is handed over are told."""
        self.held_back = False
        if self.mode == QUEUE:
            self.mode = WRITE
        queue = self.queue
        if not queue:
            self.queue = None
            return
        self.written_at = self.batch.clock.seconds()
        take = queue.popleft
        # A waiter told may abort the client (the queue then goes): stop there.
        while queue and not self.held_back and self.queue is queue:
            chunk: list[bytes] = []
            size = 0
            while queue and size < HANDOVER:
                frame = take()
                chunk.append(frame)
                size += len(frame)
            self.queued_bytes -= size
            self.frames_handed += len(chunk)
            self._handed_over(size, len(chunk))
            self._write_many(chunk)
            told: list[Waiter] = []
            waiters = self.waiters
            while waiters and waiters[0][0] <= self.frames_handed:
                told.append(waiters.popleft()[1])
            for waiter in told:
                _written(waiter)
        if not queue:  # else the transport paused us (the rest waits, in order), or the client went
            self.queue = self.waiters = None

    def close(self) -> None:
        """Take no new frame; what is queued stays, to be written."""
        self.mode = CLOSED
        self.flush(self.batch.clock.seconds())

    def abort(self, departure: ClientDisconnected, unsent: int | None = None) -> None:
        """Take no new frame, and forget what waits: the frames of this read
        (never handed over, so never counted) and the queue, whose waiters
        learn of C{departure}; C{unsent} bytes, handed over but still in the
        transport's and the kernel's buffers, are taken back from the sent
        counts: the peer never got them."""
        if unsent:
            unsent = min(unsent, self.bytes_sent)
            self.bytes_sent -= unsent
            self.batch.counters.bytes_sent -= unsent
        self.mode = CLOSED
        self.frames = None
        waiters, self.queue, self.waiters = self.waiters, None, None
        self.queued_bytes = 0
        for _, waiter in waiters or ():
            notify_gone(waiter, departure)

    def _handed_over(self, size: int, messages: int) -> None:
        self.bytes_sent += size
        self.messages_sent += messages
        counters = self.batch.counters
        counters.bytes_sent += size
        counters.messages_sent += messages
