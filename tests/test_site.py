"""The HTTP ports' own bounds, in memory on a Clock: a request's head within
its deadline, the connection caps, and an upgrade that leaves the count."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tcphub._site import BodylessSite


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        return b"hello"


class Upgrades(Resource):
    isLeaf = True

    def render_GET(self, request) -> int:
        # As a WebSocket upgrade does: the connection is no longer HTTP, and the request never finishes.
        request.channel.upgraded()
        return NOT_DONE_YET


def site(**bounds) -> tuple[BodylessSite, Clock]:
    clock = Clock()
    root = Resource()
    root.putChild(b"", Hello())
    root.putChild(b"up", Upgrades())
    made = BodylessSite(root, clock=clock, reactor=clock, **bounds)
    made.doStart()
    return made, clock


def deadlines(clock: Clock) -> list:
    """The request deadlines still scheduled."""
    return [call for call in clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "_too_slow"]


def connect(made: BodylessSite, host: str = "127.0.0.1", port: int = 40000):
    address = IPv4Address("TCP", host, port)
    channel = made.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport


def test_a_request_head_trickled_past_the_deadline_is_closed_and_counted():
    made, clock = site(request_timeout=10.0)
    channel, transport = connect(made)
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
        channel.dataReceived(bytes([byte]))
        clock.advance(0.3)  # never idle for long: an idle timeout would not fire
    assert not transport.disconnecting and clock.seconds() < 10.0
    clock.advance(10.0 - clock.seconds())
    assert transport.disconnecting and made.counters.slow_requests == 1
    channel.connectionLost(None)
    assert deadlines(clock) == []


def test_each_request_of_a_kept_alive_connection_has_its_own_deadline():
    made, clock = site(request_timeout=10.0)
    channel, transport = connect(made)
    clock.advance(9)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().endswith(b"hello") and not transport.disconnecting
    clock.advance(9.9)
    assert not transport.disconnecting, "a new 10 s for the next request"
    clock.advance(0.1)
    assert transport.disconnecting and made.counters.slow_requests == 1
    channel.connectionLost(None)


def test_connections_past_the_caps_get_a_503_and_a_closed_one_frees_its_place():
    made, clock = site(max_connections=3, max_connections_per_address=2)
    first, _ = connect(made, "127.0.0.11", 1)
    connect(made, "127.0.0.11", 2)
    _, third = connect(made, "127.0.0.11", 3)
    assert third.value().startswith(b"HTTP/1.1 503 ") and third.disconnecting, "the address's cap"
    connect(made, "127.0.0.12", 1)
    _, fifth = connect(made, "127.0.0.13", 1)
    assert fifth.value().startswith(b"HTTP/1.1 503 "), "the port's cap"
    assert made.counters.refused_connections == 2
    first.connectionLost(None)
    _, again = connect(made, "127.0.0.11", 4)
    assert again.value() == b"" and not again.disconnecting


def test_an_upgraded_connection_leaves_the_http_count():
    made, clock = site(max_connections=1)
    channel, transport = connect(made)
    channel.dataReceived(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
    _, other = connect(made, "127.0.0.19", 1)
    assert other.value() == b"", "the upgraded one no longer counts"
    assert len(deadlines(clock)) == 1, "the other's deadline only: the upgraded one has none"


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def answered(transport: StringTransport) -> int:
    return transport.value().count(b"HTTP/1.1 200 ")


def test_pipelined_requests_past_the_burst_wait_for_their_address_s_rate():
    made, clock = site(max_request_rate=2.0, max_request_burst=3)
    channel, transport = connect(made)
    channel.dataReceived(REQUEST * 6)
    assert answered(transport) == 3, "the burst at once, the rest unread"
    assert made.counters.paced_requests == 1
    clock.advance(0.49)
    assert answered(transport) == 3
    clock.advance(0.01)
    assert answered(transport) == 4, "then one each half second"
    clock.advance(1.0)
    assert answered(transport) == 6 and not transport.disconnecting
    channel.connectionLost(None)


def test_an_address_s_connections_share_its_bucket_and_other_addresses_have_their_own():
    made, clock = site(max_request_rate=1.0, max_request_burst=2)
    one, first = connect(made, "127.0.0.21", 1)
    two, second = connect(made, "127.0.0.21", 2)
    three, other = connect(made, "127.0.0.22", 1)
    one.dataReceived(REQUEST * 2)
    two.dataReceived(REQUEST)
    three.dataReceived(REQUEST * 2)
    assert (answered(first), answered(second), answered(other)) == (2, 0, 2)
    clock.advance(1.0)
    assert answered(second) == 1
    for channel in (one, two, three):
        channel.connectionLost(None)


def test_a_connection_lost_while_its_request_waits_leaves_no_call_behind():
    made, clock = site(max_request_rate=1.0, max_request_burst=1)
    channel, transport = connect(made)
    channel.dataReceived(REQUEST * 2)
    def paced() -> list:
        return [call for call in clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "_due"]

    assert answered(transport) == 1 and len(paced()) == 1
    channel.connectionLost(None)
    assert paced() == []
    clock.advance(5)
    assert answered(transport) == 1


def test_the_buckets_of_addresses_gone_are_forgotten_within_a_bound():
    made, clock = site(max_connections=4, max_request_rate=1.0, max_request_burst=1)
    for n in range(40):
        channel, transport = connect(made, f"127.0.1.{n}", 1)
        channel.dataReceived(REQUEST)
        assert answered(transport) == 1, "a new address has its burst"
        channel.connectionLost(None)
    assert len(made._buckets) <= 2 * made.max_connections


def test_rested_buckets_are_forgotten_first_and_a_spent_one_kept_while_there_is_room():
    made, clock = site(max_connections=2, max_request_rate=1.0, max_request_burst=1)

    def one_request(host: str, port: int = 1) -> StringTransport:
        channel, transport = connect(made, host, port)
        channel.dataReceived(REQUEST)
        channel.connectionLost(None)
        return transport

    for n in range(3):
        one_request(f"127.0.1.{n}")
    clock.advance(1.0)
    one_request("127.0.0.31")
    one_request("127.0.0.32")  # the fifth bucket: the three rested ones go
    assert set(made._buckets) == {"127.0.0.31", "127.0.0.32"}
    assert answered(one_request("127.0.0.31", 2)) == 0, "its spent bucket was kept: the request waits"


def test_the_request_rate_must_be_positive():
    for bounds in ({"max_request_rate": 0.0}, {"max_request_burst": 0}):
        try:
            site(**bounds)
        except ValueError as error:
            assert "max_request_rate" in str(error)
        else:
            raise AssertionError(f"{bounds} accepted")
