"""
Fixtures shared by every test.

The autouse C{clean_reactor} fixture fails a test that leaves delayed calls,
listening ports or connections behind on the global reactor, or that logs an
error it did not say it expects (see L{tests.logged}); C{hub_factory}
makes in-memory hubs (L{tcphub.testing.MemoryHub});
C{tcp_server} starts real hubs on 127.0.0.1 and stops them after the test.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tcphub import TcpServer
from tcphub.testing import MemoryHub
from tests.logged import LoggedErrors


# The default run must be deterministic: hypothesis derives its examples from
# each test's source. HYPOTHESIS_PROFILE=explore searches at random, and more.
settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def _open_selectables() -> set:
    return set(reactor.getReaders()) | set(reactor.getWriters())


@pytest.fixture
def logged_errors(request) -> LoggedErrors:
    """This test's errors: C{logged_errors.expected(SomeError)} around code
    that logs one on purpose."""
    return request.node.stash[_LOGGED]


_LOGGED = pytest.StashKey[LoggedErrors]()


@pytest.fixture(autouse=True)
def clean_reactor(request):
    # Let the reactor start (pytest-twisted starts it lazily) so that its own
    # wakers are part of the baseline.
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))
    before = _open_selectables()
    logged = request.node.stash[_LOGGED] = LoggedErrors()
    logged.expect(*((marker.args[1:], marker.kwargs.get("match"))
                    for marker in request.node.iter_markers("logs_errors")))
    logged.start()
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
    unexpected = logged.stop()
    assert not unexpected, "errors logged that the test did not expect:\n" + "\n".join(unexpected)
    assert leftover_calls == [], f"delayed calls left on the reactor: {leftover_calls}"
    assert not leftover_selectables, f"ports or connections left open: {leftover_selectables}"


@pytest.fixture
def hub_factory():
    hubs: list[Hub] = []

    def make(**options) -> MemoryHub:
        hub = MemoryHub(**options)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        # Clients a test left connected go now; then no timer may be left.
        assert hub.close() == []


@pytest.fixture
def tcp_server():
    """C{tcp_server(**options)}: a Deferred firing with a listening TcpServer
    (on port 0 of 127.0.0.1 unless an endpoint is given); each one is stopped
    after the test, whatever happened in it."""
    servers: list[TcpServer] = []

    def start(**options) -> Deferred:
        if "endpoint" not in options:
            options.setdefault("port", 0)
        server = TcpServer(**options)
        servers.append(server)
        return server.start().addCallback(lambda _: server)

    yield start
    for server in servers:
        pytest_twisted.blockon(server.stop())
