"""A result that many callers can wait for, each with a Deferred of its own."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

_UNSET: Any = object()


class OneShotObserver:
    """Fires once; every L{when_fired} Deferred gets the same result or failure."""

    def __init__(self) -> None:
        self._result: Any = _UNSET
        self._waiting: list[Deferred[Any]] = []

    def when_fired(self) -> Deferred[Any]:
        if self._result is _UNSET:
            d: Deferred[Any] = Deferred()
            self._waiting.append(d)
            return d
        if isinstance(self._result, Failure):
            return fail(self._result)
        return succeed(self._result)

    def fire(self, result: Any) -> None:
        """Deliver C{result} (a L{Failure} errbacks); later calls are ignored."""
        if self._result is not _UNSET:
            return
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
