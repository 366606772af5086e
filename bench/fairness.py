"""
Fairness: one client floods a broadcast hub with empty lines while 30 others
listen; a measuring pair sends a line every 10 ms from one client to another
through the hub. Run with and without --max-rate, side by side:

    .venv/bin/python bench/fairness.py [--seconds 5] [--listeners 30] [--max-rate 1000]

The hub is `twistd -n tcphub --mode broadcast` (line framing) on core 0, the clients
(bench/fairness.js, Node) on core 1. Prints the pair's p50/p99 one-way latency.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
TASKSET = ["taskset", "-c"] if shutil.which("taskset") else None


def pinned(core: int, command: list[str]) -> list[str]:
    return ([*TASKSET, str(core)] if TASKSET else []) + command


def run(hub_options: list[str], listeners: int, seconds: float) -> dict:
    hub = subprocess.Popen(
        pinned(0, [TWISTD, "--pidfile=", "-n", "tcphub", "--port", "0", "--mode", "broadcast", *hub_options]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    drain = None
    try:
        for line in hub.stdout:
            if match := re.search(r"tcphub listening on [^ ]+:(\d+)", line):
                port = match[1]
                break
        else:
            raise SystemExit("the hub did not start")
        # Keep reading the hub's log, so that a full pipe never blocks it.
        drain = subprocess.Popen(["cat"], stdin=hub.stdout, stdout=subprocess.DEVNULL)
        result = subprocess.run(
            pinned(1, ["node", str(HERE / "fairness.js"), port, str(listeners), str(seconds)]),
            capture_output=True, text=True, timeout=seconds + 120,
        )
        if result.returncode != 0:
            raise SystemExit(f"fairness.js failed: {result.stderr}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        if not measured["received"]:
            raise SystemExit(f"the pair got none of its {measured['pings']} pings through the hub")
        return measured
    finally:
        hub.terminate()
        hub.wait(timeout=60)
        if drain is not None:
            drain.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--listeners", type=int, default=30)
    parser.add_argument("--max-rate", default="1000", help="messages/s per client for the limited run")
    args = parser.parse_args()
    rows = [
        ("no rate limit", run([], args.listeners, args.seconds)),
        (f"--max-rate {args.max_rate}", run(["--max-rate", args.max_rate], args.listeners, args.seconds)),
    ]
    print("| hub | pair p50 µs | pair p99 µs | pings received | flooder bytes sent |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['p50_us']:,} | {r['p99_us']:,} | {r['received']}/{r['pings']} | {r['flooded']:,} |")


if __name__ == "__main__":
    main()
