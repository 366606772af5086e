"""
The hub's defences against clients that are slow, half-closed, greedy or
hostile, in memory: StringTransport for each client, a Clock for every timer.
"""

from __future__ import annotations

import struct

import pytest
from twisted.internet.task import Clock

from tcphub import (
    AddressLimitReached,
    BroadcastProtocol,
    ClientDisconnected,
    ConnectionLimitReached,
    EchoProtocol,
    FrameTimeout,
    HandlerError,
    HubFactory,
    IdleTimeout,
    TcpServer,
)
from tcphub.hub.protocol import REFUSED


def int32(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# -- half-close ----------------------------------------------------------


def test_echo_answers_a_request_ended_by_fin_then_closes(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"hi\n")
    protocol.readConnectionLost()
    assert transport.value() == b"hi\n"
    assert transport.disconnecting, "closed once the reply is written"
    assert hub.errors() == []


def test_an_unterminated_last_line_is_a_line_at_fin(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"one\ntw")
    protocol.readConnectionLost()
    assert transport.value() == b"one\ntw\n"


def test_fin_waits_for_queued_output_before_closing(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.pauseProducing()  # the client's receive window is full
    protocol.dataReceived(b"queued\n")
    protocol.readConnectionLost()
    assert not transport.disconnecting
    protocol.resumeProducing()
    assert transport.value() == b"queued\n" and transport.disconnecting


def test_fin_inside_a_frame_drops_the_unfinished_frame_quietly(hub_factory):
    # A client that crashes ends its input anywhere: that is a departure, not
    # a protocol error; what it finished is answered.
    hub = hub_factory(protocol=EchoProtocol, framing="int32")
    protocol, transport = hub.connect()
    protocol.dataReceived(int32(b"whole") + struct.pack(">I", 10) + b"part")
    protocol.readConnectionLost()
    assert transport.value() == int32(b"whole") and transport.disconnecting
    assert hub.errors() == []
    assert hub.factory.get_metrics().protocol_errors == 0


@pytest.mark.logs_errors("the hook raises on purpose", RuntimeError)
def test_an_inputended_hook_that_raises_is_counted_and_the_hub_goes_on(hub_factory):
    class Broken(EchoProtocol):
        def inputEnded(self) -> None:
            raise RuntimeError("hook bug")

    hub = hub_factory(protocol=Broken)
    protocol, transport = hub.connect()
    other, other_transport = hub.connect()
    protocol.readConnectionLost()
    (error,) = hub.errors()
    assert isinstance(error, HandlerError) and isinstance(error.__cause__, RuntimeError)
    assert hub.factory.get_metrics().handler_errors == 1
    other.dataReceived(b"still served\n")
    assert other_transport.value() == b"still served\n"


def test_a_client_the_hub_is_closing_gets_no_inputended_call(hub_factory):
    calls = []

    class Watching(EchoProtocol):
        def inputEnded(self) -> None:
            calls.append(self.client_id)
            super().inputEnded()

    hub = hub_factory(protocol=Watching)
    protocol, transport = hub.connect()
    protocol.pauseProducing()
    protocol.sendMessage(b"queued")
    protocol.loseConnection()  # waits for the queue
    protocol.readConnectionLost()
    assert calls == []
    protocol.resumeProducing()
    assert transport.value() == b"queued\n" and transport.disconnecting


def test_a_client_that_half_closes_is_closed_once_its_replies_are_written(hub_factory):
    """Node's allowHalfOpen false: a load balancer's TCP probe (connect,
    close) leaves no ghost in the table."""
    hub = hub_factory(protocol=BroadcastProtocol)
    probe, probe_transport = hub.connect()
    probe.readConnectionLost()
    assert probe_transport.disconnecting


def test_with_allow_half_open_a_broadcast_listener_that_half_closes_keeps_receiving(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol, allow_half_open=True)
    listener, listener_transport = hub.connect()
    talker, _ = hub.connect()
    listener.readConnectionLost()
    talker.dataReceived(b"news\n")
    assert listener_transport.value() == b"news\n"
    assert not listener_transport.disconnecting


def test_messages_held_by_flow_control_are_handled_before_the_end(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    hub.factory.pause_reading()
    protocol.dataReceived(b"a\nb\n")
    protocol.readConnectionLost()
    assert transport.value() == b"" and not transport.disconnecting
    hub.factory.resume_reading()
    assert transport.value() == b"a\nb\n" and transport.disconnecting
    assert transport.producerState == "paused", "a half-closed socket is not read again"


# -- the idle timeout counts traffic both ways -------------------------------


def test_a_reader_of_a_busy_room_is_not_idle(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol, timeout=300)
    reader, reader_transport = hub.connect()
    talker, _ = hub.connect()
    for _ in range(10):
        hub.clock.advance(100)
        talker.dataReceived(b"still here\n")
    assert not reader_transport.disconnecting
    assert hub.factory.get_metrics().timed_out == 0


def test_the_idle_deadline_is_exact_to_the_clock_after_the_last_write(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol, timeout=30)
    reader, reader_transport = hub.connect()
    talker, talker_transport = hub.connect()
    hub.clock.advance(20)
    talker.dataReceived(b"x\n")  # a read for the talker, a write for the reader
    hub.clock.advance(29.75)
    assert not reader_transport.disconnecting
    hub.clock.advance(0.25)
    assert reader_transport.disconnecting
    assert [type(e) for e in hub.errors()] == [IdleTimeout, IdleTimeout]
    assert talker_transport.disconnecting
    assert hub.timers() == []


def test_every_client_s_idle_deadline_is_on_one_timer_and_each_still_comes_exactly(hub_factory):
    """One timer for all (a DelayedCall each cost about 450 bytes an idle
    client); each deadline still exact to the clock, moved by traffic."""
    hub = hub_factory(timeout=30)
    clients = []
    for _ in range(50):
        clients.append(hub.connect())
        hub.clock.advance(0.5)
    assert len(hub.timers()) == 1
    talker, talker_transport = clients[10]
    talker.dataReceived(b"still here\n")  # at 25 s: its deadline moves to 55 s
    for index, (_, transport) in enumerate(clients):
        if index == 10:
            continue
        hub.clock.advance(index * 0.5 + 30 - hub.clock.seconds() - 0.125)
        assert not transport.disconnecting
        hub.clock.advance(0.125)
        assert transport.disconnecting, f"client {index} at {index * 0.5 + 30} s"
    hub.clock.advance(55 - hub.clock.seconds() - 0.125)
    assert not talker_transport.disconnecting
    hub.clock.advance(0.125)
    assert talker_transport.disconnecting
    assert hub.factory.get_metrics().timed_out == 50 and hub.timers() == []


def test_a_client_the_hub_holds_back_is_not_idle_and_gets_a_whole_timeout_once_let_go(hub_factory):
    hub = hub_factory(timeout=30)
    protocol, transport = hub.connect()
    hub.factory.pause_reading()  # e.g. a gateway's upstream stalls
    hub.clock.advance(100)
    assert not transport.disconnecting and hub.timers() == [], "no deadline while held"
    hub.factory.resume_reading()
    hub.clock.advance(29.875)
    assert not transport.disconnecting
    hub.clock.advance(0.125)
    assert transport.disconnecting and hub.factory.get_metrics().timed_out == 1


@pytest.mark.logs_errors("the hook raises on purpose", RuntimeError)
def test_a_timeoutconnection_hook_that_raises_is_counted_and_the_other_deadlines_come(hub_factory):
    class Broken(EchoProtocol):
        def timeoutConnection(self) -> None:
            raise RuntimeError("hook bug")

    hub = hub_factory(protocol=Broken, timeout=30)
    hub.connect()
    hub.connect()
    hub.clock.advance(30)
    errors = hub.errors()
    assert len(errors) == 2 and all(isinstance(error, HandlerError) for error in errors)
    assert hub.factory.get_metrics().handler_errors == 2


def test_a_send_counts_as_traffic(hub_factory):
    hub = hub_factory(timeout=10)
    protocol, transport = hub.connect()
    hub.clock.advance(9)
    hub.factory.send(protocol.client_id, b"ping")
    hub.clock.advance(9)
    assert not transport.disconnecting
    hub.clock.advance(1)
    assert transport.disconnecting


# -- slowloris: a deadline on each begun frame ---------------------------------


def test_a_frame_trickled_a_byte_at_a_time_is_cut_at_the_frame_timeout(hub_factory):
    hub = hub_factory(framing="int32", timeout=3, frame_timeout=30)
    protocol, transport = hub.connect()
    frame = int32(b"x" * 100)
    for second in range(0, 30, 2):
        protocol.dataReceived(frame[second // 2 : second // 2 + 1])
        hub.clock.advance(2)
    assert transport.disconnecting, "a byte every 2 s beats a 3 s idle timeout, not the frame deadline"
    (error,) = hub.errors()
    assert isinstance(error, FrameTimeout)
    metrics = hub.factory.get_metrics()
    assert (metrics.frame_timeouts, metrics.timed_out) == (1, 0)


def test_frames_that_straddle_reads_each_get_their_own_deadline(hub_factory):
    hub = hub_factory(framing="line", frame_timeout=5)
    protocol, transport = hub.connect()
    for _ in range(10):
        protocol.dataReceived(b"end of one\nstart of the next")
        hub.clock.advance(4)
    assert not transport.disconnecting
    assert hub.factory.get_metrics().messages_received == 10


def test_the_frame_deadline_stops_when_the_frame_completes(hub_factory):
    hub = hub_factory(framing="line", frame_timeout=5)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"half")
    protocol.dataReceived(b" done\n")
    assert hub.timers() == []


# -- connections per address -------------------------------------------------------


def test_connections_per_address_are_capped(hub_factory):
    hub = hub_factory(max_connections_per_ip=2)
    first = hub.connect("127.0.0.2")
    hub.connect("127.0.0.2")
    _, refused = hub.connect("127.0.0.2")
    _, other = hub.connect("127.0.0.3")
    assert refused.disconnecting and not other.disconnecting
    (error,) = hub.errors()
    assert isinstance(error, AddressLimitReached) and isinstance(error, ConnectionLimitReached)
    metrics = hub.factory.get_metrics()
    assert (metrics.rejected, metrics.rejected_per_ip, metrics.connections) == (1, 1, 3)
    hub.lose(first[0])
    _, again = hub.connect("127.0.0.2")
    assert not again.disconnecting, "a slot frees when a client leaves"


# -- the message rate ----------------------------------------------------------------


def test_a_client_over_its_rate_is_paused_not_dropped(hub_factory):
    hub = hub_factory(protocol=EchoProtocol, max_rate=4, max_burst=5)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"".join(b"%d\n" % i for i in range(20)))
    assert transport.value() == b"0\n1\n2\n3\n4\n"
    assert transport.producerState == "paused", "TCP pushes back on the flooder"
    assert hub.factory.client(protocol.client_id).held_bytes == sum(len(b"%d" % i) for i in range(5, 20))
    hub.clock.advance(0.125)
    assert transport.value().endswith(b"4\n"), "a token every 0.25 s"
    hub.clock.advance(0.125)
    assert transport.value().endswith(b"4\n5\n")
    for _ in range(14):
        hub.clock.advance(0.25)
    assert transport.value() == b"".join(b"%d\n" % i for i in range(20))
    assert transport.producerState == "producing"
    assert not transport.disconnecting
    assert hub.factory.get_metrics().rate_limited == 15


def test_without_a_rate_limit_a_read_is_handled_at_once(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"".join(b"%d\n" % i for i in range(20)))
    assert transport.value() == b"".join(b"%d\n" % i for i in range(20))


def test_a_rate_pause_and_a_flow_control_pause_both_hold_reading(hub_factory):
    hub = hub_factory(protocol=EchoProtocol, max_rate=1, max_burst=1)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"a\nb\n")
    hub.factory.pause_reading()
    hub.clock.advance(5)
    assert transport.value() == b"a\n" and transport.producerState == "paused"
    hub.factory.resume_reading()
    assert transport.value() == b"a\nb\n" and transport.producerState == "producing"


# -- accounting ------------------------------------------------------------------------


def test_output_discarded_by_an_abort_is_not_counted_as_sent(hub_factory):
    hub = hub_factory(protocol=EchoProtocol, framing="int32", max_frame=10)
    protocol, transport = hub.connect()
    # The echo of the first frame is batched, then the over-long frame aborts.
    protocol.dataReceived(int32(b"ok") + struct.pack(">I", 11))
    assert transport.value() == b"" and transport.disconnected
    metrics = hub.factory.get_metrics()
    assert (metrics.bytes_sent, metrics.messages_sent) == (0, 0)


# -- API pitfalls ---------------------------------------------------------------------


def test_text_instead_of_bytes_is_a_clear_type_error(hub_factory):
    hub = hub_factory()
    protocol, _ = hub.connect()
    for call in (lambda: hub.factory.send(protocol.client_id, "text"),
                 lambda: hub.factory.broadcast("text"),
                 lambda: protocol.sendMessage("text")):
        with pytest.raises(TypeError, match=r"takes bytes, not str: encode text first"):
            call()


def test_one_id_as_exclude_is_a_clear_type_error(hub_factory):
    hub = hub_factory()
    protocol, _ = hub.connect()
    with pytest.raises(TypeError, match=r"exclude=\['"):
        hub.factory.broadcast(b"x", exclude=protocol.client_id)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"timeout": float("nan")}, "timeout takes a finite number"),
        ({"timeout": -1}, "timeout cannot be negative"),
        ({"frame_timeout": float("inf")}, "frame_timeout takes a finite number"),
        ({"keep_alive": "no"}, "keep_alive takes True or False"),
        ({"max_rate": 0}, "max_rate must be more than 0"),
        ({"max_burst": 3}, "max_burst goes with max_rate"),
        ({"max_connections_per_ip": 0}, "max_connections_per_ip must be at least 1"),
        ({"max_frame": 1.5}, "max_frame takes a whole number"),
    ],
)
def test_bad_hub_options_are_refused_by_name(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        HubFactory(clock=Clock(), **options)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"port": -1}, "port cannot be negative"),
        ({"port": 70000}, "port must be at most 65535"),
        ({"backlog": 0}, "backlog must be at least 1"),
        ({"backlog": 99999999999}, "backlog must be at most 65535"),
        ({"drain_timeout": -3}, "drain_timeout cannot be negative"),
        ({"drain_timeout": float("nan")}, "drain_timeout takes a finite number"),
        ({"host": "[::1]"}, "without brackets, e.g. '::1'"),
        ({"host": "not a host"}, "host takes an IPv4 or IPv6 address or a host name"),
        ({"endpoint": "bogus:1"}, "endpoint 'bogus:1'"),
    ],
)
def test_bad_server_options_are_refused_by_name(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TcpServer(clock=Clock(), **options)


def test_timeout_zero_means_no_timeout_in_the_api_too():
    assert TcpServer(timeout=0, clock=Clock()).factory.timeout is None


# -- the lifecycle: what a client the hub is closing takes, and what it does not ----


class ClosesOnBye(EchoProtocol):
    """Echoes, and closes (after its queued output) on the message b"bye"."""

    def messageReceived(self, payload: bytes) -> None:
        super().messageReceived(payload)
        if payload == b"bye":
            self.loseConnection()


def test_input_after_the_hub_began_closing_is_neither_counted_nor_decoded(hub_factory):
    hub = hub_factory(protocol=ClosesOnBye)
    protocol, transport = hub.connect()
    protocol.pauseProducing()  # output queued: the close waits for it
    protocol.dataReceived(b"bye\n")
    received = hub.factory.client(protocol.client_id).bytes_received
    protocol.dataReceived(b"more\nand more\n")
    assert hub.factory.client(protocol.client_id).bytes_received == received == 4
    assert hub.factory.get_metrics().messages_received == 1


def test_a_frame_begun_after_the_closing_message_gets_no_deadline(hub_factory):
    hub = hub_factory(protocol=ClosesOnBye, framing="int32")
    protocol, transport = hub.connect()
    protocol.dataReceived(int32(b"bye") + struct.pack(">I", 10) + b"part")
    assert hub.timers() == []
    hub.clock.advance(60)
    assert hub.factory.get_metrics().frame_timeouts == 0


def test_garbage_after_the_closing_message_is_not_a_protocol_error(hub_factory):
    hub = hub_factory(protocol=ClosesOnBye, max_frame=8)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"bye\n" + b"x" * 50 + b"\n")
    assert transport.value() == b"bye\n", "the reply still goes out"
    assert hub.factory.get_metrics().protocol_errors == 0 and hub.errors() == []


def test_a_last_line_that_closes_the_client_gets_no_inputended_call(hub_factory):
    calls = []

    class Watching(ClosesOnBye):
        def inputEnded(self) -> None:
            calls.append(self.client_id)

    hub = hub_factory(protocol=Watching)
    protocol, transport = hub.connect()
    protocol.dataReceived(b"bye")
    protocol.readConnectionLost()
    assert transport.value() == b"bye\n" and calls == []


def test_held_messages_stop_at_the_one_that_closes_the_client(hub_factory):
    hub = hub_factory(protocol=ClosesOnBye, timeout=60)
    protocol, transport = hub.connect()
    protocol.pauseReading()
    protocol.dataReceived(b"one\nbye\nthree\nfour\n")
    protocol.resumeReading()
    assert transport.value() == b"one\nbye\n"
    assert hub.factory.get_metrics().messages_received == 2
    assert transport.producerState == "paused", "its reading not resumed"
    hub.lose(protocol)
    assert hub.timers() == [], "its idle deadline went with it"


def test_a_rate_pause_during_the_release_of_held_messages_keeps_reading_paused(hub_factory):
    hub = hub_factory(protocol=EchoProtocol, max_rate=1, max_burst=1)
    protocol, transport = hub.connect()
    protocol.pauseReading()
    protocol.dataReceived(b"a\nb\nc\n")
    protocol.resumeReading()
    assert transport.value() == b"a\n"
    assert transport.producerState == "paused", "the bucket is empty: TCP keeps pushing back"
    hub.clock.advance(1)
    hub.clock.advance(1)
    assert transport.value() == b"a\nb\nc\n" and transport.producerState == "producing"


def test_resuming_a_client_that_was_not_paused_changes_nothing(hub_factory):
    calls = []

    class Listener(BroadcastProtocol):
        def inputEnded(self) -> None:
            calls.append(self.client_id)

    hub = hub_factory(protocol=Listener)
    protocol, transport = hub.connect()
    protocol.readConnectionLost()
    hub.factory.resume_reading()  # e.g. a gateway whose upstream came back
    assert calls == [protocol.client_id], "inputEnded once, not again at each resume"


def test_fin_inside_a_frame_leaves_no_frame_deadline_on_a_listener(hub_factory):
    hub = hub_factory(protocol=BroadcastProtocol, framing="int32", allow_half_open=True)
    protocol, transport = hub.connect()
    protocol.dataReceived(struct.pack(">I", 10) + b"part")
    protocol.readConnectionLost()
    hub.clock.advance(60)
    assert hub.factory.get_metrics().frame_timeouts == 0 and not transport.disconnecting


def test_closing_every_client_leaves_refused_ones_alone_until_they_go(hub_factory):
    hub = hub_factory(max_connections=1)
    admitted, _ = hub.connect()
    refused, _ = hub.connect()
    assert hub.factory.get_metrics().rejected == 1
    done = hub.factory.close_all()
    hub.lose(refused)
    hub.lose(admitted)
    assert done.called
    assert hub.factory.get_metrics().connections == 0


def test_a_closing_client_refuses_new_output_even_if_its_transport_stalls_again(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.pauseProducing()
    queued = hub.factory.send(protocol.client_id, b"queued")
    protocol.loseConnection()
    protocol.pauseProducing()  # the transport says so again
    late = hub.factory.send(protocol.client_id, b"late")
    failures = []
    late.addErrback(failures.append)
    assert failures and failures[0].check(ClientDisconnected)
    protocol.resumeProducing()
    assert queued.called and transport.value() == b"queued\n"


def test_a_closing_client_refuses_new_output_once_its_queue_is_written(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    protocol, transport = hub.connect()
    protocol.pauseProducing()
    hub.factory.send(protocol.client_id, b"queued")
    protocol.loseConnection()
    protocol.resumeProducing()
    assert transport.disconnecting
    late = hub.factory.send(protocol.client_id, b"late")
    failures = []
    late.addErrback(failures.append)
    assert failures and failures[0].check(ClientDisconnected)
    assert transport.value() == b"queued\n"


def test_a_refused_client_that_ends_its_input_is_simply_gone(hub_factory):
    hub = hub_factory(max_connections=1)
    hub.connect()
    refused, transport = hub.connect()
    refused.readConnectionLost()
    refused.dataReceived(b"ignored\n")
    hub.lose(refused)
    metrics = hub.factory.get_metrics()
    assert (metrics.rejected, metrics.connections, metrics.messages_received) == (1, 1, 0)
    assert hub.errors()[0].__class__.__name__ == "ConnectionLimitReached" and len(hub.errors()) == 1


def test_the_hub_resuming_every_client_does_not_resume_one_a_subclass_paused(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    held, transport = hub.connect()
    other, other_transport = hub.connect()
    held.pauseReading()  # e.g. a subclass waiting on a database
    held.dataReceived(b"kept\n")
    hub.factory.pause_reading()  # e.g. a gateway's upstream stalls, then comes back
    other.dataReceived(b"later\n")
    hub.factory.resume_reading()
    assert transport.value() == b"" and transport.producerState == "paused", "still the subclass's pause"
    assert other_transport.value() == b"later\n"
    held.resumeReading()
    assert transport.value() == b"kept\n" and transport.producerState == "producing"


def test_a_subclass_resuming_does_not_resume_a_client_the_hub_paused(hub_factory):
    hub = hub_factory(protocol=EchoProtocol)
    hub.factory.pause_reading()
    protocol, transport = hub.connect()  # paused as it connects
    protocol.pauseReading()
    protocol.dataReceived(b"kept\n")
    protocol.resumeReading()
    assert transport.value() == b"" and transport.producerState == "paused", "still the hub's pause"
    hub.factory.resume_reading()
    assert transport.value() == b"kept\n"


@pytest.mark.parametrize("limits", [{"max_connections": 1}, {"max_connections_per_ip": 1}])
def test_a_refused_connection_never_reaches_the_protocols_hooks(hub_factory, limits):
    calls = []

    class Hooked(EchoProtocol):
        def connectionMade(self) -> None:
            calls.append("connectionMade")
            super().connectionMade()

        def connectionLost(self, reason) -> None:
            calls.append("connectionLost")
            super().connectionLost(reason)

    hub = hub_factory(protocol=Hooked, **limits)
    hub.connect()
    refused, transport = hub.connect()
    assert not isinstance(refused, Hooked) and refused.state == REFUSED
    assert transport.disconnected, "aborted as it is made"
    hub.lose(refused)
    assert calls == ["connectionMade"], "only the admitted client's hook ran"
    metrics = hub.factory.get_metrics()
    assert (metrics.rejected, metrics.connections) == (1, 1)
    assert metrics.rejected_per_ip == (1 if "max_connections_per_ip" in limits else 0)
