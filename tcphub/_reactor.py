"""The global reactor, for callers that inject none."""

from __future__ import annotations

from typing import Any


def default_reactor() -> Any:
    """Twisted's global reactor, imported only now: importing tcphub must not
    install one (a tac file or a test may install its own first)."""
    from twisted.internet import reactor

    return reactor
