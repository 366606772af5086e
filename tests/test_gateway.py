"""
The gateway end to end, as an operator runs it: plain TCP clients <->
`twistd -n tcphub --upstream` <-> the websockets package's echo server.
"""

from __future__ import annotations

import json
import socket
import urllib.request
import struct
from pathlib import Path

from tests.processes import REPO, Twistd, WebSocketServer


def frame(n: int, size: int = 64) -> bytes:
    body = struct.pack(">Q", n) + bytes((n + i) % 256 for i in range(size - 8))
    return struct.pack(">I", len(body)) + body


def read_frames(client: socket.socket, count: int) -> list[bytes]:
    stream = client.makefile("rb")
    frames = []
    for _ in range(count):
        (length,) = struct.unpack(">I", stream.read(4))
        frames.append(stream.read(length))
    stream.close()
    return frames


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_twistd_gateway_both_ways_and_across_an_upstream_restart():
    upstream = WebSocketServer()
    try:
        with Twistd("tcphub", "--port", "0", "--framing", "int32", "--upstream", upstream.url,
                    "--upstream-route", "hub.#", "--upstream-backoff", "linear") as twistd:
            host, port = twistd.wait_listening()
            twistd.wait_for(r"connected to ws://")
            with socket.create_connection((host, port), timeout=30) as client:
                first = [frame(n) for n in range(200)]
                client.sendall(b"".join(first))
                assert read_frames(client, 200) == [f[4:] for f in first]

                upstream.stop()
                upstream.kill()
                twistd.wait_for(r"connection \w+ closed")
                before = rss_kib(twistd.process.pid)

                # Full speed while the upstream is away, until the kernel refuses more.
                client.setblocking(False)
                unsent, sent = b"", 200
                while sent < 200_000:
                    if not unsent:
                        unsent = frame(sent, 1024)
                        sent += 1
                    try:
                        unsent = unsent[client.send(unsent):]
                    except BlockingIOError:
                        break
                grown = rss_kib(twistd.process.pid) - before
                assert grown < 8 * 1024, f"the hub grew by {grown} KiB while the upstream was down"

                reconnected = len(twistd.lines)
                upstream = WebSocketServer(port=upstream.port)
                twistd.wait_for(r"connected to ws://", since=reconnected)
                client.setblocking(True)
                client.settimeout(30)
                client.sendall(unsent)
                echoed = read_frames(client, sent - 200)
                assert [struct.unpack(">Q", f[:8])[0] for f in echoed] == list(range(200, sent))
                assert echoed == [frame(n, 1024)[4:] for n in range(200, sent)]
            twistd.shutdown()
    finally:
        upstream.kill()


def test_bridge_example_tags_messages(monkeypatch):
    upstream = WebSocketServer()
    try:
        monkeypatch.setenv("TCPHUB_PORT", "0")
        monkeypatch.setenv("TCPHUB_UPSTREAM", upstream.url)
        monkeypatch.setenv("TCPHUB_ADMIN", "tcp:0:interface=127.0.0.1")
        with Twistd("-y", str(REPO / "examples" / "bridge.tac")) as twistd:
            host, port = twistd.wait_listening()
            admin = int(twistd.wait_for(r"tcphub admin listening on [^ ]+:(\d+)")[1])
            twistd.wait_for(r"connected to ws://")
            with socket.create_connection((host, port), timeout=30) as client:
                client.sendall(b"hello upstream\n")
                line = client.makefile("rb").readline()
                assert line == b"[127.0.0.1:%d] hello upstream\n" % client.getsockname()[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/varz", timeout=30) as response:
                varz = json.load(response)
            assert varz["hub"]["messages_received"] == 1 and varz["upstream"]["messages_sent"] == 1
            twistd.shutdown()
    finally:
        upstream.kill()


def test_the_gateway_sends_the_upstream_headers_and_subprotocol_it_is_given(tmp_path):
    import json
    import urllib.request

    from tests.processes import Twistd, WebSocketServer

    headers = tmp_path / "upstream-headers"
    headers.write_text("Authorization: Bearer up-s3cret\n")
    server = WebSocketServer("--require-auth", "--subprotocols", "chat.v2")
    try:
        with Twistd("tcphub", "--port", "0", "--upstream", server.url, "--upstream-header-file", str(headers),
                    "--upstream-header", "X-Id: 7", "--upstream-subprotocol", "chat.v2",
                    "--admin", "tcp:0:interface=127.0.0.1") as twistd:
            admin = int(twistd.wait_for(r"tcphub admin listening on [^ ]+:(\d+)")[1])
            assert server.wait_for(r"^handshake (.*)")[1].startswith("auth='Bearer up-s3cret'")
            assert server.wait_for(r"^subprotocol (.*)")[1] == "chat.v2"
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/varz", timeout=30) as response:
                varz = json.loads(response.read())
            twistd.shutdown()
    finally:
        server.kill()
    assert varz["options"]["upstream-header"] == {"Authorization": "***", "X-Id": "7"}
    assert "up-s3cret" not in json.dumps(varz) and "up-s3cret" not in twistd.output


def test_an_upstream_ca_file_goes_with_wss():
    import pytest
    from twisted.python import usage

    from tcphub.tap import Options

    with pytest.raises(usage.UsageError, match="--upstream-ca-file goes with a wss:// --upstream"):
        Options().parseOptions(["--upstream", "ws://127.0.0.1:1/", "--upstream-ca-file", "x.pem"])
