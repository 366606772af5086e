"""
WebSocket members of a real hub: C{twistd tcphub --websocket} run as the
README says, joined by the C{websockets} package's client, by raw sockets
(TCP members, and a WebSocket peer that never reads), and read back through
the operations port's C{/varz} and C{/connz}.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.clients import make_certificate
from tests.processes import Twistd

WEBSOCKET = r"tcphub websocket listening on (?P<host>[^ ]+):(?P<port>\d+)"
ADMIN = r"tcphub admin listening on (?P<host>[^ ]+):(?P<port>\d+)"


class Hub:
    """A twistd hub with TCP, WebSocket and admin ports, all on port 0."""

    def __init__(self, *options: str) -> None:
        self.twistd = Twistd("tcphub", "--port", "0", "--websocket", "tcp:0:interface=127.0.0.1",
                             "--admin", "tcp:0:interface=127.0.0.1", *options)
        _, self.port = self.twistd.wait_listening()
        self.ws_port = int(self.twistd.wait_for(WEBSOCKET)["port"])
        self.admin_port = int(self.twistd.wait_for(ADMIN)["port"])
        self.url = f"ws://127.0.0.1:{self.ws_port}/ws"

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.twistd.__exit__(*exc_info)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def metrics(self) -> dict:
        return self.get("/varz")["hub"]

    def member(self, **options) -> ClientConnection:
        """A WebSocket member: the websockets package's client."""
        return connect(self.url, proxy=None, open_timeout=30, **options)

    def tcp(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def wait_connections(self, count: int) -> None:
        # Each member is in the table once its handshake is answered; the
        # TCP clients once accepted: wait on the table, not on time.
        for _ in range(3000):
            if self.get("/varz")["hub"]["connections"] == count:
                return
        raise AssertionError(f"never {count} connections: {self.get('/varz')['hub']}")


def int32(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def read_int32(sock: socket.socket, count: int) -> list[bytes]:
    data, frames = b"", []
    while len(frames) < count:
        while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {frames}"
            data += chunk
        size = struct.unpack("!I", data[:4])[0]
        frames.append(data[4:4 + size])
        data = data[4 + size:]
    return frames


def as_bytes(message: str | bytes) -> tuple[str, bytes]:
    return ("text", message.encode("utf-8")) if isinstance(message, str) else ("binary", message)


def test_websocket_and_tcp_members_exchange_text_and_binary_byte_exact():
    with Hub("--framing", "int32", "--mode", "broadcast") as hub:
        tcp = hub.tcp()
        with hub.member() as member:
            hub.wait_connections(2)
            sent = [b"plain", "h\u00e9llo \u2603".encode(), b"\xff\x00\xfe", b"", bytes(range(256)) * 64]
            tcp.sendall(b"".join(int32(payload) for payload in sent))
            received = [as_bytes(member.recv(timeout=30)) for _ in sent]
            assert received == [("text", sent[0]), ("text", sent[1]), ("binary", sent[2]),
                                ("text", sent[3]), ("binary", sent[4])]
            member.send("\u00fcnic\u00f8de")
            member.send(b"\x00\xff\x80binary")
            assert read_int32(tcp, 2) == ["\u00fcnic\u00f8de".encode(), b"\x00\xff\x80binary"]
            kinds = sorted(record["kind"] for record in hub.get("/connz")["connections"])
            assert kinds == ["tcp", "websocket"]
        tcp.close()
        hub.twistd.shutdown()


def test_a_websockets_clients_fragments_pings_and_close_code_are_understood():
    """The members' own RFC 6455, against a client that is not ours."""
    with Hub("--framing", "int32", "--mode", "broadcast") as hub:
        tcp = hub.tcp()
        with hub.member() as member:
            hub.wait_connections(2)
            member.send(["frag", "mented ", "\u2603"])  # one text message in three frames
            member.send([b"\x00\xff", b"\x80"])
            assert read_int32(tcp, 2) == ["fragmented \u2603".encode(), b"\x00\xff\x80"]
            assert member.ping(b"are you there").wait(30), "answered with a pong"
            member.close(4001, "done for today")
            assert member.close_code == 4001, "the hub's answer confirms the client's close"
        hub.wait_connections(1)
        [closed] = hub.get("/connz")["closed"]
        assert "WebSocket closed with code 4001: done for today" in closed["reason"]
        tcp.close()
        hub.twistd.shutdown()


def test_an_oversize_message_closes_with_1009_is_counted_and_the_others_go_on():
    with Hub("--framing", "int32", "--mode", "broadcast", "--max-frame", "1000") as hub:
        tcp = hub.tcp()
        with hub.member() as big, hub.member() as other:
            hub.wait_connections(3)
            big.send(b"x" * 1001)
            with pytest.raises(ConnectionClosed) as closed:
                big.recv(timeout=30)
            assert closed.value.rcvd.code == 1009
            assert hub.metrics()["protocol_errors"] == 1
            other.send(b"y" * 1000)
            assert read_int32(tcp, 1) == [b"y" * 1000]
        tcp.close()
        hub.twistd.shutdown()


def test_a_websocket_member_that_never_reads_is_dropped_while_the_others_get_everything():
    count, size = 400, 32 * 1024  # 12.5 MiB: more than max_pending and the kernel's buffers hold
    with Hub("--framing", "int32", "--mode", "broadcast", "--max-pending", "1048576") as hub:
        sender, reader = hub.tcp(), hub.tcp()
        # A WebSocket peer that completes its handshake and never reads again.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", hub.ws_port))
        stalled.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        with hub.member(max_size=None) as member:
            hub.wait_connections(4)
            payloads = [bytes([i % 256]) * size for i in range(count)]
            got_tcp, got_member = [], []
            for start in range(0, count, 20):  # the sender's writes stay ahead of the readers by 20
                sender.sendall(b"".join(int32(payload) for payload in payloads[start:start + 20]))
                got_tcp += read_int32(reader, 20)
                got_member += [as_bytes(member.recv(timeout=30))[1] for _ in range(20)]
            assert got_tcp == payloads and got_member == payloads
            metrics = hub.metrics()
            assert metrics["slow_consumers"] == 1 and metrics["connections"] == 3
        for each in (sender, reader, stalled):
            each.close()
        hub.twistd.shutdown()


def test_a_page_from_another_origin_is_refused_and_counted():
    with Hub("--allowed-origin", "https://chat.example.com") as hub:
        with pytest.raises(InvalidStatus) as refused:
            hub.member(origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with hub.member(origin="https://chat.example.com") as allowed:
            assert allowed.recv(timeout=30).startswith("* welcome")
        assert hub.get("/varz")["websocket"]["rejected_origin"] == 1
        assert "rejected_origin" not in hub.metrics(), "the members' port counts it, not the hub"
        for _ in range(3):
            with pytest.raises(InvalidStatus):
                hub.member(origin="http://evil.example")
        hub.twistd.shutdown()
    output = hub.twistd.output
    assert output.count("origin 'http://evil.example' is not allowed") <= 2, "once per burst (and its summary)"
    assert "failing WebSocket opening handshake" not in output and "dropping connection" not in output


def test_by_default_only_pages_of_the_same_origin_may_connect():
    with Hub() as hub:
        with pytest.raises(InvalidStatus):
            hub.member(origin="http://localhost:1")
        with hub.member(origin=f"http://127.0.0.1:{hub.ws_port}") as same:
            assert same.recv(timeout=30).startswith("* welcome")
        hub.twistd.shutdown()


def test_the_chat_page_is_served_at_the_root():
    with Hub() as hub:
        with urllib.request.urlopen(f"http://127.0.0.1:{hub.ws_port}/", timeout=30) as response:
            page = response.read().decode()
            assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "new WebSocket(" in page
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no asset from the internet"
        hub.twistd.shutdown()


def test_web_root_serves_the_users_files_instead(tmp_path):
    (tmp_path / "index.html").write_text("<p>my own page</p>")
    with Hub("--web-root", str(tmp_path)) as hub:
        with urllib.request.urlopen(f"http://127.0.0.1:{hub.ws_port}/", timeout=30) as response:
            assert response.read() == b"<p>my own page</p>"
        with hub.member() as member:
            assert member.recv(timeout=30).startswith("* welcome")
        hub.twistd.shutdown()


def test_wss_members_over_tls_and_the_same_origin_is_https(tmp_path):
    key, cert = make_certificate(tmp_path)
    twistd = Twistd("tcphub", "--port", "0", "--websocket",
                    f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    with twistd:
        _, port = twistd.wait_listening()
        ws_port = int(twistd.wait_for(WEBSOCKET)["port"])
        context = ssl.create_default_context(cafile=str(cert))
        url = f"wss://127.0.0.1:{ws_port}/ws"
        with pytest.raises(InvalidStatus):
            connect(url, ssl=context, proxy=None, origin=f"http://127.0.0.1:{ws_port}")
        with connect(url, ssl=context, proxy=None, origin=f"https://127.0.0.1:{ws_port}") as member:
            assert member.recv(timeout=30).startswith("* welcome")
            with socket.create_connection(("127.0.0.1", port), timeout=30) as tcp:
                tcp.sendall(b"over tls\n")
                while True:
                    message = member.recv(timeout=30)
                    if message.endswith("> over tls"):
                        break
        twistd.shutdown()


def _send_headers_then_read(port: int, head: bytes) -> bytes:
    """Send a request's head with a body declared but not sent; read the
    answer to its end (the server closes).  A server that waits for the
    body never answers, and the read times out."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(head)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("port_name, path", [("admin_port", "/healthz"), ("admin_port", "/varz"),
                                             ("ws_port", "/"), ("ws_port", "/ws")])
def test_a_request_body_is_refused_with_413_before_it_is_read(port_name, path):
    """A gigabyte declared: twisted.web alone would wait for it (and spool it
    to disk); each port answers at once, closes, and counts it."""
    with Hub("--admin-token", "secret") as hub:
        for head in (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n",
                     b"PUT %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"):
            answer = _send_headers_then_read(getattr(hub, port_name), head % path.encode())
            assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"this port takes no request body\n")
        hub.twistd.wait_for(r"refused a request body from 127\.0\.0\.1:\d+ \(1073741824 bytes declared\)")
        with urllib.request.urlopen(f"http://127.0.0.1:{hub.admin_port}/healthz", timeout=30) as response:
            assert response.status == 200, "the port goes on"
        hub.twistd.shutdown()


def _status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def test_web_root_serves_regular_files_inside_it_and_nothing_else(tmp_path):
    """No dotfiles, no listings, no link out of the root (twisted.web.static.File serves all three)."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / ".git").mkdir()
    (root / "index.html").write_text("home")
    (root / ".env").write_text("SECRET=1")
    (root / ".git" / "config").write_text("[core]")
    (root / "sub" / "page.txt").write_text("a page")
    (root / "docs" / "index.html").write_text("docs")
    (tmp_path / "outside.txt").write_text("not yours")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "inside").symlink_to(root / "sub" / "page.txt")
    with Hub("--web-root", str(root)) as hub:
        base = f"http://127.0.0.1:{hub.ws_port}"
        assert _status(f"{base}/") == (200, b"home")
        assert _status(f"{base}/sub/page.txt") == (200, b"a page")
        assert _status(f"{base}/docs/") == (200, b"docs")
        assert _status(f"{base}/inside") == (200, b"a page"), "a link inside the root is followed"
        for path in ("/.env", "/.git/config", "/sub/", "/out", "/sub/../.env", "/%2e%2e/outside.txt",
                     "/..%2foutside.txt", "/nothing"):
            assert _status(base + path)[0] == 404, path
        hub.twistd.shutdown()


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"\n") and b"Connection: close" not in answer:
                break
        return answer


def test_ws_without_an_upgrade_is_a_426_and_other_methods_a_405_on_both_ports():
    with Hub() as hub:
        answer = _raw_request(hub.ws_port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 426 ") and b"Upgrade: websocket" in answer
        assert b"utobahn" not in answer, "no banner"
        for port in (hub.ws_port, hub.admin_port):
            for method in (b"PUT", b"DELETE", b"OPTIONS", b"POST"):
                answer = _raw_request(port, method + b" / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                      b"Connection: close\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in answer, (port, method, answer)
        hub.twistd.shutdown()


def test_a_member_over_max_connections_gets_a_503_before_the_upgrade():
    with Hub("--max-connections", "1") as hub:
        with hub.tcp() as tcp:
            assert tcp.recv(4096).startswith(b"* welcome"), "admitted: the hub is full now"
            with pytest.raises(InvalidStatus) as refused:
                hub.member()
            assert refused.value.response.status_code == 503
        hub.twistd.shutdown()


def test_head_answers_the_headers_without_a_body_or_a_warning():
    import http.client

    from tests.processes import Twistd as _Twistd

    with _Twistd("tcphub", "--port", "0", "--websocket", "tcp:0:interface=127.0.0.1",
                 "--admin", "tcp:0:interface=127.0.0.1") as twistd:
        ports = [int(twistd.wait_for(rf"tcphub {name} listening on [^ ]+:(\d+)")[1]) for name in ("websocket", "admin")]
        for port in ports:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("HEAD", "/")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b""
            assert int(response.getheader("content-length")) > 1000, "the GET's length"
            connection.close()
        twistd.shutdown()
    assert "HEAD request" not in twistd.output and "eat it" not in twistd.output


def test_a_malformed_upgrade_is_refused_and_logged_by_tcphub_once():
    import socket

    with Hub() as hub:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", hub.ws_port), timeout=30) as raw:
                raw.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Version: 13\r\n\r\n")  # no Sec-WebSocket-Key
                answer = b""
                while chunk := raw.recv(4096):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 400 ")
        hub.twistd.wait_for("refused a WebSocket handshake from 127.0.0.1:")
        hub.twistd.shutdown()
    assert "failing WebSocket opening handshake" not in hub.twistd.output
