"""
The twistd plugin: option parsing in memory, then twistd as a subprocess
exactly as the README runs it, with plain sockets as clients.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from tcphub import EchoProtocol
from tcphub.hub.modes import ChatProtocol
from tcphub.tap import Options, makeService
from websockets.sync.client import connect
from tests.clients import make_certificate
from tests.processes import REPO, Twistd, twistd_command


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def hub_service(*args: str):
    return makeService(parse(*args)).getServiceNamed("tcphub")


def test_defaults_make_a_line_chat_on_localhost_3000():
    server = hub_service()
    (endpoint,) = server.endpoints
    assert (endpoint._port, endpoint._interface, endpoint._backlog) == (3000, "127.0.0.1", 511)
    assert server.factory.protocol is ChatProtocol
    assert server.factory.framing.name == "line"
    assert server.factory.keep_alive is True
    # A quiet chat reader stays (keep-alive finds dead peers); the other modes keep 300 s.
    assert server.factory.timeout is None
    assert hub_service("--mode", "echo").factory.timeout == 300
    assert hub_service("--no-keepalive").factory.timeout == 300


def test_every_option_reaches_the_server():
    server = hub_service(
        "--port", "4000", "--host", "::1", "--backlog", "9", "--timeout", "0",
        "--framing", "int32", "--mode", "echo", "--max-frame", "100",
        "--max-connections", "5", "--max-pending", "1000", "--no-keepalive",
        "--drain-timeout", "2",
    )
    (endpoint,) = server.endpoints
    assert (endpoint._port, endpoint._interface, endpoint._backlog) == (4000, "::1", 9)
    factory = server.factory
    assert factory.protocol is EchoProtocol
    assert (factory.framing.name, factory.max_frame, factory.max_connections) == ("int32", 100, 5)
    assert (factory.max_pending, factory.keep_alive, factory.timeout) == (1000, False, None)
    assert server.drain_timeout == 2


def test_room_history_options_reach_the_hub():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    factory = hub_service("--room-history", "2", "--room-history-bytes", "999", "--room-history-ttl", "1.5",
                          "--timeout", "0", "--frame-timeout", "0").factory
    assert factory.room_history_ttl == 1.5
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    client = factory.buildProtocol(address)
    client.makeConnection(StringTransport(peerAddress=address))
    factory.join(client.client_id, "r")
    for text in (b"one", b"two", b"three", b"x" * 1000):
        factory.broadcast(text, room="r")
    assert [kept.frame for kept in factory.room_history("r")] == [b"two\n", b"three\n"]
    client.connectionLost()


def test_websocket_options_reach_the_members_site():
    process = makeService(parse("--websocket", "tcp:0", "--websocket", "tcp:0", "--allowed-origin", "*",
                                "--websocket-ping-interval", "0", "--websocket-ping-timeout", "7"))
    members = process.getServiceNamed("websocket")
    assert members.members.hub is process.getServiceNamed("tcphub").factory
    assert len(members.endpoints) == 2
    assert members.members.origins.any and members.members.ping_interval is None
    assert members.members.ping_timeout == 7
    assert (members.site.max_connections_per_address, members.site.max_request_rate) == (16, 10.0)
    behind_a_nat = makeService(parse("--websocket", "tcp:0", "--websocket-handshakes-per-address", "500",
                                     "--websocket-handshake-rate", "0")).getServiceNamed("websocket")
    assert (behind_a_nat.site.max_connections_per_address, behind_a_nat.site.max_request_rate) == (500, None)


def test_redis_options_make_a_bus_beside_the_hub():
    process = makeService(parse("--redis", "unix:///tmp/redis.sock?db=2", "--node-id", "n7"))
    bus = process.getServiceNamed("bus")
    hub = process.getServiceNamed("tcphub").factory
    assert (bus.node_id, bus.url, hub.relay, hub.id_prefix) == ("n7", "unix:///tmp/redis.sock?db=2", bus, "n7-")


def test_listen_is_repeatable():
    server = hub_service("--listen", "tcp:0", "--listen", "unix:/tmp/hub.sock")
    assert len(server.endpoints) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--framing", "morse"], "--framing must be one of"),
        (["--mode", "shout"], "--mode must be one of"),
        (["--keepalive", "--no-keepalive"], "contradict"),
        (["--max-frame", "0"], "--max-frame must be at least 1"),
        (["--timeout", "-1"], "--timeout cannot be negative"),
        (["--listen", "tcp:0", "--port", "5"], "--listen replaces --port"),
        (["--port", "many"], "--port takes a whole number, not .many."),
        (["--timeout", "soon"], "--timeout takes a number, not .soon."),
        (["--timeout", "nan"], "--timeout takes a finite number, not nan"),
        (["--drain-timeout", "nan"], "--drain-timeout takes a finite number"),
        (["--frame-timeout", "-1"], "--frame-timeout cannot be negative"),
        (["--room-history-ttl", "-1"], "--room-history-ttl cannot be negative"),
        (["--port", "70000"], "--port must be at most 65535"),
        (["--port", "-1"], "--port cannot be negative"),
        (["--backlog", "0"], "--backlog must be at least 1"),
        (["--backlog", "-5"], "--backlog must be at least 1"),
        (["--backlog", "99999999999"], "--backlog must be at most 65535"),
        (["--host", "[::1]"], "--host takes an address without brackets, e.g. '::1'"),
        (["--max-rate", "0"], "--max-rate must be more than 0"),
        (["--max-burst", "5"], "--max-burst goes with --max-rate"),
        (["--max-connections-per-ip", "0"], "--max-connections-per-ip must be at least 1"),
        (["--listen", "bogus:1"], "--listen 'bogus:1': Unknown endpoint type: 'bogus'"),
        (["--listen", "tcp:notaport"], "--listen 'tcp:notaport': invalid literal"),
        (["--listen", "ssl:0:privateKey=/nonexistent/key.pem"], "--listen 'ssl:0:privateKey=/nonexistent/key.pem'"),
        (["--upstream-max-retries", "-1"], "--upstream-max-retries cannot be negative"),
        (["--admin", "bogus:1"], "--admin 'bogus:1': Unknown endpoint type: 'bogus'"),
        (["--admin-token", "t"], "--admin-token goes with --admin"),
        (["--log-level", "loud"], "--log-level must be one of debug, info, warn, error, critical"),
        (["--log-format", "xml"], "--log-format must be one of text, json"),
        (["--websocket", "bogus:1"], "--websocket 'bogus:1': Unknown endpoint type: 'bogus'"),
        (["--allowed-origin", "https://a.example"], "--allowed-origin goes with --websocket"),
        (["--web-root", "/"], "--web-root goes with --websocket"),
        (["--websocket", "tcp:0", "--web-root", "/nonexistent"], "--web-root '/nonexistent' is not a directory"),
        (["--websocket", "tcp:0", "--allowed-origin", "example.com"],
         "--allowed-origin: an allowed origin looks like https://example.com, or is \\*, not 'example.com'"),
        (["--websocket-ping-timeout", "0"], "--websocket-ping-timeout must be more than 0"),
        (["--redis", "http://localhost"], "a Redis URL is redis://host:port/db"),
        (["--node-id", "a"], "--node-id goes with --redis"),
        (["--redis-prefix", "shop"], "--redis-prefix goes with --redis"),
        (["--redis", "redis://127.0.0.1/0", "--redis-prefix", "a b"], "--redis-prefix is 1 to 64 characters"),
        (["--redis-password-file", "/dev/null"], "--redis-password-file goes with --redis"),
        (["--redis-sentinel-password-file", "/dev/null"], "--redis-sentinel-password-file goes with --redis"),
        (["--redis", "redis://localhost", "--redis-sentinel-password-file", "pyproject.toml"],
         "--redis-sentinel-password-file goes with a redis\\+sentinel:// --redis"),
        (["--redis", "redis+sentinel://localhost/main", "--redis-sentinel-password-file", "/nonexistent"],
         "--redis-sentinel-password-file '/nonexistent': No such file"),
        (["--mode", "echo", "--auth-tokens", "pyproject.toml"], "--auth-tokens goes with --mode hub or chat"),
        (["--mode", "hub", "--auth-tokens", "/nonexistent"], "--auth-tokens '/nonexistent': No such file"),
        (["--mode", "hub", "--auth-tokens", "tests/__init__.py"], "no token in it"),
        (["--mode", "hub", "--auth-jwt-key", "/nonexistent"], "--auth-jwt-key '/nonexistent': No such file"),
        (["--mode", "hub", "--auth-jwt-key", "pyproject.toml", "--auth-tokens", "pyproject.toml"],
         "--auth-jwt-key and --auth-tokens: give one of them"),
        (["--mode", "hub", "--auth-jwt-key", "pyproject.toml", "--auth-jwt-algorithm", "none"],
         "JWT algorithms are some of"),
        (["--mode", "hub", "--auth-jwt-key", "tests/__init__.py"], "is empty"),
        (["--mode", "hub", "--auth-timeout", "0"], "--auth-timeout must be more than 0"),
        (["--mode", "hub", "--auth-url", "ftp://h/"], "--auth-url is an http:// or https:// URL"),
        (["--mode", "hub", "--auth-url", "http://h/", "--auth-tokens", "pyproject.toml"],
         "--auth-tokens and --auth-url: give one of them"),
        (["--redis", "redis://:pw@localhost", "--redis-password-file", "pyproject.toml"],
         "the Redis password is given twice"),
        (["--redis", "redis://localhost", "--redis-password-file", "/nonexistent"],
         "--redis-password-file '/nonexistent': No such file"),
        (["--redis", "redis://localhost", "--node-id", "a-b"], "--node-id is printable, without '-'"),
        (["--websocket-ping-interval", "-1"], "--websocket-ping-interval cannot be negative"),
    ],
)
def test_bad_options_are_usage_errors(args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


ADMIN = ["--admin", "tcp:0:interface=127.0.0.1"]


def test_the_admin_token_comes_from_a_file_or_the_environment_and_not_twice(tmp_path, monkeypatch):
    secret = tmp_path / "token"
    secret.write_text("from-the-file\n")
    assert parse(*ADMIN, "--admin-token-file", str(secret))["admin-token"] == "from-the-file"
    monkeypatch.setenv("TCPHUB_ADMIN_TOKEN", "from-the-environment")
    assert parse(*ADMIN)["admin-token"] == "from-the-environment"
    assert parse(*ADMIN, "--admin-token", "given")["admin-token"] == "given", "the option wins"
    assert parse()["admin-token"] is None, "without --admin the variable is not a mistake"
    with pytest.raises(usage.UsageError, match="--admin-token and --admin-token-file are one secret"):
        parse(*ADMIN, "--admin-token", "given", "--admin-token-file", str(secret))


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"),
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"\xff\xfe", "not UTF-8 text"),
    (b"x" * (64 * 1024 + 1), "larger than 65536 bytes"),
])
def test_an_unreadable_admin_token_file_is_a_usage_error_that_shows_no_secret(tmp_path, content, message):
    secret = tmp_path / "token"
    if content is not None:
        secret.write_bytes(content)
    with pytest.raises(usage.UsageError, match=message) as raised:
        parse(*ADMIN, "--admin-token-file", str(secret))
    assert "xxxx" not in str(raised.value)


def read_line(stream) -> bytes:
    line = stream.readline()
    assert line.endswith(b"\n"), f"connection closed after {line!r}"
    return line


def assert_closed_by_peer(client: socket.socket) -> None:
    """The hub aborts a hostile client: the socket sees a reset or an end of file."""
    try:
        assert client.recv(10) == b""
    except ConnectionResetError:
        pass


def test_twistd_echo_over_a_plain_socket():
    with Twistd("tcphub", "--port", "0", "--mode", "echo") as twistd:
        host, port = twistd.wait_listening()
        assert host == "127.0.0.1"
        with socket.create_connection((host, port), timeout=30) as client:
            stream = client.makefile("rb")
            client.sendall(b"hello\r\nwor")
            client.sendall(b"ld\n")
            assert read_line(stream) == b"hello\n"
            assert read_line(stream) == b"world\n"
        twistd.shutdown()
        assert "tcphub stopped" in twistd.output


def test_twistd_broadcast_mode_relays_plain_lines():
    with Twistd("tcphub", "--port", "0", "--mode", "broadcast") as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as alice, \
                socket.create_connection((host, port), timeout=30) as bob:
            # The hub logs nothing per client at info level, so ask it through
            # the chat itself: bob speaks until alice hears him (bob may not be
            # registered yet the first time), then alice answers.
            alice_in, bob_in = alice.makefile("rb"), bob.makefile("rb")
            bob.sendall(b"ping\n")
            alice.settimeout(30)
            assert read_line(alice_in) == b"ping\n"
            alice.sendall(b"hi bob\n")
            assert read_line(bob_in) == b"hi bob\n"
        twistd.shutdown()


def test_twistd_drops_an_over_long_frame_and_serves_the_others():
    with Twistd("tcphub", "--port", "0", "--framing", "int32", "--mode", "echo",
                "--max-frame", "64") as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as hostile:
            hostile.sendall(struct.pack(">I", 65) + b"x" * 65)
            assert_closed_by_peer(hostile)
        twistd.wait_for(r"protocol error from client \w+ .*frame of 65 bytes exceeds the limit of 64")
        with socket.create_connection((host, port), timeout=30) as client:
            frame = struct.pack(">I", 64) + b"y" * 64
            client.sendall(frame)
            received = b""
            while len(received) < len(frame):
                chunk = client.recv(4096)
                assert chunk
                received += chunk
            assert received == frame
        twistd.shutdown()


def test_twistd_exits_with_an_error_on_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with Twistd("tcphub", "--port", str(port)) as twistd:
            code = twistd.process.wait(timeout=60)
            twistd.drain()
            assert code != 0
            assert "Address already in use" in twistd.output
            assert f"tcphub cannot listen on 127.0.0.1:{port}" in twistd.output


def test_twistd_rejects_bad_options_with_a_usage_message():
    result = subprocess.run(
        [twistd_command(), "-n", "tcphub", "--framing", "morse"],
        capture_output=True, timeout=60, cwd=REPO,
    )
    assert result.returncode != 0
    assert b"--framing must be one of int32, line, netstring, raw" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--timeout", "nan"], "--timeout takes a finite number, not nan"),
        (["--listen", "ssl:0:privateKey=/nonexistent/key.pem"], "No such file or directory"),
        (["--listen", "unix:/nonexistent/dir/hub.sock"],
         "tcphub cannot listen on unix:/nonexistent/dir/hub.sock"),
        (["--port", "0", "--admin", "unix:/nonexistent/dir/admin.sock"],
         "tcphub admin cannot listen on unix:/nonexistent/dir/admin.sock"),
        (["--port", "0", "--websocket", "unix:/nonexistent/dir/ws.sock"],
         "tcphub websocket cannot listen on unix:/nonexistent/dir/ws.sock"),
    ],
)
def test_twistd_turns_a_bad_value_into_one_line_and_status_1(args, message):
    result = subprocess.run(
        [twistd_command(), "--pidfile=", "-n", "tcphub", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert message in output
    assert "Traceback" not in output


def test_twistd_echo_answers_a_client_that_half_closes():
    """What `echo hi | nc -N 127.0.0.1 3000` does: send, shutdown(SHUT_WR), read to the end."""
    with Twistd("tcphub", "--port", "0", "--mode", "echo") as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as client:
            client.sendall(b"hi\nno newline")
            client.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
        assert reply == b"hi\nno newline\n", "every message answered, then a clean close"
        twistd.shutdown()


def test_twistd_broadcast_client_that_half_closes_is_closed_by_default():
    with Twistd("tcphub", "--port", "0", "--mode", "broadcast") as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as probe:
            probe.shutdown(socket.SHUT_WR)  # a load balancer's TCP health check
            assert probe.recv(1) == b"", "the hub closed it"
        twistd.shutdown()


def test_twistd_broadcast_listener_that_half_closes_keeps_receiving_with_allow_half_open():
    with Twistd("tcphub", "--port", "0", "--mode", "broadcast", "--allow-half-open") as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as listener, \
                socket.create_connection((host, port), timeout=30) as talker:
            listener.shutdown(socket.SHUT_WR)
            talker_in = talker.makefile("rb")
            # A third client's message reaching the talker shows that the hub
            # has taken both connections and read the listener's FIN, which
            # the kernel queued before the talker even connected to the probe.
            with socket.create_connection((host, port), timeout=30) as probe:
                probe.sendall(b"probe\n")
                assert read_line(talker_in) == b"probe\n"
            talker.sendall(b"after the half-close\n")
            listener_in = listener.makefile("rb")
            assert read_line(listener_in) == b"probe\n"
            assert read_line(listener_in) == b"after the half-close\n"
        twistd.shutdown()


def _nofile(soft: int, hard: int):
    def set_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return set_limit


def _open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


def test_twistd_raises_the_open_file_limit_as_far_as_max_connections_needs():
    with Twistd("tcphub", "--port", "0", "--max-connections", "1000",
                preexec_fn=_nofile(200, 4096)) as twistd:
        twistd.wait_listening()
        assert "raised the open-file limit from 200 to 1064" in twistd.output
        assert _open_files_limit(twistd.process.pid) == 1064
        twistd.shutdown()


def test_twistd_refuses_clients_past_the_open_file_limit_and_says_so():
    count = 260
    with Twistd("tcphub", "--port", "0", "--framing", "line", "--mode", "broadcast",
                preexec_fn=_nofile(200, 200)) as twistd:
        host, port = twistd.wait_listening()
        assert re.search(r"open-file limit \(ulimit -n\) of 200 leaves room for about 136 clients",
                         twistd.output)
        clients = [_connected_or_refused(host, port) for _ in range(count)]
        try:
            # The hub accepts in connect order: once it refuses the 137th, the
            # first 136 are in its table and the broadcast reaches them all.
            twistd.wait_for(r"refused 127\.0\.0\.1:\d+: 136 clients connected$")
            # Every client is either served (it gets the broadcast) or refused
            # (closed at once): none is left hanging.
            clients[0].sendall(b"hello\n")
            served = refused = 0
            for client in clients[1:]:
                try:
                    data = client.recv(100) if client is not None else b""
                except ConnectionResetError:
                    data = b""
                if data == b"hello\n":
                    served += 1
                else:
                    assert data == b"", data
                    refused += 1
            assert served == 135 and refused == count - 136
            assert "EMFILE" not in twistd.output
        finally:
            for client in clients:
                if client is not None:
                    client.close()
        twistd.shutdown()


def _connected_or_refused(host: str, port: int) -> socket.socket | None:
    """A client connected, or None if the hub's reset (a refusal) came
    before C{connect} saw the connection made: with a timeout, Python's
    connect waits for it, then reads the socket's error, the reset's by then."""
    try:
        return socket.create_connection((host, port), timeout=30)
    except ConnectionResetError:
        return None


def test_twistd_tls_listen_as_in_the_readme(tmp_path):
    key, cert = make_certificate(tmp_path)
    with Twistd("tcphub", "--mode", "echo",
                "--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}") as twistd:
        host, port = twistd.wait_listening()
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection((host, port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as client:
                client.sendall(b"over tls\n")
                assert read_line(client.makefile("rb")) == b"over tls\n"
        twistd.shutdown()


@pytest.mark.parametrize("example", ["echo.tac", "chat.tac"])
def test_examples_run_with_twistd_ny(example, monkeypatch):
    monkeypatch.setenv("TCPHUB_PORT", "0")
    monkeypatch.setenv("TCPHUB_WEBSOCKET", "tcp:0:interface=127.0.0.1")
    with Twistd("-y", str(REPO / "examples" / example)) as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as first:
            first_in = first.makefile("rb")
            if example == "echo.tac":
                first.sendall(b"echo me\n")
                assert read_line(first_in) == b"echo me\n"
                twistd.wait_for("Client connected: [0-9a-f]{16}")
            else:
                first.sendall(b"/nick ada\n")
                while read_line(first_in) != b"* you are now ada\n":
                    pass
                with socket.create_connection((host, port), timeout=30) as second:
                    second_in = second.makefile("rb")
                    second.sendall(b"/nick bob\n/me waves\n")
                    while read_line(second_in) != b"#lobby * bob waves\n":
                        pass
                    while read_line(first_in) != b"#lobby * bob waves\n":
                        pass
                    first.sendall(b"hello bob\n")
                    assert read_line(second_in) == b"#lobby <ada> hello bob\n"
                    ws_port = twistd.wait_for(r"tcphub websocket listening on [^ ]+:(\d+)")[1]
                    with connect(f"ws://127.0.0.1:{ws_port}/ws", proxy=None) as browser:
                        browser.send("/me is a browser")
                        while not read_line(second_in).endswith(b" is a browser\n"):
                            pass
                    # The file object holds the socket open until it is closed too.
                    second_in.close()
                while read_line(first_in) != b"* bob left #lobby\n":  # after the browser's lines
                    pass
        twistd.shutdown()


def test_twistd_default_command_listens_on_3000():
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 3000))
        except OSError:
            pytest.skip("port 3000 is taken on this machine")
    with Twistd("tcphub") as twistd:
        assert twistd.wait_listening() == ("127.0.0.1", 3000)
        twistd.shutdown(signal.SIGINT)


def test_a_fresh_install_shows_the_plugin_in_twistd_help(tmp_path):
    """
    Install the package (not the source tree) into a fresh virtualenv, and
    check that twistd discovers the plugin from the installed files.
    """
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, str(REPO)],
        check=True, timeout=300,
    )
    assert (site / "twisted" / "plugins" / "tcphub_plugins.py").exists()
    assert not (site / "twisted" / "plugins" / "__init__.py").exists()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    # The fresh venv sees the installed package first, then Twisted and the
    # other dependencies from the test environment (whose .pth files, such as
    # an editable install of this repository, are not processed).
    dependencies = [p for p in sys.path if p.endswith("site-packages")]
    (venv_site / "deps.pth").write_text("\n".join([str(site), *dependencies]) + "\n")

    where = subprocess.run(
        [python, "-c", "import twisted.plugins.tcphub_plugins as m, tcphub; print(m.__file__, tcphub.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True,
    ).stdout
    assert where.count(str(site)) == 2, where

    help_text = subprocess.run(
        [python, twistd_command(), "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""},
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "tcphub " in help_text.stdout


def test_upstream_makes_a_gateway_that_retries_for_ever_by_default():
    gateway = hub_service("--upstream", "ws://127.0.0.1:1/", "--upstream-route", "hub.#")
    assert gateway.hub.factory.protocol.__name__ == "HubProtocol", "mode none: nothing local"
    assert (gateway.upstream.url, gateway.upstream.options.max_retries) == ("ws://127.0.0.1:1/", None)
    assert gateway.upstream.router.match("hub.anything") is not None
    limited = hub_service("--upstream", "wss://h/", "--upstream-max-retries", "3", "--mode", "echo")
    assert limited.upstream.options.max_retries == 3
    assert limited.hub.factory.protocol is EchoProtocol
    with pytest.raises(usage.UsageError, match="ws:// or wss://"):
        parse("--upstream", "tcp://h/")


def stuck_reader(host: str, port: int) -> socket.socket:
    """A client that sent far more than the kernel buffers hold, and reads none of the echo."""
    client = socket.create_connection((host, port), timeout=60)
    client.sendall(b"x" * (20 * 1024 * 1024))
    return client


@pytest.mark.parametrize(
    "sig, status, line",
    [
        (signal.SIGTERM, -signal.SIGTERM, "Received SIGTERM, shutting down."),
        # The terminal of twistd -n closing, or a logrotate kill -HUP.
        # Status 129 (128 + SIGHUP): not a normal stop, for a supervisor (it was 0).
        (signal.SIGHUP, 128 + signal.SIGHUP, "Received SIGHUP, shutting down"),
    ],
    ids=["SIGTERM", "SIGHUP"],
)
def test_shutdown_drains_then_aborts_after_the_drain_timeout(sig, status, line):
    with Twistd("tcphub", "--port", "0", "--mode", "echo", "--framing", "raw",
                "--max-pending", "100000000", "--drain-timeout", "1") as twistd:
        host, port = twistd.wait_listening()
        with stuck_reader(host, port):
            code = twistd.stop(sig)
        assert code == status, twistd.output
        assert line in twistd.output and "Server Shut Down." in twistd.output
        assert re.search(r"aborting 127\.0\.0\.1:\d+: still open after the drain timeout", twistd.output)
        assert "tcphub stopped" in twistd.output


def test_a_second_interrupt_exits_without_waiting_for_the_drain():
    with Twistd("tcphub", "--port", "0", "--mode", "echo", "--framing", "raw",
                "--max-pending", "100000000", "--drain-timeout", "600") as twistd:
        host, port = twistd.wait_listening()
        with stuck_reader(host, port):
            twistd.process.send_signal(signal.SIGINT)
            twistd.wait_for("interrupt again to exit at once")
            twistd.process.send_signal(signal.SIGINT)
            assert twistd.process.wait(timeout=60) == 128 + signal.SIGINT
        twistd.drain()
        assert "second interrupt: exiting without waiting for the drain" in twistd.output
        assert "tcphub stopped" not in twistd.output


def test_a_stop_by_sigterm_does_not_speak_of_interrupts():
    with Twistd("tcphub", "--port", "0") as twistd:
        twistd.wait_listening()
        twistd.shutdown(signal.SIGTERM)
    assert "interrupt again" not in twistd.output


def test_connections_refused_for_want_of_a_descriptor_are_counted_and_reported():
    with Twistd("-y", str(REPO / "tests" / "no_descriptor_limit.tac"),
                preexec_fn=_nofile(64, 64)) as twistd:
        host, port = twistd.wait_listening()
        clients = []
        try:
            for _ in range(100):
                clients.append(socket.create_connection((host, port), timeout=30))
            twistd.wait_for(r"\d+ connections refused so far: no file descriptor left \(EMFILE\)")
            twistd.wait_for("error event: DescriptorLimitReached")
        finally:
            for client in clients:
                client.close()
        twistd.shutdown()


def test_a_gateway_that_gives_up_on_its_upstream_exits_1():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/"
        with Twistd("tcphub", "--port", "0", "--upstream", url, "--upstream-max-retries", "0") as twistd:
            code = twistd.process.wait(timeout=60)
            twistd.drain()
    assert code == 1, twistd.output
    assert "gave up after 0 retries" in twistd.output
    assert "Scheduling retry" not in twistd.output


# -- logs, and the newer runner ----------------------------------------------------


@pytest.mark.parametrize("level, shown", [("info", False), ("debug", True)])
def test_connections_are_logged_only_at_debug(level, shown):
    with Twistd("tcphub", "--port", "0", "--mode", "echo", "--log-level", level) as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as client:
            client.sendall(b"hi\n")
            assert client.recv(10) == b"hi\n"
        twistd.shutdown()
    assert ("connected from 127.0.0.1:" in twistd.output) is shown, twistd.output
    assert "tcphub stopped" in twistd.output


def test_json_logs_are_one_object_per_line_with_the_events_fields():
    with Twistd("tcphub", "--port", "0", "--log-format", "json") as twistd:
        twistd.wait_listening()
        twistd.shutdown()
    records = [json.loads(line) for line in twistd.lines if line.strip()]
    listening = next(record for record in records if record["message"].startswith("tcphub listening on"))
    assert listening["level"] == "info" and listening["namespace"] == "tcphub.hub.service.TcpServer"
    assert listening["framing"] == "line" and listening["time"].endswith("+00:00")
    assert {"time", "level", "namespace", "message"} <= set(records[0])


def test_json_fault_lines_carry_the_client_the_address_and_the_reason_as_keys():
    """A log pipeline filters on fields, not on the message's words."""
    with Twistd("tcphub", "--port", "0", "--log-format", "json", "--max-frame", "16",
                "--max-connections", "1") as twistd:
        host, port = twistd.wait_listening()
        with socket.create_connection((host, port), timeout=30) as client:
            client.sendall(b"x" * 64 + b"\n")
            twistd.wait_for(r'"fault": "protocol_errors"')
        with socket.create_connection((host, port), timeout=30) as first:
            first.sendall(b"hi\n")
            first.recv(10)  # admitted: the hub holds it
            with socket.create_connection((host, port), timeout=30) as second:
                twistd.wait_for(r'"fault": "refused"')
                second_address = "%s:%d" % second.getsockname()
        twistd.shutdown()
    records = [json.loads(line) for line in twistd.lines if line.strip()]
    drop = next(record for record in records if record.get("fault") == "protocol_errors")
    assert drop["level"] == "warn" and drop["kind"] == "tcp" and drop["reason"] == "protocol_errors"
    assert drop["client_id"] and drop["address"].startswith("127.0.0.1:") and drop["error_type"] == "FrameTooLong"
    assert drop["client_id"] in drop["message"]
    refused = next(record for record in records if record.get("fault") == "refused")
    assert refused["address"] == second_address and refused["error_type"] == "ConnectionLimitReached"


@pytest.mark.parametrize("flag", ["--port", "--admin", "--websocket"])
def test_twist_exits_1_with_one_line_when_a_port_is_busy(flag):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        args = ["--port", str(taken)] if flag == "--port" else [
            "--port", "0", flag, f"tcp:{taken}:interface=127.0.0.1"]
        result = subprocess.run(
            [str(Path(twistd_command()).with_name("twist")), "--log-format", "text", "tcphub", *args],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "cannot listen on" in output and "Address already in use" in output
    assert "Traceback" not in output and "Unhandled error" not in output


@pytest.mark.parametrize("options", [["--admin", "tcp:0"], ["--websocket", "tcp:0"]], ids=["admin", "websocket"])
def test_a_hub_without_upstream_does_not_load_autobahn(options):
    # An idle twistd's memory counts: Autobahn (and what it imports) costs
    # megabytes, and the members speak WebSocket without it.
    probe = ("import sys\nfrom tcphub.tap import Options, makeService\n"
             f"options = Options()\noptions.parseOptions({options!r})\nmakeService(options)\n"
             "print(sorted(name for name in sys.modules if name.split('.')[0] in ('autobahn', 'txaio')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_public_names_reach_the_members_origin_policy():
    from tcphub.tap import Options

    options = Options()
    options.parseOptions(["--websocket", "tcp:0", "--public-name", "chat.example.com"])
    assert options["public-name"] == ["chat.example.com"]
    with pytest.raises(usage.UsageError, match="--public-name: a public name looks like"):
        Options().parseOptions(["--websocket", "tcp:0", "--public-name", "not a name"])
    with pytest.raises(usage.UsageError, match="--public-name goes with --websocket"):
        Options().parseOptions(["--public-name", "chat.example.com"])


def test_the_open_file_budget_covers_the_http_ports_connections():
    """256 HTTP connections for each of --websocket and --admin, besides the
    hub's 1,000 clients and the reserve: idle HTTP connections cannot use up
    the descriptors the hub's clients were promised."""
    with Twistd("tcphub", "--port", "0", "--max-connections", "1000",
                "--websocket", "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=127.0.0.1",
                preexec_fn=_nofile(200, 4096)) as twistd:
        twistd.wait_listening()
        assert "raised the open-file limit from 200 to 1576" in twistd.output
        twistd.shutdown()
