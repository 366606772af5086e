"""Each framing: encode, decode split at every byte, limits and garbage."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.testing import StringTransport
from twisted.protocols import basic

from tcphub.errors import FrameTooLong, FramingError, MalformedFrame, UnframeableMessage
from tcphub.hub.framing import FRAMINGS, get_framing

MESSAGES = [b"hello", b"", b"x" * 300, bytes(range(256)).replace(b"\n", b"")]


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.errors: list[FramingError] = []

    def frameReceived(self, payload: bytes) -> None:
        self.frames.append(payload)

    def frameError(self, error: FramingError) -> None:
        self.errors.append(error)


def decode(name: str, chunks: list[bytes], max_frame: int = 1024) -> Sink:
    sink = Sink()
    decoder = get_framing(name).decoder(sink, max_frame)
    for chunk in chunks:
        decoder.dataReceived(chunk)
    return sink


@pytest.mark.parametrize("name", ["int32", "line", "netstring"])
def test_partial_messages_split_at_every_byte(name):
    wire = b"".join(get_framing(name).encode(m) for m in MESSAGES)
    for split in range(len(wire) + 1):
        sink = decode(name, [wire[:split], wire[split:]])
        assert sink.frames == MESSAGES, f"split at byte {split}"
        assert sink.errors == []


@pytest.mark.parametrize("name", ["int32", "line", "netstring"])
def test_one_byte_at_a_time(name):
    wire = b"".join(get_framing(name).encode(m) for m in MESSAGES)
    sink = decode(name, [wire[i : i + 1] for i in range(len(wire))])
    assert sink.frames == MESSAGES


def test_int32_wire_format_is_what_twisted_sends():
    transport = StringTransport()
    sender = basic.Int32StringReceiver()
    sender.makeConnection(transport)
    sender.sendString(b"payload")
    assert get_framing("int32").encode(b"payload") == transport.value()
    assert transport.value()[:4] == struct.pack(">I", 7)


def test_netstring_wire_format():
    assert get_framing("netstring").encode(b"abc") == b"3:abc,"


def test_line_tolerates_crlf_and_strips_only_one_cr():
    sink = decode("line", [b"one\r\ntwo\nthree\r\r\n"])
    assert sink.frames == [b"one", b"two", b"three\r"]


def test_the_cr_of_crlf_does_not_count_toward_max_frame():
    for chunks in ([b"m" * 1024 + b"\r\n"], [b"m" * 1024 + b"\r", b"\n"]):
        sink = decode("line", chunks, max_frame=1024)
        assert (sink.frames, sink.errors) == ([b"m" * 1024], [])
    sink = decode("line", [b"m" * 1024 + b"x"], max_frame=1024)
    assert [type(e) for e in sink.errors] == [FrameTooLong], "no \\r there: over at once"


def test_a_frame_cut_into_many_reads_is_joined_once():
    payload = bytes(range(256)) * 64
    for name in ("int32", "line", "netstring"):
        wire = get_framing(name).encode(payload.replace(b"\n", b"") if name == "line" else payload)
        sink = decode(name, [wire[i : i + 7] for i in range(0, len(wire), 7)], max_frame=len(wire))
        assert len(sink.frames) == 1 and sink.errors == [], name


@pytest.mark.parametrize(
    "name, wire, frames, dropped",
    [
        ("line", b"one\ntwo", [b"one", b"two"], 0),
        ("int32", struct.pack(">I", 2) + b"ok" + struct.pack(">I", 9) + b"abc", [b"ok"], 3),
        ("int32", struct.pack(">I", 2) + b"ok\x00\x00", [b"ok"], 2),
        ("netstring", b"2:ok,5:ab", [b"ok"], 2),
        ("raw", b"bytes", [b"bytes"], 0),
    ],
)
def test_end_of_input_ends_a_line_and_drops_an_unfinished_frame(name, wire, frames, dropped):
    sink = Sink()
    decoder = get_framing(name).decoder(sink, 1024)
    decoder.dataReceived(wire)
    assert decoder.inputEnded() == dropped
    assert (sink.frames, sink.errors) == (frames, [])


def test_raw_delivers_each_chunk_as_it_came():
    sink = decode("raw", [b"ab", b"", b"cde"])
    assert sink.frames == [b"ab", b"", b"cde"]
    assert get_framing("raw").encode(b"\x00\n") == b"\x00\n"


@pytest.mark.parametrize(
    "name, wire",
    [
        ("int32", struct.pack(">I", 1025) + b"x" * 10),
        ("line", b"y" * 1025),
        ("line", b"z" * 2000 + b"\n"),
        ("netstring", b"1025:"),
        ("netstring", b"99999999999999999999:"),
    ],
)
def test_over_long_frame_is_reported_before_it_is_buffered(name, wire):
    sink = decode(name, [wire], max_frame=1024)
    assert sink.frames == []
    assert len(sink.errors) == 1
    assert isinstance(sink.errors[0], FrameTooLong)
    assert sink.errors[0].limit == 1024


def test_frame_of_exactly_max_frame_is_accepted():
    for name in ("int32", "line", "netstring"):
        payload = b"m" * 1024
        sink = decode(name, [get_framing(name).encode(payload)], max_frame=1024)
        assert sink.frames == [payload], name


@pytest.mark.parametrize("wire", [b"abc:", b"3:abcX", b"-1:", b":"])
def test_malformed_netstring(wire):
    sink = decode("netstring", [wire])
    assert sink.frames == []
    assert [type(e) for e in sink.errors] == [MalformedFrame]


def test_messages_before_garbage_are_still_delivered():
    sink = decode("netstring", [b"2:ok,junk"])
    assert sink.frames == [b"ok"]
    assert isinstance(sink.errors[0], MalformedFrame)


def test_line_cannot_carry_a_newline():
    with pytest.raises(UnframeableMessage):
        get_framing("line").encode(b"two\nlines")


def test_unknown_framing_names_the_choices():
    with pytest.raises(ValueError, match="int32, line, netstring, raw"):
        get_framing("morse")


def test_every_framing_is_registered():
    assert sorted(FRAMINGS) == ["int32", "line", "netstring", "raw"]
