"""
WebSocket members in memory: the hub on a Clock, twisted.web's site and
the members' protocol on StringTransports, fed the bytes a browser
sends (masked frames).  The heartbeat and the close deadline are exact to
the hub's clock.
"""

from __future__ import annotations

import gc
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

from tcphub import BroadcastProtocol, EchoProtocol, PingTimeout
from tcphub.web.member import MemberConnection, MemberFactory
from tcphub._site import BodylessSite
from tcphub.web.origins import OriginPolicy
from tcphub.web.upgrade import MemberResource

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
PING, PONG, CLOSE, TEXT, BINARY = 0x9, 0xA, 0x8, 0x1, 0x2


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A frame as a browser sends it: final, masked."""
    mask = b"\x37\xfa\x21\x3d"
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked frame in C{data}."""
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if size == 126:
            size, offset = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[offset:offset + size]))
        data = data[offset + size:]
    return frames


@implementer(ITCPTransport)
class TcpLikeTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transports, lets a
    producer be unregistered twice (the member does, then Autobahn as it
    drops the connection), and keeps its socket options."""

    keep_alive = False

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keep_alive = enabled


class Members:
    """WebSocket members of an in-memory hub, over StringTransports."""

    def __init__(self, hub, ping_interval: float | None = 10.0, ping_timeout: float = 5.0,
                 close_timeout: float = 3.0, origins: OriginPolicy | None = None) -> None:
        self.hub = hub
        self.factory = MemberFactory(hub.factory, origins=origins or OriginPolicy(), ping_interval=ping_interval,
                                     ping_timeout=ping_timeout, close_timeout=close_timeout)
        root = Resource()
        root.putChild(b"ws", MemberResource(self.factory))
        self.site = BodylessSite(root, reactor=hub.clock, clock=hub.clock, max_request_rate=None)
        self.connections: list[MemberConnection] = []
        self.lost: set[MemberConnection] = set()
        self._port = 50000

    def connect(self, headers: bytes = b"", handshake: bytes = HANDSHAKE) -> tuple[MemberConnection, StringTransport]:
        self._port += 1
        address = IPv4Address("TCP", "127.0.0.1", self._port)
        channel = self.site.buildProtocol(address)
        # StringTransport refuses a second producer: the member must replace
        # the HTTP channel, which registered itself, rather than add to it.
        transport = TcpLikeTransport(peerAddress=address)
        transport.protocol = channel  # as a TCP transport has: WebSocketResource swaps it
        channel.makeConnection(transport)
        channel.dataReceived(handshake + headers + b"\r\n")
        connection = transport.protocol
        self.connections.append(connection)
        return connection, transport

    def open(self) -> tuple[MemberConnection, StringTransport]:
        connection, transport = self.connect()
        assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
        transport.clear()
        return connection, transport

    def lose(self, connection: MemberConnection) -> None:
        self.lost.add(connection)
        connection.connectionLost(Failure(ConnectionDone("bye")))

    def close(self) -> None:
        # What the transports would do: tell each connection left that it is gone.
        for connection in self.connections:
            if connection not in self.lost:
                self.lose(connection)


@pytest.fixture
def logged_failures():
    """The failures logged during the test (Autobahn logs what a callback raised)."""
    failures: list = []

    def observe(event) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def members(hub_factory):
    made: list[Members] = []

    def make(hub_options: dict | None = None, **options) -> Members:
        each = Members(hub_factory(**(hub_options or {})), **options)
        made.append(each)
        return each

    yield make
    for each in made:
        each.close()


def test_a_websocket_member_is_a_hub_member_of_kind_websocket(members):
    web = members({"protocol": EchoProtocol, "framing": "int32"})
    tcp_protocol, _ = web.hub.connect()
    connection, transport = web.open()
    kinds = {info.id: info.kind for info in web.hub.factory.clients()}
    assert kinds == {tcp_protocol.client_id: "tcp", connection.member.client_id: "websocket"}
    connection.dataReceived(client_frame(TEXT, b"echo me"))
    assert server_frames(transport.value()) == [(TEXT, b"echo me")]
    assert [event[0] for event in web.hub.events] == ["connection", "connection", "data"]


def test_what_the_hub_sends_goes_as_text_when_it_is_utf8_without_control_bytes_and_else_as_binary(members):
    web = members({"protocol": BroadcastProtocol, "framing": "netstring"})
    connection, transport = web.open()
    payloads = [b"plain", "h\u00e9llo \u2603".encode(), b"tab\tcr\rlf\n", b"\xff\xfe", b"\x00\x00\x00\x0f{}", b""]
    for payload in payloads:
        web.hub.factory.broadcast(payload)
    assert server_frames(transport.value()) == list(zip([TEXT, TEXT, TEXT, BINARY, BINARY, TEXT], payloads))


def test_one_broadcast_gives_every_member_the_same_frame(members):
    web = members({"protocol": BroadcastProtocol})
    opened = [web.open() for _ in range(3)]
    sender, _ = opened[0]
    sender.dataReceived(client_frame(TEXT, b"to all"))
    assert [server_frames(transport.value()) for _, transport in opened] == [[], [(TEXT, b"to all")],
                                                                           [(TEXT, b"to all")]]


def test_members_are_pinged_on_the_hubs_clock_and_dropped_exactly_at_the_ping_timeout(members):
    web = members(ping_interval=10.0, ping_timeout=5.0)
    connection, transport = web.open()
    clock = web.hub.clock
    # Binary fractions, so that the clock's sums are exact.
    clock.advance(9.75)
    assert transport.value() == b""
    clock.advance(0.25)
    assert server_frames(transport.value()) == [(PING, b"")]
    clock.advance(4.75)
    assert web.hub.factory.get_metrics().timed_out == 0
    clock.advance(0.25)
    assert web.hub.factory.get_metrics().timed_out == 1
    assert transport.disconnected, "a silent peer's connection is aborted"
    assert isinstance(web.hub.errors()[-1], PingTimeout)
    web.lose(connection)
    assert "did not answer a ping within 5.0 seconds" in web.hub.factory.closed_connections()[0].reason


def test_a_pong_keeps_a_member_and_the_next_ping_comes_one_interval_later(members):
    web = members(ping_interval=10.0, ping_timeout=5.0)
    connection, transport = web.open()
    clock = web.hub.clock
    clock.advance(10)
    clock.advance(2)
    connection.dataReceived(client_frame(PONG))
    transport.clear()
    clock.advance(9.75)
    assert transport.value() == b"" and web.hub.factory.get_metrics().timed_out == 0
    clock.advance(0.25)
    assert server_frames(transport.value()) == [(PING, b"")]


def test_a_member_the_hub_stopped_reading_is_not_pinged_until_it_reads_again(members):
    web = members(ping_interval=10.0, ping_timeout=5.0)
    connection, transport = web.open()
    clock = web.hub.clock
    clock.advance(10)  # a ping is out
    web.hub.factory.pause_reading()  # its pong would wait unread in the socket
    assert transport.producerState == "paused"
    clock.advance(100)
    assert web.hub.factory.get_metrics().timed_out == 0
    transport.clear()
    web.hub.factory.resume_reading()
    clock.advance(10)
    assert server_frames(transport.value()) == [(PING, b"")]


def test_a_close_the_peer_does_not_answer_is_dropped_at_the_close_timeout(members):
    web = members(close_timeout=3.0)
    connection, transport = web.open()
    web.hub.factory.disconnect(connection.member.client_id)
    assert server_frames(transport.value()) == [(CLOSE, struct.pack("!H", 1000))]
    web.hub.clock.advance(2.75)
    assert not transport.disconnected
    web.hub.clock.advance(0.25)
    assert transport.disconnected


def test_a_close_the_peer_answers_ends_the_connection_without_waiting(members):
    web = members(close_timeout=3.0)
    connection, transport = web.open()
    web.hub.factory.disconnect(connection.member.client_id)
    connection.dataReceived(client_frame(CLOSE, struct.pack("!H", 1000)))
    assert transport.disconnecting
    web.lose(connection)
    assert web.hub.clock.getDelayedCalls() == []
    assert web.hub.factory.clients() == []


def test_a_message_over_max_frame_closes_with_1009_and_counts_as_a_protocol_error(members):
    web = members({"max_frame": 100})
    connection, transport = web.open()
    connection.dataReceived(client_frame(BINARY, b"x" * 101))
    [(opcode, payload)] = server_frames(transport.value())
    assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", 1009))
    assert web.hub.factory.get_metrics().protocol_errors == 1
    assert not transport.disconnected, "the close frame is on its way: no abort"
    assert transport.producerState == "paused", "RFC 6455 7.1.7: no more of a failed connection's data"
    web.hub.clock.advance(3)
    assert transport.disconnected


def test_a_message_a_line_hub_cannot_relay_closes_with_1007(members):
    web = members({"framing": "line", "protocol": BroadcastProtocol})
    connection, transport = web.open()
    connection.dataReceived(client_frame(TEXT, b"two\nlines"))
    [(opcode, payload)] = server_frames(transport.value())
    assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", 1007))
    assert b"newline" in payload
    assert web.hub.factory.get_metrics().protocol_errors == 1
    assert transport.producerState == "paused"
    assert [event[0] for event in web.hub.events].count("data") == 0


def test_invalid_utf8_text_closes_with_1007_and_counts_as_a_protocol_error(members):
    web = members()
    connection, transport = web.open()
    connection.dataReceived(client_frame(TEXT, b"\xff\xfe"))
    [(opcode, payload)] = server_frames(transport.value())
    assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", 1007))
    assert web.hub.factory.get_metrics().protocol_errors == 1


def test_a_page_from_another_origin_is_refused_with_403_and_counted(members):
    web = members()
    _, refused = web.connect(b"Origin: http://evil.example\r\n")
    assert refused.value().startswith(b"HTTP/1.1 403")
    _, same = web.connect(b"Origin: http://127.0.0.1:8080\r\n")
    assert same.value().startswith(b"HTTP/1.1 101")
    assert (web.factory.counters.rejected_origin, web.hub.factory.get_metrics().connections) == (1, 1)


def test_the_handshake_is_answered_with_the_key_rfc_6455_gives_for_its_example(members):
    web = members()
    _, transport = web.connect()
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and answer.endswith(b"\r\n\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert b"\r\nUpgrade: websocket\r\n" in answer and b"\r\nConnection: Upgrade\r\n" in answer


@pytest.mark.parametrize("handshake, status, header", [
    pytest.param(HANDSHAKE.replace(b"Version: 13", b"Version: 8"), 426, b"Sec-WebSocket-Version: 13", id="version 8"),
    pytest.param(HANDSHAKE.replace(b"Connection: Upgrade\r\n", b""), 400, b"", id="no Connection: Upgrade"),
    pytest.param(HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="), 400, b"", id="a key of 5 bytes"),
    pytest.param(HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64 at all!"), 400, b"", id="a key not in base64"),
    pytest.param(HANDSHAKE.replace(b"HTTP/1.1", b"HTTP/1.0"), 400, b"", id="HTTP/1.0"),
    pytest.param(HANDSHAKE.replace(b"GET", b"HEAD"), 400, b"", id="HEAD"),
    pytest.param(HANDSHAKE.replace(b"Host: 127.0.0.1:8080\r\n", b""), 400, b"", id="no Host"),
])
def test_a_malformed_handshake_is_an_http_refusal_counted_and_the_connection_closed(members, handshake, status,
                                                                                     header):
    web = members()
    _, transport = web.connect(handshake=handshake)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert header in answer and transport.disconnecting
    assert web.factory.counters.bad_handshakes == 1 and web.hub.factory.clients() == []


def test_the_http_channel_and_request_are_freed_at_the_upgrade_not_left_to_the_cycle_collector(members):
    web = members()
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            web.open()
        assert gc.collect() == 0, "no object of the handshake is left in a reference cycle"
    finally:
        gc.enable()


def test_the_pings_and_pongs_of_every_member_are_on_one_timer_each(members):
    web = members(ping_interval=10.0, ping_timeout=5.0)
    opened = [web.open() for _ in range(50)]
    assert len(web.hub.timers()) == 1
    web.hub.clock.advance(10)
    assert all(server_frames(transport.value()) == [(PING, b"")] for _, transport in opened)
    assert len(web.hub.timers()) == 1, "the pongs' deadlines"
    for connection, _ in opened[:25]:
        connection.dataReceived(client_frame(PONG))
    assert len(web.hub.timers()) == 2, "the next pings, and the pongs still awaited"
    web.hub.clock.advance(5)
    assert web.hub.factory.get_metrics().timed_out == 25


def test_a_refused_member_is_never_in_the_client_table(members):
    web = members({"max_connections": 1})
    web.open()
    connection, transport = web.connect()
    assert transport.value().startswith(b"HTTP/1.1 503 the hub is full"), "not a TCP reset after the upgrade"
    assert transport.disconnecting
    web.lose(connection)
    assert len(web.hub.factory.clients()) == 1
    assert web.hub.factory.get_metrics().rejected == 1


def test_a_member_that_stops_reading_queues_and_is_dropped_past_max_pending(members):
    web = members({"protocol": BroadcastProtocol, "max_pending": 1000})
    sender, _ = web.open()
    slow, transport = web.open()
    slow.member.pauseProducing()  # what TCP does when the peer's window is full
    for _ in range(9):
        sender.dataReceived(client_frame(TEXT, b"x" * 100))
    assert slow.member.info().pending_bytes == 9 * 101
    sender.dataReceived(client_frame(TEXT, b"x" * 100))
    assert transport.disconnected and web.hub.factory.get_metrics().slow_consumers == 1


def test_dropping_a_member_that_is_gone_does_nothing(members):
    web = members()
    connection, _ = web.open()
    member = connection.member
    web.lose(connection)
    member.drop("timed_out", PingTimeout("late"))
    assert web.hub.factory.get_metrics().timed_out == 0


def test_the_per_address_cap_counts_websocket_members_with_the_tcp_clients(members):
    web = members({"max_connections_per_ip": 1})
    web.hub.connect(host="127.0.0.1")
    connection, transport = web.connect()
    assert transport.value().startswith(b"HTTP/1.1 503 the hub is full"), "said before the upgrade"
    metrics = web.hub.factory.get_metrics()
    assert (metrics.rejected_per_ip, metrics.connections) == (1, 1)


def test_a_member_over_max_rate_is_paused_not_dropped(members):
    web = members({"protocol": EchoProtocol, "max_rate": 1.0, "max_burst": 1})
    connection, transport = web.open()
    connection.dataReceived(client_frame(TEXT, b"one") + client_frame(TEXT, b"two"))
    assert server_frames(transport.value()) == [(TEXT, b"one")]
    assert transport.producerState == "paused", "TCP stops reading the member"
    transport.clear()
    web.hub.clock.advance(1)
    assert server_frames(transport.value()) == [(TEXT, b"two")]
    assert transport.producerState == "producing"


def test_a_quiet_member_that_answers_pings_is_not_idle(members):
    """Pongs are traffic for the idle timeout: a browser tab that only
    listens stays (before, it was dropped every timeout)."""
    web = members({"timeout": 30.0}, ping_interval=10.0, ping_timeout=5.0)
    connection, transport = web.open()
    for _ in range(6):
        web.hub.clock.advance(10)
        connection.dataReceived(client_frame(PONG))
    assert web.hub.factory.get_metrics().timed_out == 0 and not transport.disconnected
    web.hub.clock.advance(10)
    web.hub.clock.advance(5)  # no pong to the last ping: the heartbeat ends it
    assert web.hub.factory.get_metrics().timed_out == 1


def test_nothing_follows_the_answer_to_a_peers_close(members):
    web = members({"protocol": BroadcastProtocol})
    sender, _ = web.open()
    leaving, transport = web.open()
    leaving.dataReceived(client_frame(CLOSE, struct.pack("!H", 1001)))
    # The member is told when TCP is gone, a turn later: what the hub sends meanwhile is dropped.
    web.hub.factory.broadcast(b"one message")
    sender.dataReceived(client_frame(TEXT, b"two") + client_frame(TEXT, b"messages"))
    assert server_frames(transport.value()) == [(CLOSE, struct.pack("!H", 1001))], "its code echoed"


def test_without_a_ping_interval_nothing_is_scheduled(members, logged_failures):
    web = members(ping_interval=None)
    _, transport = web.open()
    assert web.hub.timers() == []
    web.hub.clock.advance(3600)
    assert transport.value() == b""
    gc.collect()  # a Deferred that failed unseen logs its failure when collected
    assert logged_failures == []


def test_a_close_the_hub_asks_for_after_the_peers_adds_no_deadline(members):
    web = members()
    connection, _ = web.open()
    connection.dataReceived(client_frame(CLOSE, struct.pack("!H", 1001)))
    web.hub.factory.disconnect(connection.member.client_id)  # before TCP is known to be gone
    web.lose(connection)
    assert web.hub.timers() == []


def test_the_messages_of_one_read_go_out_as_one_write_per_receiver(members):
    web = members({"protocol": BroadcastProtocol})
    sender, _ = web.open()
    _, transport = web.open()
    writes = []
    transport.write = writes.append
    sender.dataReceived(client_frame(TEXT, b"one") + client_frame(TEXT, b"two"))
    assert [server_frames(data) for data in writes] == [[(TEXT, b"one"), (TEXT, b"two")]]


def test_members_handed_the_same_frames_share_one_join_and_others_get_their_own(members):
    """The frames of one read's broadcasts are framed and joined once for
    all the members they go to; a member whose frames differ (a send to it
    alone between the broadcasts, the same length and ends as another's)
    gets its own."""

    class Announcer(BroadcastProtocol):
        def messageReceived(self, payload: bytes) -> None:
            self.broadcastMessage(b"one")
            self.factory.send(first.member.client_id, b"for the first")
            self.factory.send(second.member.client_id, b"for the second")
            self.broadcastMessage(b"two")

    web = members({"protocol": Announcer})
    sender, _ = web.open()
    (first, first_transport), (second, second_transport), (_, third_transport) = [web.open() for _ in range(3)]
    sender.dataReceived(client_frame(TEXT, b"go"))
    assert [server_frames(transport.value()) for transport in (first_transport, second_transport, third_transport)] == [
        [(TEXT, b"one"), (TEXT, b"for the first"), (TEXT, b"two")],
        [(TEXT, b"one"), (TEXT, b"for the second"), (TEXT, b"two")],
        [(TEXT, b"one"), (TEXT, b"two")],
    ]
    prepared, encode_frame = web.factory.prepared, web.hub.factory.framing.encode
    one, two = encode_frame(b"one"), encode_frame(b"two")
    first = prepared.wire_all([one, two])
    assert prepared.wire_all([one, two]) is first, "joined once, not per member"
    assert prepared.wire_all([two, one]) != first


def test_a_pong_the_hub_did_not_ask_for_does_not_move_the_next_ping(members):
    web = members(ping_interval=10.0, ping_timeout=5.0)
    connection, transport = web.open()
    web.hub.clock.advance(5)
    connection.dataReceived(client_frame(PONG))
    web.hub.clock.advance(5)
    assert server_frames(transport.value()) == [(PING, b"")]


def test_a_member_that_joins_a_hub_that_is_not_reading_is_not_pinged(members):
    web = members(ping_interval=10.0, ping_timeout=5.0)
    web.hub.factory.pause_reading()
    _, transport = web.open()
    web.hub.clock.advance(100)
    assert transport.value() == b"" and web.hub.factory.get_metrics().timed_out == 0


@pytest.mark.parametrize("keep_alive", [True, False])
def test_tcp_keep_alive_follows_the_hubs_option(members, keep_alive):
    web = members({"keep_alive": keep_alive})
    _, transport = web.open()
    assert transport.keep_alive is keep_alive


def test_the_shared_websocket_frames_are_bounded_in_bytes(members):
    web = members({"protocol": BroadcastProtocol, "framing": "int32", "max_frame": 1 << 20})
    _, transport = web.open()
    payloads = [bytes([i]) * 60_000 for i in range(100)]  # 6 MB in all
    for payload in payloads:
        web.hub.factory.broadcast(payload)
    assert [payload for _, payload in server_frames(transport.value())] == payloads
    assert web.factory.prepared.size <= web.factory.prepared.LIMIT + 2 * 60_010


# -- what a member may send: pings, frames, fragments ----------------------------


def fragment(opcode: int, payload: bytes = b"", final: bool = False) -> bytes:
    """A masked frame, final or not (opcode 0: a continuation)."""
    frame = client_frame(opcode, payload)
    return bytes([frame[0] if final else frame[0] & 0x7F]) + frame[1:]


def test_a_member_that_pings_and_never_reads_owes_one_pong_not_a_pile(members):
    web = members(ping_interval=None)
    connection, transport = web.open()
    transport.producer.pauseProducing()  # the peer's window is full: it does not read
    for n in range(5):
        connection.dataReceived(client_frame(PING, b"%d" % n))
    assert transport.value() == b"", "no pong piles up in the transport"
    transport.producer.resumeProducing()
    assert server_frames(transport.value()) == [(PONG, b"4")], "the latest one, once it reads"
    transport.clear()
    connection.dataReceived(client_frame(PING, b"now"))
    assert server_frames(transport.value()) == [(PONG, b"now")]


def test_a_ping_flood_is_counted_and_the_member_dropped(members):
    web = members(ping_interval=None)
    connection, transport = web.open()
    connection.dataReceived(client_frame(PING) * 10)
    assert [opcode for opcode, _ in server_frames(transport.value())] == [PONG] * 10
    transport.clear()
    connection.dataReceived(client_frame(PING))
    [(opcode, payload)] = server_frames(transport.value())
    assert (opcode, payload) == (CLOSE, struct.pack("!H", 1008) + b"more than 10 pings a second")
    assert web.hub.factory.get_metrics().protocol_errors == 1
    web.hub.clock.advance(1)  # a second later, the others are as welcome as ever
    other, other_transport = web.open()
    other.dataReceived(client_frame(PING) * 10)
    assert len(server_frames(other_transport.value())) == 10


def test_a_message_in_too_many_fragments_closes_with_1008(members):
    web = members({"protocol": EchoProtocol}, ping_interval=None)
    connection, transport = web.open()
    connection.dataReceived(fragment(TEXT, b"a") + fragment(0, b"b") * 126 + fragment(0, b"c", final=True))
    assert server_frames(transport.value()) == [(TEXT, b"a" + b"b" * 126 + b"c")], "128 fragments are fine"
    transport.clear()
    connection.dataReceived(fragment(TEXT) + fragment(0) * 128)
    [(opcode, payload)] = server_frames(transport.value())
    assert (opcode, payload) == (CLOSE, struct.pack("!H", 1008) + b"a message in more than 128 frames")
    assert web.hub.factory.get_metrics().protocol_errors == 1
    assert transport.producerState == "paused", "a flood of fragments is not read while the close goes out"


def test_a_flood_of_frames_is_bounded_per_second(members):
    """Empty continuation frames complete no message: the frame rate bounds them."""
    web = members({"protocol": EchoProtocol}, ping_interval=None)
    connection, transport = web.open()
    flood = b"".join(fragment(TEXT) + fragment(0) * 98 + fragment(0, final=True) for _ in range(20))
    connection.dataReceived(flood)  # 2,000 frames in a second: allowed
    assert len(server_frames(transport.value())) == 20
    web.hub.clock.advance(1)
    transport.clear()
    connection.dataReceived(flood + fragment(TEXT, b"x", final=True))
    frames = server_frames(transport.value())
    assert frames[-1] == (CLOSE, struct.pack("!H", 1008) + b"more than 2000 frames a second")
    assert web.hub.factory.get_metrics().protocol_errors == 1
    assert transport.producerState == "paused", "no more of the flood is read while the close goes out"


@pytest.mark.parametrize("trickle", [
    pytest.param(client_frame(TEXT, b"hello")[:1], id="half a frame header"),
    pytest.param(client_frame(TEXT, b"hello")[:8], id="half a payload"),
    pytest.param(fragment(TEXT, b"first of many"), id="a fragmented message begun"),
])
def test_an_unfinished_frame_or_message_is_dropped_at_the_frame_timeout(members, trickle):
    web = members({"protocol": EchoProtocol, "frame_timeout": 10}, ping_interval=None)
    connection, transport = web.open()
    connection.dataReceived(trickle)
    web.hub.clock.advance(9.9)
    assert not transport.disconnected
    web.hub.clock.advance(0.1)
    assert transport.disconnected and web.hub.factory.get_metrics().frame_timeouts == 1


def test_a_message_finished_in_time_clears_the_deadline_and_the_next_gets_its_own(members):
    web = members({"protocol": EchoProtocol, "frame_timeout": 10}, ping_interval=None)
    connection, transport = web.open()
    whole = client_frame(TEXT, b"hello")
    connection.dataReceived(whole[:3])
    web.hub.clock.advance(9)
    connection.dataReceived(whole[3:] + whole[:3])  # one finished, the next begun
    web.hub.clock.advance(9)
    assert not transport.disconnected, "the second message has its own 10 s"
    connection.dataReceived(whole[3:])
    assert web.hub.timers() == [] and server_frames(transport.value()) == [(TEXT, b"hello")] * 2


@pytest.mark.parametrize("origin", [b"null", b"file://", b"FILE:///home/page.html"])
def test_a_null_or_file_origin_is_refused_by_the_hubs_policy_with_403_and_counted(members, origin):
    web = members()
    _, refused = web.connect(b"Origin: " + origin + b"\r\n")
    assert refused.value().startswith(b"HTTP/1.1 403"), refused.value()[:60]
    assert web.factory.counters.rejected_origin == 1


@pytest.mark.parametrize("payload", [b"\x03", struct.pack("!H", 999)], ids=["one byte", "code 999"])
def test_a_malformed_close_frame_is_answered_with_1002_not_a_reset(members, payload):
    web = members(ping_interval=None)
    connection, transport = web.open()
    connection.dataReceived(client_frame(CLOSE, payload))
    [(opcode, answer)] = server_frames(transport.value())
    assert (opcode, answer[:2]) == (CLOSE, struct.pack("!H", 1002))
    assert not transport.disconnected, "the close frame is not cut off by a reset"
    assert web.hub.factory.get_metrics().protocol_errors == 1
    web.hub.clock.advance(3)
    assert transport.disconnected, "the close deadline ends it"


@pytest.mark.parametrize("host, origin, allowed", [
    ("127.0.0.1:8080", "http://127.0.0.1:8080", True),
    ("[::1]:8080", "http://[::1]:8080", True),
    ("localhost:8080", "http://localhost:8080", True),
    ("chat.example.com", "https://chat.example.com", True),
    ("CHAT.example.com:443", "https://chat.example.com", True),
    ("rebind.example:8080", "http://rebind.example:8080", False),
    ("rebind.example", "http://rebind.example", False),
    ("127.0.0.1:8080", "http://rebind.example:8080", False),
])
def test_same_origin_holds_only_for_names_the_listener_is_reached_by(host, origin, allowed):
    """DNS rebinding: a page of rebind.example, its name pointed at the hub,
    sends Host and Origin both rebind.example."""
    policy = OriginPolicy(public_names=["chat.example.com"])
    assert policy.allows(origin, host, secure=origin.startswith("https")) is allowed


@pytest.mark.parametrize("name", ["", "chat.example.com/path", "a b"])
def test_a_public_name_must_be_a_host_name(name):
    with pytest.raises(ValueError, match="a public name looks like"):
        OriginPolicy(public_names=[name])


def test_allowed_origins_add_to_the_same_origin():
    policy = OriginPolicy(["https://app.example"])
    assert policy.allows("https://app.example", "hub.internal:8080", secure=True)
    assert policy.allows("http://127.0.0.1:8080", "127.0.0.1:8080", secure=False), "the built-in page still works"
    assert not policy.allows("https://evil.example", "127.0.0.1:8080", secure=False)
