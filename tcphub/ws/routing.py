"""
Route patterns over dotted paths (C{chat.room.message}): pure Python, no Twisted.

A pattern is a dotted path whose segments are words, C{*} (exactly one
segment) or C{#} (any number of segments, none included).  When several
patterns match a path, the most specific one wins: an exact pattern first, then
the one with more literal segments, then the one whose segments, read from the
left, are more specific (word over C{*} over C{#}).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from tcphub.errors import InvalidRoute, RouteConflict

T = TypeVar("T")

_WORD, _ONE, _ANY = 2, 1, 0


def _parse(pattern: str) -> tuple[str, ...]:
    if not isinstance(pattern, str) or not pattern:
        raise InvalidRoute(f"a route pattern is a non-empty string, not {pattern!r}")
    segments = tuple(pattern.split("."))
    for segment in segments:
        if not segment:
            raise InvalidRoute(f"empty segment in route pattern {pattern!r}")
        if segment not in ("*", "#") and ("*" in segment or "#" in segment):
            raise InvalidRoute(
                f"in {pattern!r}, '*' and '#' must be whole segments, not part of {segment!r}"
            )
    return segments


def _rank(segment: str) -> int:
    return _ANY if segment == "#" else _ONE if segment == "*" else _WORD


def _matches(pattern: tuple[str, ...], path: list[str]) -> bool:
    """Whether C{pattern} matches C{path}, in time linear in C{len(path)} times
    C{len(pattern)} whatever the wildcards: the pattern runs as an automaton
    whose states are the positions reached so far (a backtracking match is
    exponential with several C{#})."""
    end = len(pattern)

    def closure(states: set[int]) -> set[int]:
        # A '#' may match no segment: whoever reaches it reaches past it too.
        for index in sorted(states):
            while index < end and pattern[index] == "#":
                index += 1
                states.add(index)
        return states

    states = closure({0})
    for segment in path:
        following: set[int] = set()
        for index in states:
            if index < end:
                head = pattern[index]
                if head == "#":
                    following.add(index)
                elif head == "*" or head == segment:
                    following.add(index + 1)
        if not following:
            return False
        states = closure(following)
    return end in states


class Router(Generic[T]):
    """Patterns to targets (handlers); C{match} finds the most specific target for a path."""

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._wildcards: dict[str, tuple[tuple[str, ...], T]] = {}

    def add(self, pattern: str, target: T, replace: bool = False) -> None:
        """Route C{pattern} to C{target}; raise L{RouteConflict} if it is routed already."""
        segments = _parse(pattern)
        if not replace and pattern in self:
            raise RouteConflict(f"a route for {pattern!r} exists already (use replace=True)")
        if any(segment in ("*", "#") for segment in segments):
            self._wildcards[pattern] = (segments, target)
            self._wildcards = dict(
                sorted(self._wildcards.items(), key=lambda item: self._specificity(item[1][0]),
                       reverse=True)
            )
        else:
            self._exact[pattern] = target

    def remove(self, pattern: str) -> T:
        """Remove the route for exactly C{pattern}; raise L{KeyError} if there is none."""
        if pattern in self._exact:
            return self._exact.pop(pattern)
        if pattern in self._wildcards:
            return self._wildcards.pop(pattern)[1]
        raise KeyError(f"no route for {pattern!r}")

    def match(self, path: str) -> T | None:
        """The target of the most specific pattern matching C{path}, or None."""
        target = self._exact.get(path)
        if target is not None:
            return target
        if not self._wildcards:
            return None
        segments = path.split(".")
        for pattern, target in self._wildcards.values():
            if _matches(pattern, segments):
                return target
        return None

    def __contains__(self, pattern: str) -> bool:
        return pattern in self._exact or pattern in self._wildcards

    def patterns(self) -> list[str]:
        return [*self._exact, *self._wildcards]

    @staticmethod
    def _specificity(segments: tuple[str, ...]) -> tuple[int, tuple[int, ...]]:
        ranks = tuple(_rank(segment) for segment in segments)
        return ranks.count(_WORD), ranks

