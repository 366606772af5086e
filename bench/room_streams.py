"""
What a node pays, through the bus, for rooms it has no member in, and for
reading many rooms.  Three tcphub nodes (bench/servers/tcphub_server.py
busroom) on one Redis: node a's sender says N messages to room "r", whose
other member is on node b; nodes b and c each hold R more members, each
alone in a room of its own (R = 0, 100, 1,000), and node c has no member
of "r".  Reported per message: the CPU of node a (which writes "r"), of
node b (which reads it), of node c (which has nothing to do with it) and of Redis, for pub/sub (every
node reads everything) and for Streams (a node reads the streams of its
rooms).  The CPU includes the probes and the members' joins: an upper bound.
Sent at once, the messages are read in batches; sent one at a time (the
next once the last has come), each is one read of every stream a node reads:
the worst case.

    .venv/bin/python bench/room_streams.py [--messages N]
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Server, cpu_seconds, pinned  # noqa: E402 (bench/run.py, beside this file)

ROOMS = (0, 100, 1000)
DEADLINE = 120.0
"""Seconds any one wait may take before the run is given up."""


class Member:
    """A raw TCP member of a busroom node (int32 framing)."""

    def __init__(self, port: int, room: str) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.settimeout(DEADLINE)
        self.send(b"J" + room.encode())
        self._buffer = b""

    def send(self, payload: bytes) -> None:
        self.socket.sendall(struct.pack("!I", len(payload)) + payload)

    def receive(self) -> bytes:
        while True:
            if len(self._buffer) >= 4:
                size = struct.unpack("!I", self._buffer[:4])[0]
                if len(self._buffer) >= 4 + size:
                    payload, self._buffer = self._buffer[4:4 + size], self._buffer[4 + size:]
                    return payload
            data = self.socket.recv(65536)
            if not data:
                raise SystemExit("a node closed a member")
            self._buffer += data

    def close(self) -> None:
        self.socket.close()


def run(transport: str, rooms: int, messages: int, lockstep: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        sock = f"{directory}/redis.sock"
        redis = subprocess.Popen(
            pinned(0, ["redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"]),
            stdout=subprocess.PIPE, text=True)
        nodes: list[Server] = []
        members: list[Member] = []
        try:
            for line in redis.stdout:
                if "eady to accept connections" in line:
                    break
            nodes = [Server("tcphub", "busroom", env={"TCPHUB_REDIS": f"unix://{sock}", "TCPHUB_NODE": name,
                                                      "TCPHUB_REDIS_BUS": transport}) for name in "abc"]
            a, b, c = nodes
            sender, receiver = Member(a.port, "r"), Member(b.port, "r")
            members = [sender, receiver]
            for node in (b, c):
                members.extend(Member(node.port, f"{node.port}-{n}") for n in range(rooms))
            # Probes until the receiver hears one: node b reads room r from then on.
            started = time.monotonic()
            receiver.socket.settimeout(0.2)
            while True:
                sender.send(b"probe")
                try:
                    if receiver.receive() == b"probe":
                        break
                except TimeoutError:
                    if time.monotonic() - started > DEADLINE:
                        raise SystemExit("node b never heard room r") from None
            receiver.socket.settimeout(DEADLINE)
            pids = [a.process.pid, b.process.pid, c.process.pid, redis.pid]
            before = [cpu_seconds(pid) for pid in pids]
            heard = 0
            for n in range(messages):
                sender.send(b"m%d" % n)
                while lockstep and heard <= n:
                    heard += receiver.receive().startswith(b"m")
            while heard < messages:
                heard += receiver.receive().startswith(b"m")
            spent = [cpu_seconds(pid) - start for pid, start in zip(pids, before)]
        finally:
            for member in members:
                member.close()
            for node in nodes:
                node.stop()
            redis.kill()
            redis.wait()
    return {name: seconds / messages * 1e6 for name, seconds in zip(("a", "b", "c", "redis"), spent)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    print("| sent | rooms on b and c | bus | node a µs/msg | node b µs/msg | node c µs/msg | Redis µs/msg |")
    print("|---|---|---|---|---|---|---|")
    for lockstep, messages in ((False, args.messages), (True, args.messages // 10)):
        for rooms in ROOMS:
            for transport in ("pubsub", "streams"):
                cost = run(transport, rooms, messages, lockstep)
                print(f"| {'one at a time' if lockstep else 'at once'} | {rooms:,} | {transport} | {cost['a']:.1f} "
                      f"| {cost['b']:.1f} "
                      f"| {cost['c']:.1f} | {cost['redis']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
