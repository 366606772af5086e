"""
Errors logged while a test runs: the C{clean_reactor} fixture fails a test
that logged one it did not expect (at C{error} or C{critical}, or an
unhandled error in a Deferred, which Twisted logs when the Deferred is
collected).

A test that expects an error says so, for the whole test with the marker
C{@pytest.mark.logs_errors("why", SomeError, ...)} (no types: any error;
C{match=} a pattern the line must match), or
around the code that logs it with the C{logged_errors} fixture::

    with logged_errors.expected(HandlerError) as seen:
        ...
    assert len(seen) == 1
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from twisted.logger import LogLevel, formatEvent, globalLogPublisher

_ERROR_LEVELS = frozenset({LogLevel.error, LogLevel.critical})


def _errors_in(event: Mapping[str, Any]) -> list[BaseException]:
    """The exceptions an event carries: its failure's, and any field's."""
    found = []
    failure = event.get("log_failure")
    if failure is not None:
        found.append(failure.value)
    found.extend(value for key, value in event.items()
                 if isinstance(value, BaseException) and key != "log_failure")
    return found


def _is_header(event: Mapping[str, Any]) -> bool:
    """Twisted's "Unhandled error in Deferred:" line, which the failure's own event follows."""
    return event.get("log_failure") is None and event.get("log_format") == "Unhandled error in Deferred:"


def describe(event: Mapping[str, Any]) -> str:
    text = formatEvent(dict(event))
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return f"[{event.get('log_namespace')}] {text}"


class _Expectation:
    def __init__(self, types: tuple[type[BaseException], ...], match: str | None) -> None:
        self.types = types
        self.match = re.compile(match) if match is not None else None
        self.seen: list[Mapping[str, Any]] = []

    def accepts(self, event: Mapping[str, Any]) -> bool:
        if self.types and not any(isinstance(error, self.types) for error in _errors_in(event)):
            return False
        return self.match is None or self.match.search(formatEvent(dict(event))) is not None


class LoggedErrors:
    """Observes the global log publisher for the length of one test."""

    def __init__(self) -> None:
        self.unexpected: list[Mapping[str, Any]] = []
        self._expected: list[_Expectation] = []

    def __call__(self, event: Mapping[str, Any]) -> None:
        if event.get("log_level") not in _ERROR_LEVELS or _is_header(event):
            return
        for expectation in reversed(self._expected):
            if expectation.accepts(event):
                expectation.seen.append(event)
                return
        self.unexpected.append(event)

    def expect(self, *marked: tuple[tuple[type[BaseException], ...], str | None]) -> None:
        """Expect errors of C{(types, match)} until the end (a test's markers)."""
        for types, match in marked:
            self._expected.append(_Expectation(types, match))

    def start(self) -> None:
        globalLogPublisher.addObserver(self)

    def stop(self) -> list[str]:
        """Stop observing; the unexpected errors, described."""
        # Twisted logs an unhandled error in a Deferred when it is collected.
        # What survives is frozen, so that the next test's collection looks
        # only at what that test made (a full collection per test doubled
        # the suite's time).
        gc.collect()
        gc.freeze()
        globalLogPublisher.removeObserver(self)
        return [describe(event) for event in self.unexpected]

    @contextmanager
    def expected(self, *types: type[BaseException], match: str | None = None
                 ) -> Iterator[list[Mapping[str, Any]]]:
        """Errors logged inside the block that carry one of C{types} (any
        error if none) and whose text matches C{match} are expected; yields
        the list they are gathered in.  Fails if none came."""
        expectation = _Expectation(types, match)
        self._expected.append(expectation)
        try:
            yield expectation.seen
        finally:
            self._expected.remove(expectation)
        assert expectation.seen, f"no error of {types or 'any type'} matching {match!r} was logged"
