"""
WebSocket faults: the `websockets` package's echo server (tests/ws_server.py)
is killed and restarted 20 times while a WebSocketHandler streams messages.

    .venv/bin/python bench/ws_faults.py [--restarts 20]

Each connection carries a burst of sends; once they have all come back, the
server is killed; a burst is sent while it is down (queued); it is restarted
and the handler's retry (on a Clock, so there is exactly one per outage)
reconnects. Prints restarts against reconnects and retries, messages sent
against received, duplicates and order per connection, and the timers and
connections left at the end. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcphub import WebSocketHandler  # noqa: E402
from tests.events import when_event  # noqa: E402
from tests.processes import WebSocketServer  # noqa: E402

BURST = 50


@defer.inlineCallbacks
def faults(reactor, restarts: int):
    # One turn first, so that the reactor's own wakers are in the baseline.
    yield task.deferLater(reactor, 0, lambda: None)
    before = set(reactor.getReaders()) | set(reactor.getWriters())
    server = WebSocketServer()
    clock = task.Clock()
    ws = WebSocketHandler(clock=clock, ping_interval=0, jitter=0.0, max_retries=None)
    echoes: dict[str, list[int]] = defaultdict(list)
    ws.add_route("seq", lambda n, context: echoes[context.connection_id].append(n))
    sent = 0

    def burst() -> list[defer.Deferred]:
        nonlocal sent
        sending = [ws.send("seq", n) for n in range(sent, sent + BURST)]
        sent += BURST
        return sending

    def received() -> int:
        return sum(len(numbers) for numbers in echoes.values())

    @defer.inlineCallbacks
    def echoed_all():
        while received() < sent:
            yield task.deferLater(reactor, 0.01, lambda: None)

    yield ws.connect(server.url)
    retries_seen = 0
    try:
        for _ in range(restarts):
            yield defer.gatherResults(burst())
            yield echoed_all()
            closed, retry = when_event(ws, "close"), when_event(ws, "retry")
            server.stop()
            server.kill()
            yield closed
            _, delay, _ = yield retry
            retries_seen += 1
            yield task.deferLater(reactor, 0, lambda: None)
            queued = burst()
            server = WebSocketServer(port=server.port)
            opened = when_event(ws, "open")
            clock.advance(delay)
            yield opened
            yield defer.gatherResults(queued)
        yield echoed_all()
    finally:
        yield ws.close()
        server.kill()
    yield task.deferLater(reactor, 0, lambda: None)

    status = ws.get_status()
    numbers = [n for numbers in echoes.values() for n in numbers]
    in_order = all(numbers == sorted(numbers) for numbers in echoes.values())
    leftover_timers = reactor.getDelayedCalls() + clock.getDelayedCalls()
    leftover_connections = (set(reactor.getReaders()) | set(reactor.getWriters())) - before
    print(f"server restarts:      {restarts}")
    print(f"reconnects:           {status.reconnects}")
    print(f"retries (status):     {status.retries}, retry events seen: {retries_seen}")
    print(f"connections used:     {len(echoes)}")
    print(f"messages sent:        {sent}")
    print(f"messages received:    {len(numbers)} ({len(set(numbers))} distinct)")
    print(f"duplicates:           {len(numbers) - len(set(numbers))}")
    print(f"lost:                 {sent - len(set(numbers))}")
    print(f"in order per connection: {in_order}")
    print(f"timers left:          {len(leftover_timers)}; connections left: {len(leftover_connections)}")
    checks = {
        "reconnects": status.reconnects == restarts,
        "retries": status.retries == retries_seen == restarts,
        "lost": len(set(numbers)) == sent,
        "duplicates": len(numbers) == len(set(numbers)),
        "order": in_order and numbers == list(range(sent)),
        "timers": not leftover_timers,
        "connections": not leftover_connections,
    }
    failed = [name for name, ok in checks.items() if not ok]
    print("FAILED: " + ", ".join(failed) if failed else "all checks passed")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=20)
    args = parser.parse_args()
    task.react(lambda reactor: faults(reactor, args.restarts).addCallback(
        lambda code: (code and sys.exit(code))))


if __name__ == "__main__":
    main()
