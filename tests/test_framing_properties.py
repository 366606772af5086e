"""
Properties of every framing, for any input hypothesis finds: messages survive
any split of the stream, and arbitrary bytes never raise out of the hub's
protocol: they decode, or take the protocol-error path and close the
connection cleanly.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tcphub import EchoProtocol, HubFactory
from tcphub.framing import get_framing
from tests.test_framing import decode

MAX_FRAME = 512

payloads = st.binary(max_size=MAX_FRAME)
line_payloads = payloads.map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(wire)) for cut in cuts})
    return [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)])]


@given(messages=st.lists(payloads, max_size=20), cuts=st.lists(st.integers(0, 20_000), max_size=30),
       name=st.sampled_from(["int32", "netstring"]))
def test_length_prefixed_messages_survive_any_split(messages, cuts, name):
    wire = b"".join(get_framing(name).encode(m) for m in messages)
    sink = decode(name, split(wire, cuts), max_frame=MAX_FRAME)
    assert sink.frames == messages and sink.errors == []


@given(messages=st.lists(line_payloads, max_size=20), cuts=st.lists(st.integers(0, 20_000), max_size=30))
def test_lines_survive_any_split(messages, cuts):
    wire = b"".join(get_framing("line").encode(m) for m in messages)
    sink = decode("line", split(wire, cuts), max_frame=MAX_FRAME)
    assert sink.frames == messages and sink.errors == []


@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=10))
def test_raw_keeps_every_byte_in_order(data, cuts):
    assert b"".join(decode("raw", split(data, cuts)).frames) == data


@settings(max_examples=300)
@given(chunks=st.lists(st.binary(max_size=700), max_size=12),
       name=st.sampled_from(["int32", "line", "netstring", "raw"]))
def test_arbitrary_bytes_decode_or_close_the_connection_cleanly(chunks, name):
    clock = Clock()
    hub = HubFactory(protocol=EchoProtocol, framing=name, max_frame=MAX_FRAME, clock=clock, timeout=10)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = hub.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    metrics = hub.get_metrics()
    if metrics.protocol_errors:
        assert metrics.protocol_errors == 1 and transport.disconnected
    else:
        assert not transport.disconnecting
        # Everything decoded was echoed, framed again, byte for byte.
        framing = get_framing(name)
        assert metrics.messages_sent == metrics.messages_received
        assert len(transport.value()) == metrics.bytes_sent
        if name == "raw":
            assert transport.value() == b"".join(chunks)
        else:
            assert transport.value() == b"".join(framing.encode(m) for m in decode(name, chunks, MAX_FRAME).frames)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert hub.clients() == [] and clock.getDelayedCalls() == []
