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
from typing import Callable, Generic, TypeVar, Union

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadline", "FixedDelay", "Timetable"]

T = TypeVar("T")


class Deadline(Generic[T]):
    """One deadline: its time, and its item until it is withdrawn or fires."""

    __slots__ = ("due", "item")

    def __init__(self, due: float, item: T) -> None:
        self.due = due
        self.item: T | None = item

    def __lt__(self, other: Deadline[T]) -> bool:
        return self.due < other.due


class _OnOneTimer(Generic[T]):
    """
    What both kinds share: C{fire(item)} runs at each deadline's time, on
    C{clock}, exact to it, unless the deadline was withdrawn; one timer is
    armed for the first deadline.  A withdrawn deadline waits until it comes
    first (a subclass may drop it sooner), unless none is left live: then
    every deadline goes and the timer stops.  A subclass keeps the deadlines
    in C{_waiting}, the first at C{_waiting[0]}, and takes it with L{_take}.
    """

    _waiting: Union[deque[Deadline[T]], list[Deadline[T]]]

    def __init__(self, clock: IReactorTime, fire: Callable[[T], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._live = 0
        self._timer: IDelayedCall | None = None
        self._armed_for = 0.0
        self._firing = False

    def withdraw(self, deadline: Deadline[T]) -> None:
        """C{deadline} no longer holds (once; not after it fired)."""
        deadline.item = None
        self._live -= 1
        if not self._live:
            self.stop()

    def __len__(self) -> int:
        """Deadlines waiting, withdrawn ones among them."""
        return len(self._waiting)

    def stop(self) -> None:
        """Drop every deadline."""
        self._waiting.clear()
        self._live = 0
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _take(self) -> Deadline[T]:
        raise NotImplementedError

    def _arm(self) -> None:
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._armed_for = due = self._waiting[0].due
        self._timer = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._due)

    def _due(self) -> None:
        self._timer = None
        # The timer's own time may fall a rounding short of the deadline it was armed for.
        now = max(self._clock.seconds(), self._armed_for)
        waiting = self._waiting
        self._firing = True
        try:
            while waiting and waiting[0].due <= now:
                deadline = self._take()
                item, deadline.item = deadline.item, None
                if item is not None:
                    self._live -= 1
                    self._fire(item)
        finally:
            # Should fire() raise, the deadlines after it still get their timer.
            self._firing = False
            if waiting and self._timer is None:
                self._arm()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self._live} of {len(self._waiting)} live>"


class FixedDelay(_OnOneTimer[T]):
    """
    C{fire(item)} runs C{delay} seconds after L{add}C{(item)}.  Deadlines of
    one delay come due in the order they were added, so they wait in a queue,
    and a withdrawn one stays queued until its time (at most C{delay}).
    """

    def __init__(self, clock: IReactorTime, delay: float, fire: Callable[[T], None]) -> None:
        super().__init__(clock, fire)
        self.delay = delay
        self._waiting: deque[Deadline[T]] = deque()

    def add(self, item: T) -> Deadline[T]:
        """Fire for C{item} in C{delay} seconds."""
        deadline = Deadline(self._clock.seconds() + self.delay, item)
        self._waiting.append(deadline)
        self._live += 1
        if self._timer is None and not self._firing:  # else armed once the due ones are fired
            self._arm()
        return deadline

    def _take(self) -> Deadline[T]:
        return self._waiting.popleft()


class Timetable(_OnOneTimer[T]):
    """
    C{fire(item)} runs at the time given to L{add}C{(due, item)}.  The
    deadlines wait in a heap.  When the withdrawn ones outnumber the others,
    the heap is rebuilt without them, so that connections that come and go
    leave it no larger than twice the live deadlines.
    """

    _REBUILD_AT = 64  # withdrawn deadlines below this many are left to come due

    def __init__(self, clock: IReactorTime, fire: Callable[[T], None]) -> None:
        super().__init__(clock, fire)
        self._waiting: list[Deadline[T]] = []

    def add(self, due: float, item: T) -> Deadline[T]:
        """Fire for C{item} at C{due}, in the clock's seconds."""
        deadline = Deadline(due, item)
        heapq.heappush(self._waiting, deadline)
        self._live += 1
        if not self._firing and (self._timer is None or due < self._armed_for):  # else: once fired
            self._arm()
        return deadline

    def withdraw(self, deadline: Deadline[T]) -> None:
        super().withdraw(deadline)
        waiting = self._waiting
        if len(waiting) - self._live > max(self._live, self._REBUILD_AT):
            waiting[:] = [kept for kept in waiting if kept.item is not None]
            heapq.heapify(waiting)

    def _take(self) -> Deadline[T]:
        return heapq.heappop(self._waiting)
