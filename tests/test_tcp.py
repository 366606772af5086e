"""
The hub over real sockets on 127.0.0.1 (port 0): many clients, drops, limits,
slow readers, keep-alive, TLS and UNIX sockets.
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import SSL4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.ssl import Certificate, optionsForClientTLS

from tcphub import (
    BroadcastProtocol,
    EchoProtocol,
    FrameTooLong,
    HubProtocol,
    ListenFailed,
    MalformedFrame,
    SlowConsumer,
    TcpServer,
)
from tests.clients import LineClient, connect, make_certificate
from tests.events import when_event, when_events


@pytest_twisted.inlineCallbacks
def test_250_concurrent_clients_broadcast_and_leave_an_empty_table(tcp_server):
    server = yield tcp_server(framing="int32", protocol=BroadcastProtocol)
    count = 250
    connected = when_events(server, "connection", count)
    clients = yield gatherResults([connect(server.port) for _ in range(count)])
    yield connected
    assert server.get_metrics().connections == count

    clients[0].sendString(b"hello from client 0")
    yield server.broadcast(b"hello from the server")
    yield gatherResults([c.when_received(2 if c is not clients[0] else 1) for c in clients])
    assert clients[0].received == [b"hello from the server"]
    for client in clients[1:]:
        assert sorted(client.received) == [b"hello from client 0", b"hello from the server"]

    gone = when_events(server, "disconnect", count)
    # A FIN alone leaves a broadcast-mode client a listener (half-close,
    # tested below): these clients reset their connections.
    for client in clients:
        client.transport.abortConnection()
    yield gone
    yield gatherResults([c.lost for c in clients])
    assert server.clients() == []
    metrics = server.get_metrics()
    assert (metrics.connections, metrics.accepted) == (0, count)
    assert metrics.messages_sent == (count - 1) + count


@pytest_twisted.inlineCallbacks
def test_a_client_dropped_mid_frame_leaves_no_trace(tcp_server):
    server = yield tcp_server(framing="int32", protocol=BroadcastProtocol)
    connected = when_events(server, "connection", 2)
    dropper, listener = yield gatherResults([connect(server.port), connect(server.port)])
    yield connected
    gone = when_events(server, "disconnect", 1)
    dropper.transport.write(struct.pack(">I", 100) + b"only part of it")
    dropper.transport.abortConnection()
    (client_id, reason), = yield gone
    assert server.clients()[0].id != client_id
    metrics = server.get_metrics()
    assert (metrics.messages_received, metrics.protocol_errors, metrics.connections) == (0, 0, 1)

    yield server.broadcast(b"still here")
    yield listener.when_received(1)
    listener.transport.loseConnection()
    yield gatherResults([dropper.lost, listener.lost])


@pytest_twisted.inlineCallbacks
def test_over_long_frame_closes_that_connection_only(tcp_server):
    server = yield tcp_server(framing="int32", max_frame=1024, protocol=BroadcastProtocol)
    errors = []
    server.on("error", lambda client_id, error: errors.append(error))
    connected = when_events(server, "connection", 3)
    hostile, talker, listener = yield gatherResults([connect(server.port) for _ in range(3)])
    yield connected
    hostile.transport.write(struct.pack(">I", 1025) + b"x" * 100)
    yield hostile.lost
    assert [type(e) for e in errors] == [FrameTooLong]
    assert server.get_metrics().protocol_errors == 1

    talker.sendString(b"x" * 1024)
    assert (yield listener.when_received(1)) == [b"x" * 1024]
    for client in (talker, listener):
        client.transport.loseConnection()
    yield gatherResults([talker.lost, listener.lost])


@pytest_twisted.inlineCallbacks
def test_garbage_netstring_is_a_protocol_error(tcp_server):
    server = yield tcp_server(framing="netstring", protocol=EchoProtocol)
    errors = []
    server.on("error", lambda client_id, error: errors.append(error))
    client = LineClient()
    yield connect(server.port, client)
    client.transport.write(b"5:hello,GET / HTTP/1.1\r\n\r\n")
    yield client.lost
    assert [type(e) for e in errors] == [MalformedFrame]
    metrics = server.get_metrics()
    assert (metrics.messages_received, metrics.protocol_errors) == (1, 1)


@pytest_twisted.inlineCallbacks
def test_a_reader_that_stops_is_dropped_and_the_others_get_every_message(tcp_server):
    """
    One client never reads while another sends as fast as the receivers keep
    up: the hub's queue for the stuck client never passes max_pending, the
    client is dropped as a slow consumer, the others miss nothing.
    """
    max_pending = 256 * 1024
    server = yield tcp_server(framing="int32", protocol=BroadcastProtocol, max_pending=max_pending)
    errors = []
    server.on("error", lambda client_id, error: errors.append((client_id, error)))
    connected = when_events(server, "connection", 4)
    stuck, sender, *receivers = yield gatherResults([connect(server.port) for _ in range(4)])
    yield connected
    stuck.transport.pauseProducing()
    stuck_id = next(
        c.id for c in server.clients() if c.address.endswith(f":{stuck.transport.getHost().port}")
    )
    worst_queue = 0

    def watch(client_id, payload) -> None:
        nonlocal worst_queue
        if any(c.id == stuck_id for c in server.clients()):
            worst_queue = max(worst_queue, server.client(stuck_id).pending_bytes)

    server.on("data", watch)
    batch, payload_size, max_batches = 256, 1024, 400
    sent = 0
    for _ in range(max_batches):
        for _ in range(batch):
            sender.sendString(struct.pack(">Q", sent) + b"p" * (payload_size - 8))
            sent += 1
        yield gatherResults([r.when_received(sent) for r in receivers])
        if server.get_metrics().slow_consumers:
            break
    assert server.get_metrics().slow_consumers == 1, f"not dropped after {sent} messages"
    assert [(cid, type(e)) for cid, e in errors] == [(stuck_id, SlowConsumer)]
    assert 0 < worst_queue <= max_pending

    for receiver in receivers:
        sequence = [struct.unpack(">Q", m[:8])[0] for m in receiver.received]
        assert sequence == list(range(sent))
    assert stuck_id not in {c.id for c in server.clients()}
    assert len(server.clients()) == 3

    for client in (sender, *receivers):
        client.transport.loseConnection()
    stuck.transport.resumeProducing()
    yield gatherResults([c.lost for c in (stuck, sender, *receivers)])


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest_twisted.inlineCallbacks
def test_keep_alive_host_and_backlog_reach_the_socket(keep_alive, tcp_server):
    accepted: list[HubProtocol] = []

    class Recorded(HubProtocol):
        def connectionMade(self) -> None:
            super().connectionMade()
            accepted.append(self)

    server = yield tcp_server(host="127.0.0.1", backlog=7, keep_alive=keep_alive, protocol=Recorded)
    assert server.address.host == "127.0.0.1"
    assert server.listening_ports[0].backlog == 7
    connected = when_events(server, "connection", 1)
    client = yield connect(server.port)
    yield connected
    handle = accepted[0].transport.getHandle()
    assert bool(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) is keep_alive
    client.transport.loseConnection()
    yield client.lost


@pytest_twisted.inlineCallbacks
def test_ipv6_loopback(tcp_server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = yield tcp_server(host="::1", protocol=EchoProtocol)
    except ListenFailed:
        pytest.skip("::1 is not configured here")
    assert server.address.host == "::1"
    client = LineClient()
    from twisted.internet.endpoints import TCP6ClientEndpoint

    yield connectProtocol(TCP6ClientEndpoint(reactor, "::1", server.port), client)
    client.sendLine(b"six")
    assert (yield client.when_received(1)) == [b"six"]
    assert server.clients()[0].address.startswith("[::1]:")
    client.transport.loseConnection()
    yield client.lost


@pytest_twisted.inlineCallbacks
def test_stop_fires_only_when_port_and_clients_are_gone(tcp_server):
    server = yield tcp_server(protocol=EchoProtocol)
    port = server.port
    connected = when_events(server, "connection", 3)
    clients = [LineClient() for _ in range(3)]
    yield gatherResults([connect(port, c) for c in clients])
    yield connected
    yield server.stop()
    assert server.clients() == []
    assert not server.running
    yield gatherResults([c.lost for c in clients])
    with pytest.raises(ConnectionRefusedError):
        yield connect(port)


@pytest.mark.logs_errors("the port is taken on purpose", ListenFailed)
@pytest_twisted.inlineCallbacks
def test_a_busy_port_fails_start_with_listen_failed_on_the_error_event_and_leaves_nothing_open(tcp_server):
    first = yield tcp_server()
    second = TcpServer(endpoint=["tcp:0:interface=127.0.0.1", f"tcp:{first.port}:interface=127.0.0.1"])
    reported = when_event(second, "error")
    with pytest.raises(ListenFailed) as raised:
        yield second.start()
    assert isinstance(raised.value.__cause__, CannotListenError)
    assert f"tcp:{first.port}:interface=127.0.0.1" in str(raised.value)
    client_id, error = yield reported
    assert client_id is None and error is raised.value
    assert second.listening_ports == []
    yield second.stop()


@pytest_twisted.inlineCallbacks
def test_tls_endpoint_with_a_throwaway_certificate(tmp_path, tcp_server):
    key, cert = make_certificate(tmp_path)
    server = yield tcp_server(
        endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        protocol=EchoProtocol,
    )
    trust = Certificate.loadPEM(cert.read_bytes())
    endpoint = SSL4ClientEndpoint(
        reactor, "127.0.0.1", server.port, optionsForClientTLS("localhost", trustRoot=trust)
    )
    client = LineClient()
    yield connectProtocol(endpoint, client)
    client.sendLine(b"secret")
    assert (yield client.when_received(1)) == [b"secret"]
    assert server.get_metrics().bytes_received == len(b"secret\n")
    client.transport.loseConnection()
    yield client.lost


@pytest_twisted.inlineCallbacks
def test_unix_socket_endpoint(tmp_path, tcp_server):
    path = tmp_path / "hub.sock"
    server = yield tcp_server(endpoint=f"unix:{path}", protocol=EchoProtocol)
    with pytest.raises(RuntimeError, match="no port number"):
        server.port
    client = LineClient()
    yield connectProtocol(UNIXClientEndpoint(reactor, str(path)), client)
    client.sendLine(b"local")
    assert (yield client.when_received(1)) == [b"local"]
    client.transport.loseConnection()
    yield client.lost


class Tagger(HubProtocol):
    """A subclass hook: answers with the message and the sender's address."""

    def messageReceived(self, payload: bytes) -> None:
        self.sendMessage(b"%s from %s" % (payload, self.address.encode()))


@pytest_twisted.inlineCallbacks
def test_a_subclassed_protocol_over_a_real_socket(tcp_server):
    server = yield tcp_server(protocol=Tagger)
    client = LineClient()
    yield connect(server.port, client)
    client.sendLine(b"hi")
    (reply,) = yield client.when_received(1)
    assert reply == b"hi from 127.0.0.1:%d" % client.transport.getHost().port
    client.transport.loseConnection()
    yield client.lost


@pytest_twisted.inlineCallbacks
def test_bytes_sent_counts_what_a_dropped_slow_consumer_could_have_received(tcp_server):
    """
    A raw socket with a small receive buffer reads 4 KiB, then stops; the
    hub drops it as a slow consumer.  What was in Twisted's buffer and the
    kernel's send queue then never reached it: bytes_sent counts only what
    the peer got (read, or waiting in its own receive buffer).
    """
    server = yield tcp_server(framing="int32", protocol=BroadcastProtocol, max_pending=64 * 1024)
    connected = when_events(server, "connection", 3)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    receive_buffer = stuck.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    stuck.connect(("127.0.0.1", server.port))
    sender, receiver = yield gatherResults([connect(server.port), connect(server.port)])
    yield connected
    frame = 4 + 1024
    sent = 0
    for _ in range(400):
        for _ in range(64):
            sender.sendString(b"p" * 1024)
            sent += 1
        yield receiver.when_received(sent)
        if sent == 64:
            read = len(stuck.recv(4096, socket.MSG_WAITALL))
        if server.get_metrics().slow_consumers:
            break
    assert server.get_metrics().slow_consumers == 1
    credited = server.get_metrics().bytes_sent - sent * frame  # the receiver got every frame
    assert read == 4096
    assert read <= credited <= read + receive_buffer, (
        f"{credited} bytes counted as sent to a peer that read {read} "
        f"and can hold {receive_buffer} more"
    )
    stuck.close()
    for client in (sender, receiver):
        client.transport.loseConnection()
    yield gatherResults([c.lost for c in (sender, receiver)])
