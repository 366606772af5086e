"""
Reconnection: backoff policies and L{ReconnectingClientService}, which
keeps one outgoing connection up with a retry limit and failures counted
the way a protocol with its own handshake needs, as an explicit state
machine (Twisted's L{ClientService} counts a WebSocket refused after TCP
as a success, and cannot take a stop from inside its retry policy).
"""

from __future__ import annotations

import enum
import random as _random
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from tcphub import _checks
from tcphub._observer import OneShotObserver
from tcphub._reactor import default_reactor
from tcphub.errors import RetryLimitReached

RetryPolicy = Callable[[int], float]



DEFAULT_JITTER = 1.0
"""Full jitter: a retry waits anywhere in (0, delay], so that clients that
lost the same server do not come back in step (RFC 6455, section 7.2.3)."""


def check_backoff(initial_delay: float, max_delay: float, jitter: float) -> None:
    """Raise L{ValueError} for a negative delay or a jitter outside [0, 1]."""
    _checks.number("initial_delay", initial_delay, minimum=0)
    _checks.number("max_delay", max_delay, minimum=0)
    _checks.number("jitter", jitter, minimum=0, maximum=1)


def _jittered(delay: float, jitter: float, random: Callable[[], float]) -> float:
    # Subtract the jitter so that the delay never passes max_delay.
    return delay * (1.0 - jitter * random())


def linear_backoff(
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    jitter: float = DEFAULT_JITTER,
    random: Callable[[], float] = _random.random,
) -> RetryPolicy:
    """Retry C{n} waits C{initial_delay * n} seconds, at most C{max_delay},
    less up to C{jitter} of it at random (so that clients do not retry in
    step; the default, 1, spreads retries over the whole interval).  Raises
    L{ValueError} for a negative delay or a jitter outside [0, 1]."""
    check_backoff(initial_delay, max_delay, jitter)

    def policy(attempt: int) -> float:
        return _jittered(min(initial_delay * attempt, max_delay), jitter, random)

    return policy


def exponential_backoff(
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    factor: float = 2.0,
    jitter: float = DEFAULT_JITTER,
    random: Callable[[], float] = _random.random,
) -> RetryPolicy:
    """Retry C{n} waits C{initial_delay * factor ** (n - 1)} seconds, at most
    C{max_delay}, less up to C{jitter} of it at random.  Raises
    L{ValueError} as L{linear_backoff} does, and for a C{factor} under 1."""
    check_backoff(initial_delay, max_delay, jitter)
    _checks.number("factor", factor, minimum=1)

    def policy(attempt: int) -> float:
        try:
            delay = min(initial_delay * factor ** min(attempt - 1, 1000), max_delay)
        except OverflowError:
            delay = max_delay
        return _jittered(delay, jitter, random)

    return policy


BACKOFFS: dict[str, Callable[..., RetryPolicy]] = {
    "linear": linear_backoff,
    "exponential": exponential_backoff,
}


def backoff_policy(backoff: str | RetryPolicy, **options: float) -> RetryPolicy:
    """The policy named C{backoff} (linear, exponential) made with C{options},
    or C{backoff} itself if it is a callable; raises ValueError for other names."""
    if not isinstance(backoff, str):
        return backoff
    try:
        make = BACKOFFS[backoff]
    except KeyError:
        raise ValueError(
            f"backoff must be one of {', '.join(BACKOFFS)} or a callable, not {backoff!r}"
        ) from None
    return make(**options)


class ReconnectState(enum.Enum):
    """Where a L{ReconnectingClientService} is (C{service.state})."""

    STOPPED = "stopped"
    """Not started, or stopped: no attempt, no connection, nothing scheduled."""
    CONNECTING = "connecting"
    """An attempt is under way."""
    CONNECTED = "connected"
    """A connection is up (its own handshake may still run)."""
    WAITING = "waiting"
    """The last attempt failed or the connection ended: a retry is scheduled
    (or, after L{ReconnectingClientService.stop_retrying}, nothing is)."""
    STOPPING = "stopping"
    """Stopped while connected: the connection is closing."""
    GIVEN_UP = "given up"
    """The retry limit was passed."""


class IllegalTransition(RuntimeError):
    """An input the service's state does not take (a bug in its caller, or in it)."""


_S = ReconnectState

# (state, input) -> the method that handles it; any other pair is refused.
_TRANSITIONS: dict[tuple[ReconnectState, str], str] = {
    (_S.STOPPED, "start"): "_connect",
    (_S.STOPPED, "stop"): "_stopped_already",
    (_S.STOPPED, "lost"): "_stale_lost",
    (_S.GIVEN_UP, "stop"): "_stopped_already",
    (_S.CONNECTING, "connected"): "_connected",
    (_S.CONNECTING, "failed"): "_retry_or_give_up",
    (_S.CONNECTING, "stop"): "_cancel_attempt",
    (_S.CONNECTED, "lost"): "_retry_or_give_up",
    (_S.CONNECTED, "stop"): "_disconnect",
    (_S.WAITING, "retry_due"): "_connect",
    (_S.WAITING, "stop"): "_cancel_retry",
    (_S.STOPPING, "lost"): "_gone",
    (_S.STOPPING, "stop"): "_when_gone",
}


class _Watched:
    """The protocol a connection runs, as its transport sees it: everything
    goes to C{protocol}, and C{connectionLost} also tells the service."""

    def __init__(self, protocol: IProtocol, lost: Callable[[], None]) -> None:
        self._protocol = protocol
        self._lost = lost
        directlyProvides(self, providedBy(protocol))

    def connectionLost(self, reason: Failure) -> None:
        try:
            self._protocol.connectionLost(reason)
        finally:
            self._lost()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)


class _WatchingFactory(Factory):
    """Builds the factory's protocols, watched."""

    def __init__(self, factory: IProtocolFactory, lost: Callable[[], None]) -> None:
        self._factory = factory
        self._lost = lost

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._factory.buildProtocol(addr)
        return None if protocol is None else _Watched(protocol, self._lost)


class ReconnectingClientService(Service):
    """
    Keeps one outgoing connection up, retrying with a backoff policy, and
    gives up after C{max_retries} retries in a row (C{None}: never).

    Its life is an explicit state machine (L{ReconnectState}, C{state}),
    driven by a declared table of transitions: an input its state does not
    take raises L{IllegalTransition}.  Each retry is logged as a line of its
    own that names the peer's last error.

    When the limit is passed, L{when_given_up} errbacks with
    L{RetryLimitReached} and the service stops.  C{on_retry(attempt,
    delay)}, if set, is called for every retry scheduled, and may stop the
    service.

    A connection counts as made only when L{connection_opened} is called.  By
    default that happens when TCP connects; a protocol with a handshake of its
    own (WebSocket) passes C{confirm_open=True} and calls it when the
    handshake completes, so that a server that accepts TCP and then refuses
    (say, with HTTP 503) still uses up retries.  (Twisted's L{ClientService}
    counts such a server as a success every time.)
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        backoff: str | RetryPolicy = "exponential",
        max_retries: int | None = None,
        confirm_open: bool = False,
        min_uptime: float = 0.0,
        round_size: int = 1,
        clock: IReactorTime | None = None,
        **backoff_options: float,
    ) -> None:
        policy = backoff_policy(backoff, **backoff_options)
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries cannot be negative, not {max_retries}")
        self.max_retries = max_retries
        self.retries = 0
        """Retries scheduled over the service's life."""
        self.attempt = 0
        """Failed rounds in a row: reset only by a connection that stayed
        open for C{min_uptime} seconds."""
        self.min_uptime = min_uptime
        self.round_size = round_size
        """Attempts in one round (one per URL of a fail-over list): only a
        whole round that failed counts as a retry and waits for the backoff."""
        self.on_retry: Callable[[int, float], None] | None = None
        self.state = ReconnectState.STOPPED
        self._endpoint = endpoint
        self._factory = _WatchingFactory(factory, lambda: self._input("lost"))
        self._policy: RetryPolicy = policy
        self._confirm_open = confirm_open
        self._clock: IReactorTime = clock if clock is not None else default_reactor()
        self._attempt: Deferred[Any] | None = None
        self._connection: Any = None
        self._retry_call: IDelayedCall | None = None
        self._opened_at: float | None = None
        self._in_round = 0
        self._retrying = True
        self._retry_after: float | None = None
        self._last_error = "no attempt yet"
        self._given_up = OneShotObserver()
        self._closing: OneShotObserver | None = None

    # -- what the owner calls -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._retrying = True
        self._input("start")

    def stopService(self) -> Deferred[None]:
        """Stop retrying, cancel what is under way, close the connection if
        one is up; fires once it is gone."""
        super().stopService()
        self._retrying = False
        result: Deferred[None] = self._input("stop")
        return result

    def connection_opened(self) -> None:
        """The connection is up for real; if it stays up for C{min_uptime},
        the next outage starts counting from zero (a server that accepts and
        closes at once is retried with a growing backoff, up to the limit)."""
        self._opened_at = self._clock.seconds()

    def connection_failed(self, reason: str) -> None:
        """Remember why the last attempt failed or the last connection ended,
        for the logs and the L{RetryLimitReached} message."""
        self._last_error = reason

    def retry_after(self, seconds: float) -> None:
        """Make the next retry wait C{seconds} instead of the policy's delay
        (a server's C{Retry-After}); it still counts toward C{max_retries}."""
        self._retry_after = seconds

    def stop_retrying(self) -> None:
        """Schedule no more retries: the caller is closing the connection and
        will stop the service once it is closed."""
        self._retrying = False

    def when_given_up(self) -> Deferred[None]:
        """Errbacks with L{RetryLimitReached} once the retry limit is passed."""
        return self._given_up.when_fired()

    # -- the state machine ---------------------------------------------------------

    def _input(self, name: str) -> Any:
        method = _TRANSITIONS.get((self.state, name))
        if method is None:
            raise IllegalTransition(f"a reconnecting service that is {self.state.value} cannot take {name!r}")
        return getattr(self, method)()

    def _connect(self) -> None:
        self.state = ReconnectState.CONNECTING
        self._retry_call = None
        attempt = self._attempt = self._endpoint.connect(self._factory)
        attempt.addCallbacks(self._attempt_made, self._attempt_failed,
                             callbackArgs=(attempt,), errbackArgs=(attempt,))

    def _attempt_made(self, protocol: Any, attempt: Deferred[Any]) -> None:
        if attempt is not self._attempt:
            protocol.transport.loseConnection()  # connected as it was cancelled
            return
        self._attempt = None
        self._connection = protocol
        self._input("connected")

    def _attempt_failed(self, failure: Failure, attempt: Deferred[Any]) -> None:
        if attempt is not self._attempt:
            return  # cancelled by a stop
        self._attempt = None
        self.connection_failed(failure.getErrorMessage())
        self._input("failed")

    def _connected(self) -> None:
        self.state = ReconnectState.CONNECTED
        if not self._confirm_open:
            self.connection_opened()

    def _retry_or_give_up(self) -> None:
        self._connection = None
        self.state = ReconnectState.WAITING
        delay = self._next_delay()  # on_retry may stop the service from here
        if self.state is not ReconnectState.WAITING or delay is None:
            return
        self._retry_call = self._clock.callLater(delay, self._input, "retry_due")

    def _next_delay(self) -> float | None:
        """The delay before the next attempt, or None for none (stopping,
        or the limit passed, after which the service has given up)."""
        if not self._retrying:
            return None
        self._in_round += 1
        if self._in_round < self.round_size:
            return 0.0  # the next URL of this round, at once
        self._in_round = 0
        if self._opened_at is not None:
            if self._clock.seconds() - self._opened_at >= self.min_uptime:
                self.attempt = 0
            self._opened_at = None
        self.attempt += 1
        if self.max_retries is not None and self.attempt > self.max_retries:
            error = RetryLimitReached(self.max_retries, self._last_error)
            self._log.error("{error}", error=error)
            self.state = ReconnectState.GIVEN_UP
            self.running = False
            self._given_up.fire(Failure(error))
            return None
        self.retries += 1
        if self._retry_after is not None:
            delay, self._retry_after = self._retry_after, None
        else:
            delay = self._policy(self.attempt)
        self._log.info("retry {attempt} in {delay:.2f} s (last: {error})",
                       attempt=self.attempt, delay=delay, error=self._last_error)
        if self.on_retry is not None:
            self.on_retry(self.attempt, delay)
        return delay

    def _stopped_already(self) -> Deferred[None]:
        return succeed(None)

    def _cancel_attempt(self) -> Deferred[None]:
        attempt, self._attempt = self._attempt, None
        self.state = ReconnectState.STOPPED
        if attempt is not None:
            attempt.addErrback(lambda _: None)
            attempt.cancel()
        return succeed(None)

    def _cancel_retry(self) -> Deferred[None]:
        call, self._retry_call = self._retry_call, None
        self.state = ReconnectState.STOPPED
        if call is not None and call.active():
            call.cancel()
        return succeed(None)

    def _disconnect(self) -> Deferred[None]:
        self.state = ReconnectState.STOPPING
        closing = self._closing = OneShotObserver()
        self._connection.transport.loseConnection()
        gone: Deferred[None] = closing.when_fired()
        return gone

    def _when_gone(self) -> Deferred[None]:
        assert self._closing is not None
        gone: Deferred[None] = self._closing.when_fired()
        return gone

    def _gone(self) -> None:
        self.state = ReconnectState.STOPPED
        self._connection = None
        assert self._closing is not None
        self._closing.fire(None)

    def _stale_lost(self) -> None:
        """A connection made as its attempt was cancelled has closed."""
