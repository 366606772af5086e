"""
The deadlines of many connections on one timer of the clock, instead of one
C{DelayedCall} each (about 450 bytes a connection):

  - L{FixedDelay}: deadlines that all wait the same time from when they are
    set (a WebSocket member's ping interval, its ping timeout), in a queue;
  - L{Timetable}: deadlines at any times (a client's idle deadline, which
    moves with its traffic), in a heap.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable, Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadline", "FixedDelay", "Timetable"]

T = TypeVar("T")


class Deadline(Generic[T]):
    """One deadline of a L{FixedDelay}: its time, and its item until it is
    withdrawn or fires."""

    __slots__ = ("due", "item")

    def __init__(self, due: float, item: T) -> None:
        self.due = due
        self.item: T | None = item

    def __lt__(self, other: Deadline[T]) -> bool:
        return self.due < other.due


class FixedDelay(Generic[T]):
    """
    C{fire(item)} runs C{delay} seconds after L{add}C{(item)}, on C{clock},
    exact to it, unless the deadline was withdrawn.  Deadlines of one delay
    come due in the order they were added, so they wait in a queue, and one
    timer is armed for the first.  A withdrawn deadline stays queued until
    its time (at most C{delay}), unless none is left that is not withdrawn:
    then the queue empties and the timer stops.
    """

    def __init__(self, clock: IReactorTime, delay: float, fire: Callable[[T], None]) -> None:
        self._clock = clock
        self.delay = delay
        self._fire = fire
        self._queue: deque[Deadline[T]] = deque()
        self._live = 0
        self._timer: IDelayedCall | None = None
        self._armed_for = 0.0

    def add(self, item: T) -> Deadline[T]:
        """Fire for C{item} in C{delay} seconds."""
        deadline = Deadline(self._clock.seconds() + self.delay, item)
        self._queue.append(deadline)
        self._live += 1
        if self._timer is None:
            self._arm(deadline.due)
        return deadline

    def withdraw(self, deadline: Deadline[T]) -> None:
        """C{deadline} no longer holds (once; not after it fired)."""
        deadline.item = None
        self._live -= 1
        if not self._live:
            self.stop()

    def __len__(self) -> int:
        """Deadlines queued, withdrawn ones among them."""
        return len(self._queue)

    def stop(self) -> None:
        """Drop every deadline."""
        self._queue.clear()
        self._live = 0
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _arm(self, due: float) -> None:
        self._armed_for = due
        self._timer = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._due)

    def _due(self) -> None:
        self._timer = None
        # The timer's own time may fall a rounding short of the deadline it was armed for.
        now = max(self._clock.seconds(), self._armed_for)
        queue = self._queue
        while queue and queue[0].due <= now:
            deadline = queue.popleft()
            item, deadline.item = deadline.item, None
            if item is not None:
                self._live -= 1
                self._fire(item)
        if queue and self._timer is None:
            self._arm(queue[0].due)

    def __repr__(self) -> str:
        return f"<FixedDelay {self.delay}s, {self._live} of {len(self._queue)} live>"


class Timetable(Generic[T]):
    """
    C{fire(item)} runs at the time given to L{add}C{(due, item)}, on C{clock},
    exact to it, unless the deadline was withdrawn.  The deadlines wait in a
    heap, and one timer is armed for the first.  A withdrawn deadline is
    dropped when it comes first; when the withdrawn ones outnumber the
    others, the heap is rebuilt without them, so that connections that come
    and go leave it no larger than twice the live deadlines; when none is
    left live, it empties and the timer stops.
    """

    _REBUILD_AT = 64  # withdrawn deadlines below this many are left to come due

    def __init__(self, clock: IReactorTime, fire: Callable[[T], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._heap: list[Deadline[T]] = []
        self._live = 0
        self._timer: IDelayedCall | None = None
        self._armed_for = 0.0
        self._firing = False

    def add(self, due: float, item: T) -> Deadline[T]:
        """Fire for C{item} at C{due}, in the clock's seconds."""
        deadline = Deadline(due, item)
        heapq.heappush(self._heap, deadline)
        self._live += 1
        if not self._firing and (self._timer is None or due < self._armed_for):
            self._arm()
        return deadline

    def withdraw(self, deadline: Deadline[T]) -> None:
        """C{deadline} no longer holds (once; not after it fired)."""
        deadline.item = None
        self._live -= 1
        if not self._live:
            self.stop()
        elif not self._firing and len(self._heap) - self._live > max(self._live, self._REBUILD_AT):
            self._heap = [kept for kept in self._heap if kept.item is not None]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        """Deadlines in the heap, withdrawn ones among them."""
        return len(self._heap)

    def stop(self) -> None:
        """Drop every deadline."""
        self._heap.clear()
        self._live = 0
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _arm(self) -> None:
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._armed_for = due = self._heap[0].due
        self._timer = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._due)

    def _due(self) -> None:
        self._timer = None
        # The timer's own time may fall a rounding short of the deadline it was armed for.
        now = max(self._clock.seconds(), self._armed_for)
        heap = self._heap
        self._firing = True
        try:
            while heap and heap[0].due <= now:
                deadline = heapq.heappop(heap)
                item, deadline.item = deadline.item, None
                if item is not None:
                    self._live -= 1
                    self._fire(item)
        finally:
            # Should fire() raise, the deadlines after it still get their timer.
            self._firing = False
            if heap and self._timer is None:
                self._arm()

    def __repr__(self) -> str:
        return f"<Timetable {self._live} of {len(self._heap)} live>"
