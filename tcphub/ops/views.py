"""
The JSON documents of the operations port, built from snapshots: pure
functions of their arguments (the site passes the clock's time), so that
they can be tested without a server.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Mapping

from tcphub.hub.metrics import ClientInfo, ClosedConnection, Metrics

__all__ = ["SORT_FIELDS", "BadQuery", "check_connz", "connz", "varz"]

SORT_FIELDS = ("connected", "idle", "bytes_received", "bytes_sent", "messages_received",
               "messages_sent", "pending_bytes", "held_bytes")
MAX_LIMIT = 1000


class BadQuery(ValueError):
    """A request's query cannot be answered (the site answers 400 with the
    message); any other exception while rendering is a bug, and a 500."""


def varz(*, version: str, options: Mapping[str, Any], limits: Mapping[str, Any] | None,
         metrics: Metrics | None, upstream: Mapping[str, Any] | None, now: float,
         bus: Mapping[str, Any] | None = None, websocket: Mapping[str, Any] | None = None,
         http: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The process at a glance: version, effective options and limits, counters, uptime."""
    document: dict[str, Any] = {"version": version, "now": now, "options": dict(options)}
    if limits is not None:
        document["limits"] = dict(limits)
    if metrics is not None:
        document["hub"] = asdict(metrics)
    if upstream is not None:
        document["upstream"] = dict(upstream)
    if bus is not None:
        document["bus"] = dict(bus)
    if websocket is not None:
        document["websocket"] = dict(websocket)
    if http is not None:
        document["http"] = dict(http)
    return document


_CLIENT_FIELDS = tuple(each.name for each in fields(ClientInfo) if each.name != "active")
_CLOSED_FIELDS = tuple(each.name for each in fields(ClosedConnection))


def _client(info: ClientInfo, now: float) -> dict[str, Any]:
    # Field by field, not dataclasses.asdict: its deep copies were 70% of a page's cost.
    record = {name: getattr(info, name) for name in _CLIENT_FIELDS}
    record["idle"] = round(max(0.0, now - info.active), 3)
    return record


def check_connz(*, limit: int, offset: int, sort: str, order: str) -> None:
    """Raise L{BadQuery} (the site answers 400) for an unknown field or
    order, or a limit or offset out of range."""
    if sort not in SORT_FIELDS:
        raise BadQuery(f"sort takes one of {', '.join(SORT_FIELDS)}, not {sort!r}")
    if order not in ("asc", "desc"):
        raise BadQuery(f"order takes asc or desc, not {order!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit takes 1 to {MAX_LIMIT}, not {limit}")
    if offset < 0:
        raise BadQuery(f"offset cannot be negative, not {offset}")


def connz(page: list[ClientInfo], closed: list[ClosedConnection], *, total: int, now: float,
          limit: int = 100, offset: int = 0, sort: str = "connected", order: str = "asc",
          closed_limit: int = 20) -> dict[str, Any]:
    """
    The document of a page of the client table (C{HubFactory.page} sorted
    and cut it), of C{total} clients, and the last clients that left with why.
    """
    check_connz(limit=limit, offset=offset, sort=sort, order=order)
    return {
        "now": now,
        "total": total,
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "order": order,
        "connections": [_client(info, now) for info in page],
        "closed": [{name: getattr(record, name) for name in _CLOSED_FIELDS} for record in closed[:closed_limit]],
    }
