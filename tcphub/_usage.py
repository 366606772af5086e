"""Helpers shared by the plugins' command-line options."""

from __future__ import annotations

from typing import Callable

from tcphub.errors import RetryLimitReached
from tcphub.websocket import WebSocketHandler


def number(option: str, kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A C{usage.Options} coercer whose error names the option and what it takes."""
    what = "a whole number" if kind is int else "a number"

    def coerce(value: str) -> int | float:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"--{option} takes {what}, not {value!r}") from None

    coerce.coerceDoc = f"({what})"
    return coerce


def stop_when_given_up(handler: WebSocketHandler, reactor) -> None:
    """A daemon whose upstream gave up has nothing left to do: stop twistd
    (the handler has logged why)."""

    def stop(error, context) -> None:
        if isinstance(error, RetryLimitReached):
            reactor.stop()

    handler.on("error", stop)
