"""
100,000 idle connections in one process: the server's RSS before and after,
for bare Twisted (an Int32StringReceiver echo), `twistd tcphub` (int32
echo, no idle timeout) and Node's net, each alone on core 0.

    .venv/bin/python bench/idle_100k.py [--connections 10000 100000]

The connections are opened by this process from 127.0.0.2, .3, ... (one
address per 25,000, each has its own ephemeral ports; new ones for each
server), 1,000 at a time,
and count once the server holds a descriptor for each (/proc/PID/fd): no
guessed waits. This process and each server need a file limit above the
connections: it raises its own soft limit, and the hard one if it may (a
root with CAP_SYS_RESOURCE); the servers inherit them.
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, PY, TWISTD, pinned, rss_kib  # noqa: E402

SERVERS = {
    "bare Twisted": [PY, HERE / "servers" / "twisted_int32.py", "echo"],
    "tcphub": [TWISTD, "-n", "--pidfile=", "tcphub", "--port", "0", "--framing", "int32", "--mode", "echo",
               "--timeout", "0", "--backlog", "4096", "--max-connections", "1000000"],
    "Node net": ["node", HERE / "servers" / "node_net.js", "echo"],
}
PER_ADDRESS = 25_000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
BATCH = 1_000
DEADLINE = 120.0
"""Seconds a step may take (a batch's connects, the server's accepts) before the run fails."""


def start(name: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(pinned(0, SERVERS[name]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=HERE)
    assert process.stdout is not None
    for line in process.stdout:
        for marker in ("listening on ", "starting on "):
            if marker in line:
                port = line.split(marker)[1].split()[0].strip(" .,")
                return process, int(port)
    raise SystemExit(f"{name} did not start")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_addresses = iter(range(2, 252))
"""The last octet of the loopback addresses not used yet: a closed
connection's port stays taken (TIME_WAIT) for a minute."""


def hold(port: int, count: int) -> list[socket.socket]:
    """C{count} connections to C{port}, each once connected."""
    held: list[socket.socket] = []
    sources = [f"127.0.0.{next(_addresses)}" for _ in range(-(-count // PER_ADDRESS))]
    selector = selectors.EpollSelector()
    for first in range(0, count, BATCH):
        pending = set()
        for n in range(first, min(first + BATCH, count)):
            sock = socket.socket()
            sock.setblocking(False)
            # The port is chosen at connect, per address pair: else bind takes it from one pool for all.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((sources[n // PER_ADDRESS], 0))
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                raise SystemExit(f"connect: {os.strerror(code)} after {n} connections")
            selector.register(sock, selectors.EVENT_WRITE)
            pending.add(sock)
            held.append(sock)
        deadline = time.monotonic() + DEADLINE
        while pending:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(pending)} connects still pending after {DEADLINE} s")
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise SystemExit(f"connect: {os.strerror(error)}")
                selector.unregister(sock)
                pending.discard(sock)
    selector.close()
    return held


def measure(name: str, count: int) -> tuple[float, float]:
    """Bytes per connection held, and the RSS with them (MiB)."""
    process, port = start(name)
    try:
        base = descriptors(process.pid)
        before = rss_kib(process.pid)
        held = hold(port, count)
        deadline = time.monotonic() + DEADLINE
        while descriptors(process.pid) < base + count:  # accepted, its protocol built
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} holds {descriptors(process.pid) - base} of {count} connections")
            time.sleep(0.05)  # polling /proc, not a guessed wait: the loop ends on the count
        after = rss_kib(process.pid)
        linger = struct.pack("ii", 1, 0)  # closed with a reset: no port left in TIME_WAIT for the next run
        for sock in held:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.close()
        return (after - before) * 1024 / count, after / 1024
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    args = parser.parse_args()
    need = max(args.connections) + 1_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError):
            raise SystemExit(f"the file limit ({hard}) is below {need}, and this process may not raise it "
                             "(it takes CAP_SYS_RESOURCE, or a higher ulimit -Hn)") from None
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    if sum(-(-count // PER_ADDRESS) for count in args.connections) * len(args.servers) > 250:
        raise SystemExit("more connections than 127.0.0.2 to 127.0.0.251 can open")
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for count in args.connections:
        for name in args.servers:
            per, rss = measure(name, count)
            results.setdefault(count, {})[name] = (per, rss)
            print(f"{name}, {count:,} idle connections: {per:,.0f} bytes each, RSS {rss:,.1f} MiB", flush=True)
    base = "bare Twisted"
    print("\n| connections | " + " | ".join(args.servers) + " |")
    print("|---|" + "---|" * len(args.servers))
    for count, row in results.items():
        cells = []
        for name in args.servers:
            per, rss = row[name]
            ratio = f" ({per / row[base][0]:.2f}×)" if base in row else ""
            cells.append(f"{per:,.0f} B{ratio}, RSS {rss:,.0f} MiB")
        print(f"| {count:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
