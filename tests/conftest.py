"""
Fixtures shared by every test.

The autouse C{clean_reactor} fixture fails a test that leaves delayed calls,
listening ports or connections behind on the global reactor.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater


def _open_selectables() -> set:
    return set(reactor.getReaders()) | set(reactor.getWriters())


@pytest.fixture(autouse=True)
def clean_reactor():
    # Let the reactor start (pytest-twisted starts it lazily) so that its own
    # wakers are part of the baseline.
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))
    before = _open_selectables()
    yield
    # One turn of the reactor runs the connectionLost calls that
    # abortConnection schedules with callLater(0).
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))
    leftover_calls = [f"{call.func!r} in {call.getTime() - reactor.seconds():.2f} s"
                      for call in reactor.getDelayedCalls()]
    leftover_selectables = _open_selectables() - before
    for call in reactor.getDelayedCalls():
        call.cancel()
    # Clean up, so that one leak fails one test and not every test after it.
    for selectable in leftover_selectables:
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
    assert leftover_calls == [], f"delayed calls left on the reactor: {leftover_calls}"
    assert not leftover_selectables, f"ports or connections left open: {leftover_selectables}"
