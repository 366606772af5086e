"""What the two twistd plugins share: option coercion and process behaviour."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

from twisted.application.service import Service
from twisted.logger import Logger

from tcphub import _checks
from tcphub.errors import RetryLimitReached
from tcphub.websocket import WebSocketHandler


def number(option: str, kind: type[int] | type[float], **limits: float) -> Callable[[str], int | float]:
    """A C{usage.Options} coercer whose error names the option and what it
    takes; C{limits} are those of L{tcphub._checks.number}."""
    what = "a whole number" if kind is int else "a number"

    def coerce(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"--{option} takes {what}, not {text!r}") from None
        try:
            return _checks.number(f"--{option}", value, integer=kind is int, **limits)
        except TypeError as error:
            raise ValueError(str(error)) from None

    coerce.coerceDoc = f"({what})"
    return coerce


def stop_when_given_up(handler: WebSocketHandler, reactor) -> None:
    """A daemon whose upstream gave up has nothing left to do: stop twistd
    (the handler has logged why)."""

    def stop(error, context) -> None:
        if isinstance(error, RetryLimitReached):
            reactor.stop()

    handler.on("error", stop)


class SecondInterruptExits(Service):
    """
    Once twistd is shutting down (connections draining, up to the drain
    timeout), a second SIGINT (Ctrl-C) exits at once instead of being ignored.
    """

    _log = Logger()

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.addSystemEventTrigger("before", "shutdown", self._arm)

    def _arm(self) -> None:
        signal.signal(signal.SIGINT, self._exit_now)
        self._log.info("shutting down; interrupt again to exit at once")

    def _exit_now(self, signum: int, frame: object) -> None:
        sys.stderr.write("second interrupt: exiting without waiting for the drain\n")
        sys.stderr.flush()
        os._exit(128 + signal.SIGINT)
