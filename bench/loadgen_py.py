"""
The benchmarks' second load generator: Python asyncio (on uvloop when it is
installed), beside Node's (bench/loadgen.js), so that a figure that holds for
one kind of receiver is checked against another. Speaks int32 framing to
127.0.0.1; prints one JSON line of results; exits 1 if a delivery comes out
of order.

    python loadgen_py.py fanout PORT RECEIVERS SIZE MESSAGES
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time

HOST = "127.0.0.1"
_LENGTH = struct.Struct(">I")


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


class Receiver(asyncio.Protocol):
    """Cuts int32 frames; a probe (b"P") says it is registered; a message
    carries its number at bytes 1-4, checked in order."""

    def __init__(self, run: Fanout) -> None:
        self.run = run
        self.buffer = b""
        self.count = 0
        self.probed = False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        at, end = 0, len(buffer)
        while end - at >= 4:
            (length,) = _LENGTH.unpack_from(buffer, at)
            if end - at - 4 < length:
                break
            start = at + 4
            if buffer[start] == 0x50:  # "P"
                if not self.probed:
                    self.probed = True
                    self.run.probed += 1
            else:
                if _LENGTH.unpack_from(buffer, start + 1)[0] != self.count:
                    fail("fanout: a receiver got a message out of order")
                self.count += 1
                if self.count == self.run.messages:
                    self.run.complete += 1
                    if self.run.complete == self.run.receivers:
                        self.run.done.set_result(None)
            at = start + length
        self.buffer = buffer[at:]


class Fanout:
    def __init__(self, receivers: int, messages: int) -> None:
        self.receivers = receivers
        self.messages = messages
        self.probed = 0
        self.complete = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


async def fanout(port: int, receivers: int, size: int, messages: int) -> dict:
    loop = asyncio.get_running_loop()
    run = Fanout(receivers, messages)
    transports = []
    for _ in range(receivers):
        transport, _ = await loop.create_connection(lambda: Receiver(run), HOST, port)
        transports.append(transport)
    _, writer = await asyncio.open_connection(HOST, port)
    probe = _LENGTH.pack(1) + b"P"
    while run.probed < receivers:
        writer.write(probe)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # let the last probes land
    started = time.perf_counter()
    for sequence in range(messages):
        payload = bytearray(b"M" * size)
        payload[1:5] = _LENGTH.pack(sequence)
        writer.write(_LENGTH.pack(size) + payload)
        await writer.drain()
    try:
        await asyncio.wait_for(run.done, 120)
    except asyncio.TimeoutError:
        fail(f"fanout: not every receiver got all {messages} in 120 s")
    elapsed = time.perf_counter() - started
    writer.close()
    for transport in transports:
        transport.close()
    return {"messages": messages, "receivers": receivers, "seconds": elapsed,
            "deliveries_per_second": messages * receivers / elapsed}


def main() -> None:
    mode, *numbers = sys.argv[1:]
    if mode != "fanout" or len(numbers) != 4:
        fail("usage: python loadgen_py.py fanout PORT RECEIVERS SIZE MESSAGES")
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    print(json.dumps(run(fanout(*map(int, numbers)))))


if __name__ == "__main__":
    main()
