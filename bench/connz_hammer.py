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
import resource
import socket
import statistics
import tempfile
import threading
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


def hammer(port: int, stop: threading.Event, served: list[int]) -> None:
    request = b"GET /connz?limit=100&sort=bytes_received&order=desc HTTP/1.1\r\nHost: x\r\n\r\n" * 40
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        while not stop.is_set():
            sock.sendall(request)
            answers = 0
            data = b""
            while answers < 40:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                data += chunk
                answers += data.count(b"HTTP/1.1 200")
                data = data[data.rfind(b"HTTP/1.1 200") + 1:] if b"HTTP/1.1 200" in data else data
            served[0] += 40


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if q < 100 else max(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--hammers", type=int, default=4)
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
            stop, served = threading.Event(), [0]
            threads = [threading.Thread(target=hammer, args=(admin, stop, served)) for _ in range(args.hammers)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            began = time.monotonic()
            busy = round_trips(port, args.pings)
            seconds = time.monotonic() - began
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            print(f"{args.clients} clients; round trip quiet p50 {p(quiet, 50):.2f} ms, p99 {p(quiet, 99):.2f} ms; "
                  f"hammered p50 {p(busy, 50):.2f} ms, p99 {p(busy, 99):.2f} ms "
                  f"({p(busy, 99) / p(quiet, 99):.1f}x); {served[0] / seconds:.0f} /connz answers/s")
        finally:
            for sock in idle:
                sock.close()
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
