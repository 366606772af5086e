"""
Two hostile WebSocket members against a twistd hub, measured from outside:

  - a ping flood from a peer that never reads: the hub's RSS growth, and
    whether the peer is dropped;
  - a flood of empty continuation frames: the hub's CPU seconds over the
    run, and whether the peer is dropped.

Each runs for at most --seconds against 127.0.0.1 only, and stops by itself.

    .venv/bin/python bench/ws_floods.py [--repo PATH] [--seconds 5]

--repo runs the hub from another checkout (e.g. a worktree of an older
commit), to compare before and after.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import tempfile
import time
from pathlib import Path

from tac_hub import start_hub

HERE = Path(__file__).resolve().parent.parent
OPTIONS = ["--port", "0", "--websocket", "tcp:0:interface=127.0.0.1", "--timeout", "0"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def member(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer[:100]
    return sock


def frame(opcode: int, final: bool = True) -> bytes:
    return bytes([(0x80 if final else 0) | opcode, 0x80]) + b"\x01\x02\x03\x04"


def flood(sock: socket.socket, data: bytes, seconds: float) -> tuple[float, bool]:
    """Send C{data} over and over for at most C{seconds}; (seconds sent, dropped)."""
    sock.settimeout(0.5)
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        try:
            sock.sendall(data)
        except socket.timeout:
            continue  # the hub stopped reading for a moment
        except OSError:
            return time.monotonic() - began, True
    return time.monotonic() - began, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        process, (port,) = start_hub(args.repo, Path(directory), OPTIONS, ["tcphub websocket"])
        try:
            before = rss_kib(process.pid)
            pinger = member(port, receive_buffer=4096)
            spent, dropped = flood(pinger, frame(0x9) * 1000, args.seconds)
            print(f"ping flood, never reading: +{(rss_kib(process.pid) - before) / 1024:.1f} MiB RSS "
                  f"in {spent:.1f} s; dropped: {dropped}")
            pinger.close()
            cpu = cpu_seconds(process.pid)
            fragments = member(port)
            fragments.sendall(frame(0x1, final=False))
            spent, dropped = flood(fragments, frame(0x0, final=False) * 1000, args.seconds)
            used = cpu_seconds(process.pid) - cpu
            print(f"empty continuation frames: {used:.2f} CPU s in {spent:.1f} s "
                  f"({100 * used / spent:.0f}% of a core); dropped: {dropped}")
            fragments.close()
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
