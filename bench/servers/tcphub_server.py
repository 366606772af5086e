"""tcphub's TcpServer, as twistd tcphub builds it, on a chosen reactor; prints
its metrics as JSON when a line arrives on stdin (to check the client table).

    python tcphub_server.py echo|timed|broadcast|room|wsfanout [default|asyncio|uvloop]

timed: echo, with twistd tcphub's default idle timeout (300 s); the others have none.

wsfanout: broadcast, with WebSocket members on a second port (printed as "ws PORT").
bus: broadcast, joined with the other nodes through the Redis of $TCPHUB_REDIS
as node $TCPHUB_NODE; starts listening once subscribed.
busroom: room, joined with the other nodes as bus is.

room: a frame "J<name>" joins that room; any other frame goes to room "r",
to every member but the sender.
"""

import json
import sys
from dataclasses import asdict

reactor_name = sys.argv[2] if len(sys.argv) > 2 else "default"
if reactor_name in ("asyncio", "uvloop"):
    import asyncio

    if reactor_name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from twisted.internet import asyncioreactor

    asyncioreactor.install(asyncio.new_event_loop())

from twisted.internet import reactor, stdio  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver  # noqa: E402

from tcphub import HubProtocol, TcpServer  # noqa: E402
from tcphub.hub.modes import MODES  # noqa: E402

# As twistd does: log to a file (here stderr, info and up). Until logging
# begins, Twisted keeps every event in memory, which an idle-memory count sees.
globalLogBeginner.beginLoggingTo(
    [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)])],
    redirectStandardIO=False,
)

class RoomFanout(HubProtocol):
    def messageReceived(self, payload):
        if payload[:1] == b"J":
            self.join(payload[1:].decode())
        else:
            self.broadcastMessage(payload, room="r")


mode = sys.argv[1]
server = TcpServer(
    port=0, framing="int32", protocol=RoomFanout if mode in ("room", "busroom") else MODES[
        "broadcast" if mode in ("wsfanout", "bus") else "echo" if mode == "timed" else mode],
    backlog=4096, timeout=300.0 if mode == "timed" else None, max_frame=1 << 20, max_pending=64 << 20, max_connections=19_000, reactor=reactor,
)
members = None
if mode == "wsfanout":
    from tcphub import WebSocketMembers

    # The load generator's 1,000 members all come from 127.0.0.1 at once: lift the
    # per-address bounds on handshakes that guard the port against one hostile host.
    # The heartbeat is the default one (a ping every 30 s): an idle member's cost includes it.
    members = WebSocketMembers(server, "tcp:0:interface=127.0.0.1:backlog=4096",
                               max_handshakes=4096, max_handshakes_per_address=4096, max_handshake_rate=None,
                               reactor=reactor)


class Metrics(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(json.dumps(asdict(server.get_metrics())).encode())


def started(_):
    print(f"listening on {server.port}" + (f" ws {members.port}" if members else ""), flush=True)
    stdio.StandardIO(Metrics())


if members is not None:
    members.startService()
if mode in ("bus", "busroom"):
    import os

    from twisted.internet.task import deferLater

    from tcphub.bus.redis import RedisBus

    bus = RedisBus(server, os.environ["TCPHUB_REDIS"], node_id=os.environ["TCPHUB_NODE"],
                   transport=os.environ.get("TCPHUB_REDIS_BUS", "pubsub"), reactor=reactor)
    bus.startService()

    def subscribed(_=None):
        if not bus.status().subscribed:
            return deferLater(reactor, 0.05, subscribed)
        return None

    server.start().addCallback(subscribed).addCallback(started)
else:
    server.start().addCallback(lambda _: members.when_listening() if members else None).addCallback(started)
reactor.run()
