"""
Logging a fault that may repeat thousands of times: the first at once, then
one line per interval for as long as more come ("279 more refused in the
last 10 s"), on the owner's clock.  The metrics count every one.

Every line carries the fault's name as the field C{fault} (and a summary its
C{count}), beside the caller's own fields: a JSON log (C{--log-format json})
has them as keys, for a pipeline to filter on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

__all__ = ["DEFAULT_INTERVAL", "RepeatedLog"]

DEFAULT_INTERVAL = 10.0


class _Window:
    __slots__ = ("level", "quiet", "count", "last", "error", "call")

    def __init__(self, level: LogLevel, call: IDelayedCall, quiet: bool) -> None:
        self.level = level
        self.quiet = quiet
        """Whether the burst's first went unlogged (L{RepeatedLog.tally})."""
        self.count = 0
        self.last = ""
        self.error: BaseException | None = None
        self.call = call


def _count(window: _Window, format: str, fields: dict[str, Any]) -> None:
    """One more of a window's fault, kept as its last."""
    window.count += 1
    window.last = formatEvent({"log_format": format, **fields})


class RepeatedLog:
    """Per kind of fault (a short name: "refused", "slow_consumers"...), at
    most one line at its first occurrence and one per C{interval} after it."""

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = DEFAULT_INTERVAL) -> None:
        self._log = log
        self._clock = clock
        self.interval = interval
        self._windows: dict[str, _Window] = {}

    def emit(self, kind: str, level: LogLevel, format: str, /, **fields: Any) -> None:
        """Log C{format} with C{fields}, or count it in the open window of C{kind}."""
        window = self._windows.get(kind)
        if window is None:
            self._log.emit(level, format, fault=kind, **fields)
            self._open(kind, level)
        else:
            _count(window, format, fields)

    def tally(self, kind: str, level: LogLevel, format: str, /, **fields: Any) -> None:
        """Count C{format} with C{fields} for the one line at C{level} that
        ends each interval in which some came ("37 unrouted_messages in the
        last 10 s"), logging none of them: for what is routine one at a time
        (the caller logs each at debug) but worth a line when it goes on."""
        window = self._windows.get(kind)
        _count(window if window is not None else self._open(kind, level, quiet=True), format, fields)

    def failure(self, kind: str, failure: Failure, format: str, /, **fields: Any) -> None:
        """As L{emit}, at error level, the first with C{failure}'s traceback."""
        window = self._windows.get(kind)
        if window is None:
            self._log.failure(format, failure, level=LogLevel.error, fault=kind, **fields)
            self._open(kind, LogLevel.error)
        else:
            window.count += 1
            window.last = f"{formatEvent({'log_format': format, **fields})}: {failure.getErrorMessage()}"
            window.error = failure.value

    def _open(self, kind: str, level: LogLevel, quiet: bool = False) -> _Window:
        window = self._windows[kind] = _Window(level, self._clock.callLater(self.interval, self._close, kind), quiet)
        return window

    def _close(self, kind: str) -> None:
        window = self._windows.pop(kind)
        if window.count:
            self._summarise(kind, window)
            # Still coming: keep counting for another interval.
            self._open(kind, window.level, window.quiet)

    def _summarise(self, kind: str, window: _Window) -> None:
        # The last exception goes along as a field, for observers that sort by type.
        more = "" if window.quiet else "more "
        self._log.emit(window.level, "{count} " + more + "{fault} in the last {interval:g} s (the last: {last})",
                       count=window.count, fault=kind, interval=self.interval, last=window.last,
                       last_error=window.error)

    def stop(self) -> None:
        """Say what is still counted, and cancel the timers (the owner stops)."""
        windows, self._windows = self._windows, {}
        for kind, window in windows.items():
            window.call.cancel()
            if window.count:
                self._summarise(kind, window)
