"""
Fan-out and request/reply against NATS: bare Twisted, tcphub, Node's net
and a NATS server (Debian's nats-server) in one run, each on core 0 with the
load on core 1, the same Node load generator (bench/loadgen.js; for NATS it
speaks the NATS protocol: the receivers subscribe to one subject, the sender
publishes to it; a request goes to a responder subscribed to "svc", which
answers on the requester's inbox). The others' request/reply is their echo:
the server is the responder, one hop each way where NATS makes two. Prints
tables with ratios to bare Twisted and to NATS.

    apt-get install nats-server
    .venv/bin/python bench/nats_fanout.py [--runs N]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BASELINE, Server, load, pinned  # noqa: E402 (bench/run.py, beside this file)

NATS = "/usr/sbin/nats-server"
SCENARIOS = ((100, 20_000), (1000, 2000))
"""(receivers, messages of 64 bytes)."""
REQUESTS = (50, 16, 64, 5)
"""Request/reply: connections, requests in flight on each, bytes, seconds (echo 64 B of bench/run.py)."""


def nats(mode: str, *args: int) -> dict:
    process = subprocess.Popen(pinned(0, [NATS, "-a", "127.0.0.1", "-p", "-1"]), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            match = re.search(r"Listening for client connections on 127\.0\.0\.1:(\d+)", line)
            if match:
                break
        else:
            raise SystemExit("nats-server did not start")
        return load(mode, match[1], *args)
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    names = [BASELINE, "tcphub", "Node net", "NATS"]
    table: dict[int, dict[str, list[float]]] = {}
    for _ in range(args.runs):
        for receivers, messages in SCENARIOS:
            row = table.setdefault(receivers, {})
            for name in names:
                if name == "NATS":
                    figure = nats("natsfanout", receivers, 64, messages)["deliveries_per_second"]
                else:
                    server = Server(name, "broadcast")
                    try:
                        figure = load("fanout", server.port, receivers, 64, messages)["deliveries_per_second"]
                    finally:
                        server.stop()
                row.setdefault(name, []).append(figure)
                print(f"fan-out to {receivers:,}, {name}: {figure:,.0f} deliveries/s", flush=True)
    print()
    print("| scenario | " + " | ".join(names) + " | tcphub / NATS |")
    print("|---" * (len(names) + 2) + "|")
    for receivers, row in table.items():
        best = {name: max(figures) for name, figures in row.items()}
        cells = [f"{best[name]:,.0f} ({best[name] / best[BASELINE]:.2f}×)" for name in names]
        print(f"| fan-out to {receivers:,}: deliveries/s (best of {args.runs}) | " + " | ".join(cells)
              + f" | {best['tcphub'] / best['NATS']:.2f}× |")
    replies: dict[str, list[dict]] = {}
    for _ in range(args.runs):
        for name in names:
            if name == "NATS":
                result = nats("natsreqrep", *REQUESTS)
            else:
                server = Server(name, "echo")
                try:
                    result = load("echo", server.port, *REQUESTS)
                finally:
                    server.stop()
            replies.setdefault(name, []).append(result)
            print(f"request/reply, {name}: {result['per_second']:,.0f}/s, p50 {result['p50_us']:,.0f} µs, "
                  f"p99 {result['p99_us']:,.0f} µs", flush=True)
    best_runs = {name: max(results, key=lambda result: result["per_second"]) for name, results in replies.items()}
    print()
    print("| request/reply, 64 B, 50 connections × 16 in flight | " + " | ".join(names) + " | tcphub / NATS |")
    print("|---" * (len(names) + 2) + "|")
    for key, label in (("per_second", f"round trips/s (best of {args.runs})"), ("p50_us", "p50 µs"),
                       ("p99_us", "p99 µs")):
        cells = [f"{best_runs[name][key]:,.0f} ({best_runs[name][key] / best_runs[BASELINE][key]:.2f}×)"
                 for name in names]
        print(f"| {label} | " + " | ".join(cells) + f" | {best_runs['tcphub'][key] / best_runs['NATS'][key]:.2f}× |")


if __name__ == "__main__":
    main()
