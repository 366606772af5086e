"""
Hammering /connz while a TCP pair measures its round trip: a twistd hub in
echo mode with --clients idle clients and the operations port; the round
trip's p50 and p99 over --pings messages, quiet, then while --hammers HTTP
connections send pipelined /connz requests as fast as they are answered.
127.0.0.1 only; every loop is bounded in count and time.

    .venv/bin/python bench/connz_hammer.py [--repo PATH] [--clients 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import multiprocessing
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from tac_hub import start_hub

HERE = Path(__file__).resolve().parent.parent
OPTIONS = ["--port", "0", "--mode", "echo", "--timeout", "0", "--max-connections", "20000",
           "--admin", "tcp:0:interface=127.0.0.1"]


def round_trips(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for n in range(count):
            began = time.perf_counter()
            sock.sendall(b"ping %d\n" % n)
            answer = b""
            while not answer.endswith(b"\n"):
                answer += sock.recv(4096)
            times.append(time.perf_counter() - began)
            time.sleep(0.001)
        return times


STATUS = b"HTTP/1.1 200"


def hammer(port: int, path: str, stop: multiprocessing.synchronize.Event,
           served: multiprocessing.sharedctypes.Synchronized, deadline: float) -> None:
    """In a process of its own: a thread would share the measuring pair's
    interpreter lock, and slow it whatever the hub does."""
    request = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode("ascii") * 40
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        while not stop.is_set() and time.monotonic() < deadline:
            sock.sendall(request)
            answers, tail = 0, b""
            while answers < 40 and not stop.is_set():
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                pending = tail + chunk
                seen = pending.count(STATUS)
                tail = pending[-(len(STATUS) - 1):]  # too short to hold a whole status line
                answers += seen
                with served.get_lock():
                    served.value += seen


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if q < 100 else max(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--hammers", type=int, default=4)
    parser.add_argument("--path", default="/connz?limit=100&sort=bytes_received&order=desc",
                        help="what the hammers ask for (/healthz: twisted.web's own cost alone)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.clients + 1000), hard))
    with tempfile.TemporaryDirectory() as directory:
        process, (port, admin) = start_hub(args.repo, Path(directory), OPTIONS, ["tcphub", "tcphub admin"])
        idle = []
        try:
            for _ in range(args.clients):
                idle.append(socket.create_connection(("127.0.0.1", port)))
            quiet = round_trips(port, args.pings)
            stop, served = multiprocessing.Event(), multiprocessing.Value("q", 0)
            hammers = [multiprocessing.Process(target=hammer, args=(admin, args.path, stop, served, time.monotonic() + 300))
                       for _ in range(args.hammers)]
            for each in hammers:
                each.start()
            time.sleep(0.5)
            began, before = time.monotonic(), served.value
            busy = round_trips(port, args.pings)
            seconds, answers = time.monotonic() - began, served.value - before
            stop.set()
            for each in hammers:
                each.join(timeout=60)
                if each.is_alive():
                    each.kill()
            print(f"{args.clients} clients; round trip quiet p50 {p(quiet, 50):.2f} ms, p99 {p(quiet, 99):.2f} ms; "
                  f"hammered p50 {p(busy, 50):.2f} ms, p99 {p(busy, 99):.2f} ms "
                  f"({p(busy, 99) / p(quiet, 99):.1f}x); {answers / seconds:.0f} answers/s to {args.path}")
        finally:
            for sock in idle:
                sock.close()
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
