"""
WebSocket fan-out against the Python peers: one TCP sender, 1,000 WebSocket
receivers (raw sockets of the Node load generator, bench/loadgen.js, that do
the handshake and cut frames themselves), 64-byte messages, order checked
per receiver. Bare Autobahn (what a Twisted user writes alone), tcphub's
WebSocket members, and the `websockets` library's server with its
broadcast(), each on core 0 with the load on core 1. Prints deliveries/s
with ratios to bare Autobahn and to `websockets`.

    .venv/bin/python bench/ws_fanout.py [--runs N] [--messages N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BASELINE, Server, load  # noqa: E402 (bench/run.py, beside this file)

NAMES = {BASELINE: "bare Autobahn", "tcphub": "tcphub", "websockets": "websockets"}
RECEIVERS = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, shown in NAMES.items():
            server = Server(name, "wsfanout")
            try:
                result = load("wsfanout", server.port, server.ws_port, RECEIVERS, 64, args.messages)
            finally:
                server.stop()
            figure = result["deliveries_per_second"]
            figures.setdefault(shown, []).append(figure)
            print(f"WebSocket fan-out to {RECEIVERS:,}, {shown}: {figure:,.0f} deliveries/s", flush=True)
    best = {name: max(each) for name, each in figures.items()}
    print()
    print("| scenario | " + " | ".join(best) + " | tcphub / websockets |")
    print("|---" * (len(best) + 2) + "|")
    cells = [f"{figure:,.0f} ({figure / best['bare Autobahn']:.2f}×)" for figure in best.values()]
    print(f"| WebSocket fan-out to {RECEIVERS:,}: deliveries/s (best of {args.runs}) | " + " | ".join(cells)
          + f" | {best['tcphub'] / best['websockets']:.2f}× |")


if __name__ == "__main__":
    main()
