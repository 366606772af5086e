"""
L{HubSurface}: the part of a hub that the rooms beside it use, the browser
members' transport (L{tcphub.web}) and the relay to other nodes
(L{tcphub.bus}).  The hub's read batch, its counters and its repeated-fault
log stay the hub's own; these rooms reach them only through here, and keep
counters of their own.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel

from tcphub._repeats import RepeatedLog
from tcphub.errors import TcpHubError
from tcphub.hub.outbox import ReadBatch

__all__ = ["HubSurface"]


class HubSurface:
    """One per hub (C{HubFactory.surface})."""

    __slots__ = ("clock", "_batch", "_repeats", "_report")

    def __init__(self, clock: IReactorTime, batch: ReadBatch, repeats: RepeatedLog,
                 report: Any) -> None:
        self.clock = clock
        """The hub's clock: every deadline of a room beside it runs on it."""
        self._batch = batch
        self._repeats = repeats
        self._report = report

    def read_begins(self) -> None:
        """A read of a member's or another node's bytes begins: what it makes
        the hub write to each client goes out as one write, at L{read_ends}."""
        self._batch.begin()

    def read_ends(self) -> None:
        """The read is handled (call it in a C{finally})."""
        self._batch.end()

    def fault(self, kind: str, level: LogLevel, format: str, /, **fields: Any) -> None:
        """Log a fault of C{kind}: the first at once, then one line per burst."""
        self._repeats.emit(kind, level, format, **fields)

    def report(self, error: TcpHubError) -> None:
        """Emit C{error} on the hub's C{error} event (no client concerned)."""
        self._report(None, error)
