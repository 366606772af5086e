"""
The WebSocket handler against a server that is not our code: the
`websockets` package's server in a subprocess (tests/ws_server.py).
Our own timers (backoff, request timeouts, heartbeat, the opening and closing
handshakes) run on a Clock; Autobahn's are off.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock, deferLater

from tcphub import (
    FatalClose,
    HandlerClosed,
    HandlerError,
    HandlerProtocol,
    HandlerState,
    HandshakeRejected,
    InvalidCloseCode,
    InvalidMessage,
    MessageTooLarge,
    NotConnected,
    QueueFull,
    RequestTimeout,
    RetryLimitReached,
    RouteConflict,
    WebSocketHandler,
)
from tcphub.ws.envelope import Envelope
from tests.clients import make_certificate
from tests.events import when_event
from tests.processes import WebSocketServer


@pytest.fixture
def servers():
    started: list[WebSocketServer] = []

    class Servers:
        def start(self, *options: str) -> WebSocketServer:
            server = WebSocketServer(*options)
            started.append(server)
            return server

        def restart(self, server: WebSocketServer) -> WebSocketServer:
            again = server.restart()
            started.append(again)
            return again

    yield Servers()
    for server in started:
        server.resume()
        server.kill()


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def handler():
    """C{handler(**options)}: a WebSocketHandler on a Clock, without jitter;
    each one is closed after the test, whatever happened in it."""
    made: list[WebSocketHandler] = []

    def make(**options) -> WebSocketHandler:
        options.setdefault("clock", Clock())
        options.setdefault("jitter", 0.0)
        ws = WebSocketHandler(**options)
        made.append(ws)
        return ws

    yield make
    for ws in made:
        pytest_twisted.blockon(ws.close())


def route_into(ws: WebSocketHandler, path: str, count: int) -> tuple[list, Deferred]:
    """Collect C{(data, context)} for C{path}; the Deferred fires after C{count}."""
    seen: list = []
    done: Deferred = Deferred()

    def collect(data, context) -> None:
        seen.append((data, context.connection_id))
        if len(seen) == count:
            done.callback(seen)

    ws.add_route(path, collect)
    return seen, done


@pytest_twisted.inlineCallbacks
def test_send_route_request_and_status(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0)
    seen, echoed = route_into(ws, "chat.*", 2)
    yield ws.connect(server.url)
    assert server.wait_for("^open (.*)")[1] == "permessage-deflate"
    context = ws.context
    assert context.connected and context.connection_id
    yield ws.send("chat.message", {"text": "hello"})
    yield ws.send("chat.bytes", b"\x00\xff binary")
    yield echoed
    assert seen == [({"text": "hello"}, context.connection_id),
                    (b"\x00\xff binary", context.connection_id)]
    assert context.last_message_at == ws.clock.seconds()

    assert (yield ws.request("rpc.add", [1, 2])) == [1, 2]
    status = ws.get_status()
    assert (status.connected, status.messages_sent, status.messages_received) == (True, 3, 3)
    assert (status.retries, status.pending_requests, status.compression) == (0, 0, "permessage-deflate")
    yield ws.close(1000, "Normal closure")
    assert not ws.get_status().connected
    assert ws.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_compression_can_be_turned_off(servers, handler):
    server = servers.start()
    ws = handler(compression=False, ping_interval=0)
    yield ws.connect(server.url)
    assert server.wait_for("^open (.*)")[1] == "none"
    assert ws.get_status().compression is None


@pytest.mark.logs_errors("the route handlers raise on purpose", ZeroDivisionError, KeyError)
@pytest_twisted.inlineCallbacks
def test_invalid_messages_and_a_raising_handler_leave_the_connection_up(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0)
    errors, unrouted = [], []
    ws.on("error", lambda error, context: errors.append(error))
    ws.on("unrouted", lambda envelope, context: unrouted.append(envelope.path))

    def broken(data, context):
        raise ZeroDivisionError("handler bug")

    async def broken_later(data, context):
        raise KeyError("async handler bug")

    ws.add_route("boom", broken)
    ws.add_route("boom.async", broken_later)
    seen, done = route_into(ws, "ok", 1)
    yield ws.connect(server.url)
    opened_as = ws.context.connection_id
    yield ws.send("server.say", [
        "not json",
        '{"data": 1}',
        "[1, 2]",
        '{"path": "nowhere", "data": 1}',
        '{"path": "boom", "data": 1}',
        '{"path": "boom.async", "data": 1}',
        '{"path": "ok", "data": "still up"}',
    ])
    yield done
    assert seen == [("still up", opened_as)]
    assert [type(e) for e in errors] == [InvalidMessage] * 3 + [HandlerError] * 2
    assert isinstance(errors[3].__cause__, ZeroDivisionError)
    assert isinstance(errors[4].__cause__, KeyError)
    assert unrouted == ["nowhere"]
    status = ws.get_status()
    assert (status.invalid_messages, status.unrouted_messages, status.handler_errors) == (3, 1, 2)
    assert status.connected and ws.context.connection_id == opened_as


@pytest_twisted.inlineCallbacks
def test_server_restart_reconnects_flushes_the_queue_in_order_and_counts(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0, backoff="linear", initial_delay=2.0)
    seen, all_back = route_into(ws, "seq", 10)
    yield ws.connect(server.url)
    first_id = ws.context.connection_id
    ws.context.metadata["user"] = "ada"

    closed, retry = when_event(ws, "close"), when_event(ws, "retry")
    server = servers.restart(server)
    yield closed
    attempt, delay, _ = yield retry
    assert (attempt, delay) == (1, 2.0)
    sends = [ws.send("seq", n) for n in range(10)]
    assert ws.get_status().queued == 10 and not any(d.called for d in sends)

    opened = when_event(ws, "open")
    yield deferLater(reactor, 0, lambda: None)
    ws.clock.advance(delay)
    yield opened
    yield gatherResults(sends)
    yield all_back
    assert [data for data, _ in seen] == list(range(10))
    assert {connection for _, connection in seen} == {ws.context.connection_id}
    assert ws.context.connection_id != first_id
    assert ws.context.metadata == {"user": "ada"}
    status = ws.get_status()
    assert (status.retries, status.reconnects, status.queued) == (1, 1, 0)
    yield ws.close()
    assert ws.clock.getDelayedCalls() == []


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest.mark.parametrize("backoff, delays", [("linear", [1.0, 2.0, 3.0]), ("exponential", [1.0, 2.0, 4.0])])
@pytest_twisted.inlineCallbacks
def test_a_refused_port_uses_up_max_retries_with_the_right_delays(backoff, delays, handler):
    ws = handler(max_retries=3, backoff=backoff, initial_delay=1.0)
    retry = when_event(ws, "retry")
    connected = ws.connect(f"ws://127.0.0.1:{refused_port()}/")
    seen = []
    for _ in delays:
        attempt, delay, _ = yield retry
        seen.append(delay)
        # ClientService schedules the retry right after asking for its delay.
        yield deferLater(reactor, 0, lambda: None)
        (call,) = ws.clock.getDelayedCalls()
        assert call.getTime() - ws.clock.seconds() == delay
        retry = when_event(ws, "retry")
        ws.clock.advance(delay)
    with pytest.raises(RetryLimitReached, match="gave up after 3 retries; last failure: .*refused"):
        yield connected
    assert seen == delays
    assert ws.get_status().retries == 3
    # connect() failed from inside ClientService's transition: unwind, then
    # let the scheduled stop run.
    yield deferLater(reactor, 0, lambda: None)
    ws.clock.advance(0)
    assert ws.clock.getDelayedCalls() == []


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest_twisted.inlineCallbacks
def test_without_reconnect_the_first_failure_is_final(handler):
    ws = handler(reconnect=False)
    failed = ws.send("x", 1)
    with pytest.raises(NotConnected):
        yield failed
    with pytest.raises(RetryLimitReached, match="0 retries"):
        yield ws.connect(f"ws://127.0.0.1:{refused_port()}/")
    yield deferLater(reactor, 0, lambda: None)
    ws.clock.advance(0)
    assert ws.clock.getDelayedCalls() == []


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest_twisted.inlineCallbacks
def test_a_server_refusing_the_handshake_uses_up_retries(servers, handler):
    """ClientService alone would count every TCP connect as a success."""
    server = servers.start("--reject")
    ws = handler(max_retries=2, backoff="linear", initial_delay=1.0)
    connected = ws.connect(server.url)
    for _ in range(2):
        attempt, delay, _ = yield when_event(ws, "retry")
        yield deferLater(reactor, 0, lambda: None)
        ws.clock.advance(delay)
    with pytest.raises(RetryLimitReached, match="503"):
        yield connected
    assert not ws.get_status().connected
    yield deferLater(reactor, 0, lambda: None)
    ws.clock.advance(0)
    assert ws.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_queue_is_bounded_and_close_during_the_wait_fails_what_waits(handler):
    ws = handler(max_queue=2, max_queue_bytes=100, initial_delay=5.0)
    connected = ws.connect(f"ws://127.0.0.1:{refused_port()}/")
    yield when_event(ws, "retry")
    with pytest.raises(QueueFull, match="max_queue_bytes=100"):
        yield ws.send("big", "x" * 100)
    queued = [ws.send("a", 1), ws.send("b", 2)]
    assert (ws.get_status().queued, ws.get_status().queued_bytes) == (2, 2 * len(b'{"path":"a","data":1}'))
    with pytest.raises(QueueFull, match="2 messages"):
        yield ws.send("c", 3)
    request = ws.request("rpc", None, timeout=60)
    yield deferLater(reactor, 0, lambda: None)
    yield ws.close()
    for waiting in (*queued, connected):
        with pytest.raises(HandlerClosed):
            yield waiting
    with pytest.raises(QueueFull):
        yield request
    with pytest.raises(HandlerClosed):
        yield ws.send("late", 0)
    assert ws.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_a_request_times_out_on_the_clock_and_the_late_reply_is_dropped(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0)
    seen, after = route_into(ws, "after", 1)
    yield ws.connect(server.url)
    request = ws.request("server.hold", "question", timeout=5)
    ws.clock.advance(4.9)
    assert not request.called
    ws.clock.advance(0.1)
    with pytest.raises(RequestTimeout, match="server.hold"):
        yield request
    assert ws.get_status().pending_requests == 0
    yield ws.send("server.release", None)
    yield ws.send("after", "done")
    yield after
    status = ws.get_status()
    assert (status.late_replies, status.unrouted_messages) == (1, 0)
    yield ws.close()
    assert ws.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_a_server_that_stops_answering_pings_is_dropped_and_reconnected(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0.5, ping_timeout=0.5)
    yield ws.connect(server.url)
    closed, retry = when_event(ws, "close"), when_event(ws, "retry")
    server.pause()
    ws.clock.advance(0.5)  # the ping
    ws.clock.advance(0.25)
    assert ws.get_status().connected, "the pong is not late yet"
    ws.clock.advance(0.25)
    _, code, reason = yield closed
    assert code == 1006 and "ping timeout" in reason
    _, delay, _ = yield retry
    server.resume()
    opened = when_event(ws, "open")
    yield deferLater(reactor, 0, lambda: None)
    ws.clock.advance(delay)
    yield opened
    assert ws.get_status().reconnects == 1


@pytest_twisted.inlineCallbacks
def test_last_ping_records_the_pong(servers, handler):
    server = servers.start()
    pong: Deferred = Deferred()

    class Watching(HandlerProtocol):
        def onPong(self, payload: bytes) -> None:
            super().onPong(payload)
            if not pong.called:
                pong.callback(None)

    ws = handler(ping_interval=0.5, ping_timeout=5, protocol=Watching)
    yield ws.connect(server.url)
    assert ws.get_status().last_ping is None
    ws.clock.advance(42)
    yield pong
    assert ws.get_status().last_ping == 42


@pytest_twisted.inlineCallbacks
def test_an_over_size_message_closes_with_1009(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0, max_message_size=1000)
    yield ws.connect(server.url)
    closed = when_event(ws, "close")
    yield ws.send("server.say", ["x" * 2000])
    _, code, reason = yield closed
    assert code == 1009 and "exceeds payload limit of 1000" in reason
    server.wait_for("connection closed: code 1009")


@pytest_twisted.inlineCallbacks
def test_wss_with_a_throwaway_certificate(servers, tmp_path, handler):
    key, cert = make_certificate(tmp_path)
    server = servers.start("--cert", str(cert), "--key", str(key))
    tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert.read_bytes()))
    ws = handler(ping_interval=0, tls_options=tls)
    seen, echoed = route_into(ws, "secure", 1)
    yield ws.connect(f"wss://127.0.0.1:{server.port}/")
    yield ws.send("secure", "over tls")
    yield echoed
    assert seen[0][0] == "over tls"


def test_close_codes_and_reasons_are_checked(handler):
    ws = handler()
    for code in (999, 1001, 1006, 2999, 5000):
        with pytest.raises(InvalidCloseCode):
            ws.close(code)
    with pytest.raises(InvalidCloseCode, match="123"):
        ws.close(1000, "é" * 62)
    assert ws.close(3000, "é" * 61).called


def test_routes_conflict_unless_replaced(handler):
    ws = handler()
    ws.add_route("chat.*", print)
    with pytest.raises(RouteConflict):
        ws.add_route("chat.*", print)
    ws.add_route("chat.*", repr, replace=True)
    ws.remove_route("chat.*")
    with pytest.raises(KeyError):
        ws.remove_route("chat.*")


@pytest_twisted.inlineCallbacks
def test_a_thousand_hostile_messages_are_counted_and_leave_the_handler_as_it_was(servers, handler):
    import tracemalloc

    server = servers.start()
    ws = handler(ping_interval=0)
    ws.add_route("#.a.#.a.#.b", lambda data, context: None)
    ws.add_route("#", lambda data, context: None)
    seen, done = route_into(ws, "ok", 1)
    # A binary envelope whose JSON header is not UTF-8 (a text frame that is
    # not UTF-8 is a protocol error, 1007, by RFC 6455: not data).
    bad_utf8 = base64.b64encode(struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc" + b"payload").decode()
    hostile = [
        ("server.say", ['{"path": "deep", "data": ' + "[" * 1500 + "]" * 1500 + "}"] * 200),
        ("server.say", ['{"path": "' + ".".join(["a"] * 500) + '"}'] * 200),
        ("server.say", ['{"path": "' + "a" * 1100 + '"}'] * 200),
        ("server.say", ["{not json"] * 200),
        ("server.say.binary", [bad_utf8] * 200),
    ]
    yield ws.connect(server.url)
    opened_as = ws.context.connection_id
    timers = len(reactor.getDelayedCalls())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for command, batch in hostile:
        yield ws.send(command, batch)
    yield ws.send("server.say", ['{"path": "ok", "data": "still up"}'])
    yield done
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    status = ws.get_status()
    assert status.invalid_messages == 1000
    assert status.connected and ws.context.connection_id == opened_as
    assert seen == [("still up", opened_as)]
    assert len(reactor.getDelayedCalls()) == timers
    assert after - before < 1024 * 1024, f"{after - before} bytes kept"


@pytest_twisted.inlineCallbacks
def test_outgoing_messages_are_bounded_by_max_send_size_not_max_message_size(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0, max_message_size=1000, max_send_size=1500)
    yield ws.connect(server.url)
    # Past max_message_size (which bounds what we receive): written.
    yield ws.send("server.hold", "x" * 1200)
    with pytest.raises(MessageTooLarge, match="max_send_size=1500"):
        yield ws.send("server.hold", "x" * 2000)
    status = ws.get_status()
    assert status.connected and status.messages_sent == 1


@pytest_twisted.inlineCallbacks
def test_a_large_message_queued_before_the_open_does_not_break_the_flush(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0, max_message_size=1000)
    seen, echoed = route_into(ws, "after", 1)
    opened = when_event(ws, "open")
    connected = ws.connect(server.url)
    sends = [ws.send("server.hold", "x" * 5000), ws.send("after", "small")]
    assert ws.get_status().queued == 2
    yield connected
    yield opened
    yield gatherResults(sends)
    yield echoed
    assert ws.get_status().queued == 0 and ws.get_status().messages_sent == 2


class _HandMadeServer(Protocol):
    """A WebSocket server by hand: accepts the upgrade and sends C{greeting}
    frames; when the client's close frame comes, fires C{close_received},
    echoes a close frame without a reason if C{echo} is set, and drops TCP
    if C{drop} is set."""

    def __init__(self, greeting: bytes, close_received: Deferred, echo: bytes = b"",
                 drop: bool = False) -> None:
        self.buffer = b""
        self.upgraded = False
        self.greeting, self.close_received, self.echo, self.drop = greeting, close_received, echo, drop

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded and b"\r\n\r\n" in self.buffer:
            request, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            key = re.search(rb"(?i)sec-websocket-key: *([^\r\n]+)", request)[1]
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                + self.greeting
            )
            self.upgraded = True
        if self.upgraded and self.buffer[:1] == b"\x88" and not self.close_received.called:
            self.close_received.callback(None)
            self.transport.write(self.echo)
            if self.drop:
                self.transport.loseConnection()


def _hand_made_server(greeting: bytes, close_received: Deferred, **options):
    factory = Factory.forProtocol(lambda: _HandMadeServer(greeting, close_received, **options))
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


@pytest_twisted.inlineCallbacks
def test_send_during_the_closing_handshake_queues_instead_of_raising(handler):
    close_answered: Deferred = Deferred()
    # The server closes (1001) at once, and keeps TCP open, as some servers do.
    port = _hand_made_server(b"\x88\x02\x03\xe9", close_answered)
    ws = handler(ping_interval=0, max_retries=None)
    try:
        yield ws.connect(f"ws://127.0.0.1:{port.getHost().port}/")
        yield close_answered
        status = ws.get_status()
        assert not status.connected, "not connected once the closing handshake began"
        queued = ws.send("later", 1)  # must not raise
        assert ws.get_status().queued == 1 and not queued.called
    finally:
        closed = ws.close()
        ws.clock.advance(ws.options.close_timeout)  # the server never drops TCP
        yield closed
        yield port.stopListening()
    with pytest.raises(HandlerClosed):
        yield queued


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ping_interval": -1}, "ping_interval cannot be negative"),
        ({"ping_timeout": -5}, "ping_timeout must be more than 0"),
        ({"open_timeout": 0}, "open_timeout must be more than 0"),
        ({"open_timeout": -1}, "open_timeout must be more than 0"),
        ({"jitter": 2.0}, "jitter must be at most 1"),
        ({"initial_delay": -1}, "initial_delay cannot be negative"),
        ({"max_delay": float("nan")}, "max_delay takes a finite number"),
        ({"request_timeout": -1}, "request_timeout must be more than 0"),
        ({"max_retries": -1}, "max_retries cannot be negative"),
        ({"max_send_size": 0}, "max_send_size must be at least 1"),
        ({"url": "ws://127.0.0.1:1/", "tls_options": object()}, "not a wss:// URL"),
    ],
)
def test_bad_handler_options_are_refused_at_construction(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        WebSocketHandler(**options)


@pytest_twisted.inlineCallbacks
def test_pings_keep_the_interval_exactly_on_the_handlers_clock(servers, handler):
    # Autobahn's batched timer sent 13,423 pings in 3 s at a 0.3 s interval.
    server = servers.start()
    sent, pongs = [], []

    class Counting(HandlerProtocol):
        def sendPing(self, payload=None):
            sent.append(self.factory.handler.clock.seconds())
            super().sendPing(payload)

        def onPong(self, payload: bytes) -> None:
            super().onPong(payload)
            pongs.append(self.factory.handler.clock.seconds())

    ws = handler(ping_interval=0.25, ping_timeout=5, protocol=Counting)
    yield ws.connect(server.url)
    for count in range(1, 13):
        ws.clock.advance(0.125)
        assert len(sent) == count - 1
        ws.clock.advance(0.125)
        assert len(sent) == count
        while len(pongs) < count:  # the pong, from the real server
            yield deferLater(reactor, 0.001, lambda: None)
    assert sent == [0.25 * n for n in range(1, 13)]
    assert ws.get_status().last_ping == 3.0 and ws.get_status().connected


class _SilentServer(Protocol):
    """Accepts TCP and never answers the opening handshake."""


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest_twisted.inlineCallbacks
def test_the_open_timeout_is_exact_on_the_handlers_clock(handler):
    port = reactor.listenTCP(0, Factory.forProtocol(_SilentServer), interface="127.0.0.1")
    tcp_up: Deferred = Deferred()

    class Watching(HandlerProtocol):
        def connectionMade(self) -> None:
            super().connectionMade()
            tcp_up.callback(None)

    ws = handler(reconnect=False, open_timeout=1.5, protocol=Watching)
    try:
        connected = ws.connect(f"ws://127.0.0.1:{port.getHost().port}/")
        yield tcp_up
        ws.clock.advance(1.25)
        yield deferLater(reactor, 0, lambda: None)
        assert not connected.called, "an open_timeout of 1.5 s does not fire at 1.25 s"
        ws.clock.advance(0.25)
        with pytest.raises(RetryLimitReached, match=r"opening handshake timeout \(1.5 s\)"):
            yield connected
    finally:
        yield ws.close()
        yield port.stopListening()


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest_twisted.inlineCallbacks
def test_a_server_that_closes_at_once_is_retried_with_growing_backoff_to_the_limit(servers, handler):
    # Every open used to reset the retry count: 20 handshakes in 6 s, 0.3 s
    # apart, with max_retries=3, and never a RetryLimitReached.
    server = servers.start("--close-at-open", "4001")
    ws = handler(ping_interval=0, max_retries=3, initial_delay=1.0, min_uptime=5.0)
    delays, errors = [], []
    ws.on("retry", lambda attempt, delay, context: delays.append(delay))
    ws.on("error", lambda error, context: errors.append(error))
    yield ws.connect(server.url)
    for attempt in range(1, 4):
        while len(delays) < attempt:
            yield deferLater(reactor, 0.001, lambda: None)
        ws.clock.advance(delays[-1])
    while not errors:
        yield deferLater(reactor, 0.001, lambda: None)
    assert delays == [1.0, 2.0, 4.0]
    assert [type(e) for e in errors] == [RetryLimitReached]
    assert "4001 authentication failed" in str(errors[0])


@pytest_twisted.inlineCallbacks
def test_a_fatal_close_code_ends_the_attempts_at_once(servers, handler):
    server = servers.start("--close-at-open", "4001")
    ws = handler(ping_interval=0, max_retries=None, fatal_close_codes={4001, 1008})
    error = when_event(ws, "error")
    retries = []
    ws.on("retry", lambda *args: retries.append(args))
    yield ws.connect(server.url)
    failure, _ = yield error
    assert isinstance(failure, FatalClose)
    assert (failure.code, failure.reason) == (4001, "authentication failed")
    assert retries == [] and not ws.get_status().connected
    with pytest.raises(NotConnected):
        yield ws.send("anything", 1)


@pytest_twisted.inlineCallbacks
def test_async_handlers_are_bounded_and_reading_stops_at_the_bound(servers, handler):
    # Unbounded, 20,000 calls were in flight at once (memory +47 MB).
    server = servers.start()
    ws = handler(ping_interval=0, max_concurrent_handlers=5)
    calls: list[tuple[int, Deferred]] = []

    def slow(data, context) -> Deferred:
        call: Deferred = Deferred()
        calls.append((data, call))
        return call

    ws.add_route("work", slow)
    yield ws.connect(server.url)
    yield ws.send("server.say", [f'{{"path": "work", "data": {n}}}' for n in range(50)])
    while len(calls) < 5 or not ws.get_status().reading_paused:
        yield deferLater(reactor, 0.001, lambda: None)
    status = ws.get_status()
    assert (status.handlers_in_flight, len(calls)) == (5, 5)
    done = 0
    while done < 50:
        _, call = calls[done]
        call.callback(None)
        done += 1
        assert ws.get_status().handlers_in_flight <= 5
        while len(calls) < min(done + 5, 50):
            yield deferLater(reactor, 0.001, lambda: None)
    assert [data for data, _ in calls] == list(range(50)), "in order"
    status = ws.get_status()
    assert (status.handlers_in_flight, status.reading_paused, status.connected) == (0, False, True)


class _Answers(Protocol):
    """Answers the opening handshake with C{reply} and closes."""

    reply = b""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(self.reply)
        self.transport.loseConnection()


@pytest.mark.parametrize(
    "reply, cause",
    [
        (b"garbage, not HTTP\r\n\r\n", "the server's answer to the opening handshake is not HTTP: b'garbage"),
        (b"", "the server closed the connection before answering the opening handshake"),
    ],
)
@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest_twisted.inlineCallbacks
def test_a_broken_handshake_says_what_was_wrong(reply, cause, handler):
    answering = type("Answering", (_Answers,), {"reply": reply})
    port = reactor.listenTCP(0, Factory.forProtocol(answering), interface="127.0.0.1")
    ws = handler(reconnect=False)
    try:
        with pytest.raises(RetryLimitReached) as failed:
            yield ws.connect(f"ws://127.0.0.1:{port.getHost().port}/")
        assert cause in str(failed.value)
    finally:
        yield port.stopListening()


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest.mark.logs_errors("Autobahn logs a failed TLS handshake at error", match="SSL error")
@pytest_twisted.inlineCallbacks
def test_tls_failures_name_their_cause(servers, tmp_path, handler):
    key, cert = make_certificate(tmp_path)
    server = servers.start("--cert", str(cert), "--key", str(key))
    url = f"wss://127.0.0.1:{server.port}/"
    trusted = Certificate.loadPEM(cert.read_bytes())
    cases = [
        (None, "TLS: certificate verify failed (the server's certificate is self-signed"),
        (optionsForClientTLS("example.com", trustRoot=trusted),
         "TLS: the server's certificate is not valid for example.com"),
    ]
    for tls, cause in cases:
        ws = handler(reconnect=False, tls_options=tls)
        with pytest.raises(RetryLimitReached) as failed:
            yield ws.connect(url)
        assert cause in str(failed.value)


@pytest.mark.parametrize("drop", [True, False], ids=["echo-and-drop", "echo-and-linger"])
@pytest_twisted.inlineCallbacks
def test_the_close_event_reports_the_protocol_error_we_closed_with(drop, handler):
    close_received: Deferred = Deferred()
    # A text frame with RSV bits set: a protocol error (1002). The server
    # echoes the close without a reason.
    port = _hand_made_server(b"\xc1\x02hi", close_received, echo=b"\x88\x02\x03\xea", drop=drop)
    ws = handler(ping_interval=0, reconnect=False)
    closed = when_event(ws, "close")
    try:
        yield ws.connect(f"ws://127.0.0.1:{port.getHost().port}/")
        yield close_received
        if not drop:
            yield deferLater(reactor, 0, lambda: None)
            ws.clock.advance(ws.options.close_timeout)
        _, code, reason = yield closed
        assert code == 1002 and "RSV" in reason
        if not drop:
            assert "then closing handshake timeout" in reason
        assert ws.get_status().protocol_errors == 1
    finally:
        yield ws.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_handshake_options_reach_the_server_and_the_token_is_fetched_anew_for_each_attempt(servers, handler):
    server = servers.start("--require-auth", "--subprotocols", "chat.v1,chat.v2", "--close-at-open", "4000")
    fetched: list[int] = []

    def token():
        fetched.append(len(fetched) + 1)
        return succeed({"Authorization": f"Bearer token-{len(fetched)}"})

    ws = handler(ping_interval=0, max_retries=None, headers=token, subprotocols=["chat.v2"],
                 origin="https://app.example")
    retried = when_event(ws, "retry")
    yield ws.connect(server.url)
    first = server.wait_for(r"^handshake (.*)")
    assert first[1].startswith("auth='Bearer token-1' origin='https://app.example' agent='tcphub/")
    assert server.wait_for(r"^subprotocol (.*)")[1] == "chat.v2"
    assert ws.context.subprotocol == "chat.v2"
    since = len(server.lines)
    _, delay, _ = yield retried
    # The retry event comes from inside the retry policy: the retry is
    # scheduled once the policy returns, on the next turn of the reactor.
    yield deferLater(reactor, 0, lambda: None)
    opened = when_event(ws, "open")
    ws.clock.advance(delay)
    yield opened
    assert server.wait_for(r"^handshake (.*)", since=since)[1].startswith("auth='Bearer token-2'")
    assert fetched == [1, 2]


@pytest_twisted.inlineCallbacks
def test_static_headers_and_a_chosen_user_agent(servers, handler):
    server = servers.start("--require-auth")
    ws = handler(ping_interval=0, headers={"Authorization": "Bearer fixed"}, user_agent="probe/1")
    yield ws.connect(server.url)
    assert server.wait_for(r"^handshake (.*)")[1] == "auth='Bearer fixed' origin=None agent='probe/1'"
    assert ws.get_status().subprotocol is None


@pytest.mark.parametrize("options, message", [
    ({"headers": "Authorization: x"}, "headers takes a mapping or a callable"),
    ({"subprotocols": ["ok", ""]}, "subprotocols takes names"),
    ({"proxy": "nohost"}, "proxy takes host:port"),
    ({"proxy": "127.0.0.1:3128", "url": "wss://h/"}, "not supported with wss://"),
])
def test_bad_handshake_options_are_refused_by_name(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        WebSocketHandler(**options)


class _ConnectProxy(Protocol):
    """A small HTTP CONNECT proxy: reads one CONNECT request, connects to
    its target, answers 200, then pipes bytes both ways."""

    def connectionMade(self) -> None:
        self.buffer = b""
        self.pipe: _Pipe | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.transport.write(data)
            return
        self.buffer += data
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        target = head.split(b" ")[1].decode()
        self.factory.targets.append(target)
        host, port = target.rsplit(":", 1)
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, host, int(port))
        connectProtocol(endpoint, _Pipe(self)).addCallback(self._connected, rest)

    def _connected(self, pipe: _Pipe, rest: bytes) -> None:
        self.pipe = pipe
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            pipe.transport.write(rest)
        self.transport.resumeProducing()

    def connectionLost(self, reason=None) -> None:
        if self.pipe is not None:
            self.pipe.transport.loseConnection()


class _Pipe(Protocol):
    def __init__(self, other: _ConnectProxy) -> None:
        self.other = other

    def dataReceived(self, data: bytes) -> None:
        self.other.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.other.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_connection_through_an_http_connect_proxy(servers, handler):
    server = servers.start()
    factory = Factory.forProtocol(_ConnectProxy)
    factory.targets = []
    proxy = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        ws = handler(ping_interval=0, proxy=f"127.0.0.1:{proxy.getHost().port}")
        seen, echoed = route_into(ws, "through", 1)
        yield ws.connect(server.url)
        yield ws.send("through", "the proxy")
        assert (yield echoed)[0][0] == "the proxy"
        assert factory.targets == [f"127.0.0.1:{server.port}"]
        yield ws.close()
    finally:
        yield proxy.stopListening()


@pytest.mark.parametrize("options, status", [
    (["--require-auth"], 401),
    (["--reject-status", "403"], 403),
])
@pytest_twisted.inlineCallbacks
def test_a_handshake_refused_for_good_fails_at_once(options, status, servers, handler):
    server = servers.start(*options)
    ws = handler(ping_interval=0, max_retries=None)
    retries = []
    ws.on("retry", lambda *args: retries.append(args))
    with pytest.raises(HandshakeRejected) as refused:
        yield ws.connect(server.url)
    assert refused.value.status == status and retries == []
    assert ws.state is HandlerState.GIVEN_UP


@pytest_twisted.inlineCallbacks
def test_a_redirect_is_followed(servers, handler):
    target = servers.start()
    redirecting = servers.start("--reject-status", "302", "--location", target.url.replace("ws:", "http:"))
    ws = handler(ping_interval=0, max_retries=3)
    connected = ws.connect(redirecting.url)
    while not connected.called:  # the redirect is followed at once, on the handler's clock
        ws.clock.advance(0)
        yield deferLater(reactor, 0.001, lambda: None)
    yield connected
    assert ws.url == target.url and target.wait_for(r"^open ")


@pytest_twisted.inlineCallbacks
def test_a_redirect_loop_ends_with_the_location_named(servers, handler):
    looping = servers.start("--reject-status", "307", "--location", "/again")
    ws = handler(ping_interval=0, max_retries=10)
    connected = ws.connect(looping.url)
    failures = []
    connected.addErrback(failures.append)
    while not failures:
        ws.clock.advance(0)
        yield deferLater(reactor, 0.001, lambda: None)
    rejected = failures[0].value
    assert isinstance(rejected, HandshakeRejected) and rejected.status == 307
    assert "redirects to /again" in str(rejected)


@pytest.mark.parametrize("retry_after, delay", [
    ("7", 7.0),
    ("100", 30.0),  # at most max_delay
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # an HTTP date: now, on the test's clock
    ("soon", 1.0),  # not understood: the policy's delay
])
@pytest_twisted.inlineCallbacks
def test_a_503_with_retry_after_is_retried_when_the_server_says_at_most_max_delay(
        retry_after, delay, servers, handler):
    server = servers.start("--reject-status", "503", "--retry-after", retry_after)
    ws = handler(ping_interval=0, max_retries=None, max_delay=30.0)
    retried = when_event(ws, "retry")
    ws.connect(server.url).addErrback(lambda failure: None)
    attempt, seconds, _ = yield retried
    assert (attempt, seconds) == (1, delay)
    yield deferLater(reactor, 0, lambda: None)  # out of the retry policy, where the event came from
    yield ws.close()


@pytest_twisted.inlineCallbacks
def test_a_route_handler_answers_the_servers_request_with_its_id(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0)
    answered: Deferred = Deferred()

    def ask(envelope, context):
        if isinstance(envelope.data, dict):  # the server's question
            return ws.reply(envelope, envelope.data["n"] * 2)
        answered.callback(envelope)  # our answer, echoed back by the server
        return None

    ws.add_route("server.ask", ask, envelope=True)
    yield ws.connect(server.url)
    # The echo server sends this text as is: a request from the server, id q1.
    yield ws.send("server.say", ['{"path": "server.ask", "id": "q1", "data": {"n": 21}}'])
    echoed = yield answered
    assert (echoed.path, echoed.id, echoed.data) == ("server.ask", "q1", 42)
    with pytest.raises(ValueError, match="has no id"):
        ws.reply(Envelope(path="server.ask", data=1), 2)


class TypePayload:
    """A third-party service's JSON: {"type": ..., "payload": ...}."""

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        import json

        try:
            message = json.loads(payload)
            return Envelope(path=message["type"], data=message.get("payload"))
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidMessage(f"not a typed message: {error}") from None

    def encode(self, envelope: Envelope) -> tuple[bytes, bool]:
        import json

        return json.dumps({"type": envelope.path, "payload": envelope.data}).encode(), False


@pytest_twisted.inlineCallbacks
def test_a_plugged_codec_speaks_another_services_json(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0, codec=TypePayload())
    seen, echoed = route_into(ws, "trade.*", 1)
    yield ws.connect(server.url)
    yield ws.send("trade.eur", {"price": 1.08})
    assert (yield echoed)[0][0] == {"price": 1.08}
    assert ws.get_status().invalid_messages == 0


def test_a_codec_without_decode_and_encode_is_refused():
    with pytest.raises(TypeError, match="codec takes an object with decode"):
        WebSocketHandler(codec=object())


@pytest_twisted.inlineCallbacks
def test_sends_to_a_peer_that_stopped_reading_are_paced_and_bounded(servers, handler):
    server = servers.start()
    ws = handler(ping_interval=0, max_queue_bytes=4 << 20, compression=False)
    yield ws.connect(server.url)
    server.pause()  # SIGSTOP: the server reads nothing more
    chunk = b"x" * (512 << 10)
    sends = [ws.send("bulk", chunk) for _ in range(40)]
    refused = []
    for sent in sends:
        sent.addErrback(lambda failure: refused.append(failure.trap(QueueFull)))
    status = ws.get_status()
    # The first fills the connection's write buffer; the next wait in the
    # queue (its bound: 4 MiB), their Deferreds unfired; the rest are refused.
    assert sends[0].called and not sends[1].called
    assert status.queued == 7 and status.queued_bytes <= 4 << 20
    assert len(refused) == 40 - 1 - 7
    assert not ws.writable, "flow control tells a producer to pause"
    server.resume()
    yield gatherResults(sends[1:8])
    assert ws.get_status().queued == 0


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
@pytest_twisted.inlineCallbacks
def test_a_standby_url_takes_over_at_once_and_rounds_are_what_retries_count(servers, handler):
    server = servers.start()
    down = f"ws://127.0.0.1:{refused_port()}/"
    ws = handler(ping_interval=0, max_retries=1)
    retries = []
    ws.on("retry", lambda attempt, delay, context: retries.append(attempt))
    connected = ws.connect([down, server.url])
    while not connected.called:  # the next URL is tried at once: "at once" on the handler's clock
        ws.clock.advance(0)
        yield deferLater(reactor, 0.001, lambda: None)
    yield connected
    assert ws.url == server.url and retries == [], "the standby answered within the first round"
    assert server.wait_for(r"^open (.*)")
    yield ws.close()

    both_down = handler(ping_interval=0, max_retries=1, reconnect=True)
    failures = []
    both_down.on("retry", lambda attempt, delay, context: retries.append(attempt))
    connecting = both_down.connect([down, f"ws://127.0.0.1:{refused_port()}/"])
    connecting.addErrback(failures.append)
    while not failures:  # two rounds of two refused URLs, on the handler's clock
        both_down.clock.advance(0.5)
        yield deferLater(reactor, 0.001, lambda: None)
    assert retries == [1] and failures[0].check(RetryLimitReached)
