"""
The members' RFC 6455 framing without I/O (L{tcphub.web.frames}), checked
also against frames the C{websockets} package serializes, and the deadlines
many members share on one timer (L{tcphub.web.deadlines}).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from websockets.frames import Frame, Opcode

from tcphub.errors import FrameTooLong, MalformedFrame
from tcphub.web.frames import (
    CLOSE,
    MESSAGE,
    PART,
    PING,
    PONG,
    FrameParser,
    Violation,
    close_payload,
    encode,
    parse_close,
)
from tests.test_framing_properties import split
from tests.test_web_members import client_frame, fragment, server_frames

TEXT, BINARY = 0x1, 0x2


def events(data: bytes, parser: FrameParser | None = None) -> list:
    return list((parser or FrameParser(1 << 20, 128)).feed(data))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding_is_read_and_unmasked(size):
    payload = os.urandom(size)
    assert events(client_frame(BINARY, payload)) == [(MESSAGE, payload, False)]


def test_frames_cut_at_every_byte_give_the_same_events():
    data = (client_frame(TEXT, "h\u00e9llo".encode()) + client_frame(PING, b"p") + fragment(BINARY, b"ab")
            + client_frame(PONG) + fragment(0, b"cd") + fragment(0, b"ef", final=True)
            + client_frame(CLOSE, struct.pack("!H", 1000)))
    whole = events(data)
    assert whole == [(MESSAGE, "h\u00e9llo".encode(), True), (PING, b"p"), (PART, b"ab"), (PONG, b""),
                     (PART, b"cd"), (MESSAGE, b"abcdef", False), (CLOSE, struct.pack("!H", 1000))]
    parser = FrameParser(1 << 20, 128)
    assert [event for byte in range(len(data)) for event in parser.feed(data[byte:byte + 1])] == whole
    assert not parser.unfinished


def test_unfinished_is_part_of_a_frame_or_of_a_message():
    parser = FrameParser(1 << 20, 128)
    assert events(client_frame(TEXT, b"hello")[:3], parser) == [] and parser.unfinished
    assert events(client_frame(TEXT, b"hello")[3:], parser) == [(MESSAGE, b"hello", True)]
    assert not parser.unfinished
    assert events(fragment(TEXT, b"a"), parser) == [(PART, b"a")] and parser.unfinished


def unmasked(opcode: int, payload: bytes = b"") -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


@pytest.mark.parametrize("data, code, reason", [
    (bytes([0xC1]) + client_frame(TEXT, b"x")[1:], 1002, "reserved bit"),
    (unmasked(TEXT, b"x"), 1002, "not masked"),
    (client_frame(0x3), 1002, "reserved opcode 3"),
    (client_frame(0xB), 1002, "reserved opcode 11"),
    (fragment(PING), 1002, "control frame in fragments"),
    (client_frame(PING, b"x" * 126), 1002, "control frame of more than 125 bytes"),
    (client_frame(0, b"x"), 1002, "no message to continue"),
    (fragment(TEXT, b"a") + client_frame(TEXT, b"b"), 1002, "before the last one's final frame"),
    (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + b"mask", 1002, "most significant bit"),
    (client_frame(TEXT, b"\xff\xfe"), 1007, "not valid UTF-8"),
    (fragment(TEXT, b"\xc3") + fragment(0, b"(", final=True), 1007, "not valid UTF-8"),
])
def test_each_broken_rule_is_a_violation_with_its_close_code(data, code, reason):
    with pytest.raises(Violation) as raised:
        events(data)
    assert raised.value.code == code and isinstance(raised.value.error, MalformedFrame)
    assert reason in str(raised.value.error)


def test_a_utf8_character_cut_between_fragments_is_valid_text():
    snowman = "\u2603".encode()
    assert events(fragment(TEXT, snowman[:1]) + fragment(0, snowman[1:], final=True)) == [
        (PART, snowman[:1]), (MESSAGE, snowman, True)]


def test_a_message_too_long_is_refused_from_its_frame_header_before_its_payload_is_read():
    parser = FrameParser(100, 128)
    with pytest.raises(Violation) as raised:
        events(client_frame(BINARY, b"x" * 101)[:8], parser)  # the header and mask only
    assert raised.value.code == 1009 and isinstance(raised.value.error, FrameTooLong)
    parser = FrameParser(100, 128)
    assert events(fragment(BINARY, b"x" * 60), parser) == [(PART, b"x" * 60)]
    with pytest.raises(Violation, match="1009"):
        events(fragment(0, b"x" * 41, final=True)[:8], parser)  # 101 with the first fragment


def test_a_message_in_more_fragments_than_allowed_is_a_1008():
    parser = FrameParser(1 << 20, 3)
    assert len(events(fragment(TEXT) + fragment(0) * 2, parser)) == 3
    with pytest.raises(Violation) as raised:
        events(fragment(0, final=True), parser)
    assert raised.value.code == 1008 and "more than 3 frames" in str(raised.value.error)


def test_control_frames_may_come_between_a_messages_fragments():
    assert events(fragment(TEXT, b"a") + client_frame(PING, b"p") + fragment(0, b"b", final=True)) == [
        (PART, b"a"), (PING, b"p"), (MESSAGE, b"ab", True)]


@pytest.mark.parametrize("payload, parsed", [
    (b"", (None, "")),
    (struct.pack("!H", 1000), (1000, "")),
    (struct.pack("!H", 1001) + "bye \u2603".encode(), (1001, "bye \u2603")),
    (struct.pack("!H", 3000), (3000, "")),
    (struct.pack("!H", 4999), (4999, "")),
])
def test_a_close_frames_code_and_reason(payload, parsed):
    assert parse_close(payload) == parsed


@pytest.mark.parametrize("payload, code", [
    (b"\x03", 1002),
    (struct.pack("!H", 999), 1002),
    (struct.pack("!H", 1005), 1002),
    (struct.pack("!H", 1006), 1002),
    (struct.pack("!H", 1015), 1002),
    (struct.pack("!H", 5000), 1002),
    (struct.pack("!H", 1000) + b"\xff", 1007),
])
def test_a_close_frame_no_endpoint_may_send_is_a_violation(payload, code):
    with pytest.raises(Violation) as raised:
        parse_close(payload)
    assert raised.value.code == code


def test_a_close_reason_is_cut_to_123_bytes_at_a_characters_boundary():
    payload = close_payload(1012, "\u2603" * 50)  # 150 bytes of three-byte characters
    assert payload[:2] == struct.pack("!H", 1012) and payload[2:].decode() == "\u2603" * 41


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_the_servers_frames_are_final_and_unmasked(size):
    payload = b"y" * size
    frame = encode(BINARY, payload)
    assert frame[0] == 0x82 and not frame[1] & 0x80
    assert server_frames(frame) == [(BINARY, payload)]


# -- against a framing that is not ours: the websockets package's ------------------

_texts = st.text(max_size=40).map(lambda text: (True, text.encode("utf-8")))
_binaries = st.binary(max_size=300).map(lambda data: (False, data))


@st.composite
def _message_frames(draw) -> tuple[list[Frame], tuple]:
    """A message cut into 1 to 4 frames (a UTF-8 character may be cut too), with a ping among them."""
    text, payload = draw(st.one_of(_texts, _binaries))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    frames = [Frame(Opcode.TEXT if text else Opcode.BINARY, parts[0], fin=len(parts) == 1)]
    frames += [Frame(Opcode.CONT, part, fin=index == len(parts) - 1) for index, part in enumerate(parts[1:], 1)]
    ping = draw(st.binary(max_size=125))
    frames.insert(draw(st.integers(1, len(frames))), Frame(Opcode.PING, ping))
    events = [(PART, part) for part in parts[:-1]] + [(MESSAGE, payload, text)]
    events.insert(frames.index(next(frame for frame in frames if frame.opcode is Opcode.PING)), (PING, ping))
    return frames, events


@given(messages=st.lists(_message_frames(), max_size=8), cuts=st.lists(st.integers(0, 5_000), max_size=20))
def test_what_the_websockets_package_frames_is_read_whatever_the_reads(messages, cuts):
    wire = b"".join(frame.serialize(mask=True) for frames, _ in messages for frame in frames)
    parser = FrameParser(1 << 20, 128)
    got = [event for data in split(wire, cuts) for event in parser.feed(data)]
    assert got == [event for _, events in messages for event in events]
    assert not parser.unfinished
