"""
Our own WebSocket client as a hub member: two L{WebSocketHandler}s and a TCP
line client in one in-process hub, over real sockets.  The hub relays each
envelope as it is, so that the handlers route what the others send.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList

from tcphub import BroadcastProtocol, WebSocketHandler, WebSocketMembers
from tests.clients import LineClient, connect
from tests.test_websocket import handler, route_into  # noqa: F401 (a fixture)


@pytest.fixture
def members():
    """C{members(hub)}: WebSocketMembers for a TcpServer on port 0, stopped after the test."""
    started: list[WebSocketMembers] = []

    def start(hub, **options) -> Deferred:
        service = WebSocketMembers(hub, "tcp:0:interface=127.0.0.1", **options)
        started.append(service)
        service.startService()
        return service.when_listening().addCallback(lambda _: service)

    yield start
    for service in started:
        pytest_twisted.blockon(service.stopService())


def connections(hub, count: int) -> Deferred:
    """Fires once C{count} clients have connected since the call."""
    done: Deferred = Deferred()
    seen = []

    def connected(info) -> None:
        seen.append(info)
        if len(seen) == count:
            subscription.cancel()
            done.callback(seen)

    subscription = hub.on("connection", connected)
    return done


@pytest_twisted.inlineCallbacks
def test_handlers_on_ws_route_the_envelopes_other_members_send(tcp_server, members, handler):  # noqa: F811
    hub = yield tcp_server(framing="line", protocol=BroadcastProtocol)
    site = yield members(hub)
    url = f"ws://127.0.0.1:{site.port}/ws"
    alice: WebSocketHandler = handler(ping_interval=0)
    bob: WebSocketHandler = handler(ping_interval=0)
    seen, routed = route_into(bob, "chat.message", 3)
    joined = connections(hub, 3)
    yield DeferredList([alice.connect(url), bob.connect(url)])
    line_client = yield connect(hub.port, LineClient())
    yield joined

    yield alice.send("chat.message", {"text": "hi"})
    yield alice.send("chat.message", b"\x00\x01 binary data")
    lines = yield line_client.when_received(2)
    # The TCP client sees the very bytes alice sent: the JSON, then the binary envelope.
    assert json.loads(lines[0]) == {"path": "chat.message", "data": {"text": "hi"}}
    assert lines[1].endswith(b"\x00\x01 binary data")
    line_client.transport.write(b'{"path": "chat.message", "data": {"from": "nc"}}\n')
    yield routed
    assert [data for data, _ in seen] == [{"text": "hi"}, b"\x00\x01 binary data", {"from": "nc"}]
    assert sorted(info.kind for info in hub.clients()) == ["tcp", "websocket", "websocket"]
    line_client.transport.loseConnection()
    yield line_client.lost


def test_the_members_port_bounds_handshakes_per_address_as_told():
    """Members behind one address (a NAT, a load generator) need more than
    the 16 handshakes at once and 10 a second that guard against one host."""
    from twisted.internet.task import Clock

    from tcphub import TcpServer

    hub = TcpServer(port=0, clock=Clock())
    peer = IPv4Address("TCP", "127.0.0.7", 40000)
    guarded = WebSocketMembers(hub, "tcp:0:interface=127.0.0.1")
    assert [guarded.site.admit(peer) for _ in range(17)] == [True] * 16 + [False]
    roomy = WebSocketMembers(hub, "tcp:0:interface=127.0.0.1", max_handshakes_per_address=100,
                             max_handshake_rate=None)
    assert all(roomy.site.admit(peer) for _ in range(100)) and not roomy.site.admit(peer)
    assert all(roomy.site.take_request_token(peer) == 0.0 for _ in range(1000)), "not paced"
    with pytest.raises(ValueError, match="max_handshakes_per_address"):
        WebSocketMembers(hub, "tcp:0", max_handshakes_per_address=0)
