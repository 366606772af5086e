"""
The gateway in one process: real TCP clients <-> TcpServer + Bridge +
WebSocketHandler <-> the websockets package's echo server in a subprocess.
The echo server sends every upstream message back, so with the route "hub.#"
each message makes the whole trip: client, hub, upstream, hub, client.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater

from tcphub import HubProtocol, InvalidMessage, TcpServer, WebSocketHandler
from tcphub.bridge import Bridge, decode_payload, encode_payload
from tests.clients import Int32Client, connect
from tests.events import when_event, when_events
from tests.processes import WebSocketServer


def test_payload_shape_is_text_when_it_can_be_and_base64_otherwise():
    assert encode_payload("c1", "héllo".encode()) == {"client": "c1", "text": "héllo"}
    assert encode_payload(None, b"\xff\x00") == {"base64": "/wA="}
    for payload in (b"", b"plain", bytes(range(256))):
        assert decode_payload(encode_payload("c", payload)) == ("c", payload)


@pytest.mark.parametrize(
    "data", [[1], {"client": 5, "text": "x"}, {"client": "c"}, {"base64": "not base64!"}, {"text": 3}]
)
def test_bad_payload_shapes(data):
    with pytest.raises(InvalidMessage):
        decode_payload(data)


@pytest.fixture
def upstream_server():
    servers: list[WebSocketServer] = [WebSocketServer()]
    yield servers
    for server in servers:
        server.kill()


@pytest_twisted.inlineCallbacks
def start_bridge(url: str):
    hub = TcpServer(port=0, framing="int32", protocol=HubProtocol)
    upstream = WebSocketHandler(url=url, ping_interval=0, clock=Clock(), jitter=0.0)
    bridge = Bridge(hub, upstream, upstream_path="hub.in", upstream_route="hub.#")
    opened = when_event(upstream, "open")
    bridge.startService()
    yield hub.start()
    yield opened
    return bridge


@pytest_twisted.inlineCallbacks
def stop_bridge(bridge: Bridge, clients) -> None:
    for client in clients:
        client.transport.loseConnection()
    yield gatherResults([client.lost for client in clients])
    yield bridge.stopService()
    assert bridge.upstream.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_messages_go_up_and_down_byte_for_byte_in_order(upstream_server):
    bridge = yield start_bridge(upstream_server[0].url)
    hub, upstream = bridge.hub, bridge.upstream
    connected = when_events(hub, "connection", 2)
    alice, bob = yield gatherResults([connect(hub.port), connect(hub.port)])
    yield connected
    try:
        messages = [b"text %d" % n for n in range(50)] + [bytes(range(256)), b"", b"\xff\xfe"]
        for message in messages:
            alice.sendString(message)
        assert (yield alice.when_received(len(messages))) == messages
        assert bob.received == []

        yield upstream.send("server.say", [json.dumps({"path": "hub.out", "data": {"text": "to all"}})])
        yield gatherResults([alice.when_received(len(messages) + 1), bob.when_received(1)])
        assert alice.received[-1] == bob.received[-1] == b"to all"
        assert (bridge.lost_upstream, upstream.get_status().invalid_messages) == (0, 0)
    finally:
        yield stop_bridge(bridge, [alice, bob])


@pytest_twisted.inlineCallbacks
def test_while_upstream_is_down_the_hub_stops_reading_and_loses_nothing(upstream_server):
    bridge = yield start_bridge(upstream_server[0].url)
    hub, upstream = bridge.hub, bridge.upstream
    connected = when_event(hub, "connection")
    raw = socket.create_connection(("127.0.0.1", hub.port))
    raw.setblocking(False)
    yield connected
    sender = Int32Client()
    try:
        closed, retry = when_event(upstream, "close"), when_event(upstream, "retry")
        upstream_server.append(upstream_server[0].restart())
        yield closed
        _, delay, _ = yield retry
        # The retry event fires while ClientService schedules the retry: let
        # it finish before moving the clock.
        yield deferLater(reactor, 0, lambda: None)
        assert hub.factory.reading_paused

        # Send as fast as the kernel takes it: send() refuses once the hub's
        # receive buffer and the sender's send buffer are both full.
        frames = (struct.pack(">IQ", 1024, n) + b"p" * 1016 for n in range(100_000))
        unsent, sent = b"", 0
        while True:
            if not unsent:
                unsent = next(frames)
                sent += 1
            try:
                unsent = unsent[raw.send(unsent):]
            except BlockingIOError:
                break
        (record,) = hub.clients()
        assert record.held_bytes <= 64 * 1024, "at most the rest of one read is held"
        assert record.bytes_received < sent * 1028, "the rest waits in the sockets"
        assert upstream.get_status().queued == 0

        # Twisted takes the socket over: it sends the rest, and reads the echoes.
        adopted = Factory.forProtocol(lambda: sender)
        reactor.adoptStreamConnection(raw.fileno(), socket.AF_INET, adopted)
        raw.close()
        sender.transport.write(unsent)

        opened = when_event(upstream, "open")
        upstream.clock.advance(delay)
        yield opened
        received = yield sender.when_received(sent)
        assert [struct.unpack(">Q", m[:8])[0] for m in received] == list(range(sent))
        assert bridge.lost_upstream == 0
    finally:
        yield stop_bridge(bridge, [sender])
