"""
The soak's load generator: 1,000 asyncio clients a round against a tcphub
broadcast hub with int32 framing, well-behaved and faulty, driven by
bench/soak.py over stdin/stdout (one JSON object a line).

A round:
  phase A  50 receivers, 25 senders and 50 readers that never read connect;
           once the hub has them all (soak.py says "go"), the senders send,
           while 475 connect-and-close clients, 100 that drop mid-frame,
           100 that send garbage and 100 that send an over-long frame come
           and go. Receivers check that every broadcast came, in order per sender.
           The senders go in batches, each once the receivers have the last
           one: a well-behaved receiver is never a slow one, while the readers
           that never read pile up the whole volume and must be dropped.
  phase B  100 clients connect and send nothing until the hub times them out.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import time

HEADER = struct.Struct(">I")
MESSAGE = struct.Struct(">cHI")  # b"M", sender, sequence
HEARTBEAT = HEADER.pack(1) + b"H"

RECEIVERS, SENDERS, STUCK = 50, 25, 50
STORM, MID_FRAME, GARBAGE, OVERLONG, IDLE = 475, 100, 100, 100, 100
PER_SENDER, BATCH, SIZE = 160, 4, 1024
ROUND_DEADLINE = 60.0


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


async def hear(expected: str) -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != expected:
        raise SystemExit(f"expected {expected!r} from soak.py, got {line!r}")


async def read_frames(reader: asyncio.StreamReader, on_frame) -> None:
    try:
        while True:
            (length,) = HEADER.unpack(await reader.readexactly(4))
            on_frame(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return


async def heartbeat(writer: asyncio.StreamWriter) -> None:
    while not writer.transport.is_closing():
        writer.write(HEARTBEAT)
        await asyncio.sleep(1.0)


class Receiver:
    def __init__(self) -> None:
        self.next_sequence = [0] * SENDERS
        self.received = 0
        self.out_of_order = 0
        self.target = 0
        self.reached = asyncio.Event()

    def on_frame(self, frame: bytes) -> None:
        if frame[:1] != b"M":
            return
        _, sender, sequence = MESSAGE.unpack_from(frame)
        if sequence != self.next_sequence[sender]:
            self.out_of_order += 1
        self.next_sequence[sender] = sequence + 1
        self.received += 1
        if self.received >= self.target:
            self.reached.set()

    async def wait_for(self, count: int) -> None:
        self.target = count
        self.reached.clear()
        if self.received < count:
            await self.reached.wait()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def send_in_batches(writers: list[asyncio.StreamWriter], receivers: list[Receiver]) -> None:
    padding = b"p" * (SIZE - MESSAGE.size)
    for first in range(0, PER_SENDER, BATCH):
        for index, writer in enumerate(writers):
            for sequence in range(first, first + BATCH):
                body = MESSAGE.pack(b"M", index, sequence) + padding
                writer.write(HEADER.pack(len(body)) + body)
        await asyncio.gather(*(writer.drain() for writer in writers))
        delivered = (first + BATCH) * len(writers)
        await asyncio.gather(*(receiver.wait_for(delivered) for receiver in receivers))


def raw_socket(receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    return sock


async def stuck_reader(port: int, dropped: list[int]) -> socket.socket:
    """Connects with a tiny receive buffer, sends heartbeats, never reads."""
    loop = asyncio.get_running_loop()
    sock = raw_socket(receive_buffer=4096)
    await loop.sock_connect(sock, ("127.0.0.1", port))

    async def beat() -> None:
        try:
            while True:
                await loop.sock_sendall(sock, HEARTBEAT)
                await asyncio.sleep(1.0)
        except OSError:
            dropped.append(1)

    asyncio.ensure_future(beat())
    return sock


async def faulty(port: int, kind: str, max_frame: int) -> None:
    reader, writer = await connect(port)
    if kind == "mid-frame":
        writer.write(HEADER.pack(100) + b"only a part")
        await writer.drain()
        writer.transport.abort()
        return
    if kind == "garbage":
        writer.write(b"\xff" + os.urandom(200))
    elif kind == "overlong":
        writer.write(HEADER.pack(max_frame + 1) + b"x" * 100)
    await writer.drain()
    await read_frames(reader, lambda frame: None)  # until the hub closes us
    await close(writer)


async def storm(port: int, gate: asyncio.Semaphore) -> None:
    async with gate:
        _, writer = await connect(port)
        await close(writer)


async def idle(port: int) -> float:
    reader, writer = await connect(port)
    started = time.monotonic()
    await read_frames(reader, lambda frame: None)  # until the hub times us out
    await close(writer)
    return time.monotonic() - started


async def play_round(port: int, max_frame: int) -> dict:
    receivers = [Receiver() for _ in range(RECEIVERS)]
    streams = [await connect(port) for _ in range(RECEIVERS + SENDERS)]
    dropped: list[int] = []
    stuck = [await stuck_reader(port, dropped) for _ in range(STUCK)]
    tasks = [asyncio.ensure_future(heartbeat(writer)) for _, writer in streams]
    for (reader, _), receiver in zip(streams, receivers):
        tasks.append(asyncio.ensure_future(read_frames(reader, receiver.on_frame)))
    for reader, _ in streams[RECEIVERS:]:
        tasks.append(asyncio.ensure_future(read_frames(reader, lambda frame: None)))
    say(event="connected", clients=RECEIVERS + SENDERS + STUCK)
    await hear("go")

    gate = asyncio.Semaphore(100)
    chaos = [storm(port, gate) for _ in range(STORM)]
    chaos += [faulty(port, kind, max_frame) for kind, count in
              (("mid-frame", MID_FRAME), ("garbage", GARBAGE), ("overlong", OVERLONG))
              for _ in range(count)]
    writers = [writer for _, writer in streams[RECEIVERS:]]
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*chaos, send_in_batches(writers, receivers)), ROUND_DEADLINE
        )
    except asyncio.TimeoutError:
        pass  # counted below as lost messages
    traffic_seconds = time.monotonic() - started
    deadline = time.monotonic() + ROUND_DEADLINE
    while len(dropped) < STUCK and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    for _, writer in streams:
        await close(writer)
    for sock in stuck:
        sock.close()

    idle_seconds = await asyncio.gather(*(idle(port) for _ in range(IDLE)))
    expected = SENDERS * PER_SENDER
    return {
        "event": "round",
        "clients": RECEIVERS + SENDERS + STUCK + STORM + MID_FRAME + GARBAGE + OVERLONG + IDLE,
        "receivers": RECEIVERS,
        "messages_each": expected,
        "lost": sum(expected - r.received for r in receivers),
        "out_of_order": sum(r.out_of_order for r in receivers),
        "stuck_dropped": len(dropped),
        "traffic_seconds": round(traffic_seconds, 2),
        "idle_timed_out_after": round(min(idle_seconds), 2),
        "injected": {"protocol_errors": GARBAGE + OVERLONG, "slow_consumers": STUCK,
                     "timed_out": IDLE, "dropped_mid_frame": MID_FRAME, "storm": STORM},
    }


async def main() -> None:
    port, max_frame, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for number in range(rounds):
        say(**await play_round(port, max_frame))
        if number < rounds - 1:
            await hear("next")


if __name__ == "__main__":
    asyncio.run(main())
