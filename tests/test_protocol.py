"""
The hub's protocol and factory in memory: StringTransport for each client,
Clock for every timer, iosim for two-way wiring.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import basic
from twisted.test import iosim

from tcphub import (
    BroadcastProtocol,
    ClientDisconnected,
    ConnectionLimitReached,
    EchoProtocol,
    FrameTooLong,
    HandlerError,
    HubFactory,
    HubProtocol,
    IdleTimeout,
    SlowConsumer,
    UnframeableMessage,
    UnknownClient,
)
from tcphub.hub.framing import LineFraming
from tcphub.hub.modes import ChatProtocol


def test_client_table_tracks_every_client_and_forgets_the_gone(hub_factory):
    hub = hub_factory()
    hub.clock.advance(100)
    clients = [hub.connect() for _ in range(3)]
    records = hub.factory.clients()
    assert len({record.id for record in records}) == 3
    assert {record.address for record in records} == {"127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003"}
    assert {record.connected for record in records} == {100.0}
    assert [e[0] for e in hub.events] == ["connection"] * 3

    for protocol, _ in clients:
        hub.lose(protocol)
    assert hub.factory.clients() == []
    metrics = hub.factory.get_metrics()
    assert metrics.connections == 0
    assert metrics.accepted == 3
    assert [e[1] for e in hub.events if e[0] == "disconnect"] == [p.client_id for p, _ in clients]
    with pytest.raises(UnknownClient):
        hub.factory.client(clients[0][0].client_id)


def test_partial_messages_are_counted_once_complete(hub_factory):
    hub = hub_factory()
    protocol, _ = hub.connect()
    protocol.dataReceived(b"a\nb")
    protocol.dataReceived(b"c\n")
    assert [e[1:] for e in hub.events if e[0] == "data"] == [
        (protocol.client_id, b"a"),
        (protocol.client_id, b"bc"),
    ]
    record = hub.factory.client(protocol.client_id)
    assert (record.bytes_received, record.messages_received) == (5, 2)
    metrics = hub.factory.get_metrics()
    assert (metrics.bytes_received, metrics.messages_received) == (5, 2)


def test_echo_counts_what_it_sends(hub_factory):
    hub = hub_factory(protocol=EchoProtocol, framing="int32")
    protocol, transport = hub.connect()
    protocol.dataReceived(b"\x00\x00\x00\x02hi")
    assert transport.value() == b"\x00\x00\x00\x02hi"
    record = hub.factory.client(protocol.client_id)
    assert (record.bytes_sent, record.messages_sent) == (6, 1)
    assert hub.factory.get_metrics().bytes_sent == 6


class CountingFraming(LineFraming):
    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, payload: bytes) -> bytes:
        self.encoded += 1
        return super().encode(payload)


def test_broadcast_skips_the_excluded_and_encodes_once(hub_factory):
    framing = CountingFraming()
    hub = hub_factory(framing=framing)
    (first, first_t), (second, second_t), (third, third_t) = [hub.connect() for _ in range(3)]
    d = hub.factory.broadcast(b"news", exclude=[first.client_id])
    assert d.called
    assert (first_t.value(), second_t.value(), third_t.value()) == (b"", b"news\n", b"news\n")
    assert framing.encoded == 1


def test_broadcast_mode_relays_to_every_other_client(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol)
    (talker, talker_t), (_, listener_t) = hub.connect(), hub.connect()
    talker.dataReceived(b"hello\r\n")
    assert (talker_t.value(), listener_t.value()) == (b"", b"hello\n")


def test_send_to_unknown_or_gone_client_errbacks(hub_factory):
    hub = hub_factory()
    protocol, _ = hub.connect()
    hub.lose(protocol)
    for client_id in ("nobody", protocol.client_id):
        failure = hub.factory.send(client_id, b"x")
        with pytest.raises(UnknownClient):
            failure.result.raiseException()
        failure.addErrback(lambda _: None)


def test_send_unframeable_errbacks_and_sends_nothing(hub_factory):
    hub = hub_factory()
    protocol, transport = hub.connect()
    d = hub.factory.send(protocol.client_id, b"two\nlines")
    assert isinstance(d.result.value, UnframeableMessage)
    d.addErrback(lambda _: None)
    d = hub.factory.broadcast(b"bad\n")
    assert isinstance(d.result.value, UnframeableMessage)
    d.addErrback(lambda _: None)
    assert transport.value() == b""


def test_send_waits_while_the_transport_is_paused_and_keeps_order(hub_factory):
    hub = hub_factory()
    protocol, transport = hub.connect()
    assert transport.producer is None, "sent nothing yet: no outbox, and no producer to pause"
    protocol.sendMessage(b"zero")
    assert transport.producer is protocol and transport.streaming
    transport.clear()
    protocol.pauseProducing()
    first = hub.factory.send(protocol.client_id, b"one")
    broadcast = hub.factory.broadcast(b"two")
    protocol.sendMessage(b"three")
    assert not first.called and not broadcast.called
    assert transport.value() == b""
    assert hub.factory.client(protocol.client_id).pending_bytes == 14

    protocol.resumeProducing()
    assert first.called and broadcast.called
    assert transport.value() == b"one\ntwo\nthree\n"
    assert hub.factory.client(protocol.client_id).pending_bytes == 0


def test_a_client_that_stops_reading_is_dropped_at_max_pending(hub_factory):
    hub = hub_factory(max_pending=10)
    (stuck, stuck_t), (reader, reader_t) = hub.connect(), hub.connect()
    stuck.pauseProducing()
    waiters = [hub.factory.send(stuck.client_id, b"abc") for _ in range(2)]
    assert not stuck_t.disconnecting
    assert hub.factory.client(stuck.client_id).pending_bytes == 8
    broadcast = hub.factory.broadcast(b"abc")

    assert stuck_t.disconnected, "a slow consumer is aborted, not closed politely"
    assert broadcast.called, "a dropped receiver does not fail a broadcast"
    for waiter in waiters:
        assert isinstance(waiter.result.value, SlowConsumer)
        waiter.addErrback(lambda _: None)
    assert hub.factory.get_metrics().slow_consumers == 1
    assert [type(e) for e in hub.errors()] == [SlowConsumer]
    assert reader_t.value() == b"abc\n"

    hub.lose(stuck)
    assert [c.id for c in hub.factory.clients()] == [reader.client_id]
    failed = hub.factory.send(stuck.client_id, b"late")
    assert isinstance(failed.result.value, UnknownClient)
    failed.addErrback(lambda _: None)


def pausing_past_a_buffer(client, transport) -> list[int]:
    """Make C{transport} pause C{client} once more than a buffer's worth
    (C{HANDOVER}) is written, as a TCP transport pauses its producer past its
    buffer size; returns the sizes written, to be cleared when the kernel
    takes them."""
    from tcphub.hub.outbox import HANDOVER

    written: list[int] = []
    real_write = transport.write

    def write(data: bytes) -> None:
        real_write(data)
        written.append(len(data))
        if sum(written) > HANDOVER:
            client.pauseProducing()

    transport.write = write
    return written


def test_a_resumed_client_gets_its_queue_a_buffer_at_a_time_not_all_at_once(hub_factory):
    """A slow client holds at most max_pending queued plus about a buffer in
    its transport: the whole queue handed over at once would hold it twice."""
    from tcphub.hub.outbox import HANDOVER

    hub = hub_factory(max_pending=1024 * 1024)
    client, transport = hub.connect()
    held = pausing_past_a_buffer(client, transport)
    client.pauseProducing()
    frame = b"x" * 999  # 1,000 bytes framed
    sends = [hub.factory.send(client.client_id, frame) for _ in range(1000)]
    assert hub.factory.client(client.client_id).pending_bytes == 1_000_000
    client.resumeProducing()  # its buffer drained
    assert HANDOVER < sum(held) <= 2 * HANDOVER, "a buffer's worth, not the whole queue"
    assert hub.factory.client(client.client_id).pending_bytes == 1_000_000 - sum(held)
    assert sum(send.called for send in sends) == sum(held) // 1000, "those handed over are done"
    while hub.factory.client(client.client_id).pending_bytes:
        held.clear()  # the kernel took it: the transport asks for more
        client.resumeProducing()
    assert all(send.called for send in sends)
    assert transport.value() == (frame + b"\n") * 1000, "all of it, in order"
    hub.factory.send(client.client_id, b"then live")
    assert transport.value().endswith(b"then live\n")


def test_in_a_queue_of_frames_mostly_unwaited_each_send_is_told_when_its_own_frame_is_handed_over(hub_factory):
    """Most queued frames have no one waiting (a broadcastMessage, a
    sendMessage): the queue holds just the frame, and the few waiters are
    kept apart, each told when its own frame goes to the transport."""
    hub = hub_factory(max_pending=1024 * 1024)
    client, transport = hub.connect()
    handed = pausing_past_a_buffer(client, transport)
    client.sendMessage(b"first")
    handed.clear()
    client.pauseProducing()
    frame = b"x" * 999  # 1,000 bytes framed
    sends = {}
    for index in range(300):
        if index % 7 == 3:
            sends[index] = hub.factory.send(client.client_id, frame)
        else:
            client.sendMessage(frame)
    assert len(client.outbox.waiters) == len(sends) == 43
    total = 0
    while hub.factory.client(client.client_id).pending_bytes:
        client.resumeProducing()  # the kernel took what it had: the transport asks for more
        total += sum(handed)
        handed.clear()
        assert {index: send.called for index, send in sends.items()} == {
            index: (index + 1) * 1000 <= total for index in sends
        }
    assert total == 300_000 and all(send.called for send in sends.values())
    assert client.outbox.queue is None and client.outbox.waiters is None


@pytest.mark.parametrize("pauses", [True, False], ids=["transport pauses", "transport takes all"])
@pytest.mark.logs_errors("the client is dropped on purpose", SlowConsumer)
def test_a_send_told_its_frame_went_that_drops_the_client_leaves_the_rest_of_the_queue_unwritten(
        hub_factory, pauses):
    """A waiter's callback runs while the queue is handed over; if it drops
    the client, each send whose frame was handed over is told so, what was
    not is neither written nor counted, and its send fails once with the
    departure: none is told twice."""
    hub = hub_factory(max_pending=1024 * 1024)
    client, transport = hub.connect()
    handed = pausing_past_a_buffer(client, transport) if pauses else []
    client.sendMessage(b"first")
    handed.clear()
    client.pauseProducing()
    sent_before = client.bytes_sent
    sends = [hub.factory.send(client.client_id, b"x" * 999) for _ in range(200)]
    outcomes: list[tuple[int, str]] = []
    for index, send in enumerate(sends):
        send.addCallbacks(lambda _, index=index: outcomes.append((index, "sent")),
                          lambda failure, index=index: outcomes.append((index, type(failure.value).__name__)))
    sends[10].addCallback(lambda _: client.drop("slow_consumers", SlowConsumer("dropped by a callback")))
    client.resumeProducing()
    written = (len(transport.value()) - len(b"first\n")) // 1000
    assert written == 66, "the first 64 KiB handed over, nothing after the drop"
    assert sorted(outcomes) == [(index, "sent") for index in range(written)] + [
        (index, "SlowConsumer") for index in range(written, 200)]
    assert client.bytes_sent - sent_before == written * 1000


def test_a_broadcast_nobody_waits_for_makes_no_countdown_even_for_queueing_receivers(hub_factory):
    hub = hub_factory()
    receiver, transport = hub.connect()
    receiver.sendMessage(b"made its outbox")
    receiver.pauseProducing()
    assert hub.factory.broadcast_frame(b"queued\n", waited=False) is None
    waited = hub.factory.broadcast_frame(b"waited\n")
    assert waited is not None and waited.remaining == 2, "the queueing receiver and the caller's hold"
    waited.tick()
    receiver.resumeProducing()
    assert waited.done.called
    assert transport.value().endswith(b"queued\nwaited\n")


def test_over_long_frame_drops_only_that_client(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol, max_frame=8)
    (hostile, hostile_t), (talker, _), (_, listener_t) = [hub.connect() for _ in range(3)]
    hostile.dataReceived(b"x" * 9)
    hostile.dataReceived(b"ignored\n")
    assert hostile_t.disconnected
    assert hub.factory.get_metrics().protocol_errors == 1
    (error,) = hub.errors()
    assert isinstance(error, FrameTooLong) and error.limit == 8
    talker.dataReceived(b"still\n")
    assert listener_t.value() == b"still\n"
    assert hub.factory.get_metrics().messages_received == 1


def test_idle_timeout_on_the_injected_clock(hub_factory):
    hub = hub_factory(timeout=30)
    protocol, transport = hub.connect()
    hub.clock.advance(29)
    protocol.dataReceived(b"ping\n")
    hub.clock.advance(29)
    assert not transport.disconnecting
    hub.clock.advance(1)
    assert transport.disconnected
    assert hub.factory.get_metrics().timed_out == 1
    assert [type(e) for e in hub.errors()] == [IdleTimeout]
    hub.lose(protocol)
    assert hub.timers() == []


def test_no_timer_is_left_when_a_client_leaves(hub_factory):
    hub = hub_factory(timeout=30)
    protocol, _ = hub.connect()
    assert len(hub.clock.getDelayedCalls()) == 1
    hub.lose(protocol)
    assert hub.timers() == []


def test_connections_past_max_connections_are_refused_and_counted(hub_factory):
    hub = hub_factory(max_connections=2)
    hub.connect(), hub.connect()
    extra, extra_t = hub.connect()
    assert extra_t.disconnected
    assert len(hub.factory.clients()) == 2
    assert hub.factory.get_metrics().rejected == 1
    assert [type(e) for e in hub.errors()] == [ConnectionLimitReached]
    hub.lose(extra)
    assert [e[0] for e in hub.events].count("disconnect") == 0


class Fragile(HubProtocol):
    def messageReceived(self, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        self.sendMessage(payload)


@pytest.mark.logs_errors("the hook raises on purpose", RuntimeError)
def test_a_raising_hook_is_counted_and_the_connection_goes_on(hub_factory):
    hub = hub_factory(protocol=Fragile)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"boom\nafter\n")
    assert transport.value() == b"after\n"
    assert not transport.disconnecting
    assert hub.factory.get_metrics().handler_errors == 1
    (error,) = hub.errors()
    assert isinstance(error, HandlerError)
    assert isinstance(error.__cause__, RuntimeError)


@pytest.mark.logs_errors("the hook raises on purpose", ValueError)
def test_a_raising_event_callback_does_not_stop_the_others(hub_factory):
    hub = hub_factory()
    seen = []

    def broken(client_id, payload):
        raise ValueError("callback bug")

    hub.factory.on("data", broken)
    hub.factory.on("data", lambda client_id, payload: seen.append(payload))
    protocol, _ = hub.connect()
    protocol.dataReceived(b"m\n")
    assert seen == [b"m"]
    assert hub.factory.get_metrics().handler_errors == 1


def test_unsubscribe(hub_factory):
    hub = hub_factory()
    seen = []
    subscription = hub.factory.on("data", lambda client_id, payload: seen.append(payload))
    protocol, _ = hub.connect()
    protocol.dataReceived(b"1\n")
    subscription.cancel()
    subscription.cancel()
    protocol.dataReceived(b"2\n")
    assert seen == [b"1"]
    with pytest.raises(ValueError, match="unknown event"):
        hub.factory.on("message", print)


def test_uptime_follows_the_clock(hub_factory):
    hub = hub_factory()
    hub.clock.advance(12.5)
    assert hub.factory.get_metrics().uptime == 12.5


class Quitter(HubProtocol):
    def messageReceived(self, payload: bytes) -> None:
        if payload == b"quit":
            self.loseConnection()
        else:
            self.sendMessage(payload)


def test_messages_after_a_close_in_the_same_chunk_are_ignored(hub_factory):
    hub = hub_factory(protocol=Quitter)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"a\nquit\nb\n")
    assert transport.value() == b"a\n"
    assert transport.disconnecting and transport.producer is None
    assert hub.factory.get_metrics().messages_received == 2


def test_graceful_close_flushes_the_queue_first(hub_factory):
    hub = hub_factory()
    protocol, transport = hub.connect()
    protocol.pauseProducing()
    protocol.sendMessage(b"last words")
    protocol.loseConnection()
    assert not transport.disconnecting, "queued output is written before closing"
    protocol.resumeProducing()
    assert transport.value() == b"last words\n"
    assert transport.disconnecting and transport.producer is None


def test_disconnect_fires_when_the_client_is_gone(hub_factory):
    hub = hub_factory()
    protocol, transport = hub.connect()
    gone = hub.factory.disconnect(protocol.client_id)
    assert transport.disconnecting and not gone.called
    hub.lose(protocol)
    assert gone.called
    failed = hub.factory.disconnect("nobody")
    assert isinstance(failed.result.value, UnknownClient)
    failed.addErrback(lambda _: None)


def test_close_all_waits_for_the_drain_then_aborts(hub_factory):
    hub = hub_factory()
    (idle, idle_t), (stuck, stuck_t) = hub.connect(), hub.connect()
    stuck.pauseProducing()
    queued = hub.factory.send(stuck.client_id, b"never read")
    done = hub.factory.close_all(drain_timeout=5)
    assert idle_t.disconnecting and not stuck_t.disconnecting
    hub.lose(idle)
    hub.clock.advance(4.9)
    assert not done.called and not stuck_t.disconnected
    hub.clock.advance(0.1)
    assert stuck_t.disconnected
    hub.lose(stuck)
    assert done.called
    assert isinstance(queued.result.value, ClientDisconnected)
    queued.addErrback(lambda _: None)
    assert hub.timers() == []


def test_two_clients_chat_in_memory_through_iosim():
    clock = Clock()
    hub = HubFactory(protocol=BroadcastProtocol, framing="int32", clock=clock)
    received: list[bytes] = []

    class Client(basic.Int32StringReceiver):
        def stringReceived(self, string: bytes) -> None:
            received.append(string)

    pumps = []
    clients = []
    for port in (50001, 50002):
        server = hub.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        client = Client()
        pumps.append(
            iosim.connect(
                server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                clock=clock,
            )
        )
        clients.append(client)
    clients[0].sendString(b"over the wire")
    for pump in pumps:
        pump.flush()
    assert received == [b"over the wire"]
    assert hub.get_metrics().messages_sent == 1


def test_paused_reading_holds_the_rest_of_the_read_and_stops_the_socket(hub_factory):
    hub = hub_factory(protocol=EchoProtocol, timeout=30)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"one\n")
    hub.factory.pause_reading()
    assert transport.producerState == "paused"
    protocol.dataReceived(b"two\nthree\nfou")
    assert transport.value() == b"one\n"
    assert hub.factory.client(protocol.client_id).held_bytes == len(b"twothree")
    hub.clock.advance(60)
    assert not transport.disconnecting, "no idle timeout while the hub holds the client back"

    latecomer, latecomer_t = hub.connect()
    assert latecomer_t.producerState == "paused"

    hub.factory.resume_reading()
    assert transport.value() == b"one\ntwo\nthree\n"
    assert transport.producerState == "producing"
    assert latecomer_t.producerState == "producing"
    protocol.dataReceived(b"r\n")
    assert transport.value().endswith(b"four\n")
    assert hub.factory.client(protocol.client_id).held_bytes == 0
    hub.clock.advance(30)
    assert transport.disconnected, "the idle timeout is back once reading resumes"
    hub.lose(protocol)
    hub.lose(latecomer)


class CountingTransport(StringTransport):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_what_one_read_broadcasts_goes_out_as_one_write_per_receiver(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol)
    talker, _ = hub.connect()
    listeners = []
    for port in (41001, 41002):
        address = IPv4Address("TCP", "127.0.0.1", port)
        protocol = hub.factory.buildProtocol(address)
        transport = CountingTransport(peerAddress=address)
        protocol.makeConnection(transport)
        listeners.append(transport)
    talker.dataReceived(b"one\ntwo\nthree\n")
    for transport in listeners:
        assert (transport.value(), transport.writes) == (b"one\ntwo\nthree\n", 1)
    assert hub.factory.get_metrics().messages_sent == 6


def test_coalescing_keeps_order_behind_a_paused_transport(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol)
    (talker, _), (listener, listener_t) = hub.connect(), hub.connect()
    listener.pauseProducing()
    talker.dataReceived(b"a\nb\n")
    listener.resumeProducing()
    talker.dataReceived(b"c\n")
    assert listener_t.value() == b"a\nb\nc\n"
    assert hub.factory.client(listener.client_id).pending_bytes == 0


def test_a_close_during_a_read_flushes_what_the_read_wrote_first(hub_factory):
    hub = hub_factory(protocol=Quitter)
    protocol, _ = hub.connect()
    address = IPv4Address("TCP", "127.0.0.1", 41003)
    counted = hub.factory.buildProtocol(address)
    transport = CountingTransport(peerAddress=address)
    counted.makeConnection(transport)
    counted.dataReceived(b"x\ny\nquit\nz\n")
    assert transport.value() == b"x\ny\n" and transport.writes == 1
    assert transport.disconnecting


def test_drop_counts_under_a_named_reason_and_refuses_an_unknown_one(hub_factory):
    from tcphub import Drop, MalformedFrame

    hub = hub_factory()
    protocol, transport = hub.connect()
    with pytest.raises(ValueError, match="'protocol_error' is not a valid Drop"):
        protocol.drop("protocol_error", MalformedFrame("typo in the counter's name"))
    assert not transport.disconnected and hub.factory.get_metrics().protocol_errors == 0
    protocol.drop(Drop.PROTOCOL_ERROR, MalformedFrame("bad"))
    assert transport.disconnected and hub.factory.get_metrics().protocol_errors == 1


def test_every_drop_reason_is_a_metrics_field():
    from dataclasses import fields

    from tcphub import Drop, Metrics

    assert {reason.value for reason in Drop} <= {field.name for field in fields(Metrics)}


@pytest.mark.parametrize("protocol", [HubProtocol, EchoProtocol, BroadcastProtocol])
def test_an_idle_client_has_no_instance_dict_no_outbox_and_nothing_seldom_set(hub_factory, protocol):
    """What an idle client costs (bench/README, issue 28's target 1): the
    hub's protocols keep their fields in slots, with no C{__dict__} (Twisted's
    C{Protocol} would give every instance one), and make the outbox and the
    seldom-set fields only when they are needed."""
    hub = hub_factory(protocol=protocol)
    client, transport = hub.connect()
    assert not hasattr(client, "__dict__")
    assert client.outbox is None and transport.producer is None
    assert client.dropped_for is None and client.info().bytes_sent == 0
    client.sendMessage(b"now it has one")
    assert client.outbox is not None and transport.producer is client


def test_the_chat_keeps_its_fields_in_slots_too(hub_factory):
    client, _ = hub_factory(protocol=ChatProtocol).connect()
    assert not hasattr(client, "__dict__")
