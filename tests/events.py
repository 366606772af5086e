"""Waiting on the events of a TcpServer or a WebSocketHandler, instead of sleeping."""

from __future__ import annotations

from twisted.internet.defer import Deferred


def when_events(source, event: str, count: int = 1) -> Deferred[list[tuple]]:
    """Fires with the arguments of the next C{count} C{event}s of C{source}."""
    seen: list[tuple] = []
    done: Deferred[list[tuple]] = Deferred()

    def record(*args) -> None:
        seen.append(args)
        if len(seen) == count:
            subscription.cancel()
            done.callback(seen)

    subscription = source.on(event, record)
    return done


def when_event(source, event: str) -> Deferred[tuple]:
    """Fires with the arguments of the next C{event} of C{source}."""
    return when_events(source, event, 1).addCallback(lambda seen: seen[0])
