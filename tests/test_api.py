"""
The HTTP server API (--api) against twistd, with the standard library's
HTTP client: what members of each mode receive, idempotent publishes (on
one node, and across two on a real Redis), and every refusal.
"""

from __future__ import annotations

import json
import time
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.processes import Twistd

KEY = "k3y-of-the-billing-app-0123456789"
API = r"tcphub api listening on [^ ]+:(\d+)"
WEBSOCKET = r"tcphub websocket listening on [^ ]+:(\d+)"
ADMIN = r"tcphub admin listening on [^ ]+:(\d+)"


def call(port: int, path: str, body=None, key: str | None = KEY, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def start(tmp_path, *options: str) -> tuple[Twistd, int, int]:
    keys = tmp_path / "api-keys"
    keys.write_text(f"# who publishes, and the key\nbilling {KEY}\n")
    hub = Twistd("tcphub", "--port", "0", "--api", "tcp:0:interface=127.0.0.1", "--api-key-file", str(keys),
                 *options)
    _, port = hub.wait_listening()
    return hub, port, int(hub.wait_for(API)[1])


class Member:
    """A line client of the hub (what nc is)."""

    def __init__(self, port: int, *lines: bytes) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lines = self.socket.makefile("rb")
        for line in lines:
            self.socket.sendall(line + b"\n")

    def read(self) -> bytes:
        line = self.lines.readline()
        assert line.endswith(b"\n"), f"closed after {line!r}"
        return line[:-1]

    def read_until(self, wanted: bytes) -> bytes:
        for _ in range(100):
            line = self.read()
            if wanted in line:
                return line
        raise AssertionError(f"never {wanted!r}")

    def close(self) -> None:
        self.lines.close()
        self.socket.close()


def join(member: Member, room: str) -> None:
    member.socket.sendall(json.dumps({"path": "hub.join", "data": {"room": room}, "id": "j"}).encode() + b"\n")
    member.read_until(b'"hub.join"')


def test_a_publish_to_all_reaches_tcp_and_websocket_members_of_a_raw_mode_byte_exact(tmp_path):
    hub, port, api = start(tmp_path, "--mode", "broadcast", "--framing", "int32",
                           "--websocket", "tcp:0:interface=127.0.0.1")
    with hub:
        ws_port = int(hub.wait_for(WEBSOCKET)[1])
        tcp = socket.create_connection(("127.0.0.1", port), timeout=30)
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30) as browser:
            status, answer, _ = call(api, "/api/publish", {"all": True, "base64": "AP8KDQBkYXRh"})
            assert status == 200 and answer["all"] is True and answer["epoch"]
            assert browser.recv(timeout=30) == b"\x00\xff\n\r\x00data"
            frame = b""
            while len(frame) < 4 + 9:
                frame += tcp.recv(65536)
            assert frame == b"\x00\x00\x00\x09\x00\xff\n\r\x00data"
        tcp.close()
        hub.shutdown()


def test_a_publish_reaches_a_rooms_members_in_each_mode_as_a_member_s_would(tmp_path):
    hub, port, api = start(tmp_path, "--mode", "hub", "--websocket", "tcp:0:interface=127.0.0.1")
    with hub:
        ws_port = int(hub.wait_for(WEBSOCKET)[1])
        structured = Member(port)
        join(structured, "orders")
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30) as browser:
            browser.send(json.dumps({"path": "hub.join", "data": {"room": "orders"}, "id": "j"}))
            json.loads(browser.recv(timeout=30))
            status, answer, _ = call(api, "/api/publish", {"room": "orders", "data": {"order": 42, "paid": True}})
            assert status == 200 and answer["offset"] == 1
            expected = {"path": "room.orders", "data": {"room": "orders", "from": "billing", "name": "billing",
                                                        "offset": 1, "epoch": answer["epoch"],
                                                        "data": {"order": 42, "paid": True}}}
            assert json.loads(structured.read()) == expected
            assert json.loads(browser.recv(timeout=30)) == expected
        structured.close()
        hub.shutdown()


def test_a_chat_member_reads_the_application_s_line(tmp_path):
    hub, port, api = start(tmp_path)  # the chat: every client starts in #lobby
    with hub:
        member = Member(port)
        member.read_until(b"you are in #lobby")
        assert call(api, "/api/publish", {"room": "lobby", "text": "deploy done \x1b[2J"})[0] == 200
        assert member.read_until(b"<billing>") == b"#lobby <billing> deploy done \\x1b[2J"
        member.close()
        hub.shutdown()


def test_the_same_idempotency_key_twice_delivers_once_and_answers_the_first_result(tmp_path):
    hub, port, api = start(tmp_path, "--mode", "hub")
    with hub:
        member = Member(port)
        join(member, "orders")
        body = {"room": "orders", "data": "paid", "idempotency_key": "order-42-paid"}
        first = call(api, "/api/publish", body)
        again = call(api, "/api/publish", body)
        assert first[0] == again[0] == 200 and first[1] == again[1]
        call(api, "/api/publish", {"room": "orders", "data": "shipped"})
        assert [json.loads(member.read())["data"]["data"] for _ in range(2)] == ["paid", "shipped"]
        member.close()
        hub.shutdown()


def test_every_refusal_has_its_status_and_code_and_the_hub_goes_on_serving(tmp_path):
    hub, port, api = start(tmp_path, "--mode", "hub", "--api-max-body", "200", "--api-max-rate", "20",
                           "--room-history", "10", "--admin", "tcp:0:interface=127.0.0.1")
    with hub:
        admin = int(hub.wait_for(ADMIN)[1])
        member = Member(port)
        join(member, "orders")
        refusals = [
            (call(api, "/api/publish", {"room": "orders", "text": "x"}, key=None), 401, "unauthorized"),
            (call(api, "/api/publish", {"room": "orders", "text": "x"}, key="wrong-key-0123456789"), 401,
             "unauthorized"),
            (call(api, "/api/publish", raw=b"{not json"), 400, "bad_json"),
            (call(api, "/api/publish", {"room": "orders"}), 400, "bad_request"),
            (call(api, "/api/publish", {"room": "", "text": "x"}), 400, "bad_room"),
            (call(api, "/api/publish", {"room": "orders", "text": "x" * 300}), 413, "too_large"),
            (call(api, "/api/dance", {}), 404, "unknown_endpoint"),
            (call(api, "/api/history?room=nowhere"), 404, "unknown_room"),
            (call(api, "/api/send", {"client": "nobody", "text": "x"}), 404, "unknown_client"),
            (call(api, "/api/presence", {"room": "orders"}), 405, "method_not_allowed"),
        ]
        for (status, answer, _), expected_status, code in refusals:
            assert (status, answer["error"]["code"]) == (expected_status, code), answer
        limited = [call(api, "/api/rooms") for _ in range(30)]
        over = [each for each in limited if each[0] == 429]
        assert over and over[0][1]["error"]["code"] == "rate_limited" and int(over[0][2]["Retry-After"]) >= 1
        # Still serving: a publish gets through, the member reads it.
        while (status := call(api, "/api/publish", {"room": "orders", "text": "still here"})[0]) == 429:
            pass
        assert status == 200 and json.loads(member.read())["data"]["data"] == "still here"
        history = call(api, "/api/history?room=orders&since=0")
        while history[0] == 429:
            history = call(api, "/api/history?room=orders&since=0")
        assert [each["offset"] for each in history[1]["messages"]] == [1]
        assert abs(history[1]["messages"][0]["at"] - time.time()) < 600, "when it was sent, in Unix time"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30) as response:
            families = text_string_to_metric_families(response.read().decode())
            answers = {(sample.labels["endpoint"], sample.labels["status"]): sample.value
                       for family in families for sample in family.samples
                       if sample.name == "tcphub_api_requests_total"}
        assert answers[("publish", "401")] == 2 and answers[("publish", "413")] == 1
        assert answers[("other", "404")] == 1 and answers[("rooms", "429")] >= 1
        member.close()
        hub.shutdown()
    assert KEY not in hub.output


def test_send_and_disconnect_reach_one_member(tmp_path):
    hub, port, api = start(tmp_path, "--mode", "echo", "--admin", "tcp:0:interface=127.0.0.1")
    with hub:
        admin = int(hub.wait_for(ADMIN)[1])
        member = Member(port, b"hello")
        assert member.read() == b"hello"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/connz", timeout=30) as response:
            [client] = json.loads(response.read())["connections"]
        assert call(api, "/api/send", {"client": client["id"], "base64": "AAEC/w=="}) == (
            200, {"client": client["id"]}, call(api, "/api/send", {"client": client["id"], "text": "x"})[2])
        assert member.read() == b"\x00\x01\x02\xff" and member.read() == b"x"
        status, answer, _ = call(api, "/api/disconnect", {"client": client["id"]})
        assert (status, answer) == (200, {"disconnected": [client["id"]]})
        assert member.lines.readline() == b"", "closed"
        member.close()
        hub.shutdown()


@pytest.mark.parametrize("args, content, message", [
    (["--api", "tcp:0"], None, "--api needs --api-key-file"),
    (["--api-key-file", "/dev/null"], None, "--api-key-file goes with --api"),
    (["--api", "tcp:0", "--api-key-file"], "# nothing\n", "no key in it"),
    (["--api", "tcp:0", "--api-key-file"], "billing short\n", "line 1: a key has at least 16 characters"),
    (["--api", "tcp:0", "--api-key-file"], "a b c\n", "line 1: NAME KEY, or KEY"),
])
def test_bad_api_options_are_usage_errors(tmp_path, args, content, message):
    from twisted.python import usage

    from tcphub.tap import Options

    if content is not None:
        keys = tmp_path / "keys"
        keys.write_text(content)
        args = [*args, str(keys)]
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(args)


def test_one_idempotency_key_on_two_nodes_joined_by_redis_delivers_once(tmp_path):
    from tests.processes import RedisServer

    redis = RedisServer(tmp_path)
    nodes = []
    try:
        for name in ("a", "b"):
            node = start(tmp_path, "--mode", "hub", "--redis", redis.url, "--node-id", name)
            node[0].wait_for(f"bus: node {name} subscribed")
            nodes.append(node)
        (a, _, a_api), (b, b_port, b_api) = nodes
        member = Member(b_port)
        join(member, "orders")
        body = {"room": "orders", "data": "paid", "idempotency_key": "order-42-paid"}
        first = call(a_api, "/api/publish", body)
        assert json.loads(member.read())["data"]["data"] == "paid"
        again = call(b_api, "/api/publish", body)
        assert first[0] == again[0] == 200 and again[1] == first[1], "the first node's result"
        call(a_api, "/api/publish", {"room": "orders", "data": "shipped"})
        assert json.loads(member.read())["data"]["data"] == "shipped", "nothing delivered twice between"
        # A node's API closes the other node's members, by client id or by user.
        other = Member(b_port)
        for each in (member, other):
            each.socket.sendall(b'{"path": "hub.auth", "data": {"token": "-"}}\n')
        ids = [json.loads(each.read())["data"]["user"] for each in (member, other)]  # an open hub's users are ids
        assert call(a_api, "/api/disconnect", {"client": ids[0]})[1] == {"disconnected": [ids[0]]}
        assert call(a_api, "/api/disconnect", {"user": ids[1]})[1] == {"disconnected": []}, "none on a"
        assert member.lines.readline() == b"" and other.lines.readline() == b"", "both closed by b"
        assert call(a_api, "/api/disconnect", {"client": "a-nobody"})[0] == 404
        other.close()
        member.close()
        for node, _, _ in nodes:
            node.shutdown()
    finally:
        for node, _, _ in nodes:
            node.kill()
        redis.kill()
