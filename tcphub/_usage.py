"""Helpers shared by the plugins' command-line options."""

from __future__ import annotations

from typing import Callable


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
