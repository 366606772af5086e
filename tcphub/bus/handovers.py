"""
L{Handovers}: the resumes of one node that wait for another node to hand a
session over (a member back here while its old connection is still open
there).  Pure: the bus asks the other nodes and brings their answers; this
keeps who has not answered yet, and gives up on the hub's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["MAX_HANDOVERS", "Handovers"]

MAX_HANDOVERS: Final = 1000
"""Resumes that may wait at once; past it, L{Handovers.ask} says no at once
(a flood of forged ids costs each node one message each, never more)."""


@dataclass
class _Waiting:
    nodes: set[str]
    """The nodes asked that have not answered yet."""
    done: Deferred[bool]
    call: IDelayedCall
    """When it is given up."""


class Handovers:
    """Waits for the answers about one session each, keyed by its digest;
    each gives up after C{timeout} seconds on C{clock}."""

    def __init__(self, clock: IReactorTime, timeout: float, limit: int = MAX_HANDOVERS) -> None:
        self._clock = clock
        self._timeout = timeout
        self._limit = limit
        self._waiting: dict[str, _Waiting] = {}

    def ask(self, digest: str, nodes: Iterable[str]) -> Deferred[bool] | None:
        """Wait for C{nodes}' answers about the session C{digest}: fires
        True at the first that handed it over, False once each said it has
        not it, or at the timeout.  None (nothing to ask) if there is no
        node, the session is waited for already, or C{limit} wait."""
        asked = set(nodes)
        if not asked or digest in self._waiting or len(self._waiting) >= self._limit:
            return None
        waiting = self._waiting[digest] = _Waiting(asked, Deferred(),
                                                   self._clock.callLater(self._timeout, self._end, digest, False))
        return waiting.done

    def answered(self, node: str, digest: str, handed: bool) -> bool:
        """C{node} answers about C{digest}; True if that hands the session
        to a resume waiting here (what the bus counts)."""
        waiting = self._waiting.get(digest)
        if waiting is None or node not in waiting.nodes:  # given up on, or not asked
            return False
        if handed:
            self._end(digest, True)
            return True
        waiting.nodes.discard(node)
        if not waiting.nodes:
            self._end(digest, False)
        return False

    def give_up(self) -> None:
        """The bus leaves: every wait ends, without the session."""
        for digest in list(self._waiting):
            self._end(digest, False)

    def _end(self, digest: str, handed: bool) -> None:
        waiting = self._waiting.pop(digest)
        if waiting.call.active():
            waiting.call.cancel()
        waiting.done.callback(handed)
