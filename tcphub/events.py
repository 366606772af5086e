"""
Named events with subscribe and unsubscribe, for users who prefer callbacks to
subclassing (Node's C{server.on('data', fn)}), and L{HandlerFailures}, what
both halves do when user code raises.

A callback that raises does not stop the others nor the caller: the failure is
handed to C{on_error}, which the owner uses to log and count it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.python.failure import Failure

from tcphub._repeats import RepeatedLog
from tcphub.errors import HandlerError

Callback = Callable[..., Any]


class Subscription:
    """Returned by L{Events.on}; C{cancel()} unsubscribes (idempotent)."""

    def __init__(self, events: Events, event: str, callback: Callback) -> None:
        self._events = events
        self.event = event
        self.callback = callback

    def cancel(self) -> None:
        self._events.off(self.event, self.callback)


class Events:
    """A fixed set of event names, each with an ordered tuple of callbacks."""

    def __init__(self, names: Iterable[str], on_error: Callable[[str, Failure], None]) -> None:
        self._callbacks: dict[str, tuple[Callback, ...]] = {name: () for name in names}
        self._on_error = on_error

    def _check(self, event: str) -> None:
        if event not in self._callbacks:
            raise ValueError(
                f"unknown event {event!r}; choose one of {', '.join(self._callbacks)}"
            )

    def on(self, event: str, callback: Callback) -> Subscription:
        """Call C{callback} on every C{event}, in subscription order."""
        self._check(event)
        self._callbacks[event] += (callback,)
        return Subscription(self, event, callback)

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling C{callback} on C{event}; unknown callbacks are ignored."""
        self._check(event)
        callbacks = list(self._callbacks[event])
        if callback in callbacks:
            callbacks.remove(callback)
            self._callbacks[event] = tuple(callbacks)

    def has(self, event: str) -> bool:
        """Whether anyone listens: lets the hot path skip building arguments."""
        return bool(self._callbacks[event])

    def emit(self, event: str, *args: Any) -> None:
        for callback in self._callbacks[event]:
            try:
                callback(*args)
            except Exception:
                self._on_error(event, Failure())


class HandlerFailures:
    """
    User code raised (a hook, a route handler, an event callback): count it,
    log it at error level with its traceback (then once per interval while
    such failures repeat), and report it as a
    L{HandlerError} on the owner's C{error} event, unless an C{error}
    callback is what raised (reporting that would call it again).
    """

    def __init__(
        self,
        log: RepeatedLog,
        count: Callable[[], int],
        report: Callable[[str | None, HandlerError], None],
        goes_on: str,
    ) -> None:
        self._log = log
        self._count = count
        self._report = report
        self._goes_on = goes_on

    def __call__(self, where: str, failure: Failure, client_id: str | None = None,
                 event: str | None = None) -> None:
        """C{where} raised C{failure}; C{client_id} is the client concerned,
        C{event} the event whose callback it was."""
        count = self._count()
        self._log.failure("handler_errors", failure, "{where} raised ({goes_on}; {count} so far)",
                          where=where, goes_on=self._goes_on, count=count)
        if event != "error":
            self._report(client_id, HandlerError.from_failure(where, failure))

    def event_failed(self, event: str, failure: Failure) -> None:
        """The C{on_error} of L{Events}."""
        self(f"{event} event callback", failure, event=event)
