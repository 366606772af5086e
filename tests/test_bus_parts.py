"""
The bus's parts in memory: the Redis protocol on a StringTransport, the
message codec, the hub's relay hook with a recording relay, the bus's
bounded queue with no Redis to reach, the URLs and the reuseport: endpoint.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.defer import succeed
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub import BroadcastProtocol, BusError, BusQueueFull, HubProtocol, TcpServer, UnframeableMessage, UnknownClient
from tcphub.bus import codec, handovers, lists, resp, streams
from tcphub.bus.redis import PublisherState, RedisBus, redis_endpoint
from tcphub.bus import redis as redis_module
from tcphub.bus.streams import StreamBook
from tcphub.hub.identity import Identity, RoomPatterns
from tcphub.hub.sessions import SessionState, StoredSession
from tcphub.hub.modes import ChatProtocol
from tcphub.hub.structured import StructuredProtocol
from tcphub.testing import MemoryRedis


# -- the Redis protocol ---------------------------------------------------------


class Connection:
    def __init__(self, pushes: list | None = None) -> None:
        self.ready: list = []
        self.lost: list = []
        self.protocol = resp.RedisProtocol(self.ready.append, lambda: self.lost.append(True),
                                           pushes.append if pushes is not None else None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)


def test_commands_are_arrays_of_bulk_strings_and_replies_come_back_in_order():
    connection = Connection()
    assert connection.ready == [connection.protocol]
    replies: list = []
    connection.protocol.command(b"SET", "k", 5).addCallback(replies.append)
    connection.protocol.command(b"HGETALL", b"h").addCallback(replies.append)
    connection.protocol.command(b"GET", b"missing").addCallback(replies.append)
    assert connection.transport.value() == (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"
                                            b"*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n")
    wire = b"+OK\r\n*2\r\n$4\r\nroom\r\n$2\r\n12\r\n$-1\r\n"
    for byte in range(len(wire)):  # one byte at a time
        connection.protocol.dataReceived(wire[byte:byte + 1])
    assert replies == [b"OK", [b"room", b"12"], None], "bytes stay bytes, numbers are not guessed"


def test_an_error_reply_fails_its_command_only():
    connection = Connection()
    errors, replies = [], []
    connection.protocol.command(b"BAD").addErrback(lambda failure: errors.append(failure.value))
    connection.protocol.command(b"PING").addCallback(replies.append)
    connection.protocol.dataReceived(b"-ERR unknown command\r\n:1\r\n")
    assert [str(error) for error in errors] == ["ERR unknown command"]
    assert isinstance(errors[0], resp.RedisReplyError) and replies == [1]


def test_pushed_messages_go_to_the_subscriber_callback():
    pushes: list = []
    connection = Connection(pushes)
    subscribed: list = []
    connection.protocol.command(b"SUBSCRIBE", b"ch").addCallback(subscribed.append)
    connection.protocol.dataReceived(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
                                     b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\n\x00\r\n\n1\r\n")
    assert subscribed == [[b"subscribe", b"ch", 1]]
    assert pushes == [[(b"ch", b"\x00\r\n\n1")]]


def counted_headers(monkeypatch) -> list[int]:
    """Every reply header the reader looks at, by its offset."""
    calls: list[int] = []
    real = resp._header
    monkeypatch.setattr(resp, "_header", lambda buffer, at: calls.append(at) or real(buffer, at))
    return calls


def test_a_long_reply_in_many_reads_is_parsed_once(monkeypatch):
    calls = counted_headers(monkeypatch)
    connection = Connection()
    replies: list = []
    connection.protocol.command(b"GET", b"big").addCallback(replies.append)
    payload = b"x" * (1024 * 1024)
    wire = b"$%d\r\n%s\r\n" % (len(payload), payload)
    for at in range(0, len(wire), 1024):
        connection.protocol.dataReceived(wire[at:at + 1024])
    assert replies == [payload]
    assert len(calls) <= 3, f"parsed {len(calls)} times: the work per byte would grow with the reply"


def test_a_long_array_in_many_reads_is_parsed_once_item_by_item(monkeypatch):
    """20,000 items in 1,460-byte reads (a TCP segment's worth): each item's
    header is read about once, not the whole array again on every read."""
    calls = counted_headers(monkeypatch)
    connection = Connection()
    replies: list = []
    connection.protocol.command(b"SMEMBERS", b"big").addCallback(replies.append)
    items = [b"member-%05d" % n for n in range(20_000)]
    wire = b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(item), item) for item in items)
    reads = range(0, len(wire), 1460)
    for at in reads:
        connection.protocol.dataReceived(wire[at:at + 1460])
    assert replies == [items]
    assert len(calls) <= len(items) + 1 + len(reads), f"{len(calls)} headers read for {len(items)} items"


def _reply() -> st.SearchStrategy:
    scalars = st.one_of(st.binary(max_size=30), st.integers(-2**40, 2**40), st.none(),
                        st.from_regex(r"\A[A-Z]{1,5} [a-z ]{0,20}\Z").map(lambda text: resp.RedisReplyError(text)))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=20)


def _encode(reply) -> bytes:
    if isinstance(reply, resp.RedisReplyError):
        return b"-%s\r\n" % str(reply).encode()
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(_encode(item) for item in reply)


def _same(left, right) -> bool:
    if isinstance(left, resp.RedisReplyError) or isinstance(right, resp.RedisReplyError):
        return type(left) is type(right) and str(left) == str(right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right))
    return left == right


@given(st.lists(_reply(), min_size=1, max_size=5), st.data())
def test_replies_cut_anywhere_come_out_whole_and_in_order(replies, data):
    wire = b"".join(_encode(reply) for reply in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    reader = resp.ReplyReader()
    got: list = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        got.extend(reader.feed(wire[start:end]))
    assert _same(got, replies)


def test_every_cut_of_a_nested_reply_gives_it_back_whole():
    reply = [b"message", [b"a", 1, None, [b"", -7]], resp.RedisReplyError("ERR no"), b"x" * 40]
    wire = _encode(reply)
    for cut in range(len(wire) + 1):
        reader = resp.ReplyReader()
        assert _same(reader.feed(wire[:cut]) + reader.feed(wire[cut:]), [reply]), cut


@pytest.mark.parametrize("wire, message", [
    (b"*9999999999\r\n", "items"),
    (b"*1\r\n" * 40 + b":1\r\n", "nested"),
    (b"$999999999999\r\n", "bytes"),
    (b"?what\r\n", "not a Redis reply"),
    (b"$ten\r\n", "not a Redis reply"),
    (b":ten\r\n", "not a Redis reply"),
])
def test_a_hostile_reply_is_refused_before_it_is_read_whole(wire, message):
    with pytest.raises(BusError, match=message):
        resp.ReplyReader().feed(wire)


@pytest.mark.logs_errors("a reply that is not RESP drops the connection, at error", BusError)
def test_garbage_from_redis_drops_the_connection_and_fails_what_waits():
    connection = Connection()
    errors: list = []
    connection.protocol.command(b"PING").addErrback(lambda failure: errors.append(failure.value))
    connection.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
    assert connection.transport.disconnecting
    assert isinstance(errors[0], BusError)


def test_a_lost_connection_fails_what_waits_and_says_so():
    connection = Connection()
    errors: list = []
    connection.protocol.command(b"PING").addErrback(lambda failure: errors.append(failure.value))
    connection.protocol.connectionLost(Failure(ConnectionLost("gone")))
    assert isinstance(errors[0], ConnectionLost) and connection.lost == [True]


# -- the codec --------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    codec.BusMessage(node="a", kind=codec.BROADCAST, payload=b"\x00\n12\xff"),
    codec.BusMessage(node="a", kind=codec.BROADCAST, payload=b"42", room="r\u00e9", exclude=("a-1", "b-2")),
    codec.BusMessage(node="b", kind=codec.SEND, payload=b"", target="a-1"),
    codec.BusMessage(node="b", kind=codec.NOTICE, payload=b"* ann joined #r", room="r", exclude=("b-1",)),
    codec.BusMessage(node="b", kind=codec.TAKE, payload=b"ab12", instance="i", seq=3),
    codec.BusMessage(node="a", kind=codec.HANDED, payload=b"ab12 1", target="b"),
])
def test_bus_messages_survive_the_trip(message):
    data = codec.encode(message)
    assert data[:1] == b"\x00", "never a number to a client that guesses"
    assert codec.decode(data) == message


@pytest.mark.parametrize("data", [b"42", b"\x00th1\n", b"\x00th1\n{bad json\npayload",
                                  b'\x00th1\n{"n": "a", "k": "s"}\npayload', b'\x00th1\n{"n": "a", "k": "?"}\nx',
                                  b'\x00th1\n{"n": "a", "k": "H"}\nab12 1'])
def test_what_no_tcphub_wrote_is_a_bus_error(data):
    with pytest.raises(BusError):
        codec.decode(data)


# -- the hub's relay ----------------------------------------------------------------


class RecordingRelay:
    def __init__(self, takes_sends: bool = True, lossless: bool = False) -> None:
        self.broadcasts: list = []
        self.sends: list = []
        self.takes_sends = takes_sends
        self.lossless = lossless
        self.session_store = None

    def broadcast(self, payload, exclude, room, notice=False) -> None:
        self.broadcasts.append((payload, frozenset(exclude), room) + (("notice",) if notice else ()))

    def send(self, client_id, payload) -> bool:
        self.sends.append((client_id, payload))
        return self.takes_sends

    def following(self, room):
        return None  # it takes every room's messages


def test_a_joined_hub_relays_its_broadcasts_and_names_its_clients(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol)
    relay = RecordingRelay()
    hub.factory.join_relay(relay, "n1")
    sender, _ = hub.connect()
    receiver, transport = hub.connect()
    assert sender.client_id.startswith("n1-")
    sender.dataReceived(b"hello\n")
    hub.factory.broadcast(b"to all", exclude=iter([receiver.client_id]), room=None)
    hub.factory.broadcast_local(b"from another node")
    assert relay.broadcasts == [(b"hello", frozenset([sender.client_id]), None),
                                (b"to all", frozenset([receiver.client_id]), None)]
    assert transport.value() == b"hello\nfrom another node\n"


def test_a_notice_is_relayed_as_one_and_kept_out_of_the_rooms_numbers_and_history(hub_factory):
    hub = hub_factory(room_history=5)
    relay = RecordingRelay()
    hub.factory.join_relay(relay, "n1")
    ann, _ = hub.connect()
    bob, bob_t = hub.connect()
    for client in (ann, bob):
        hub.factory.join(client.client_id, "r")
    ann.announce(b"* ann is here", "r")
    hub.factory.broadcast_local(b"* cat is there", room="r", notice=True)
    assert bob_t.value() == b"* ann is here\n* cat is there\n"
    assert relay.broadcasts == [(b"* ann is here", frozenset([ann.client_id]), "r", "notice")]
    assert hub.factory.room_sequence("r") == 0 and hub.factory.room_history("r") == []


def test_what_the_framing_cannot_carry_is_not_relayed(hub_factory):
    hub = hub_factory()
    relay = RecordingRelay()
    hub.factory.join_relay(relay, "n1")
    failures: list = []
    hub.factory.broadcast(b"two\nlines").addErrback(failures.append)
    assert relay.broadcasts == [] and failures[0].check(UnframeableMessage)


def test_a_send_to_a_client_the_hub_does_not_hold_goes_to_the_relay(hub_factory):
    hub = hub_factory()
    relay = RecordingRelay()
    hub.factory.join_relay(relay, "n1")
    sent: list = []
    hub.factory.send("n2-abc", b"over there").addCallback(sent.append)
    assert relay.sends == [("n2-abc", b"over there")] and sent == [None]
    refused = RecordingRelay(takes_sends=False)
    other = hub_factory()
    other.factory.join_relay(refused, "n3")
    failures: list = []
    other.factory.send("n3-gone", b"x").addErrback(failures.append)
    assert failures[0].check(UnknownClient)


def test_a_hub_joins_before_its_first_client_with_a_usable_node_id(hub_factory):
    hub = hub_factory()
    for bad in ("", "a-b", "tab\t"):
        with pytest.raises(ValueError):
            hub.factory.join_relay(RecordingRelay(), bad)
    hub.connect()
    with pytest.raises(RuntimeError):
        hub.factory.join_relay(RecordingRelay(), "late")


# -- the bus with no Redis to reach ------------------------------------------------


@pytest.fixture
def unreachable_bus(tmp_path):
    made: list = []

    def make(**options) -> tuple[TcpServer, RedisBus]:
        hub = TcpServer(port=0, clock=Clock(), protocol=BroadcastProtocol)
        options.setdefault("transport", "pubsub")  # the queue's waiting for peers is pub/sub's
        bus = RedisBus(hub, f"unix://{tmp_path}/nobody.sock", node_id="a", **options)
        bus.startService()
        made.append(bus)
        return hub, bus

    yield make
    for bus in made:
        pytest_twisted.blockon(bus.stopService())


def test_publishes_wait_in_a_bounded_queue_while_redis_is_down(unreachable_bus):
    hub, bus = unreachable_bus(max_queue=3)
    errors: list = []
    hub.on("error", lambda client_id, error: errors.append(error))
    for n in range(5):
        hub.broadcast(b"message %d" % n)
    status = bus.status()
    assert (status.publisher, status.queued, status.dropped) == ("down", 3, 2)
    assert [type(error) for error in errors] == [BusQueueFull, BusQueueFull]


def test_the_queue_is_bounded_in_bytes_too(unreachable_bus):
    hub, bus = unreachable_bus(max_queue_bytes=1000)
    for _ in range(3):
        hub.broadcast(b"x" * 400)
    assert (bus.status().queued, bus.status().dropped) == (2, 1)


def test_sends_to_other_nodes_clients_go_on_the_bus_and_the_others_do_not(unreachable_bus):
    hub, bus = unreachable_bus()
    assert bus.send("b-123", b"x") is True
    assert bus.send("a-123", b"x") is False, "a client of this node that is gone"
    assert bus.send("nodash", b"x") is False
    assert bus.status().queued == 1


@pytest.mark.parametrize("url, endpoint", [
    ("redis://127.0.0.1:6380/2", ("tcp:host=127.0.0.1:port=6380", None, None, 2)),
    ("redis://:s%40cret@localhost", ("tcp:host=localhost:port=6379", None, "s@cret", 0)),
    ("rediss://user:pw@redis.example:6390", ("tls:host=redis.example:port=6390", "user", "pw", 0)),
    ("unix:///run/redis/redis.sock?db=3", ("unix:path=/run/redis/redis.sock", None, None, 3)),
    ("redis+sentinel://:pw@127.0.0.2:26380,sentinel-b,[::1]:26381/main/4",
     ("sentinel:main:127.0.0.2:26380,sentinel-b:26379,[::1]:26381", None, "pw", 4)),
])
def test_redis_urls(url, endpoint):
    assert redis_endpoint(url) == endpoint


@pytest.mark.parametrize("url", ["http://x", "redis://host/notanumber", "unix://", "redis://host:99999",
                                 "redis+sentinel://host/", "redis+sentinel://host:port/main",
                                 "redis+sentinel://:26379/main", "redis+sentinel://host/ma:in"])
def test_bad_redis_urls_are_refused(url):
    with pytest.raises(ValueError, match="a Redis URL is"):
        redis_endpoint(url)


# -- reuseport: ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_reuseport_lets_two_listeners_share_a_port_that_plain_tcp_cannot():
    factory = Factory.forProtocol(Protocol)
    first = yield serverFromString(reactor, "reuseport:0:interface=127.0.0.1").listen(factory)
    port = first.getHost().port
    try:
        second = yield serverFromString(reactor, f"reuseport:{port}:interface=127.0.0.1").listen(factory)
        try:
            assert second.getHost().port == port
            with pytest.raises(CannotListenError):
                yield serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(factory)
        finally:
            yield second.stopListening()
    finally:
        yield first.stopListening()


def test_heartbeats_while_redis_is_down_write_nothing_and_raise_nothing(unreachable_bus):
    hub, bus = unreachable_bus()
    hub.factory.clock.advance(bus.heartbeat)
    hub.factory.clock.advance(bus.heartbeat)
    assert bus.status().nodes == 0 and bus.cluster_rooms() == {}


# -- the bus against an in-memory Redis ------------------------------------------


@pytest.fixture
def memory_bus():
    made: list = []

    def make(refused=(), **options):
        redis = MemoryRedis()
        redis.refused.update(refused)
        hub = TcpServer(port=0, clock=Clock(), protocol=BroadcastProtocol)
        options.setdefault("transport", "pubsub")  # these tests read what was PUBLISHed
        bus = RedisBus(hub, "redis://memory/0", node_id="a", endpoint=redis, **options)
        bus.startService()
        redis.answer()
        made.append((bus, redis))
        return hub, bus, redis

    yield make
    for bus, redis in made:
        stopped: list = []
        bus.stopService().addBoth(stopped.append)
        redis.drop()
        assert stopped == [None]


def test_a_flush_stops_as_soon_as_redis_stops_keeping_up(memory_bus):
    hub, bus, redis = memory_bus()
    assert bus.state is PublisherState.FLOWING
    publisher, transport = redis.connections[0]
    transport.producer.pauseProducing()  # the transport's buffer is full
    for n in range(3):
        hub.broadcast(b"queued %d" % n)
    assert bus.status().queued == 3
    real_write = transport.write

    def write_then_fill(data: bytes) -> None:
        real_write(data)
        transport.producer.pauseProducing()  # full again after one more message

    transport.write = write_then_fill
    transport.producer.resumeProducing()
    assert (bus.status().queued, bus.state) == (2, PublisherState.PAUSED)



def test_on_a_stream_a_publish_whose_reply_was_lost_with_the_connection_is_sent_again(memory_bus):
    hub, bus, redis = memory_bus(transport="streams")
    hub.broadcast(b"answered")
    redis.answer()
    for payload in (b"one", b"two"):
        hub.broadcast(payload)  # written, never answered: the connection drops
    redis.drop()
    assert bus.status().queued == 2, "queued again, in order"
    for _ in range(6):  # both connections made again, within the backoff and its jitter (3 s at most)
        hub.factory.clock.advance(0.5)
        redis.answer()  # the queue, flushed once the publisher is back
    sent = [codec.decode(data) for data in redis.published]
    assert [(message.payload, message.seq) for message in sent] == [(b"answered", 1), (b"one", 2), (b"two", 3)]
    assert len({message.instance for message in sent}) == 1 and bus.status().queued == 0


def test_a_full_queue_on_a_slow_redis_holds_the_hubs_readers_back_until_half_is_taken(memory_bus):
    hub, bus, redis = memory_bus(max_queue=4)
    publisher, transport = redis.connections[0]
    transport.producer.pauseProducing()  # Redis is there, but its buffer is full
    for n in range(4):
        hub.broadcast(b"queued %d" % n)
    assert not hub.factory.reading_paused, "below the bound: the hub reads on"
    hub.broadcast(b"one past")
    status = bus.status()
    assert hub.factory.reading_paused and (status.queued, status.dropped) == (5, 0), "held back, nothing dropped"
    real_write, taken = transport.write, []

    def write_then_fill(data: bytes) -> None:
        real_write(data)
        taken.append(data)
        if len(taken) == 2:
            transport.producer.pauseProducing()

    transport.write = write_then_fill
    transport.producer.resumeProducing()  # takes two, full again: 3 left, more than half
    assert bus.status().queued == 3 and hub.factory.reading_paused
    transport.write = real_write
    transport.producer.resumeProducing()
    assert bus.status().queued == 0 and not hub.factory.reading_paused
    redis.answer()
    assert len(redis.published) == 5


def test_a_redis_that_takes_nothing_while_the_hub_is_held_back_is_dropped_at_the_stall_timeout(memory_bus):
    hub, bus, redis = memory_bus(max_queue=1, stall_timeout=2.0)
    publisher, transport = redis.connections[0]
    clock = hub.factory.clock
    transport.producer.pauseProducing()
    hub.broadcast(b"queued")
    hub.broadcast(b"held")
    assert hub.factory.reading_paused
    clock.advance(1.5)
    real_write = transport.write

    def write_then_fill(data: bytes) -> None:
        real_write(data)
        transport.producer.pauseProducing()

    transport.write = write_then_fill
    transport.producer.resumeProducing()  # it took one (then is full again): not stalled
    assert bus.status().queued == 1 and hub.factory.reading_paused
    clock.advance(1.9)
    assert not transport.disconnecting and hub.factory.reading_paused
    clock.advance(0.1)
    assert transport.disconnecting, "taken for gone: its connection is dropped"
    assert not hub.factory.reading_paused, "the hub reads on"


def test_each_owner_of_the_hubs_pause_lifts_only_its_own(hub_factory):
    hub = hub_factory()
    client, transport = hub.connect()
    hub.factory.pause_reading()  # e.g. a gateway's stalled upstream
    hub.factory.pause_reading("bus")
    hub.factory.resume_reading()
    client.dataReceived(b"held\n")
    assert hub.factory.reading_paused and transport.value() == b""
    hub.factory.resume_reading("bus")
    assert not hub.factory.reading_paused
    hub.factory.resume_reading("nobody")  # not holding one: nothing
    assert not hub.factory.reading_paused


def test_a_redis_that_leaves_a_ping_unanswered_for_the_command_timeout_is_dropped(memory_bus):
    hub, bus, redis = memory_bus(command_timeout=2.5)
    clock = hub.factory.clock
    (_, publisher), (_, subscriber) = redis.connections
    clock.advance(bus.heartbeat)  # a PING on each connection
    assert b"PING" in publisher.value() and b"PING" in subscriber.value()
    redis.answer()
    clock.advance(bus.heartbeat)  # answered: another one
    clock.advance(2.4)  # unanswered, not yet for the timeout
    assert not publisher.disconnecting and not subscriber.disconnecting
    clock.advance(bus.heartbeat)
    assert publisher.disconnecting and subscriber.disconnecting


@pytest.fixture
def log_events():
    """Every log event while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.mark.parametrize("command", [b"SUBSCRIBE", b"PUBSUB"])
def test_a_refused_subscribe_or_numsub_is_logged_and_the_connection_made_again(command, memory_bus, log_events):
    hub, bus, redis = memory_bus(refused={command})
    (_, publisher), (_, subscriber) = redis.connections
    refused = subscriber if command == b"SUBSCRIBE" else publisher
    assert refused.disconnecting, "not left waiting for ever"
    (line,) = [event for event in log_events if event.get("fault") == "bus_command_errors"]
    assert "Redis refused" in line["log_format"] and command.decode() in line["name"]


def test_an_error_inside_a_presence_transaction_is_logged(memory_bus, log_events):
    hub, bus, redis = memory_bus()
    redis.exec_errors = [b"WRONGTYPE Operation against a key holding the wrong kind of value"]
    hub.factory.clock.advance(bus.heartbeat)
    redis.answer()  # the node id's claim: the presence transaction follows
    redis.answer()
    (line,) = [event for event in log_events if event.get("fault") == "bus_command_errors"]
    assert "WRONGTYPE" in str(line["error"])


@pytest.mark.parametrize("lossless, recovered", [(False, "cluster"), (True, None)])
def test_a_member_back_on_its_node_recovers_only_through_a_relay_that_loses_nothing_unsaid(
        hub_factory, lossless, recovered):
    """Through pub/sub (a relay that may lose another node's messages
    silently) no node's history is known to be whole; through a Redis
    Stream it is, until the relay says something was lost."""
    hub = hub_factory(protocol=StructuredProtocol, room_history=10)
    hub.factory.join_relay(RecordingRelay(lossless=lossless), "n1")
    ann, _ = hub.connect()
    ann.dataReceived(b'{"path":"hub.join","data":{"room":"chess"}}\n')
    hub.factory.broadcast_local(b"from another node", room="chess")
    epoch = hub.factory.room_epoch("chess")
    assert hub.factory.unrecoverable("chess", epoch, 0) == recovered
    hub.factory.history_lost()
    assert hub.factory.room_epoch("chess") != epoch
    assert hub.factory.unrecoverable("chess", epoch, 0) == (recovered or "epoch_changed")


def test_another_hub_s_delivery_is_numbered_as_this_hub_numbers_the_room(hub_factory):
    hub = hub_factory(protocol=StructuredProtocol)
    hub.factory.join_relay(RecordingRelay(lossless=True), "n1")
    ann, transport = hub.connect()
    ann.dataReceived(b'{"path":"hub.join","data":{"room":"chess"}}\n')
    transport.clear()
    theirs = {"path": "room.chess", "data": {"room": "chess", "from": "bob", "name": "bob", "offset": 41,
                                             "epoch": "elsewhere.1", "data": "e4"}}
    hub.factory.broadcast_local(json.dumps(theirs).encode(), room="chess")
    hub.factory.broadcast_local(b"not a delivery of this protocol", room="chess")
    delivered = transport.value().splitlines()
    assert json.loads(delivered[0])["data"] == {**theirs["data"], "offset": 1,
                                                "epoch": hub.factory.room_epoch("chess")}
    assert delivered[1] == b"not a delivery of this protocol"
    assert hub.factory.room_sequence("chess") == 2


# -- streams: a room's own, read only where the room has members ----------------


def test_a_process_numbers_its_messages_per_stream_and_takes_a_new_name_past_its_bound(monkeypatch):
    book = StreamBook(b"hub", lambda room: b"room:" + room.encode())
    assert [book.number(book.stream_of(room)) for room in ("a", None, "a", "b")] == [
        (book.instance, 1), (book.instance, 1), (book.instance, 2), (book.instance, 1)]
    monkeypatch.setattr(streams, "_NUMBERED_STREAMS", 3)
    first = book.instance
    instance, seq = book.number(b"room:c")  # a fourth stream: numbered anew, under a new name
    assert (seq, instance != first) == (1, True)
    assert book.number(b"room:a") == (instance, 1)


def test_a_reader_takes_each_number_once_and_counts_a_gap_per_process_and_stream():
    book = StreamBook(b"hub", lambda room: b"room:" + room.encode())
    assert book.take("p", 5, b"room:a") == (True, 0)  # the first it sees of p there
    assert book.take("p", 1, b"room:b") == (True, 0), "another stream: its own numbers"
    assert book.take("p", 5, b"room:a") == (False, 0)
    assert book.take("q", 5, b"room:a") == (True, 0), "another process: its own numbers"
    assert book.take("p", 9, b"room:a") == (True, 3)
    assert book.take("p", 2, b"room:b") == (True, 0)


def reading(book: StreamBook, rooms: list[str]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """What the book follows for C{rooms}: the streams read and their positions (as its XREAD names
    them), and those whose end must be found first."""
    to_locate = book.follow(rooms)
    command, _ = resp.parse(book.read_command(1000, 1000), 0)
    assert command[:6] == [b"XREAD", b"COUNT", b"1000", b"BLOCK", b"1000", b"STREAMS"]
    streams = command[6:]
    return streams[:len(streams) // 2], streams[len(streams) // 2:], to_locate


def test_a_reader_reads_the_hub_and_the_rooms_here_finding_the_end_of_each_new_one_once():
    book = StreamBook(b"hub", lambda room: b"room:" + room.encode())
    assert reading(book, ["a"]) == ([], [], [b"hub", b"room:a"])
    book.located(b"hub", b"5-0")
    assert reading(book, ["a"]) == ([b"hub"], [b"5-0"], []), "room:a is being found already"
    assert book.new_room("a") is None and book.new_room("b") == b"room:b"
    book.located(b"room:a", None)
    book.read_to(b"room:a", b"7-1")
    book.unlocated(b"room:b")
    assert reading(book, ["a", "b"]) == ([b"hub", b"room:a"], [b"5-0", b"7-1"], [b"room:b"])
    book.located(b"room:b", b"3-0")
    assert reading(book, ["b"]) == ([b"hub", b"room:b"], [b"5-0", b"3-0"], []), "a room gone is not read"
    book.read_to(b"room:a", b"8-0")  # an XREAD sent before it went
    assert reading(book, ["b"])[0] == [b"hub", b"room:b"]
    book.read_to(b"room:b", b"3-1")
    assert reading(book, ["b"])[1] == [b"5-0", b"3-1"], "a position that moved is written anew"


def test_a_book_walks_the_rooms_again_only_once_they_changed_or_a_stream_was_found_or_not():
    walked: list[str] = []

    class Rooms(list):
        def __iter__(self):
            walked.append("walked")
            return super().__iter__()

    book = StreamBook(b"hub", lambda room: b"room:" + room.encode())
    assert book.follow(Rooms(["a"]), 1) == [b"hub", b"room:a"]
    assert book.follow(Rooms(["a"]), 1) == [] and len(walked) == 1, "the same rooms: not walked again"
    book.located(b"hub", b"1-0")
    book.unlocated(b"room:a")
    assert book.follow(Rooms(["a"]), 1) == [b"room:a"] and len(walked) == 2, "a stream not found is asked again"
    book.located(b"room:a", b"2-0")
    assert book.follow(Rooms([]), 1) == [] and reading(book, [])[0] == [b"hub"], (
        "found after its room went (the count not read since): forgotten")
    assert book.follow(Rooms(["b"]), 2) == [b"room:b"]


def test_a_book_forgets_the_names_of_rooms_long_gone():
    named: list[str] = []
    book = StreamBook(b"hub", lambda room: named.append(room) or b"room:" + room.encode())
    book.follow([f"r{n}" for n in range(200)])
    book.follow(["r0"])  # the 199 others' names go
    book.follow([f"r{n}" for n in range(2)])
    assert named.count("r0") == 1 and named.count("r1") == 2


def sent_commands(transport: StringTransport, since: int = 0) -> list[list[bytes]]:
    """What was written to C{transport} from byte C{since} on, command by command."""
    data, at, commands = transport.value(), since, []
    while at < len(data):
        command, at = resp.parse(data, at)
        commands.append(command)
    return commands


def test_a_node_reads_the_streams_of_its_rooms_and_wakes_its_reader_for_a_room_new_here(memory_bus):
    hub, bus, redis = memory_bus(transport="streams")
    (_, publisher), (_, reader) = redis.connections
    assert [command[-2:] for command in sent_commands(reader) if command[0] == b"XREAD"] == [
        [b"tcphub:0:stream", b"0-0"]]
    client = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    client.makeConnection(StringTransport())
    mark = len(publisher.value())
    hub.factory.join(client.client_id, "chess")
    hub.factory.join(client.client_id, "go")
    redis.answer()  # the ends of both found, the reader woken for each (Redis's nil reply read again)
    assert [command for command in sent_commands(publisher, mark) if command[0] != b"PEXPIRE"] == [
        [b"XREVRANGE", b"tcphub:0:room:chess", b"+", b"-", b"COUNT", b"1"],
        [b"XREVRANGE", b"tcphub:0:room:go", b"+", b"-", b"COUNT", b"1"],
        [b"CLIENT", b"UNBLOCK", b"2"], [b"CLIENT", b"UNBLOCK", b"2"]]
    for move in (b"e4", b"e5"):
        hub.factory.broadcast(move, room="chess")
    redis.answer()
    hub.factory.clock.advance(bus.heartbeat)  # the stream's time to live renewed once per heartbeat
    redis.answer()
    xadd = [command for command in sent_commands(publisher, mark)
            if command[0] in (b"XADD", b"PEXPIRE") and command[1].startswith(b"tcphub:0:room:")]
    assert [command[:2] for command in xadd] == [[b"XADD", b"tcphub:0:room:chess"]] * 2 + [
        [b"PEXPIRE", b"tcphub:0:room:chess"]]
    hub.factory.clock.advance(bus.heartbeat)
    assert [command for command in sent_commands(publisher, mark)
            if command[0] == b"PEXPIRE" and command[1].startswith(b"tcphub:0:room:")] == [
        [b"PEXPIRE", b"tcphub:0:room:chess", b"3600000"]], "nothing written since: nothing renewed"
    hub.factory.leave(client.client_id, "go")
    redis.answer()
    last = [command for command in sent_commands(reader) if command[0] == b"XREAD"][-1]
    assert last[6:] == [b"tcphub:0:stream", b"tcphub:0:room:chess", b"0-0", b"0-0"], "go is no longer read"
    client.transport.loseConnection()
    client.connectionLost(Failure(ConnectionDone()))


class Listed(HubProtocol):
    """A member whose presence a test sets."""

    shown: object = None

    @property
    def presence(self) -> object:
        return self.shown


def list_lines(commands: list[list[bytes]]) -> list[tuple[bytes, bytes, dict[bytes, bytes], list[bytes]]]:
    """What the scripts among C{commands} do to the rooms' lists of members:
    per hash, C{(key, operation, fields set, fields removed)} (L{lists.SCRIPT})."""
    done = []
    for command in commands:
        if command[:2] != [b"EVAL", lists.SCRIPT]:
            continue
        count = int(command[2])
        keys, args, at = command[3:3 + count], command[4 + count:], 0
        for key in keys:
            op, sets, dels = args[at], int(args[at + 1]), int(args[at + 2])
            at += 3
            fields = dict(zip(args[at:at + 2 * sets:2], args[at + 1:at + 2 * sets:2]))
            at += 2 * sets
            done.append((key, op, fields, args[at:at + dels]))
            at += dels
    return done


def apply_lines(store: dict[bytes, dict[bytes, bytes]], done) -> None:
    """The scripts' writes, done to C{store} (what Redis has: hashes by key)."""
    for key, op, fields, gone in done:
        if op != b"~":
            store.pop(key, None)
        hash_ = store.setdefault(key, {})
        hash_.update(fields)
        for field in gone:
            hash_.pop(field, None)
        if not hash_:
            del store[key]


def test_a_rooms_list_is_written_line_by_line_only_as_its_members_or_their_presence_change():
    redis = MemoryRedis()
    hub = TcpServer(port=0, clock=Clock(), protocol=Listed, timeout=0, frame_timeout=0)
    bus = RedisBus(hub, "redis://memory/0", node_id="a", endpoint=redis, transport="pubsub")
    bus.startService()
    redis.answer()
    publisher = redis.connections[0][1]
    members = []
    for n, room in enumerate(("chess", "chess", "go", "chess")):
        member = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10000 + n))
        member.makeConnection(StringTransport())
        member.shown = f"m{n}" if n < 3 else None
        hub.factory.join(member.client_id, room)
        members.append(member)
    m0, m1, m2, m3 = (member.client_id.encode() for member in members)
    chess, go = b"tcphub:0:members:a-chess", b"tcphub:0:members:a-go"

    def beat(late: float = 0, renewed: tuple[bytes, ...] = (chess,)) -> list:
        """The lines written by the next heartbeat, C{late} seconds late (the
        reactor held up); every list of the node's has its time to live renewed."""
        mark = len(publisher.value())
        hub.factory.clock.advance(bus.heartbeat + late)
        redis.answer()  # the claim's reply: the presence follows
        redis.answer()
        done = list_lines(sent_commands(publisher, mark))
        assert [key for key, op, _, _ in done if op != b"-"] == list(renewed)
        return [line for line in done if line[1:] != (b"~", {}, [])]

    assert beat(renewed=(chess, go)) == [(chess, b"=", {m0: b'"m0"', m1: b'"m1"', m3: b""}, []),
                                         (go, b"=", {m2: b'"m2"'}, [])], (
        "the rooms joined since the bus connected: written whole; a member that shows nothing has an empty line")
    assert beat(renewed=(chess, go)) == [], "nothing changed: no line written"
    members[1].shown = "renamed"
    members[1].presenceChanged()
    hub.factory.leave(members[3].client_id, "chess")
    assert beat(renewed=(chess, go)) == [(chess, b"~", {m1: b'"renamed"'}, [m3])], "only the lines that changed"
    hub.factory.leave(members[2].client_id, "go")
    assert beat() == [(go, b"-", {}, [])], "a room gone from the node: its list deleted"
    assert beat(late=bus.node_ttl) == [(chess, b"=", {m0: b'"m0"', m1: b'"renamed"'}, [])], (
        "past the ttl the list may be gone: written whole")
    redis.drop()
    for _ in range(6):  # connected again (within the backoff's jitter): every list written
        hub.factory.clock.advance(0.5)
        redis.answer()
    (publisher,) = [transport for _, transport in redis.connections[2:] if b"tcphub:a:publisher" in transport.value()]
    assert (chess, b"=", {m0: b'"m0"', m1: b'"renamed"'}, []) in list_lines(sent_commands(publisher))
    assert beat() == [], "written whole as the bus connected again"
    for member in members:
        member.transport.loseConnection()
        member.connectionLost(Failure(ConnectionDone()))
    stopped: list = []
    bus.stopService().addBoth(stopped.append)
    assert [b"DEL", b"tcphub:0:rooms:a", chess] in sent_commands(publisher), "the node's lists go with it"
    redis.drop()
    assert stopped == [None]


def test_lists_longer_than_a_script_call_takes_are_cut_into_calls_that_add_up(monkeypatch):
    monkeypatch.setattr(lists, "MAX_ARGUMENTS", 9)  # at most 3 lines a call
    rooms = {"big": [f"b{n}" for n in range(7)], "small": ["s0"]}
    shown = {"b3": {"user": "b3"}}
    book = lists.MemberLists(lambda room: f"k:{room}".encode())

    def lines(room: str, ids) -> dict[str, object]:
        return {client: shown.get(client, client) for client in rooms[room] if ids is None or client in ids}

    def write() -> list[bytes]:
        calls = book.commands({room: len(members) for room, members in rooms.items() if members}, lines, 3000)
        for call in calls:
            assert len(resp.parse(call, 0)[0]) <= 4 + lists.MAX_ARGUMENTS, "a call within the bound"
        apply_lines(store, list_lines([resp.parse(call, 0)[0] for call in calls]))
        return calls

    def expected() -> dict[bytes, dict[bytes, bytes]]:
        return {f"k:{room}".encode(): {client.encode(): json.dumps(shown.get(client, client)).encode()
                                       for client in members} for room, members in rooms.items() if members}

    store: dict[bytes, dict[bytes, bytes]] = {b"k:big": {b"stale": b"1"}}
    assert len(write()) > 2
    assert store == expected(), "written whole, the stale line gone"
    for client in ("b1", "b2", "b4", "b5"):
        rooms["big"].remove(client)
        book.changed("big", client)
    shown["b3"] = "renamed"
    book.changed("big", "b3")
    rooms["small"].append("s1")
    book.changed("small", "s1")
    write()
    assert store == expected(), "the changes, cut into calls"
    rooms["small"].clear()
    book.changed("small", "s0")
    book.changed("small", "s1")
    write()
    assert store == expected() and b"k:small" not in store


def test_a_sentinel_password_without_a_sentinel_url_is_refused():
    hub = TcpServer(port=0, clock=Clock(), protocol=HubProtocol)
    with pytest.raises(ValueError, match=r"a Sentinel password goes with a redis\+sentinel:// URL"):
        RedisBus(hub, "redis://memory/0", endpoint=MemoryRedis(), sentinel_password="s3cret")


# -- a member back on another node: what it missed, from the room's stream ------------


def entry(entry_id: bytes, message: codec.BusMessage) -> tuple[bytes, list[bytes]]:
    return entry_id, [b"m", codec.encode(message)]


def said(entry_id: bytes, text: bytes, instance: str = "other", seq: int = 1, kind: str = codec.BROADCAST,
         exclude: tuple[str, ...] = ()) -> tuple[bytes, list[bytes]]:
    return entry(entry_id, codec.BusMessage(node="n", kind=kind, payload=text, room="r", exclude=exclude,
                                            instance=instance, seq=seq))


def test_a_catch_up_gives_what_the_member_had_not_had_up_to_where_this_node_reads():
    place = streams.Place(b"5-0", "old", 3)  # it had its old node's own messages up to 3
    catch_up = streams.CatchUp(place, exclude="a-old", limit=100, limit_bytes=10_000)
    assert catch_up.start == b"5-0", "its place first, to check the stream still holds it"
    entries = [said(b"5-0", b"had"), said(b"6-0", b"x"), said(b"6-1", b"own, had", "old", 3),
               said(b"7-0", b"own, not had", "old", 4), said(b"7-1", b"joined", kind=codec.NOTICE),
               said(b"8-0", b"its own publish", exclude=("a-old",)), said(b"9-0", b"y")]
    assert catch_up.take(entries, full=True, reader_at=b"8-0") is True, "what follows 8-0 comes live"
    assert catch_up.missed == [b"x", b"own, not had"]


def test_a_catch_up_asks_again_until_it_reaches_the_reader_and_waits_for_a_reader_behind():
    catch_up = streams.CatchUp(streams.Place(b"0-0", "old", 0), exclude="a-old", limit=100, limit_bytes=10_000)
    assert catch_up.start == b"(0-0", "an empty stream then: from its start"
    assert catch_up.take([said(b"3-0", b"a")], full=True, reader_at=b"9-0") is False, "more may follow"
    assert catch_up.start == b"(3-0"
    assert catch_up.take([said(b"4-0", b"b")], full=False, reader_at=b"9-0") is False, "the reader read further"
    assert catch_up.take([said(b"9-0", b"c")], full=False, reader_at=b"9-0") is True
    assert catch_up.missed == [b"a", b"b", b"c"]
    behind = streams.CatchUp(streams.Place(b"5-0", "old", 0), exclude="a-old", limit=100, limit_bytes=10_000)
    assert behind.take([said(b"5-0", b"had"), said(b"6-0", b"d")], full=False, reader_at=b"4-0") is False, (
        "this node has not read as far as the old one: its reader would give the member what it had")
    assert behind.missed == [] and behind.start == b"(5-0"


@pytest.mark.parametrize("first, limit, limit_bytes", [
    (b"6-0", 100, 10_000),  # its place was trimmed away
    (b"5-0", 1, 10_000),  # more than the history keeps
    (b"5-0", 100, 1),
])
def test_a_catch_up_that_cannot_give_all_says_history_lost(first, limit, limit_bytes):
    from tcphub.errors import NotRecovered

    catch_up = streams.CatchUp(streams.Place(b"5-0", "old", 0), exclude="a-old", limit=limit,
                               limit_bytes=limit_bytes)
    with pytest.raises(NotRecovered) as raised:
        catch_up.take([said(first, b"had"), said(b"6-1", b"x"), said(b"6-2", b"y")], full=False, reader_at=b"9-0")
    assert raised.value.reason == "history_lost"



def test_a_catch_up_of_a_message_older_than_the_history_keeps_says_history_expired():
    """Ids are milliseconds of Redis's clock: a missed one before C{oldest_ms}
    is too old; one the member had, or one not for it, does not count."""
    from tcphub.errors import NotRecovered

    def catch_up():
        return streams.CatchUp(streams.Place(b"5-0", "old", 0), exclude="a-old", limit=100, limit_bytes=10_000,
                               oldest_ms=7)

    fresh = catch_up()
    assert fresh.take([said(b"5-0", b"had"), said(b"6-0", b"own", exclude=("a-old",)), said(b"7-0", b"x")],
                      full=False, reader_at=b"7-0") is True
    assert fresh.missed == [b"x"]
    old = catch_up()
    with pytest.raises(NotRecovered) as raised:
        old.take([said(b"5-0", b"had"), said(b"6-9", b"x")], full=False, reader_at=b"9-0")
    assert raised.value.reason == "history_expired"


def test_a_session_parked_while_its_room_s_stream_end_is_being_found_is_kept_with_that_end():
    """A member that joins a room new on its node and drops within a round
    trip: its place is where the node's reading of the room begins, not
    unknown (which would cost it recovering elsewhere)."""
    redis = MemoryRedis()
    hub = TcpServer(port=0, clock=Clock(), protocol=StructuredProtocol)
    bus = RedisBus(hub, "redis://memory/0", node_id="a", endpoint=redis, transport="streams")
    bus.startService()
    redis.answer()
    (_, publisher), _ = redis.connections
    member = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    member.makeConnection(StringTransport())
    member.dataReceived(b'{"path": "hub.join", "data": {"room": "r"}, "id": "1"}\n')
    member.transport.loseConnection()
    member.connectionLost(Failure(ConnectionDone()))  # its room's end not found yet
    for _ in range(2):  # the end, then the session
        redis.answer()
    (kept,) = [command for command in sent_commands(publisher) if command[:1] == [b"SET"]
               and command[1].startswith(b"tcphub:0:session:")]
    position, _, seq = json.loads(kept[2])["rooms"]["r"][2]
    assert (position, seq) == ("0-0", 0)
    stopped: list = []
    bus.stopService().addBoth(stopped.append)
    redis.drop()
    assert stopped == [None]


def streams_node(protocol: type) -> tuple[TcpServer, RedisBus, MemoryRedis]:
    """A hub of C{protocol} on a bus of Redis Streams, an in-memory Redis, connected."""
    redis = MemoryRedis()
    hub = TcpServer(port=0, clock=Clock(), protocol=protocol)
    bus = RedisBus(hub, "redis://memory/0", node_id="a", endpoint=redis, transport="streams")
    bus.startService()
    redis.answer()
    return hub, bus, redis


def stop_cleanly(bus: RedisBus, redis: MemoryRedis) -> None:
    stopped: list = []
    bus.stopService().addBoth(stopped.append)
    redis.drop()
    assert stopped == [None]


def test_a_join_to_a_room_new_on_its_node_is_answered_once_the_node_reads_the_rooms_stream():
    """Until the node has found the end of a room's stream, a message another
    node publishes may fall before it and never reach the member: the join's
    reply (and the member's next request) waits for it, one round trip."""
    hub, bus, redis = streams_node(StructuredProtocol)
    members = []
    for port in (1, 2):
        member = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        member.makeConnection(StringTransport())
        members.append(member)
    ann, bob = members

    def replies(member) -> list[dict]:
        return [json.loads(line) for line in member.transport.value().splitlines()]

    ann.dataReceived(b'{"path": "hub.join", "data": {"room": "r"}, "id": "1"}\n'
                     b'{"path": "hub.leave", "data": {"room": "r"}, "id": "2"}\n')
    assert replies(ann) == [], "the room's stream end not found yet: no reply, the next request held"
    redis.answer()  # the end found, then the PING behind it
    assert [(reply["id"], reply["data"]["room"]) for reply in replies(ann)] == [("1", "r"), ("2", "r")]
    assert replies(ann)[0]["data"]["members"] == 1
    ann.dataReceived(b'{"path": "hub.join", "data": {"room": "r"}, "id": "3"}\n')
    redis.answer()
    bob.dataReceived(b'{"path": "hub.join", "data": {"room": "r"}, "id": "1"}\n')
    assert [reply["id"] for reply in replies(bob)] == ["1"], "a room the node reads already: answered at once"
    for member in members:
        member.transport.loseConnection()
        member.connectionLost(Failure(ConnectionDone()))
    stop_cleanly(bus, redis)


def test_the_chat_says_a_member_is_in_a_room_once_its_node_reads_the_rooms_stream():
    hub, bus, redis = streams_node(ChatProtocol)
    ann = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    ann.makeConnection(StringTransport())
    ann.dataReceived(b"/join chess\n")
    assert ann.transport.value().decode().splitlines()[1:] == [], "the welcome waits for #lobby's stream"
    for _ in range(3):  # #lobby's end, then (the /join read) #chess's
        redis.answer()
    lines = ann.transport.value().decode().splitlines()
    assert lines[1] == "* you are in #lobby" and lines[-1] == "* you are in #chess", lines
    assert lines.index("* you are in #lobby") < lines.index("* you are in #chess")
    ann.transport.loseConnection()
    ann.connectionLost(Failure(ConnectionDone()))
    stop_cleanly(bus, redis)


def test_a_session_given_back_to_redis_is_kept_as_it_was_taken_its_places_its_old_node_s():
    hub, bus, redis = streams_node(StructuredProtocol)
    (_, publisher), _ = redis.connections
    identity = Identity("u1", "Ann", RoomPatterns(["chess*"]), 1234.5)
    stored = StoredSession(SessionState("Ann", {"chess": ("e1", 4), "go": ("e2", 0)}, identity), "b-9",
                           {"chess": streams.Place(b"5-1", "other", 3), "go": None})
    kept: list = []
    bus.give_back("S", stored, 2.5).addCallback(kept.append)
    redis.answer()
    (command,) = [command for command in sent_commands(publisher) if command[:2] == [b"SET", b"tcphub:0:session:S"]]
    assert command[3:] == [b"PX", b"2500"] and kept == [True]
    back = redis_module._stored_session(command[2])  # what another node's take reads
    assert (back.client_id, back.places, back.state.name, back.state.rooms) == (
        stored.client_id, stored.places, stored.state.name, stored.state.rooms)
    assert (back.state.identity.user, back.state.identity.name, back.state.identity.expires,
            back.state.identity.rooms.patterns) == ("u1", "Ann", 1234.5, identity.rooms.patterns)
    stop_cleanly(bus, redis)


class CountingTransport(StringTransport):
    """A transport that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def test_what_a_member_missed_on_another_node_goes_out_in_one_write_before_it_is_in_the_room():
    hub = TcpServer(port=0, clock=Clock(), timeout=0, frame_timeout=0)
    relay = RecordingRelay()
    relay.session_store = object()
    relay.catch_up = lambda room, place, exclude, limit, limit_bytes, max_age: succeed([b"m1", b"m2", b"m3"])
    hub.factory.join_relay(relay, "n1")
    client = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    client.makeConnection(CountingTransport())
    stored = StoredSession(SessionState("ann", {"r": ("e", 3)}, None), "n2-1", {"r": None})
    recovered: list = []
    hub.factory.recover(client.client_id, "r", stored).addCallback(recovered.append)
    assert recovered == [None] and client.rooms == ("r",)
    assert client.transport.writes == [b"m1\nm2\nm3\n"], "one write, not one a message"
    client.transport.loseConnection()
    client.connectionLost(Failure(ConnectionDone()))


# -- handovers: a resume waiting for another node's live session --------------------


def test_a_handover_is_the_first_node_that_has_the_session_and_no_once_every_node_asked_said_no():
    waits = handovers.Handovers(Clock(), 5.0)
    got: list = []
    waits.ask("d1", ["b", "c"]).addCallback(got.append)
    waits.ask("d2", ["b", "c"]).addCallback(got.append)
    assert waits.answered("b", "d1", False) is False and got == []
    assert waits.answered("x", "d1", True) is False and got == [], "a node not asked does not answer"
    assert waits.answered("c", "d1", True) is True and got == [True]
    assert waits.answered("b", "d1", True) is False, "answered already"
    waits.answered("b", "d2", False)
    assert got == [True]
    waits.answered("c", "d2", False)
    assert got == [True, False], "no once each node asked said no"


def test_a_handover_no_node_answers_is_given_up_at_the_timeout_on_the_hub_s_clock():
    clock = Clock()
    waits = handovers.Handovers(clock, 5.0)
    got: list = []
    waits.ask("d", ["b"]).addCallback(got.append)
    clock.advance(4.999)
    assert got == []
    clock.advance(0.001)
    assert got == [False] and not clock.getDelayedCalls()
    assert waits.answered("b", "d", True) is False, "too late: given up on"


def test_handovers_are_bounded_asked_once_per_session_and_all_given_up_as_the_bus_leaves():
    clock = Clock()
    waits = handovers.Handovers(clock, 5.0, limit=2)
    got: list = []
    assert waits.ask("d", []) is None, "no other node to ask"
    waits.ask("d1", ["b"]).addCallback(got.append)
    assert waits.ask("d1", ["b"]) is None, "asked already"
    waits.ask("d2", ["b"]).addCallback(got.append)
    assert waits.ask("d3", ["b"]) is None, "as many wait as the limit"
    waits.give_up()
    assert got == [False, False] and not clock.getDelayedCalls()
    assert waits.ask("d3", ["b"]) is not None, "room again"
    waits.give_up()
