"""
Which fields of a status dataclass are counters and which are gauges, said
where the field is declared (C{field(metadata=COUNTER)} or C{GAUGE}), so that the
operations port's collector reads the lists from the dataclass and a
renamed field cannot break a scrape.
"""

from __future__ import annotations

from dataclasses import Field, fields
from typing import Any, Mapping

__all__ = ["COUNTER", "GAUGE", "counters", "gauges"]

_KIND = "tcphub.metric"

COUNTER: Mapping[str, str] = {_KIND: "counter"}
"""A field that only goes up: exported as C{<prefix>_<name>_total}."""
GAUGE: Mapping[str, str] = {_KIND: "gauge"}
"""A field that goes up and down: exported as C{<prefix>_<name>}."""


def _named(cls: Any, kind: str) -> tuple[Field[Any], ...]:
    return tuple(each for each in fields(cls) if each.metadata.get(_KIND) == kind)


def counters(cls: Any) -> tuple[str, ...]:
    """The names of C{cls}'s counter fields, in declaration order."""
    return tuple(each.name for each in _named(cls, "counter"))


def gauges(cls: Any) -> tuple[tuple[str, str], ...]:
    """C{(name, docstring-free help)} of C{cls}'s gauge fields."""
    return tuple((each.name, each.name.replace("_", " ").capitalize() + ".") for each in _named(cls, "gauge"))
