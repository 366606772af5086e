"""Backoff policies: linear and exponential growth, the cap, the jitter."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from tcphub import ReconnectingClientService, RetryLimitReached, exponential_backoff, linear_backoff


def test_linear_grows_by_the_initial_delay_up_to_the_cap():
    policy = linear_backoff(initial_delay=1.5, max_delay=5.0, jitter=0.0)
    assert [policy(n) for n in range(1, 6)] == [1.5, 3.0, 4.5, 5.0, 5.0]


def test_exponential_doubles_up_to_the_cap_without_overflow():
    policy = exponential_backoff(initial_delay=0.5, max_delay=10.0, jitter=0.0)
    assert [policy(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert policy(10**9) == 10.0
    assert exponential_backoff(factor=3.0, jitter=0.0, max_delay=100)(3) == 9.0


@pytest.mark.parametrize("make", [linear_backoff, exponential_backoff])
def test_jitter_only_shortens_the_delay_so_the_cap_holds(make):
    highest = make(initial_delay=4.0, max_delay=4.0, jitter=0.25, random=lambda: 0.0)
    lowest = make(initial_delay=4.0, max_delay=4.0, jitter=0.25, random=lambda: 0.999999)
    assert highest(1) == 4.0
    assert 3.0 < lowest(1) < 3.0001


def test_an_unknown_backoff_or_a_negative_limit_is_refused():
    endpoint = TCP4ClientEndpoint(Clock(), "127.0.0.1", 1)
    with pytest.raises(ValueError, match="linear, exponential"):
        ReconnectingClientService(endpoint, Factory(), backoff="fibonacci", clock=Clock())
    with pytest.raises(ValueError, match="negative"):
        ReconnectingClientService(endpoint, Factory(), max_retries=-1, clock=Clock())


@pytest.mark.logs_errors("the service gives up, at error", RetryLimitReached)
def test_retries_follow_the_policy_and_stop_at_the_limit():
    """An endpoint that fails at once (a Clock cannot connect): every retry lands on the Clock."""
    clock = Clock()
    service = ReconnectingClientService(
        TCP4ClientEndpoint(clock, "127.0.0.1", 1), Factory(),
        backoff=lambda attempt: 7.0 * attempt, max_retries=2, clock=clock,
    )
    scheduled = []
    service.on_retry = lambda attempt, delay: scheduled.append((attempt, delay))
    given_up = service.when_given_up()
    service.startService()
    clock.advance(7.0)
    assert scheduled == [(1, 7.0), (2, 14.0)]
    assert not given_up.called
    clock.advance(14.0)
    failure = given_up.result
    assert "gave up after 2 retries" in failure.getErrorMessage()
    given_up.addErrback(lambda _: None)
    clock.advance(0)
    assert not service.running
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("uptime, attempts", [(4.5, [1, 2, 3]), (5.0, [1, 1, 1])])
def test_only_a_connection_that_stays_up_for_min_uptime_resets_the_count(uptime, attempts):
    """In memory: each connection opens, lives C{uptime} seconds on the clock, and drops."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionLost
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.python.failure import Failure

    reactor = MemoryReactorClock()
    service = ReconnectingClientService(
        TCP4ClientEndpoint(reactor, "127.0.0.1", 1), Factory.forProtocol(Protocol),
        backoff=lambda attempt: 1.0, confirm_open=True, min_uptime=5.0, clock=reactor,
    )
    scheduled = []
    service.on_retry = lambda attempt, delay: scheduled.append(attempt)
    service.startService()
    for connection in range(3):
        _, _, factory, _, _ = reactor.tcpClients[connection]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(StringTransport())
        service.connection_opened()
        reactor.advance(uptime)
        protocol.connectionLost(Failure(ConnectionLost()))
        reactor.advance(1.0)  # the retry
    assert scheduled == attempts
    service.stopService()
    reactor.advance(0)


def test_a_thousand_handlers_that_lose_one_server_spread_their_first_retries():
    """Full jitter by default: the first retries of 1,000 handlers whose
    connections fail at the same instant cover the whole first interval,
    about a tenth of them in each tenth of it.  (The default policy with a
    random source of the test's own: Autobahn 26.10 reseeds the global one
    from the system for every client factory.)"""
    import random

    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python.failure import Failure

    from tcphub import WebSocketHandler

    policy = exponential_backoff(random=random.Random(6455).random)
    handlers = []
    try:
        reactor = MemoryReactorClock()
        for _ in range(1000):
            handler = WebSocketHandler(reactor=reactor, clock=reactor, max_retries=None, ping_interval=0,
                                       backoff=policy)
            handler.connect("ws://127.0.0.1:9/").addErrback(lambda failure: None)
            handlers.append(handler)
        for _, _, factory, _, _ in list(reactor.tcpClients):
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        # The endpoint reports the failures when its own attempt timer (0.3 s) fires.
        (endpoint_timer,) = {call.getTime() for call in reactor.getDelayedCalls()}
        reactor.advance(endpoint_timer)
        failed_at = reactor.seconds()
        retries = sorted(call.getTime() - failed_at for call in reactor.getDelayedCalls())
        assert len(retries) == 1000 and 0 < retries[0] and retries[-1] <= 1.0
        tenths = [sum(1 for delay in retries if n / 10 <= delay < (n + 1) / 10) for n in range(10)]
        assert all(60 <= count <= 140 for count in tenths), tenths
    finally:
        for handler in handlers:
            handler.close()
        reactor.advance(0)


@pytest.mark.parametrize("make", [linear_backoff, exponential_backoff])
@pytest.mark.parametrize("options, message", [
    ({"jitter": 2.0}, "jitter must be at most 1"),
    ({"jitter": -0.5}, "jitter cannot be negative"),
    ({"initial_delay": -1.0}, "initial_delay cannot be negative"),
    ({"max_delay": float("nan")}, "max_delay takes a finite number"),
])
def test_the_exported_policies_refuse_values_that_would_give_a_negative_delay(make, options, message):
    with pytest.raises(ValueError, match=message):
        make(**options)


def test_an_exponential_factor_under_one_is_refused():
    with pytest.raises(ValueError, match="factor must be at least 1"):
        exponential_backoff(factor=0.5)


def test_the_service_is_an_explicit_state_machine_that_refuses_illegal_inputs():
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionLost
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.python.failure import Failure

    from tcphub.ws.reconnect import IllegalTransition, ReconnectState

    reactor = MemoryReactorClock()
    service = ReconnectingClientService(TCP4ClientEndpoint(reactor, "127.0.0.1", 1), Factory.forProtocol(Protocol),
                                        backoff=lambda attempt: 2.0, clock=reactor)
    assert service.state is ReconnectState.STOPPED
    with pytest.raises(IllegalTransition, match="stopped cannot take 'retry_due'"):
        service._input("retry_due")
    service.startService()
    assert service.state is ReconnectState.CONNECTING
    with pytest.raises(IllegalTransition, match="connecting cannot take 'start'"):
        service._input("start")
    _, _, factory, _, _ = reactor.tcpClients[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert service.state is ReconnectState.CONNECTED
    protocol.connectionLost(Failure(ConnectionLost()))
    assert service.state is ReconnectState.WAITING and reactor.getDelayedCalls()[0].getTime() == 2.0
    reactor.advance(2.0)
    assert service.state is ReconnectState.CONNECTING and len(reactor.tcpClients) == 2
    _, _, factory, _, _ = reactor.tcpClients[1]
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    stopped = service.stopService()
    assert service.state is ReconnectState.STOPPING and transport.disconnecting and not stopped.called
    protocol.connectionLost(Failure(ConnectionLost()))
    assert service.state is ReconnectState.STOPPED and stopped.called
    assert reactor.getDelayedCalls() == []


def test_scheduling_a_retry_logs_one_line_of_ours_and_nothing_of_twisteds(logged_errors):
    """No "Scheduling retry ... <endpoint object at 0x...>" line, and none for a retry that never comes."""
    from twisted.logger import globalLogPublisher

    lines: list[str] = []

    def observe(event) -> None:
        from twisted.logger import formatEvent

        lines.append(formatEvent(event))

    clock = Clock()
    service = ReconnectingClientService(
        TCP4ClientEndpoint(clock, "127.0.0.1", 1), Factory(),
        backoff=lambda attempt: 3.0, max_retries=1, clock=clock,
    )
    globalLogPublisher.addObserver(observe)
    try:
        given_up = service.when_given_up()
        with logged_errors.expected(RetryLimitReached):
            service.startService()
            clock.advance(3.0)
    finally:
        globalLogPublisher.removeObserver(observe)
    given_up.addErrback(lambda _: None)
    assert not any("Scheduling" in line or " at 0x" in line for line in lines), lines
    assert [line for line in lines if line.startswith("retry")] == [
        "retry 1 in 3.00 s (last: 'Clock' object has no attribute 'connectTCP')"
    ]
    assert clock.getDelayedCalls() == []
