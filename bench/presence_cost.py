"""Reactor time of one bus presence heartbeat with 10,000 members in one
room and in 1,000 rooms (an in-memory Redis: what the node itself spends),
for members without a name (HubProtocol) and with one (the chat's nicks,
written for a cluster-wide /who; every chat member is in #lobby too): a
heartbeat after one when nothing changed, and one after a member of each
room said its presence changed (its line in each of its rooms' lists
written anew).
Run: `.venv/bin/python bench/presence_cost.py`."""

import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tcphub import HubProtocol, TcpServer
from tcphub.hub.modes import ChatProtocol
from tcphub.bus.redis import RedisBus
from tcphub.testing import MemoryRedis


def beat_cost(members: int, rooms: int, protocol: type, changed: bool, beats: int = 20) -> float:
    redis = MemoryRedis()
    hub = TcpServer(port=0, clock=Clock(), protocol=protocol, timeout=0, frame_timeout=0)
    bus = RedisBus(hub, "redis://memory/0", node_id="a", endpoint=redis)
    bus.startService()
    redis.answer()
    firsts = []
    for n in range(members):
        client = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10000 + n))
        client.makeConnection(StringTransport())
        hub.factory.join(client.client_id, f"room-{n % rooms}")
        if n < rooms:
            firsts.append(client)
    publisher = redis.connections[0][0]
    spent = 0.0
    for _ in range(beats):
        hub.factory.clock.advance(bus.heartbeat)
        redis.answer()  # the node id's claim, answered: what follows is the beat's work
        for client in firsts if changed else ():
            client.presenceChanged()
        start = time.perf_counter()
        bus._claimed(1, publisher, 3000)  # the presence the claim's reply writes
        spent += time.perf_counter() - start
        redis.answer()
    bus.stopService()
    return spent / beats


for protocol in (HubProtocol, ChatProtocol):
    for rooms in (1, 1000):
        for changed in (False, True):
            cost = beat_cost(10_000, rooms, protocol, changed)
            print(f"{protocol.__name__}, 10,000 members in {rooms} room(s), "
                  f"{'a presence changed in each room' if changed else 'nothing changed'}: "
                  f"{cost * 1000:.2f} ms per heartbeat")
