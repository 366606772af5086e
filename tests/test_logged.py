"""The fixture that fails a test for an error it logged: what it sees, and what it lets through."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tests.logged import LoggedErrors, describe


def watched(*marked) -> tuple[LoggedErrors, Logger]:
    """A watcher, and a logger that logs to it alone (not to this test's own watcher)."""
    errors = LoggedErrors()
    errors.expect(*marked)
    return errors, Logger(namespace="tests.test_logged", observer=errors)


def test_an_error_line_and_a_failure_are_reported_with_their_traceback():
    errors, log = watched()
    log.info("not an error")
    log.warn("nor this")
    log.error("a plain error line")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("a failure")
    reported = [describe(event) for event in errors.unexpected]
    assert len(reported) == 2
    assert reported[0] == "[tests.test_logged] a plain error line"
    assert reported[1].startswith("[tests.test_logged] a failure\n") and "ZeroDivisionError" in reported[1]


def test_an_unhandled_error_in_a_collected_deferred_is_reported(logged_errors):
    errors = LoggedErrors()
    errors.start()
    with logged_errors.expected(KeyError):
        d: Deferred[None] = Deferred()
        d.errback(Failure(KeyError("nobody waits for this")))
        del d
        reported = errors.stop()
    assert len(reported) == 1 and "KeyError: 'nobody waits for this'" in reported[0]


def test_errors_of_the_marked_types_are_expected_and_others_are_not():
    errors, log = watched(((KeyError,), None))
    log.failure("expected", Failure(KeyError("k")))
    log.failure("not expected", Failure(ValueError("v")))
    log.error("an error field: {error}", error=KeyError("in a field"))
    assert [event["log_format"] for event in errors.unexpected] == ["not expected"]


def test_expected_takes_the_errors_of_its_block_and_fails_when_none_came():
    errors, log = watched()
    with errors.expected(match="^bus: ") as seen:
        log.error("bus: Redis refused")
    assert len(seen) == 1
    with pytest.raises(AssertionError, match="no error"):
        with errors.expected(ValueError):
            log.error("bus: not a ValueError")
    assert [event["log_format"] for event in errors.unexpected] == ["bus: not a ValueError"]


def test_the_fixture_is_active_for_this_test(logged_errors):
    with logged_errors.expected(RuntimeError) as seen:
        Logger().failure("on purpose", Failure(RuntimeError("on purpose")))
    assert len(seen) == 1 and logged_errors.unexpected == []
