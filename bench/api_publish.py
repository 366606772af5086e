"""
Publishes a second to a room of --members structured members (--mode hub):
through the HTTP API (one keep-alive connection, a request after each
answer), against the same publishes made by a TCP member (hub.publish, a
request after each reply), and by a TCP member pipelining them; each run
ends when every member has every message.  127.0.0.1 only; every loop is
bounded in count and time.

    .venv/bin/python bench/api_publish.py [--members 100] [--messages 3000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import selectors
import socket
import tempfile
import threading
import time
from pathlib import Path

from tac_hub import start_hub

HERE = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"


def join(port: int, room: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(json.dumps({"path": "hub.join", "data": {"room": room}, "id": "j"}).encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        reply += sock.recv(4096)
    sock.setblocking(False)
    return sock


class Members:
    """Reads every member's socket in one thread, counting lines, until each has C{expected}."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self.counts = {sock: 0 for sock in sockets}
        self.expected = 0
        self.done = threading.Event()

    def expect(self, count: int) -> None:
        self.expected = count
        self.done.clear()
        self.counts = {sock: 0 for sock in self.sockets}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.sockets:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        left = len(self.sockets)
        while left and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                data = sock.recv(1 << 20)
                before = self.counts[sock]
                self.counts[sock] = before + data.count(b"\n")
                if before < self.expected <= self.counts[sock]:
                    left -= 1
        selector.close()
        self.done.set()


def by_api(api: int, room: str, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", api, timeout=30)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for n in range(count):
        connection.request("POST", "/api/publish", json.dumps({"room": room, "data": n}), headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    connection.close()


def by_member(port: int, room: str, count: int, pipelined: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(json.dumps({"path": "hub.join", "data": {"room": room}, "id": "j"}).encode() + b"\n")
    stream = sock.makefile("rb")
    stream.readline()
    messages = [json.dumps({"path": "hub.publish", "data": {"room": room, "data": n}, "id": str(n)}).encode()
                + b"\n" for n in range(count)]
    if pipelined:
        sock.sendall(b"".join(messages))
        for _ in range(count):
            stream.readline()
    else:
        for message in messages:
            sock.sendall(message)
            stream.readline()
    stream.close()
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        keys = Path(directory) / "keys"
        keys.write_text(f"bench {KEY}\n")
        options = ["--port", "0", "--mode", "hub", "--timeout", "0", "--api", "tcp:0:interface=127.0.0.1",
                   "--api-key-file", str(keys), "--api-max-rate", "1000000"]
        process, (port, api) = start_hub(args.repo, Path(directory), options, ["tcphub", "tcphub api"])
        try:
            members = Members([join(port, "r") for _ in range(args.members)])
            runs = [("HTTP API, a request after each answer", lambda: by_api(api, "r", args.messages)),
                    ("TCP member, a publish after each reply", lambda: by_member(port, "r", args.messages, False)),
                    ("TCP member, pipelined", lambda: by_member(port, "r", args.messages, True))]
            print(f"{args.members} members, {args.messages} publishes each run")
            for name, run in runs:
                members.expect(args.messages)
                began = time.perf_counter()
                run()
                members.done.wait(timeout=120)
                seconds = time.perf_counter() - began
                assert min(members.counts.values()) >= args.messages, "a member missed messages"
                print(f"  {name}: {args.messages / seconds:,.0f} publishes/s "
                      f"({args.messages * args.members / seconds:,.0f} deliveries/s)")
            for sock in members.sockets:
                sock.close()
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
