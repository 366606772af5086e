"""
Fixtures shared by every test.

The autouse C{clean_reactor} fixture fails a test that leaves delayed calls,
listening ports or connections behind on the global reactor.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor
from twisted.internet.task import deferLater


# The default run must be deterministic: hypothesis derives its examples from
# each test's source. HYPOTHESIS_PROFILE=explore searches at random, and more.
settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


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
