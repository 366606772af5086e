"""
Soak: rounds of 1,000 clients, well-behaved and faulty (bench/soak_clients.py),
against a tcphub broadcast hub run in this process, so that its metrics and
its memory can be read between rounds.

    .venv/bin/python bench/soak.py            # a warm-up round and seven more, under a minute

After each round it prints what the clients saw (messages lost, out of order),
each fault injected against what the hub counted, the client table, and this
process's RSS. The first round warms up; the RSS after the last round must be
within 10% of the RSS after the first, and no client's protocol object may be
left in memory after any round. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, protocol, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from tcphub import BroadcastProtocol, HubProtocol, TcpServer

HERE = Path(__file__).resolve().parent
MAX_FRAME = 4096
WAIT_LIMIT = 60.0
LOG = Path(tempfile.gettempdir()) / "tcphub-soak.log"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class LoadGenerator(protocol.ProcessProtocol):
    """The asyncio clients' process; its stdout is one JSON object a line."""

    def __init__(self) -> None:
        self.lines: defer.DeferredQueue[dict] = defer.DeferredQueue()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self.lines.put(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason) -> None:
        self.ended.callback(None)

    def tell(self, word: str) -> None:
        self.transport.write(word.encode() + b"\n")


@defer.inlineCallbacks
def until(reactor, condition, what: str):
    """Poll a condition the hub reaches on its own; bounded, this is a script."""
    for _ in range(int(WAIT_LIMIT / 0.05)):
        if condition():
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError(f"gave up waiting for {what}")


class ClosingBroadcast(BroadcastProtocol):
    """A broadcast hub whose clients leave at their FIN: the storm's clients
    connect and close, and a plain BroadcastProtocol would keep each as a
    listener until a write to it fails or it times out (README: half-closed
    clients), which would blur the count of the injected idle timeouts."""

    inputEnded = HubProtocol.inputEnded


@defer.inlineCallbacks
def soak(reactor, rounds: int):
    hub = TcpServer(
        port=0, framing="int32", protocol=ClosingBroadcast, timeout=3,
        max_frame=MAX_FRAME, max_pending=256 * 1024, max_connections=2000,
    )
    yield hub.start()
    clients = LoadGenerator()
    script = str(HERE / "soak_clients.py")
    reactor.spawnProcess(
        clients, sys.executable, [sys.executable, "-u", script, str(hub.port), str(MAX_FRAME), str(rounds)],
        env=os.environ,
    )
    failures: list[str] = []
    warm_rss = None
    for number in range(1, rounds + 1):
        before = hub.get_metrics()
        connected = yield clients.lines.get()
        yield until(reactor, lambda: len(hub.clients()) >= connected["clients"], "the clients to connect")
        clients.tell("go")
        seen = yield clients.lines.get()
        yield until(reactor, lambda: hub.get_metrics().connections == 0, "the client table to empty")
        after = hub.get_metrics()
        counted = {name: getattr(after, name) - getattr(before, name)
                   for name in ("accepted", "protocol_errors", "slow_consumers", "timed_out", "rejected")}
        gc.collect()
        rss = rss_kib()
        alive = sum(isinstance(o, HubProtocol) for o in gc.get_objects())
        warm_rss = warm_rss or rss
        label = "warm-up" if number == 1 else f"round {number}"
        print(f"\n{label}: {seen['clients']} clients, {seen['traffic_seconds']} s of traffic")
        print(f"  receivers: {seen['receivers']}, each expecting {seen['messages_each']} broadcasts:"
              f" lost {seen['lost']}, out of order {seen['out_of_order']}")
        for fault in ("protocol_errors", "slow_consumers", "timed_out"):
            print(f"  {fault}: injected {seen['injected'][fault]}, counted {counted[fault]}")
        print(f"  dropped mid-frame: {seen['injected']['dropped_mid_frame']}, connect-and-close storm:"
              f" {seen['injected']['storm']}; accepted {counted['accepted']}, rejected {counted['rejected']}")
        print(f"  idle clients timed out after {seen['idle_timed_out_after']} s (timeout 3 s)")
        print(f"  client table after: {len(hub.clients())}; client protocols still in memory: {alive};"
              f" RSS {rss / 1024:.1f} MiB")
        checks = {
            "messages lost": seen["lost"] == 0,
            "messages out of order": seen["out_of_order"] == 0,
            "clients accepted": counted["accepted"] == seen["clients"],
            "client table empty": hub.clients() == [],
            "no client protocol left in memory": alive == 0,
            **{f"{fault} counted": counted[fault] == seen["injected"][fault]
               for fault in ("protocol_errors", "slow_consumers", "timed_out")},
        }
        failures += [f"{label}: {name}" for name, ok in checks.items() if not ok]
        if number < rounds:
            clients.tell("next")
    yield clients.ended
    drift = (rss - warm_rss) / warm_rss
    print(f"\nRSS after the warm-up {warm_rss / 1024:.1f} MiB, after the last round "
          f"{rss / 1024:.1f} MiB: drift {drift:+.1%} (limit 10%)")
    if abs(drift) > 0.10:
        failures.append(f"RSS drift {drift:+.1%}")
    yield hub.stop()
    print("\nFAILED:\n  " + "\n  ".join(failures) if failures else "\nall checks passed")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds, the first a warm-up (default 8)")
    args = parser.parse_args()
    # Until logging begins, Twisted keeps every event (and the protocols they
    # name) in memory: begin it, to a file, for the RSS figures to mean anything.
    print(f"hub log: {LOG}")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(LOG.open("w"))], redirectStandardIO=False)
    task.react(lambda reactor: soak(reactor, max(2, args.rounds)).addCallback(
        lambda code: (code and sys.exit(code))))


if __name__ == "__main__":
    main()
