"""
Reconnection: backoff policies and L{ReconnectingClientService}, Twisted's
L{ClientService} with a retry limit and failures counted the way a protocol
with its own handshake needs.
"""

from __future__ import annotations

import random as _random
from typing import Callable

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub import _checks
from tcphub._observer import OneShotObserver
from tcphub._reactor import default_reactor
from tcphub.errors import RetryLimitReached

RetryPolicy = Callable[[int], float]

# The delay returned once the limit is passed: the service stops on the next
# turn of its clock, which cancels this retry long before it is due.
_NEVER = 24 * 3600.0


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


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """Passes connection failures (refused, DNS, TLS...) to C{record}."""

    def __init__(self, endpoint: IStreamClientEndpoint, record: Callable[[str], None]) -> None:
        self._endpoint = endpoint
        self._record = record

    def connect(self, factory: IProtocolFactory) -> Deferred:
        def failed(failure: Failure) -> Failure:
            self._record(failure.getErrorMessage())
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


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


class _RetryLog(Logger):
    """The service's logger, handed to L{ClientService} too: ClientService's
    own "Scheduling retry" line is dropped, since it follows the policy even
    when the policy gave up (a retry "in 86400 seconds" that never comes);
    the service logs each real retry itself."""

    def emit(self, level, format=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if format is not None and format.startswith("Scheduling retry"):
            return
        super().emit(level, format, **kwargs)


class ReconnectingClientService(ClientService):
    """
    Keeps one outgoing connection up, retrying with a backoff policy, and
    gives up after C{max_retries} retries in a row (C{None}: never).

    When the limit is passed, L{when_given_up} errbacks at once with
    L{RetryLimitReached}, and the service stops itself on the next turn of
    its clock.  C{on_retry(attempt, delay)}, if set, is called for every retry
    scheduled.  Both run inside L{ClientService}'s state machine, which cannot
    take a stop there: a C{stopService()} from them happens on the next turn
    of the clock, and its Deferred fires then.

    A connection counts as made only when L{connection_opened} is called.  By
    default that happens when TCP connects; a protocol with a handshake of its
    own (WebSocket) passes C{confirm_open=True} and calls it when the
    handshake completes, so that a server that accepts TCP and then refuses
    (say, with HTTP 503) still uses up retries.  L{ClientService} alone counts
    such a server as a success every time.
    """

    _log = _RetryLog()

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
        backoff = backoff_policy(backoff, **backoff_options)
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries cannot be negative, not {max_retries}")
        self.max_retries = max_retries
        self.retries = 0
        """Retries scheduled over the service's life."""
        self.attempt = 0
        """Failed attempts in a row: reset only by a connection that stayed
        open for C{min_uptime} seconds."""
        self.min_uptime = min_uptime
        self._policy: RetryPolicy = backoff
        self._clock: IReactorTime = clock if clock is not None else default_reactor()
        self._opened_at: float | None = None
        self._retrying = True
        self._last_error = "no attempt yet"
        self._in_policy = False
        self._deferred_stop: OneShotObserver | None = None
        self._retry_after: float | None = None
        self.round_size = round_size
        """Attempts in one round (one per URL of a fail-over list): only a
        whole round that failed counts as a retry and waits for the backoff."""
        self._in_round = 0
        self._given_up = OneShotObserver()
        self.on_retry: Callable[[int, float], None] | None = None
        # With confirm_open, the protocol calls connection_opened itself once
        # its handshake completes.  ClientService's prepareConnection looks
        # made for this (return a Deferred that fires at the handshake), but a
        # connection dropped before that Deferred fires raises automat's
        # NoTransition inside ClientService's state machine (Twisted 26.10),
        # and the service stops retrying: so the wait lives here, not there.
        prepare = None if confirm_open else (lambda protocol: self.connection_opened())
        super().__init__(
            _RecordingEndpoint(endpoint, self.connection_failed),
            factory,
            retryPolicy=self._next_delay,
            clock=self._clock,
            prepareConnection=prepare,
        )

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

    def startService(self) -> None:
        self._retrying = True
        super().startService()

    def stopService(self) -> Deferred[None]:
        self._retrying = False
        if self._deferred_stop is not None:
            return self._deferred_stop.when_fired()
        if self._in_policy:
            return self._stop_soon()
        if not self.running:
            return succeed(None)
        return super().stopService()

    def _stop_soon(self) -> Deferred[None]:
        self._deferred_stop = stopped = OneShotObserver()

        def stop() -> None:
            self._deferred_stop = None
            ClientService.stopService(self).addBoth(stopped.fire)

        self._clock.callLater(0, stop)
        return stopped.when_fired()

    def _next_delay(self, _: int) -> float:
        # ClientService passes its count of failures since the last
        # connection; ours (self.attempt) only resets after min_uptime.
        if not self._retrying:
            return _NEVER
        self._in_round += 1
        if self._in_round < self.round_size:
            return 0.0  # the next URL of this round, at once
        self._in_round = 0
        if self._opened_at is not None:
            if self._clock.seconds() - self._opened_at >= self.min_uptime:
                self.attempt = 0
            self._opened_at = None
        self.attempt += 1
        self._in_policy = True
        try:
            if self.max_retries is not None and self.attempt > self.max_retries:
                error = RetryLimitReached(self.max_retries, self._last_error)
                self._log.error("{error}", error=error)
                self._stop_soon()
                self._given_up.fire(Failure(error))
                return _NEVER
            self.retries += 1
            delay, self._retry_after = (
                (self._retry_after, None) if self._retry_after is not None else (self._policy(self.attempt), None)
            )
            self._log.info(
                "retry {attempt} in {delay:.2f} s (last: {error})",
                attempt=self.attempt, delay=delay, error=self._last_error,
            )
            if self.on_retry is not None:
                self.on_retry(self.attempt, delay)
            return delay
        finally:
            self._in_policy = False
