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
from twisted.protocols import basic
from twisted.python.failure import Failure

from tcphub import EchoProtocol, HubFactory
from tcphub.hub.framing import get_framing
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
    hub.doStart()
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
    hub.doStop()  # the factory's log windows end with it
    assert hub.clients() == [] and clock.getDelayedCalls() == []


# -- the linear decoders against Twisted's receivers, which they replace ----------


class _Oracle:
    """Twisted's receiver for a framing, reporting as a sink does."""

    def __init__(self, name: str, max_frame: int) -> None:
        self.events: list[tuple] = []
        if name == "int32":
            self.receiver = basic.Int32StringReceiver()
            self.receiver.MAX_LENGTH = max_frame
            self.receiver.stringReceived = lambda s: self.events.append(("frame", s))
            self.receiver.lengthLimitExceeded = self._too_long
        else:
            # The \r of \r\n does not count toward max_frame: the oracle takes
            # one byte more and checks the stripped line itself.
            self.receiver = basic.LineOnlyReceiver()
            self.receiver.delimiter = b"\n"
            self.receiver.MAX_LENGTH = max_frame + 1
            self.receiver.lineReceived = self._line
            self.receiver.lineLengthExceeded = self._too_long
        self.max_frame = max_frame
        self.receiver.makeConnection(StringTransport())

    def _too_long(self, *_: object) -> None:
        self.events.append(("error", "FrameTooLong"))
        self.receiver.transport.loseConnection()

    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_frame:
            self._too_long()
        else:
            self.events.append(("frame", line))

    def feed(self, chunk: bytes) -> None:
        if ("error", "FrameTooLong") in self.events:
            return
        self.receiver.dataReceived(chunk)
        buffered = getattr(self.receiver, "_buffer", b"")
        if len(buffered) == self.max_frame + 1 and not buffered.endswith(b"\r"):
            self._too_long()  # can never become a line of max_frame bytes


def _events(sink) -> list[tuple]:
    return [("frame", f) for f in sink.frames] + [("error", type(e).__name__) for e in sink.errors]


@settings(max_examples=400)
@given(
    data=st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"\x00\x00\x00\x05", b"\x00\x00\x00\x00",
                                   b"\x00\x00\x00\x21", b"\xff\xff\xff\xff", b"abc", b"x" * 40]),
                  max_size=40).map(b"".join),
    cuts=st.lists(st.integers(0, 2000), max_size=20),
    name=st.sampled_from(["int32", "line"]),
)
def test_linear_decoders_match_twisted_receivers_byte_for_byte(data, cuts, name):
    max_frame = 32
    chunks = split(data, cuts)
    ours = decode(name, chunks, max_frame=max_frame)
    oracle = _Oracle(name, max_frame)
    for chunk in chunks:
        oracle.feed(chunk)
    got = _events(ours)
    # Frames in order, then at most one error, exactly where Twisted's receiver stops.
    assert got == [e for e in oracle.events if e[0] == "frame"] + [e for e in oracle.events if e[0] == "error"][:1]
    assert oracle.events[: len(got)] == got
