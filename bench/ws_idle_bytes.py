"""
Bytes per idle WebSocket member against a TCP member, bare Autobahn and the
`websockets` library's own server, in one run (issue "Leaner per
connection…", target 3): each server on core 0, the Node load generator
holding 1,000 and then 10,000 connections on core 1; RSS from /proc.

    .venv/bin/python bench/ws_idle_bytes.py
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Server, pinned, rss_kib  # noqa: E402 (bench/run.py, beside this file)

COUNTS = (1000, 10_000)
REPEATS = 3
"""Runs per figure, each on a fresh server: RSS grows by whole pages and arenas, so that one
run's figure at 1,000 connections moves by a tenth; the median is quoted."""


def held(server: Server, mode: str, port: int, connections: int) -> float:
    """Bytes of RSS per connection the server took on for C{connections} held ones."""
    before = rss_kib(server.process.pid)
    holder = subprocess.Popen(pinned(1, ["node", HERE / "loadgen.js", mode, port, connections]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(holder.stdout.readline())
    if ready.get("ready") != connections:
        raise SystemExit(f"{mode}: only {ready} connections")
    time.sleep(1.0)  # let the server take the last ones in before reading RSS; not a correctness wait
    after = rss_kib(server.process.pid)
    holder.stdin.close()
    holder.wait(timeout=60)
    return (after - before) * 1024 / connections


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for connections in COUNTS:
        figures = {}
        for label, name, mode in (("tcphub TCP member", "tcphub", "idle"),
                                  ("tcphub WebSocket member", "tcphub", "wsidle"),
                                  ("bare Autobahn", "bare Twisted", "wsidle"),
                                  ("websockets", "websockets", "wsidle")):
            runs = []
            for _ in range(REPEATS):
                server = Server(name, "wsfanout" if name != "websockets" else "wsidle")
                try:
                    port = server.port if mode == "idle" else server.ws_port
                    runs.append(held(server, mode, port, connections))
                finally:
                    server.stop()
            figures[label] = statistics.median(runs)
            print(f"{connections:,} held, {label}: {figures[label]:,.0f} bytes each", flush=True)
        rows.append((connections, figures))
    labels = list(rows[0][1])
    print("\n| connections | " + " | ".join(labels) + " | WebSocket / TCP member |")
    print("|---" * (len(labels) + 2) + "|")
    for connections, figures in rows:
        ratio = figures["tcphub WebSocket member"] / figures["tcphub TCP member"]
        print(f"| {connections:,} | " + " | ".join(f"{figures[label]:,.0f} B" for label in labels)
              + f" | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
