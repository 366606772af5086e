"""
Every server through every scenario, side by side, with ratios to bare Twisted.

    apt-get install nats-server
    .venv/bin/pip install -e '.[test,bench]' --config-settings editable_mode=compat && .venv/bin/python bench/run.py [--quick]

Servers (bench/servers/, on 127.0.0.1): bare Twisted (Int32StringReceiver,
the baseline; bare Autobahn in the WebSocket rows), tcphub (default reactor,
asyncio reactor, asyncio reactor on uvloop), asyncio streams, the same on
uvloop, Node's net, a NATS server (the NATS protocol: request/reply for
echo, a subject's subscribers for fan-out), and the Python WebSocket peers:
the `websockets` library's server and python-socketio's. Each speaks what
it speaks: a scenario it has no protocol for is "–".

Two load generators: Node (bench/loadgen.js) and Python asyncio on uvloop
(bench/loadgen_py.py), each speaking int32 framing, NATS, WebSocket and
socket.io; the rows say which. With taskset on the machine, the server runs
on core 0 and the load on core 1.

Writes bench/results.md (the table, and issue "Leaner per connection…"'s
targets measured in it) and prints it. Each scenario checks its own results
(echoed payloads, order of fan-out deliveries, tcphub's client table after
churn) and fails loudly otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
PY = sys.executable
TASKSET = shutil.which("taskset")

NATS = "/usr/sbin/nats-server"


@dataclass(frozen=True)
class Peer:
    """A server of the table: C{command(mode)} starts it for a scenario's
    mode; C{speaks}, the protocols it has ("int32", "ws", "nats",
    "socketio"; "hub" for tcphub's rooms and bus; "timed" for int32 echo
    with a 300 s idle timeout); C{ready}, the line (on
    stdout, or on stderr with C{ready_on_stderr}) with its port, and its
    WebSocket port if any; C{scale}, the share of a fan-out's messages it is
    sent (python-socketio delivers about 1 % of tcphub's rate: the full count
    would take minutes)."""

    command: Callable[[str], list]
    speaks: frozenset[str]
    ready: str = r"listening on (\d+)(?: ws (\d+))?"
    ready_on_stderr: bool = False
    scale: float = 1.0


SERVERS = {
    "bare Twisted": Peer(lambda mode: [PY, HERE / "servers" / ("autobahn_ws.py" if mode == "wsfanout"
                                                              else "twisted_int32.py"), mode],
                         frozenset({"int32", "ws", "timed"})),
    "tcphub": Peer(lambda mode: [PY, HERE / "servers" / "tcphub_server.py", mode, "default"],
                   frozenset({"int32", "ws", "hub", "timed"})),
    "tcphub asyncio": Peer(lambda mode: [PY, HERE / "servers" / "tcphub_server.py", mode, "asyncio"],
                           frozenset({"int32"})),
    "tcphub uvloop": Peer(lambda mode: [PY, HERE / "servers" / "tcphub_server.py", mode, "uvloop"],
                          frozenset({"int32"})),
    "asyncio": Peer(lambda mode: [PY, HERE / "servers" / "asyncio_streams.py", mode], frozenset({"int32"})),
    "asyncio uvloop": Peer(lambda mode: [PY, HERE / "servers" / "asyncio_streams.py", mode, "--uvloop"],
                           frozenset({"int32"})),
    "Node net": Peer(lambda mode: ["node", HERE / "servers" / "node_net.js", mode], frozenset({"int32"})),
    "NATS": Peer(lambda mode: [NATS, "-a", "127.0.0.1", "-p", "-1"], frozenset({"nats"}),
                 ready=r"Listening for client connections on 127\.0\.0\.1:(\d+)", ready_on_stderr=True),
    "websockets": Peer(lambda mode: [PY, HERE / "servers" / "websockets_server.py", mode], frozenset({"ws"})),
    "python-socketio": Peer(lambda mode: [PY, HERE / "servers" / "socketio_server.py", mode],
                            frozenset({"socketio"}), scale=0.1),
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
        peer = SERVERS[name]
        self.process = subprocess.Popen(
            pinned(0, peer.command(mode)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=subprocess.PIPE if peer.ready_on_stderr else None, env={**os.environ, **(env or {})},
        )
        said = self.process.stderr if peer.ready_on_stderr else self.process.stdout
        for _ in range(50):
            line = said.readline()
            match = re.search(peer.ready, line)
            if match or not line:
                break
        if not match:
            raise SystemExit(f"{name} did not start: {line!r}")
        if peer.ready_on_stderr:  # what it says next must not fill the pipe
            threading.Thread(target=said.read, daemon=True).start()
        self.port = int(match[1])
        self.ws_port = int(match[2]) if match.lastindex == 2 and match[2] else None
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


def two_node_fanout(messages: int, transport: str = "pubsub", generator: Callable[..., dict] | None = None) -> dict:
    """Fan-out to 1,000 receivers split over two tcphub nodes joined through
    a Redis on a UNIX socket (by pub/sub or a Redis Stream), the sender on
    the first, from C{generator} (the Node load generator unless told);
    with the CPU each process spent per broadcast."""
    generator = generator or load
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
                result = generator("splitfanout", nodes[0].port, nodes[1].port, 1000, 64, messages)
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


def idle_bytes_per_connection(server: Server, connections: int, mode: str = "idle",
                               port: int | None = None, python: bool = False) -> dict:
    """The RSS the server took on for CONNECTIONS held open by a load
    generator's C{mode} (idle, natsidle, wsidle, sioidle): Node's, or the
    Python one, per connection."""
    before = rss_kib(server.process.pid)
    generator = [PY, HERE / "loadgen_py.py"] if python else ["node", HERE / "loadgen.js"]
    holder = subprocess.Popen(
        pinned(1, [*generator, mode, port or server.port, connections]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    ready = json.loads(holder.stdout.readline())
    if ready.get("ready") != connections:
        raise SystemExit(f"{mode}: only {ready} connections")
    time.sleep(1.0)  # let the server accept the last ones before reading RSS
    after = rss_kib(server.process.pid)
    holder.stdin.close()
    holder.wait(timeout=60)
    return {"bytes": (after - before) * 1024 / connections, "rss_kib": after}


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


def scenarios(quick: bool, idle: int) -> list[tuple[str, str, dict | None, str]]:
    """(label, the mode servers start in, how each protocol runs it or None
    for another figure of the run above, the result's key). A run is called
    with the server and the peer's share of the messages."""
    seconds = 2 if quick else 5
    scale = 0.25 if quick else 1

    def count(messages: int, share: float) -> int:
        return max(10, int(messages * scale * share))

    def echo(size: int, generator: Callable[..., dict]) -> dict:
        return {"int32": lambda server, share: generator("echo", server.port, 50, 16, size, seconds),
                "nats": lambda server, share: generator("natsreqrep", server.port, 50, 16, size, seconds)}

    def fanout(receivers: int, messages: int, generator: Callable[..., dict]) -> dict:
        return {"int32": lambda server, share: generator("fanout", server.port, receivers, 64,
                                                         count(messages, share)),
                "nats": lambda server, share: generator("natsfanout", server.port, receivers, 64,
                                                        count(messages, share))}

    def wsfanout(generator: Callable[..., dict]) -> dict:
        return {protocol: lambda server, share, mode=mode: generator(mode, server.port, server.ws_port, 1000, 64,
                                                                      count(2000, share))
                for protocol, mode in (("ws", "wsfanout"), ("socketio", "siofanout"))}

    def churn(generator: Callable[..., dict]) -> dict:
        return {"int32": lambda server, share: generator("churn", server.port, 50, seconds),
                "nats": lambda server, share: generator("natschurn", server.port, 50, seconds)}

    def held(python: bool) -> dict:
        return {"int32": lambda server, share: idle_bytes_per_connection(server, idle, python=python),
                "nats": lambda server, share: idle_bytes_per_connection(server, idle, "natsidle", python=python)}

    def held_ws(python: bool) -> dict:
        return {protocol: lambda server, share, mode=mode: idle_bytes_per_connection(server, idle, mode, server.ws_port,
                                                                                      python=python)
                for protocol, mode in (("ws", "wsidle"), ("socketio", "sioidle"))}

    return [
        ("echo 64 B (NATS: request/reply): msg/s", "echo", echo(64, load), "per_second"),
        ("echo 64 B: p50 µs", "echo", None, "p50_us"),
        ("echo 64 B: p99 µs", "echo", None, "p99_us"),
        ("echo 64 B, Python load: msg/s", "echo", echo(64, load_py), "per_second"),
        ("echo 64 B, Python load: p99 µs", "echo", None, "p99_us"),
        ("echo 4 KiB: msg/s", "echo", echo(4096, load), "per_second"),
        ("echo 4 KiB: p50 µs", "echo", None, "p50_us"),
        ("echo 4 KiB: p99 µs", "echo", None, "p99_us"),
        ("echo 4 KiB, Python load: msg/s", "echo", echo(4096, load_py), "per_second"),
        ("fan-out to 100: deliveries/s", "broadcast", fanout(100, 20000, load), "deliveries_per_second"),
        ("fan-out to 100, Python receivers: deliveries/s", "broadcast", fanout(100, 20000, load_py),
         "deliveries_per_second"),
        ("fan-out to 1,000: deliveries/s", "broadcast", fanout(1000, 2000, load), "deliveries_per_second"),
        ("fan-out to 1,000, Python receivers: deliveries/s", "broadcast", fanout(1000, 2000, load_py),
         "deliveries_per_second"),
        # 1,000 WebSocket receivers, the sender on TCP; bare Twisted is bare Autobahn here.
        ("WebSocket fan-out to 1,000: deliveries/s", "wsfanout", wsfanout(load), "deliveries_per_second"),
        ("WebSocket fan-out to 1,000, Python receivers: deliveries/s", "wsfanout", wsfanout(load_py),
         "deliveries_per_second"),
        # tcphub only: the same fan-out, the receivers split over two nodes joined through Redis.
        ("fan-out to 1,000 over 2 nodes and Redis: deliveries/s", "bus",
         {"hub": lambda server, share: two_node_fanout(int(2000 * scale))}, "deliveries_per_second"),
        ("fan-out to 1,000 over 2 nodes and Redis, Python receivers: deliveries/s", "bus",
         {"hub": lambda server, share: two_node_fanout(int(2000 * scale), generator=load_py)},
         "deliveries_per_second"),
        ("fan-out to 1,000 over 2 nodes and a Redis Stream: deliveries/s", "bus",
         {"hub": lambda server, share: two_node_fanout(int(2000 * scale), "streams")}, "deliveries_per_second"),
        ("fan-out to 1,000 over 2 nodes and a Redis Stream, Python receivers: deliveries/s", "bus",
         {"hub": lambda server, share: two_node_fanout(int(2000 * scale), "streams", load_py)},
         "deliveries_per_second"),
        # tcphub only: the room of 100 among 10,000 connections, against fan-out to 100 above.
        ("room of 100 among 10,000: deliveries/s", "room",
         {"hub": lambda server, share: load("room", server.port, 10_000, 100, 64, int(20000 * scale))},
         "deliveries_per_second"),
        ("room of 100 among 10,000, Python receivers: deliveries/s", "room",
         {"hub": lambda server, share: load_py("room", server.port, 10_000, 100, 64, int(20000 * scale))},
         "deliveries_per_second"),
        ("churn: connections/s", "echo", churn(load), "per_second"),
        ("churn, Python load: connections/s", "echo", churn(load_py), "per_second"),
        (f"idle: bytes per connection ({idle:,} held)", "echo", held(False), "bytes"),
        (f"idle: bytes per connection ({idle:,} held by Python)", "echo", held(True), "bytes"),
        # An idle timeout of 300 s: twistd tcphub's default; bare Twisted's is TimeoutMixin's.
        (f"idle, 300 s idle timeout: bytes per connection ({idle:,} held)", "timed",
         {"timed": lambda server, share: idle_bytes_per_connection(server, idle)}, "bytes"),
        (f"idle WebSocket member: bytes per connection ({idle:,} held)", "wsfanout", held_ws(False), "bytes"),
        (f"idle WebSocket member: bytes per connection ({idle:,} held by Python)", "wsfanout", held_ws(True),
         "bytes"),
    ]


def run_scenario(name: str, mode: str, run: Callable[[Server | None, float], dict], label: str) -> dict:
    """One server through one scenario; tcphub's client table checked empty after churn."""
    peer = SERVERS[name]
    if mode == "bus":
        result = run(None, peer.scale)
        for key_name in ("sender_node", "other_node", "redis"):
            print(f"   CPU per broadcast, {key_name.replace('_', ' ')}: "
                  f"{result[key_name + '_us_per_broadcast']:,.0f} µs", flush=True)
        return result
    server = Server(name, mode)
    try:
        result = run(server, peer.scale)
        if name.startswith("tcphub") and label.startswith("churn"):
            connections = server.metrics()["connections"]
            if connections:
                raise SystemExit(f"{name}: {connections} clients left in the table after churn")
            result["table_after"] = connections
    finally:
        server.stop()
    return result


def targets(table: dict[str, dict[str, float]], idle: int) -> list[str]:
    """Issue "Leaner per connection…"'s targets, as this run measured them."""
    def ratio(label: str, over: str = BASELINE, of: str = "tcphub") -> float | None:
        row = table.get(label, {})
        return row[of] / row[over] if of in row and over in row and row[over] else None

    def ratio_of_rows(label: str, over_label: str) -> float | None:
        top, bottom = table.get(label, {}).get("tcphub"), table.get(over_label, {}).get("tcphub")
        return top / bottom if top is not None and bottom else None

    checks = [
        ("echo 64 B ≥ 1.0× bare Twisted, Node load", ratio("echo 64 B (NATS: request/reply): msg/s"), 1.0, True),
        ("echo 64 B ≥ 1.0× bare Twisted, Python load", ratio("echo 64 B, Python load: msg/s"), 1.0, True),
        ("fan-out to 1,000 ≥ 4× bare Twisted, Node receivers", ratio("fan-out to 1,000: deliveries/s"), 4.0, True),
        ("fan-out to 1,000 ≥ 4× bare Twisted, Python receivers",
         ratio("fan-out to 1,000, Python receivers: deliveries/s"), 4.0, True),
        ("bytes per idle connection ≤ 1.2× bare Twisted", ratio(f"idle: bytes per connection ({idle:,} held)"),
         1.2, False),
        ("the same, each with a 300 s idle timeout (bare Twisted: TimeoutMixin)",
         ratio(f"idle, 300 s idle timeout: bytes per connection ({idle:,} held)"), 1.2, False),
        ("an idle WebSocket member ≤ 2× a TCP member",
         ratio_of_rows(f"idle WebSocket member: bytes per connection ({idle:,} held)",
                       f"idle: bytes per connection ({idle:,} held)"), 2.0, False),
    ]
    lines = ["| target | tcphub in this run | |", "|---|---|---|"]
    for text, measured, bound, above in checks:
        if measured is None:
            lines.append(f"| {text} | not measured | |")
            continue
        met = measured >= bound if above else measured <= bound
        lines.append(f"| {text} | {measured:.2f}× | {'met' if met else '**not met**'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, for trying the harness")
    parser.add_argument("--servers", nargs="*", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold")
    parser.add_argument("--only", help="run only the scenarios whose name has this text (the table is "
                        "printed, results.md left as it is)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 100:
        raise SystemExit(f"the file limit ({hard}) is too low for {args.idle} idle connections")
    if "NATS" in args.servers and not Path(NATS).exists():
        raise SystemExit(f"no {NATS}: apt-get install nats-server, or leave NATS out of --servers")

    # The rows in the scenarios' order, whichever server ran them first.
    table: dict[str, dict[str, float]] = {label: {} for label, *_ in scenarios(args.quick, args.idle)}
    for name in args.servers:
        print(f"== {name}", flush=True)
        peer = SERVERS[name]
        last: dict | None = None
        for label, mode, runs, key in scenarios(args.quick, args.idle):
            if args.only is not None and args.only not in label:
                continue
            if runs is not None:
                protocol = next((protocol for protocol in runs if protocol in peer.speaks), None)
                last = None if protocol is None else run_scenario(name, mode, runs[protocol], label)
            if last is None:
                continue  # a scenario this server has no protocol for
            table[label][name] = last[key]
            print(f"   {label}: {last[key]:,.1f}", flush=True)
        if args.only is not None:
            continue
        daemon = idle_daemon_rss_mib(name)
        if daemon is not None:
            table.setdefault("idle twistd, no clients: RSS MiB", {})[name] = daemon
            print(f"   idle twistd: RSS {daemon:.1f} MiB", flush=True)

    versus = [other for other in ("Node net", "NATS", "websockets") if "tcphub" in args.servers and other in args.servers]
    lines = [
        f"Run {date.today()} on {platform.node() or 'this machine'}: {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}, Node {subprocess.check_output(['node', '--version'], text=True).strip()},"
        f" server {'on core 0, load on core 1' if TASKSET else 'and load unpinned'}.",
        "Cells: the figure, then its ratio to bare Twisted in the same run"
        " (higher is better, except µs, bytes and MiB); bare Twisted is bare Autobahn in the WebSocket rows.",
        "The load is Node's (bench/loadgen.js) unless the row says Python (bench/loadgen_py.py, asyncio on uvloop);"
        " NATS's echo is request/reply through a responder of the load generator (two hops where the others"
        " make one); python-socketio is sent a tenth of the fan-out's messages. Last columns: tcphub's figure"
        " over the other's.",
        "",
        "| scenario | " + " | ".join(args.servers) + "".join(f" | tcphub / {other}" for other in versus) + " |",
        "|---" * (len(args.servers) + 1 + len(versus)) + "|",
    ]
    for label, row in table.items():
        if not row:
            continue
        base = row.get(BASELINE)
        cells = []
        for name in args.servers:
            value = row.get(name)
            if value is None:
                cells.append("–")
                continue
            ratio = f" ({value / base:.2f}×)" if base else ""
            cells.append(f"{value:,.1f}{ratio}" if value < 100 else f"{value:,.0f}{ratio}")
        for other in versus:
            cells.append(f"{row['tcphub'] / row[other]:.2f}×" if "tcphub" in row and row.get(other) else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if args.only is None:
        lines += ["", *targets(table, args.idle)]
    text = "\n".join(lines) + "\n"
    if args.only is None:  # a partial run leaves the full table as it is
        (HERE / "results.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
