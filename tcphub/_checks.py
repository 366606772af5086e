"""
Checks of option values, shared by the Python API (which raises
L{ValueError} or L{TypeError}) and the plugins' command lines (which turn the
same message into a usage error): one rule per option, one wording.
"""

from __future__ import annotations

import math
import os


def number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    integer: bool = False,
) -> float:
    """Return C{value} if it is a finite number in range, else raise an
    error that names the option C{name} and what it takes."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not isinstance(value, int)
    ):
        raise TypeError(f"{name} takes {kind}, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} takes a finite number, not {value!r}")
    if minimum == 0 and value < 0:
        raise ValueError(f"{name} cannot be negative, not {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, not {value!r}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be more than {above}, not {value!r}")
    return value


def count(name: str, value: object, minimum: int = 1) -> int:
    """A whole number of things (bytes, connections, messages), at least C{minimum}."""
    return int(number(name, value, minimum=minimum, integer=True))


def count_or_none(name: str, value: object, minimum: int = 1) -> int | None:
    """L{count}, or C{None} for no limit."""
    return None if value is None else count(name, value, minimum)


def flag(name: str, value: object) -> bool:
    """Return C{value} if it is a bool (C{"no"} is not)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} takes True or False, not {value!r}")
    return value


def node_id(name: str, value: object) -> str:
    """A node's name, the prefix of its client ids: printable, without the dash that ends it."""
    if not isinstance(value, str) or not value or "-" in value or not value.isprintable():
        raise ValueError(f"{name} is printable, without '-', and not empty: {value!r}")
    return value


def deployment(name: str, value: object) -> str:
    """A deployment's name on a Redis, the prefix of its channel and keys."""
    if not isinstance(value, str) or not value or len(value) > 64 or any(c.isspace() for c in value):
        raise ValueError(f"{name} is 1 to 64 characters without spaces, not {value!r}")
    return value


def directory(name: str, value: str) -> str:
    """The path of an existing directory."""
    if not os.path.isdir(value):
        raise ValueError(f"{name} {value!r} is not a directory")
    return value


def seconds_or_none(name: str, value: object) -> float | None:
    """A duration in seconds where C{None} or C{0} disables the limit."""
    if value is None:
        return None
    return number(name, value, minimum=0) or None
