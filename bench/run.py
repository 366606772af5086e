"""
Every server through every scenario, side by side, with ratios to bare Twisted.

    .venv/bin/pip install -e '.[test,bench]' --config-settings editable_mode=compat && .venv/bin/python bench/run.py [--quick]

Servers (bench/servers/, all int32 framing on 127.0.0.1): bare Twisted
(Int32StringReceiver, the baseline), tcphub (default reactor, asyncio
reactor, asyncio reactor on uvloop), asyncio streams, the same on uvloop, and
Node's net. The load generator is Node (bench/loadgen.js). With taskset on
the machine, the server runs on core 0 and the load on core 1. Fan-out to
1,000 is also measured with Python asyncio receivers (bench/loadgen_py.py,
on uvloop), so that a figure is not one load generator's.

Writes bench/results.md (the table) and prints it. Each scenario checks its
own results (echoed payloads, order of fan-out deliveries, tcphub's client
table after churn) and fails loudly otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
TASKSET = shutil.which("taskset")

SERVERS = {
    "bare Twisted": lambda mode: [PY, HERE / "servers" / ("autobahn_ws.py" if mode == "wsfanout" else "twisted_int32.py"),
                                  mode],
    "tcphub": lambda mode: [PY, HERE / "servers" / "tcphub_server.py", mode, "default"],
    "tcphub asyncio": lambda mode: [PY, HERE / "servers" / "tcphub_server.py", mode, "asyncio"],
    "tcphub uvloop": lambda mode: [PY, HERE / "servers" / "tcphub_server.py", mode, "uvloop"],
    "asyncio": lambda mode: [PY, HERE / "servers" / "asyncio_streams.py", mode],
    "asyncio uvloop": lambda mode: [PY, HERE / "servers" / "asyncio_streams.py", mode, "--uvloop"],
    "Node net": lambda mode: ["node", HERE / "servers" / "node_net.js", mode],
}
BASELINE = "bare Twisted"


def pinned(core: int, command: list) -> list:
    return (["taskset", "-c", str(core)] if TASKSET else []) + [str(part) for part in command]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, name: str, mode: str, env: dict | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(
            pinned(0, SERVERS[name](mode)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\d+)(?: ws (\d+))?", line)
        if not match:
            raise SystemExit(f"{name} did not start: {line!r}")
        self.port = int(match[1])
        self.ws_port = int(match[2]) if match[2] else None
        time.sleep(0.2)  # let the interpreter settle before RSS is read; not a correctness wait

    def metrics(self) -> dict:
        self.process.stdin.write("metrics\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def load(*args, timeout: float = 300) -> dict:
    result = subprocess.run(
        pinned(1, ["node", HERE / "loadgen.js", *args]),
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise SystemExit(f"load generator failed: {result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_py(*args, timeout: float = 300) -> dict:
    """The Python asyncio load generator (bench/loadgen_py.py) on core 1."""
    result = subprocess.run(pinned(1, [PY, HERE / "loadgen_py.py", *args]), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"Python load generator failed: {result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def two_node_fanout(messages: int, transport: str = "pubsub") -> dict:
    """Fan-out to 1,000 receivers split over two tcphub nodes joined through
    a Redis on a UNIX socket (by pub/sub or a Redis Stream), the sender on
    the first; with the CPU each process spent per broadcast."""
    with tempfile.TemporaryDirectory() as directory:
        sock = f"{directory}/redis.sock"
        redis = subprocess.Popen(
            pinned(0, ["redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"]),
            stdout=subprocess.PIPE, text=True,
        )
        try:
            for line in redis.stdout:
                if "eady to accept connections" in line:
                    break
            nodes = [Server("tcphub", "bus", env={"TCPHUB_REDIS": f"unix://{sock}", "TCPHUB_NODE": name,
                                                  "TCPHUB_REDIS_BUS": transport})
                     for name in "ab"]
            try:
                pids = [node.process.pid for node in nodes] + [redis.pid]
                before = [cpu_seconds(pid) for pid in pids]
                result = load("splitfanout", nodes[0].port, nodes[1].port, 1000, 64, messages)
                spent = [cpu_seconds(pid) - start for pid, start in zip(pids, before)]
            finally:
                for node in nodes:
                    node.stop()
        finally:
            redis.kill()
            redis.wait()
    # The CPU includes the connections' setup and the probes: an upper bound per broadcast.
    for name, seconds in zip(("sender_node", "other_node", "redis"), spent):
        result[f"{name}_us_per_broadcast"] = seconds / messages * 1e6
    return result


def idle_bytes_per_connection(server: Server, connections: int) -> tuple[float, int]:
    before = rss_kib(server.process.pid)
    holder = subprocess.Popen(
        pinned(1, ["node", HERE / "loadgen.js", "idle", server.port, connections]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    ready = json.loads(holder.stdout.readline())
    if ready.get("ready") != connections:
        raise SystemExit(f"idle: only {ready} connections")
    time.sleep(1.0)  # let the server accept the last ones before reading RSS
    after = rss_kib(server.process.pid)
    holder.stdin.close()
    holder.wait(timeout=60)
    return (after - before) * 1024 / connections, after


# An idle daemon, as an operator runs it: bare Twisted's echo under twistd,
# and twistd tcphub without --upstream (the WebSocket half stays unloaded).
TWISTD = str(Path(PY).with_name("twistd"))
DAEMONS = {
    "bare Twisted": [TWISTD, "-n", "--pidfile=", "-y", HERE / "servers" / "twisted_idle.tac"],
    "tcphub": [TWISTD, "-n", "--pidfile=", "tcphub", "--port", "0"],
}


def idle_daemon_rss_mib(name: str) -> float | None:
    command = DAEMONS.get(name)
    if command is None:
        return None
    process = subprocess.Popen(
        pinned(0, command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE
    )
    try:
        for line in process.stdout:
            if "starting on" in line or "listening on" in line:
                break
        else:
            raise SystemExit(f"{name} under twistd did not start")
        time.sleep(1.0)  # let it settle before RSS is read; not a correctness wait
        return rss_kib(process.pid) / 1024
    finally:
        process.terminate()
        process.wait(timeout=30)


def scenarios(quick: bool):
    seconds = 2 if quick else 5
    scale = 0.25 if quick else 1
    return [
        ("echo 64 B: msg/s", "echo", lambda server: load("echo", server.port, 50, 16, 64, seconds), "per_second"),
        ("echo 64 B: p50 µs", "echo", None, "p50_us"),
        ("echo 64 B: p99 µs", "echo", None, "p99_us"),
        ("echo 4 KiB: msg/s", "echo", lambda server: load("echo", server.port, 50, 16, 4096, seconds), "per_second"),
        ("echo 4 KiB: p50 µs", "echo", None, "p50_us"),
        ("echo 4 KiB: p99 µs", "echo", None, "p99_us"),
        ("fan-out to 100: deliveries/s", "broadcast",
         lambda server: load("fanout", server.port, 100, 64, int(20000 * scale)), "deliveries_per_second"),
        ("fan-out to 1,000: deliveries/s", "broadcast",
         lambda server: load("fanout", server.port, 1000, 64, int(2000 * scale)), "deliveries_per_second"),
        # The same, the receivers and the sender in Python asyncio (on uvloop): another kind of reader.
        ("fan-out to 1,000, Python receivers: deliveries/s", "broadcast",
         lambda server: load_py("fanout", server.port, 1000, 64, int(2000 * scale)), "deliveries_per_second"),
        # tcphub and bare Autobahn only: 1,000 WebSocket receivers, the sender on TCP.
        ("WebSocket fan-out to 1,000: deliveries/s", "wsfanout",
         lambda server: load("wsfanout", server.port, server.ws_port, 1000, 64, int(2000 * scale)),
         "deliveries_per_second"),
        # tcphub only: the same fan-out, the receivers split over two nodes joined through Redis.
        ("fan-out to 1,000 over 2 nodes and Redis: deliveries/s", "bus",
         lambda server: two_node_fanout(int(2000 * scale)), "deliveries_per_second"),
        ("fan-out to 1,000 over 2 nodes and a Redis Stream: deliveries/s", "bus",
         lambda server: two_node_fanout(int(2000 * scale), "streams"), "deliveries_per_second"),
        # tcphub only: the room of 100 among 10,000 connections, against fan-out to 100 above.
        ("room of 100 among 10,000: deliveries/s", "room",
         lambda server: load("room", server.port, 10_000, 100, 64, int(20000 * scale)), "deliveries_per_second"),
        ("churn: connections/s", "echo", lambda server: load("churn", server.port, 50, seconds), "per_second"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, for trying the harness")
    parser.add_argument("--servers", nargs="*", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold")
    parser.add_argument("--only", help="run only the scenarios whose name has this text (no idle count; "
                        "the table is printed, results.md left as it is)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 100:
        raise SystemExit(f"the file limit ({hard}) is too low for {args.idle} idle connections")

    table: dict[str, dict[str, float]] = {}
    for name in args.servers:
        print(f"== {name}", flush=True)
        last = {}
        for label, mode, run, key in scenarios(args.quick):
            if args.only is not None and args.only not in label:
                continue
            if mode in ("room", "bus") and name != "tcphub":
                continue  # rooms and the bus are tcphub's
            if mode == "wsfanout" and name not in ("tcphub", BASELINE):
                continue  # the baseline is bare Autobahn; the other servers speak no WebSocket
            if mode == "bus":
                last = run(None)
                for key_name in ("sender_node", "other_node", "redis"):
                    print(f"   CPU per broadcast, {key_name.replace('_', ' ')}: "
                          f"{last[key_name + '_us_per_broadcast']:,.0f} µs", flush=True)
            elif run is not None:
                server = Server(name, mode)
                try:
                    last = run(server)
                    if name.startswith("tcphub") and label.startswith("churn"):
                        connections = server.metrics()["connections"]
                        if connections:
                            raise SystemExit(f"{name}: {connections} clients left in the table after churn")
                        last["table_after"] = connections
                finally:
                    server.stop()
            table.setdefault(label, {})[name] = last[key]
            print(f"   {label}: {last[key]:,.1f}", flush=True)
        if args.only is not None:
            continue
        server = Server(name, "echo")
        try:
            per_connection, rss = idle_bytes_per_connection(server, args.idle)
        finally:
            server.stop()
        table.setdefault(f"idle: bytes per connection ({args.idle:,} held)", {})[name] = per_connection
        print(f"   idle: {per_connection:,.0f} bytes per connection, RSS {rss / 1024:.0f} MiB", flush=True)
        daemon = idle_daemon_rss_mib(name)
        if daemon is not None:
            table.setdefault("idle twistd, no clients: RSS MiB", {})[name] = daemon
            print(f"   idle twistd: RSS {daemon:.1f} MiB", flush=True)

    lines = [
        f"Run {date.today()} on {platform.node() or 'this machine'}: {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}, Node {subprocess.check_output(['node', '--version'], text=True).strip()},"
        f" server {'on core 0, load on core 1' if TASKSET else 'and load unpinned'}.",
        "Cells: the figure, then its ratio to bare Twisted in the same run"
        " (higher is better, except µs, bytes and MiB).",
        "",
        "| scenario | " + " | ".join(args.servers) + " |",
        "|---" * (len(args.servers) + 1) + "|",
    ]
    for label, row in table.items():
        base = row.get(BASELINE)
        cells = []
        for name in args.servers:
            value = row.get(name)
            if value is None:
                cells.append("–")
                continue
            ratio = f" ({value / base:.2f}×)" if base else ""
            cells.append(f"{value:,.1f}{ratio}" if value < 100 else f"{value:,.0f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.only is None:  # a partial run leaves the full table as it is
        (HERE / "results.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
