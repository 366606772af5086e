"""
The cost of decoding large frames: Twisted's receivers (what tcphub used
before) against tcphub's decoders, fed as the reactor feeds them (64 KiB
reads), and a peer trickling single bytes into a large partial frame.

    .venv/bin/python bench/large_frames.py

CPU seconds (time.process_time), one process, side by side.
"""

from __future__ import annotations

import struct
import time

from twisted.internet.testing import StringTransport
from twisted.protocols import basic

from tcphub.hub.framing import get_framing

MiB = 1024 * 1024
READ = 64 * 1024


class _Count:
    def __init__(self) -> None:
        self.frames = 0

    def frameReceived(self, payload: bytes) -> None:
        self.frames += 1

    def frameError(self, error: Exception) -> None:
        raise SystemExit(f"decoder error: {error}")


def twisted_receiver(name: str, sink: _Count, max_frame: int):
    if name == "int32":
        receiver = basic.Int32StringReceiver()
        receiver.stringReceived = sink.frameReceived
    else:
        receiver = basic.LineOnlyReceiver()
        receiver.delimiter = b"\n"
        receiver.lineReceived = sink.frameReceived
    receiver.MAX_LENGTH = max_frame
    receiver.makeConnection(StringTransport())
    return receiver


def tcphub_decoder(name: str, sink: _Count, max_frame: int):
    return get_framing(name).decoder(sink, max_frame)


def wire(name: str, size: int) -> bytes:
    return struct.pack(">I", size) + b"x" * size if name == "int32" else b"x" * size + b"\n"


def whole_frame(make, name: str, size: int) -> float:
    data = wire(name, size)
    sink = _Count()
    decoder = make(name, sink, size + 1)
    start = time.process_time()
    for offset in range(0, len(data), READ):
        decoder.dataReceived(data[offset : offset + READ])
    elapsed = time.process_time() - start
    assert sink.frames == 1
    return elapsed


def trickle(make, name: str, buffered: int, drops: int) -> float:
    """CPU per byte once C{buffered} bytes of a frame wait for the rest."""
    data = wire(name, buffered + drops + 1)
    sink = _Count()
    decoder = make(name, sink, len(data))
    for offset in range(0, buffered, READ):
        decoder.dataReceived(data[offset : min(offset + READ, buffered)])
    start = time.process_time()
    for offset in range(buffered, buffered + drops):
        decoder.dataReceived(data[offset : offset + 1])
    return (time.process_time() - start) / drops


def main() -> None:
    print("| framing | case | Twisted's receiver | tcphub | ratio |")
    print("|---|---|---|---|---|")
    for name in ("int32", "line"):
        for size in (8 * MiB, 32 * MiB):
            old = whole_frame(twisted_receiver, name, size)
            new = whole_frame(tcphub_decoder, name, size)
            print(f"| {name} | one {size // MiB} MiB frame in 64 KiB reads | {old:.3f} s | {new:.4f} s | {old / max(new, 1e-9):,.0f}× |")
        old = trickle(twisted_receiver, name, 30 * MiB, 200)
        new = trickle(tcphub_decoder, name, 30 * MiB, 200)
        print(f"| {name} | 1-byte reads into a 30 MiB partial frame, per byte | {old * 1e3:.2f} ms | {new * 1e6:.2f} µs | {old / max(new, 1e-9):,.0f}× |")


if __name__ == "__main__":
    main()
