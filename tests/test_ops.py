"""
The operations port: its documents in memory, then the real HTTP port of a
hub run by twistd, read with urllib and parsed with prometheus_client's own
text parser.
"""

from __future__ import annotations

import json
import time
import signal
import socket
import urllib.error
import urllib.request
from dataclasses import asdict

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tcphub import EchoProtocol
from tcphub.hub.metrics import ClientInfo
from tcphub.ops import views
from tcphub.ops.collector import TcpHubCollector
from tests.browser import in_browser, require_chromium
from tests.processes import Twistd, WebSocketServer

ADMIN = r"tcphub admin listening on (?P<host>[^ ]+):(?P<port>\d+)"


def samples(text: str) -> dict[str, float]:
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# -- in memory -------------------------------------------------------------------


def test_metrics_follow_the_prometheus_conventions_and_match_get_metrics(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"one\ntwo\n")
    hub.clock.advance(7)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TcpHubCollector(hub.factory, None, hub.clock))
    values = samples(generate_latest(registry).decode())
    metrics = hub.factory.get_metrics()
    assert values["tcphub_connections"] == metrics.connections == 1
    assert values["tcphub_uptime_seconds"] == metrics.uptime == 7
    assert values["tcphub_rooms"] == metrics.rooms and values["tcphub_room_members"] == metrics.room_members
    assert values["tcphub_sessions_parked"] == metrics.sessions_parked
    for name, value in asdict(metrics).items():
        if name not in ("connections", "uptime", "rooms", "room_members", "sessions_parked"):
            assert values[f"tcphub_{name}_total"] == value, name
    assert values["tcphub_messages_received_total"] == 2
    assert values["tcphub_bytes_sent_total"] == len(b"one\ntwo\n")


def _info(client_id: str, received: int, connected: float, active: float) -> ClientInfo:
    return ClientInfo(id=client_id, address="127.0.0.1:1", connected=connected, bytes_received=received,
                      bytes_sent=0, messages_received=0, messages_sent=0, pending_bytes=0, held_bytes=0,
                      active=active)


def test_the_hub_pages_its_clients_by_any_numeric_field_snapshotting_only_the_page(hub_factory, monkeypatch):
    hub = hub_factory(protocol=EchoProtocol)
    a, b, c = (hub.connect()[0] for _ in range(3))
    for client, line, at in ((a, b"x" * 29, 1.0), (b, b"x" * 9, 2.0), (c, b"x" * 19, 3.0)):
        hub.clock.advance(at - hub.clock.seconds())
        client.dataReceived(line + b"\n")
    total, page = hub.factory.page("bytes_received", True, 0, 2)
    assert total == 3 and [info.id for info in page] == [a.client_id, c.client_id]
    assert [info.id for info in hub.factory.page("bytes_received", True, 2, 2)[1]] == [b.client_id]
    assert [info.id for info in hub.factory.page("idle", True, 0, 3)[1]] == [a.client_id, b.client_id, c.client_id]
    document = views.connz(page, [], total=total, now=10.0, sort="bytes_received", order="desc", limit=2)
    assert [(record["id"], record["idle"]) for record in document["connections"]] == [
        (a.client_id, 9.0), (c.client_id, 7.0)]
    from tcphub import HubProtocol

    snapshots = []
    real_info = HubProtocol.info

    def counted(self):
        snapshots.append(self)
        return real_info(self)

    monkeypatch.setattr(HubProtocol, "info", counted)
    hub.factory.page("connected", False, 0, 1)
    assert len(snapshots) == 1, "one snapshot for a page of one, not one per client"


@pytest.mark.parametrize("query, message", [
    ({"sort": "address"}, "sort takes one of"),
    ({"order": "up"}, "order takes asc or desc"),
    ({"limit": 0}, "limit takes 1 to 1000"),
    ({"offset": -1}, "offset cannot be negative"),
])
def test_connz_refuses_what_it_cannot_do(query, message):
    arguments = {"limit": 100, "offset": 0, "sort": "connected", "order": "asc", **query}
    with pytest.raises(views.BadQuery, match=message):
        views.check_connz(**arguments)


# -- the real port, on a hub run by twistd -------------------------------------------


def get(port: int, path: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"" if method == "POST" else None,
                                     method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def start(*options: str) -> tuple[Twistd, int, int]:
    hub = Twistd("tcphub", "--port", "0", "--admin", "tcp:0:interface=127.0.0.1", *options)
    _, port = hub.wait_listening()
    return hub, port, int(hub.wait_for(ADMIN)["port"])


def echo_client(port: int, lines: list[bytes]) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(b"".join(line + b"\n" for line in lines))
    expected = sum(len(line) + 1 for line in lines)
    received = b""
    while len(received) < expected:
        received += client.recv(65536)
    return client


def test_twistd_serves_metrics_varz_and_connz_that_match_the_traffic():
    hub, port, admin = start("--mode", "echo")
    with hub:  # its exit kills twistd if need be, and closes its output
        assert get(admin, "/healthz") == (200, "ok\n")
        assert get(admin, "/readyz") == (200, "ready\n")
        first = echo_client(port, [b"hello", b"world"])
        second = echo_client(port, [b"x" * 100])
        third = echo_client(port, [b"y" * 10])
        third.close()

        status, text = get(admin, "/metrics")
        assert status == 200
        values = samples(text)
        assert values["tcphub_messages_received_total"] == 4
        assert values["tcphub_bytes_received_total"] == len(b"hello\nworld\n") + 101 + 11
        assert values["tcphub_accepted_total"] == 3

        connz = {}
        for _ in range(100):  # until the hub has seen the third client go (an event, not a delay)
            connz = json.loads(get(admin, "/connz?sort=bytes_received&order=desc&limit=1")[1])
            if connz["closed"]:
                break
        assert connz["total"] == 2 and len(connz["connections"]) == 1
        assert connz["connections"][0]["bytes_received"] == 101, "the largest first"
        assert connz["closed"][0]["bytes_received"] == 11
        assert connz["closed"][0]["reason"].startswith("ConnectionDone")
        page_two = json.loads(get(admin, "/connz?sort=bytes_received&order=desc&limit=1&offset=1")[1])
        assert page_two["connections"][0]["bytes_received"] == len(b"hello\nworld\n")
        assert get(admin, "/connz?sort=nope")[0] == 400

        varz = json.loads(get(admin, "/varz")[1])
        assert varz["hub"]["connections"] == 2 and varz["hub"]["messages_sent"] == 4
        assert varz["options"]["mode"] == "echo" and "admin-token" not in varz["options"]
        assert varz["limits"]["max_connections"] <= 10_000 and varz["limits"]["framing"] == "line"
        first.close()
        second.close()
        hub.shutdown()


def test_the_token_guards_every_path_but_the_probes_and_the_page(tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("s3cret\n")
    hub, port, admin = start("--admin-token-file", str(token))
    with hub:  # its exit kills twistd if need be, and closes its output
        for path in ("/metrics", "/varz", "/connz"):
            assert get(admin, path)[0] == 401, path
            assert get(admin, path, token="wrong")[0] == 401, path
            assert get(admin, path, token="s3cret")[0] == 200, path
        # A load balancer's probes carry no credentials.
        assert get(admin, "/healthz")[0] == 200
        assert get(admin, "/readyz")[0] == 200
        assert "s3cret" not in get(admin, "/varz", token="s3cret")[1]
        status, page = get(admin, "/")
        assert status == 200 and "<canvas" in page
        hub.shutdown()
    # No access line at info; the six refusals are one line and a summary.
    assert not [line for line in hub.lines if "/healthz" in line or "GET /metrics 200" in line], hub.output
    refusals = [line for line in hub.lines if "HTTP 401 for" in line or "http_401" in line]  # not a port
    assert len(refusals) == 2, hub.output
    assert "HTTP 401 for GET /metrics from 127.0.0.1:" in refusals[0]
    assert "5 more http_401" in refusals[1]


def stuck_client(port: int, admin: int, token: str | None = None) -> socket.socket:
    """A client of an echo hub that does not read what it is sent, once the
    hub queues for it: a drain lasts until it goes."""
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    line = b"z" * 60_000 + b"\n"
    stuck.sendall(line * 200)  # 12 MB echoed to a client that does not read
    for _ in range(1000):  # until the hub queues for it (an event, not a delay)
        clients = json.loads(get(admin, "/connz", token=token)[1])["connections"]
        if clients and clients[0]["pending_bytes"] > 0:
            return stuck
    raise AssertionError("the hub never queued for the stuck client")


def test_readyz_turns_503_when_the_drain_begins_and_answers_through_it():
    hub, port, admin = start("--mode", "echo", "--max-pending", str(64 << 20), "--drain-timeout", "60")
    stuck = stuck_client(port, admin)
    try:
        assert get(admin, "/readyz")[0] == 200

        hub.process.send_signal(signal.SIGTERM)
        for _ in range(1000):
            status, body = get(admin, "/readyz")
            if status == 503:
                break
        assert (status, body) == (503, "draining\n")
        assert json.loads(get(admin, "/connz")[1])["total"] == 1, "still draining its client"
        assert get(admin, "/healthz")[0] == 200
        stuck.close()  # the drain ends with its last client
        assert hub.process.wait(timeout=60) == -signal.SIGTERM
        hub.drain()
        assert "Server Shut Down." in hub.output, hub.output
    finally:
        stuck.close()
        hub.kill()


def post(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    return get(port, path, token, "POST")


def test_a_post_to_drain_with_the_token_stops_the_hub_as_sigterm_does(tmp_path):
    """The lame duck's third trigger, beside SIGTERM and SIGUSR2: /readyz
    says 503 at once, the hub drains, twistd ends; without the token, or
    on a port that has none, nothing stops."""
    open_hub, _, open_admin = start()
    with open_hub:
        status, body = post(open_admin, "/drain")
        assert status == 403 and "needs an admin token" in body
        assert get(open_admin, "/readyz")[0] == 200, "still serving"
        open_hub.shutdown()
    token = tmp_path / "admin-token"
    token.write_text("s3cret\n")
    hub, port, admin = start("--admin-token-file", str(token), "--mode", "echo", "--max-pending", str(64 << 20),
                             "--drain-timeout", "60", "--drain-grace", "0")
    with hub:
        stuck = stuck_client(port, admin, token="s3cret")
        assert post(admin, "/drain")[0] == 401 and post(admin, "/drain", token="wrong")[0] == 401
        assert get(admin, "/drain", token="s3cret") == (405, "405: this path answers POST only\n")
        assert post(admin, "/metrics", token="s3cret") == (405, "405: this path answers GET, HEAD only\n")
        assert get(admin, "/readyz")[0] == 200
        assert post(admin, "/drain", token="s3cret") == (202, "draining\n")
        assert get(admin, "/readyz") == (503, "draining\n"), "at once"
        hub.wait_for(r"draining: asked by POST /drain from 127\.0\.0\.1:\d+; shutting down as for SIGTERM")
        assert post(admin, "/drain", token="s3cret") == (202, "draining\n"), "asked again: nothing more"
        assert json.loads(get(admin, "/connz", token="s3cret")[1])["total"] == 1, "still draining its client"
        stuck.close()  # the drain ends with its last client
        assert hub.process.wait(timeout=60) == 0
        hub.drain()
        assert hub.output.count("asked by POST /drain") == 1 and "s3cret" not in hub.output, hub.output


def test_the_websocket_plugin_serves_the_upstreams_status():
    server = WebSocketServer()
    client = Twistd("tcphub-ws", "--url", server.url, "--ping-interval", "0",
                    "--admin", "tcp:0:interface=127.0.0.1")
    try:
        admin = int(client.wait_for(ADMIN)["port"])
        client.wait_for(r"connected to ws://")
        assert get(admin, "/readyz") == (200, "ready\n")
        values = samples(get(admin, "/metrics")[1])
        assert values["tcphub_upstream_connected"] == 1
        assert values["tcphub_upstream_retries_total"] == 0
        assert "tcphub_connections" not in values, "no hub in this process"
        varz = json.loads(get(admin, "/varz")[1])
        assert varz["upstream"]["state"] == "open" and varz["upstream"]["url"] == server.url
        assert get(admin, "/connz") == (404, "404: no hub in this process: /connz lists a hub's clients\n")
        server.stop(signal.SIGKILL)
        for _ in range(1000):  # until the handler has seen the server go (an event, not a delay)
            if get(admin, "/readyz")[0] == 503:
                break
        assert get(admin, "/readyz") == (503, "not ready\n")
        client.shutdown()
    finally:
        client.kill()
        server.kill()


# -- the live page, in a real headless browser ----------------------------------------

def _look(url: str, step, screenshot: str):
    """What the live page at C{url} shows before and after C{step()} (traffic)."""

    def use(browser) -> dict:
        seen: dict = {}
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#clients tr').length === 2")
        page.wait_for_function("Number(document.getElementById('messages').dataset.samples) >= 2")
        seen["rows"] = page.eval_on_selector_all("#clients tr td:nth-child(2)", "cells => cells.length")
        seen["before"] = page.eval_on_selector("#messages", "c => c.dataset.last")
        step()
        page.wait_for_function("document.getElementById('messages').dataset.last.split(',')[0] !== '0'")
        seen["after"] = page.eval_on_selector("#messages", "c => c.dataset.last")
        seen["connections"] = page.text_content("#connections-now")
        seen["status"] = page.text_content("#status")
        page.screenshot(path=screenshot, full_page=True)
        return seen

    return use


def test_the_live_page_draws_the_rates_and_lists_the_clients(tmp_path):
    import os

    require_chromium()
    hub, port, admin = start("--mode", "echo")
    with hub:  # its exit kills twistd if need be, and closes its output
        clients = [echo_client(port, [b"first"]), echo_client(port, [b"second"])]
        screenshot = str(tmp_path / "live-page.png")

        def traffic() -> None:
            for _ in range(3):
                clients[0].sendall(b"ping " * 100 + b"\n")
                clients[0].recv(65536)

        try:
            result = in_browser(_look(f"http://127.0.0.1:{admin}/", traffic, screenshot))
            assert result["rows"] == 2
            assert result["before"].split(",")[0] == "0", "idle: no messages per second yet"
            assert int(result["after"].split(",")[0]) > 0, "traffic drew a rate"
            assert result["connections"] == "now 2"
            assert "2 connected" in result["status"]
            assert os.path.getsize(screenshot) > 1000
        finally:
            for client in clients:
                client.close()
        hub.shutdown()


# -- in this process, over a real port -----------------------------------------------


@pytest_twisted.inlineCallbacks
def _get_in_process(port: int, path: str):
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent, ResponseDone

    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    done: Deferred[bytes] = Deferred()

    class Body(Protocol):
        chunks: list[bytes] = []

        def dataReceived(self, data: bytes) -> None:
            self.chunks.append(data)

        def connectionLost(self, reason) -> None:
            if reason.check(ResponseDone):
                done.callback(b"".join(self.chunks))
            else:
                done.errback(reason)

    response.deliverBody(Body())
    body = yield done
    return response.code, body.decode()


@pytest_twisted.inlineCallbacks
def test_a_bad_query_is_a_400_but_a_bug_while_rendering_is_a_500(tcp_server, monkeypatch, logged_errors):
    from tcphub.ops.service import AdminService

    server = yield tcp_server()
    admin = AdminService("tcp:0:interface=127.0.0.1", hub=server)
    admin.startService()
    try:
        yield admin.when_listening()
        port = admin.port
        code, body = yield _get_in_process(port, "/connz?limit=many")
        assert (code, body) == (400, "400: limit takes a whole number, not 'many'\n"), body

        def broken(*args, **kwargs):
            raise ValueError("a bug, not the query's fault")

        monkeypatch.setattr(views, "connz", broken)
        with logged_errors.expected(ValueError, match=""):
            code, body = yield _get_in_process(port, "/connz")
        assert code == 500 and "a bug" not in body, "a bug is not the client's to read"
    finally:
        stopped = admin.stopService()  # answers until the hub has stopped
        yield server.stop()
        yield stopped


def test_every_number_of_the_upstreams_and_the_bus_status_is_on_metrics():
    """The collector reads its lists from the status dataclasses: none of
    their counts or levels is missing, and a renamed field renames its metric."""
    from dataclasses import fields

    from tcphub import WebSocketHandler
    from tcphub.bus.redis import BusStatus
    from tcphub.ws.handler import Status

    from twisted.internet.task import Clock

    clock = Clock()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TcpHubCollector(None, WebSocketHandler(clock=clock, reactor=clock), clock))
    names = {family.name for family in text_string_to_metric_families(generate_latest(registry).decode())}
    for field in fields(Status):
        if field.type == "int":
            assert f"tcphub_upstream_{field.name}" in names, field.name
    for field in fields(BusStatus):
        if field.type == "int":
            assert field.metadata, f"BusStatus.{field.name} is neither a counter nor a gauge"


def test_the_members_ports_own_counts_are_on_metrics_under_their_names():
    from twisted.internet.task import Clock

    from tcphub.web.member import MemberCounters

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TcpHubCollector(None, None, Clock(), web=MemberCounters(rejected_origin=3)))
    assert samples(generate_latest(registry).decode())["tcphub_rejected_origin_total"] == 3


def test_no_password_or_key_of_a_url_reaches_varz_or_the_log():
    """The Redis URL's password, the upstream's user:password and api_key
    are shown as *** in /varz and never written to the log."""
    server = WebSocketServer()
    upstream = server.url.replace("ws://", "ws://alice:s3cret-pw@") + "?api_key=k3y-value&room=a"
    hub = Twistd("tcphub", "--port", "0", "--admin", "tcp:0:interface=127.0.0.1",
                 "--upstream", upstream, "--redis", "redis://:hunter2-pw@127.0.0.1:1/0")
    try:
        admin = int(hub.wait_for(ADMIN)["port"])
        hub.wait_for(r"connected to ws://alice:\*\*\*@127\.0\.0\.1:\d+/\?api_key=\*\*\*&room=a")
        varz = get(admin, "/varz")[1]
        for secret in ("s3cret-pw", "k3y-value", "hunter2-pw"):
            assert secret not in varz, secret
        document = json.loads(varz)
        assert document["options"]["redis"] == "redis://:***@127.0.0.1:1/0"
        assert document["upstream"]["url"].startswith("ws://alice:***@127.0.0.1:")
        hub.shutdown()
    finally:
        hub.kill()
        server.stop()
    log = "\n".join(hub.lines)
    for secret in ("s3cret-pw", "k3y-value", "hunter2-pw"):
        assert secret not in log, secret


def test_connz_answers_a_page_again_for_a_while_so_hammering_costs_one_page():
    from twisted.internet.task import Clock
    from twisted.web.test.requesthelper import DummyRequest

    from tcphub import TcpServer
    from tcphub.ops.service import CONNZ_FRESH, AdminService

    clock = Clock()
    admin = AdminService("tcp:0:interface=127.0.0.1", hub=TcpServer(port=0, clock=clock))

    def connz(query: dict) -> dict:
        request = DummyRequest([b""])
        request.args = {key.encode(): [value.encode()] for key, value in query.items()}
        resource = admin.site.resource.getChildWithDefault(b"connz", request)
        return json.loads(resource.render(request))

    assert connz({})["now"] == 0.0
    clock.advance(CONNZ_FRESH / 2)
    assert connz({})["now"] == 0.0, "the same page again"
    assert connz({"sort": "idle"})["now"] == CONNZ_FRESH / 2, "another query, its own page"
    clock.advance(CONNZ_FRESH / 2)
    assert connz({})["now"] == CONNZ_FRESH, "CONNZ_FRESH later, a fresh page"


def test_pipelined_requests_past_the_burst_are_paced_and_counted_on_metrics_by_port():
    """twisted.web would answer a connection's pipelined requests all in
    one reactor turn; past its address's burst each waits for its token."""
    from tcphub._site import DEFAULT_MAX_REQUEST_BURST

    hub, port, admin = start("--mode", "echo")
    with hub:
        extra = 5
        count = DEFAULT_MAX_REQUEST_BURST + extra
        with socket.create_connection(("127.0.0.1", admin), timeout=30) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count)
            received = b""
            while received.count(b"HTTP/1.1 200 ") < count:
                chunk = client.recv(65536)
                assert chunk, "closed before every answer"
                received += chunk
        paced = {sample.labels["port"]: sample.value
                 for family in text_string_to_metric_families(get(admin, "/metrics")[1])
                 for sample in family.samples if sample.name == "tcphub_http_paced_requests_total"}
        assert paced["admin"] >= extra
        assert json.loads(get(admin, "/varz")[1])["http"]["admin"]["paced_requests"] >= extra
        hub.shutdown()


def test_metrics_have_the_process_the_build_and_connections_by_kind(tmp_path):
    hub, port, admin = start("--mode", "echo", "--websocket", "tcp:0:interface=127.0.0.1")
    with hub:
        ws_port = int(hub.wait_for(r"tcphub websocket listening on [^ ]+:(\d+)")[1])
        tcp = echo_client(port, [b"hi"])
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30) as member:
            member.send("hello")
            assert member.recv(timeout=30) == "hello"
            families = {family.name: family for family in text_string_to_metric_families(get(admin, "/metrics")[1])}
        # The member has gone: its traffic still counts, under its kind.
        deadline = time.monotonic() + 30
        while True:
            after = {family.name: family for family in text_string_to_metric_families(get(admin, "/metrics")[1])}
            if {s.labels["kind"]: s.value for s in after["tcphub_connections_by_kind"].samples}["websocket"] == 0:
                break
            assert time.monotonic() < deadline, "the member's close never reached the hub"
        tcp.close()
        hub.shutdown()
    traffic = {(sample.name, sample.labels["kind"]): sample.value for name in (
        "tcphub_messages_received_by_kind", "tcphub_messages_sent_by_kind", "tcphub_bytes_received_by_kind")
        for sample in after[name].samples}
    assert traffic[("tcphub_messages_received_by_kind_total", "tcp")] == 1
    assert traffic[("tcphub_messages_received_by_kind_total", "websocket")] == 1
    assert traffic[("tcphub_messages_sent_by_kind_total", "websocket")] == 1
    assert traffic[("tcphub_bytes_received_by_kind_total", "tcp")] == 3, "hi and its newline"
    assert sum(value for (name, _), value in traffic.items() if name.startswith("tcphub_messages_received")) == (
        next(iter(after["tcphub_messages_received"].samples)).value), "the kinds add up to the total"
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_start_time_seconds",
                 "process_cpu_seconds", "python_info"):
        assert name in families, name
    by_kind = {sample.labels["kind"]: sample.value for sample in families["tcphub_connections_by_kind"].samples}
    assert by_kind == {"tcp": 1, "websocket": 1}
    [build] = families["tcphub_build_info"].samples
    assert build.labels["version"] and build.labels["twisted"] and build.value == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_a_lame_duck_goes_unready_serves_on_for_the_grace_then_sends_its_members_elsewhere(sig):
    """SIGTERM (or SIGUSR2): /readyz is 503 at once, the port still serves for
    --drain-grace, then each member is told to reconnect (a chat line; a
    WebSocket member the close code 1012), and the process stops."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    hub, port, admin = start("--websocket", "tcp:0:interface=127.0.0.1", "--drain-grace", "2",
                             "--drain-spread", "1")
    with hub:
        ws_port = int(hub.wait_for(r"tcphub websocket listening on [^ ]+:(\d+)")[1])
        chat = socket.create_connection(("127.0.0.1", port), timeout=30)
        reader = chat.makefile("rb")
        assert reader.readline().startswith(b"* welcome")
        member = connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30, legacy=True)
        assert member.recv(timeout=30).startswith("* welcome")
        since = hub.mark()
        hub.process.send_signal(sig)
        hub.wait_for("draining: serving on for 2 s", since=since)
        assert get(admin, "/readyz") == (503, "draining\n")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as late:  # still served
            assert late.makefile("rb").readline().startswith(b"* welcome")
        seen = [reader.readline()]
        while seen[-1] and b"going away" not in seen[-1]:
            seen.append(reader.readline())
        assert seen[-1] == b"* this server is going away: reconnect to carry on\n", seen
        assert reader.readline() == b"", "then the hub closes the connection"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                member.recv(timeout=30)
        assert closed.value.rcvd.code == 1012
        # twistd re-raises the SIGTERM that stopped it; SIGUSR2 is a stop of tcphub's own.
        assert hub.process.wait(timeout=60) == (-sig if sig == signal.SIGTERM else 0)
        hub.drain()
        assert "Unhandled" not in hub.output and "Traceback" not in hub.output, hub.output
        reader.close()
        chat.close()
        member.close()


def test_an_interrupt_stops_without_the_lame_ducks_grace():
    """Ctrl-C in a terminal wants the hub stopped, not a load balancer's grace."""
    hub, port, admin = start("--drain-grace", "30")
    with hub:
        client = echo_client(port, [b"hi"])
        hub.shutdown(signal.SIGINT)
        client.close()
    assert "draining: serving on" not in hub.output
