"""The tcphub-ws plugin and the ws-client example, run by twistd against the websockets server."""

from __future__ import annotations

import json
import urllib.request

import pytest
from twisted.python import usage

from tcphub.wstap import Options, makeService
from tests.processes import REPO, Twistd, WebSocketServer


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_options_reach_the_handler():
    handler = makeService(parse(
        "--url", "wss://example.test/feed", "--no-reconnect", "--max-retries", "9",
        "--backoff", "linear", "--ping-interval", "5", "--no-compression",
        "--max-message-size", "4096",
    )).getServiceNamed("tcphub-ws")
    assert handler.url == "wss://example.test/feed"
    assert (handler.options.reconnect, handler.options.max_retries, handler.options.backoff) == (False, 0, "linear")
    assert (handler.options.ping_interval, handler.options.compression, handler.options.max_message_size) == (5, False, 4096)


def test_defaults():
    handler = makeService(parse("--url", "ws://127.0.0.1:1/")).getServiceNamed("tcphub-ws")
    # A daemon does not give up through an upstream's routine restart (it gave up after 5 retries, ~25 s).
    assert (handler.options.reconnect, handler.options.max_retries, handler.options.backoff) == (
        True, None, "exponential")
    assert handler.options.fatal_close_codes == frozenset()


def test_fatal_close_codes_are_given_as_on_the_api():
    handler = makeService(parse("--url", "ws://h/", "--fatal-close-code", "4001", "--fatal-close-code", "4003")
                          ).getServiceNamed("tcphub-ws")
    assert handler.options.fatal_close_codes == frozenset({4001, 4003})
    with pytest.raises(usage.UsageError, match="--fatal-close-code must be at least 1000"):
        parse("--url", "ws://h/", "--fatal-close-code", "999")
    assert (handler.options.ping_interval, handler.options.compression) == (30, True)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--url is required"),
        (["--url", "http://example.test/"], "ws:// or wss://"),
        (["--url", "ws://h/", "--backoff", "fibonacci"], "--backoff must be one of linear, exponential"),
        (["--url", "ws://h/", "--max-retries", "-1"], "cannot be negative"),
        (["--url", "ws://h/", "--ping-interval", "often"], "--ping-interval takes a number"),
    ],
)
def test_bad_options(args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_twistd_tcphub_ws_logs_every_message_with_path_and_connection_id():
    with WebSocketServer("--greet") as server, Twistd("tcphub-ws", "--url", server.url) as twistd:
        connected = twistd.wait_for(r"connected to ws://127\.0\.0\.1:\d+/ \(connection (\w+)\)")
        logged = twistd.wait_for(r"message on server\.hello from connection (\w+): \{'greeting': 'hello'\}")
        assert logged[1] == connected[1]
        twistd.shutdown()
        server.wait_for("connection closed: code 1000")


def test_twistd_tcphub_ws_exits_when_it_gives_up():
    with WebSocketServer("--reject") as server, \
            Twistd("tcphub-ws", "--url", server.url, "--no-reconnect") as twistd:
        code = twistd.process.wait(timeout=60)
        twistd.drain()
        # Non-zero, so that a supervisor's restart-on-failure restarts it.
        assert code == 1, twistd.output
        assert "gave up after 0 retries" in twistd.output and "503" in twistd.output
        assert "Scheduling retry" not in twistd.output, "no phantom retry after giving up"


def test_ws_client_example(monkeypatch):
    with WebSocketServer("--greet") as server:
        monkeypatch.setenv("TCPHUB_WS_URL", server.url)
        with Twistd("-y", str(REPO / "examples" / "ws-client.tac")) as twistd:
            twistd.wait_for(r"greeted on connection \w+: \{'greeting': 'hello'\}")
            # The server echoes the client's answer, which no route handles.
            twistd.wait_for(r"nobody handles client\.hello")
            twistd.shutdown()


def test_handshake_and_timing_options_reach_the_handler():
    handler = makeService(parse(
        "--url", "ws://127.0.0.1:1/", "--header", "Authorization: Bearer x", "--header", "X-Id:7",
        "--subprotocol", "chat.v2", "--subprotocol", "chat.v1", "--origin", "https://app.example",
        "--open-timeout", "3", "--ping-timeout", "2", "--initial-delay", "0.5", "--max-delay", "9",
        "--proxy", "127.0.0.1:3128",
    )).getServiceNamed("tcphub-ws")
    assert handler.options.headers == {"Authorization": "Bearer x", "X-Id": "7"}
    assert handler.options.subprotocols == ("chat.v2", "chat.v1") and handler.options.origin == "https://app.example"
    assert (handler.options.open_timeout, handler.options.ping_timeout, handler.options.proxy) == (3, 2, "127.0.0.1:3128")
    assert handler.options.user_agent.startswith("tcphub/")


def test_a_private_ca_file_makes_tls_options(tmp_path):
    from tests.clients import make_certificate

    _, cert = make_certificate(tmp_path)
    handler = makeService(parse("--url", "wss://localhost:1/", "--ca-file", str(cert))).getServiceNamed("tcphub-ws")
    assert handler.options.tls_options is not None


@pytest.mark.parametrize("args, message", [
    (["--header", "no colon"], "--header takes 'Name: value'"),
    (["--ca-file", "/etc/hostname"], "--ca-file goes with a wss:// --url"),
    (["--proxy", "127.0.0.1:3128", "--url", "wss://h/"], "--proxy is not supported with a wss://"),
])
def test_bad_handshake_options_are_usage_errors(args, message):
    url = [] if "--url" in args else ["--url", "ws://h/"]
    with pytest.raises(usage.UsageError, match=message):
        parse(*url, *args)


def test_a_missing_ca_file_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="--ca-file"):
        parse("--url", "wss://h/", "--ca-file", str(tmp_path / "none.pem"))


def test_twistd_tcphub_ws_sends_the_header_and_subprotocol_it_is_given():
    server = WebSocketServer("--require-auth", "--subprotocols", "chat.v2")
    try:
        with Twistd("tcphub-ws", "--url", server.url, "--ping-interval", "0",
                    "--header", "Authorization: Bearer from-the-command-line",
                    "--subprotocol", "chat.v2") as twistd:
            twistd.wait_for(r"connected to ws://")
            assert server.wait_for(r"^handshake (.*)")[1].startswith("auth='Bearer from-the-command-line'")
            assert server.wait_for(r"^subprotocol (.*)")[1] == "chat.v2"
            twistd.shutdown()
    finally:
        server.kill()


def test_url_is_repeatable_for_standby_servers():
    handler = makeService(parse("--url", "ws://a.example/", "-u", "ws://b.example/")).getServiceNamed("tcphub-ws")
    assert handler.urls == ["ws://a.example/", "ws://b.example/"] and handler.url == "ws://a.example/"


def test_twistd_tcphub_ws_exits_at_once_when_the_server_refuses_it_for_good():
    with WebSocketServer("--require-auth") as server, \
            Twistd("tcphub-ws", "--url", server.url) as twistd:
        code = twistd.process.wait(timeout=60)
        twistd.drain()
        assert code == 1, twistd.output
        assert "the server rejected the handshake: HTTP 401" in twistd.output
        assert "retry 1" not in twistd.output, "a 401 is not retried"


def test_headers_from_a_file_are_sent_and_varz_shows_no_secret_header_value(tmp_path):
    headers = tmp_path / "headers"
    headers.write_text("# the upstream's credentials\nAuthorization: Bearer from-the-file\n\nX-Tenant-Key: t3nant\n")
    server = WebSocketServer("--require-auth")
    try:
        with Twistd("tcphub-ws", "--url", server.url, "--ping-interval", "0", "--header-file", str(headers),
                    "--header", "Cookie: session=c00kie", "--header", "X-Id: 7",
                    "--admin", "tcp:0:interface=127.0.0.1") as twistd:
            admin = int(twistd.wait_for(r"tcphub admin listening on [^ ]+:(\d+)")[1])
            twistd.wait_for(r"connected to ws://")
            assert server.wait_for(r"^handshake (.*)")[1].startswith("auth='Bearer from-the-file'")
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/varz", timeout=30) as response:
                varz = json.loads(response.read())
            twistd.shutdown()
    finally:
        server.kill()
    assert varz["options"]["header"] == {"Authorization": "***", "X-Tenant-Key": "***",
                                         "Cookie": "***", "X-Id": "7"}
    for secret in ("from-the-file", "t3nant", "c00kie"):
        assert secret not in json.dumps(varz) and secret not in twistd.output, secret


@pytest.mark.parametrize("content, message", [
    ("Authorization Bearer s3cret\n", "line 1 takes 'Name: value'$"),
    (None, "No such file"),
])
def test_a_bad_header_file_is_a_usage_error_that_shows_no_line(tmp_path, content, message):
    headers = tmp_path / "headers"
    if content is not None:
        headers.write_text(content)
    with pytest.raises(usage.UsageError, match=message):
        parse("--url", "ws://h/", "--header-file", str(headers))
