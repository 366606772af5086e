"""The wire format: JSON text envelopes, binary envelopes, and what is invalid."""

from __future__ import annotations

import json
import struct

import pytest

from tcphub.ws.envelope import Envelope, decode, encode
from tcphub.errors import InvalidMessage


def test_text_envelope_round_trip_and_wire_format():
    payload, is_binary = encode(Envelope("chat.message", {"text": "héllo"}, id="r-1"))
    assert not is_binary
    assert json.loads(payload) == {"path": "chat.message", "data": {"text": "héllo"}, "id": "r-1"}
    assert decode(payload, False) == Envelope("chat.message", {"text": "héllo"}, "r-1")


def test_binary_envelope_round_trip_and_wire_format():
    data = bytes(range(256))
    payload, is_binary = encode(Envelope("file.chunk", data))
    assert is_binary
    (length,) = struct.unpack(">I", payload[:4])
    assert json.loads(payload[4 : 4 + length]) == {"path": "file.chunk"}
    assert payload[4 + length :] == data
    assert decode(payload, True) == Envelope("file.chunk", data)


def test_data_json_cannot_carry_is_refused_when_sending():
    with pytest.raises(TypeError):
        encode(Envelope("x", object()))
    with pytest.raises(ValueError):
        encode(Envelope("x", float("nan")))
    with pytest.raises(ValueError):
        encode(Envelope("", 1))


@pytest.mark.parametrize(
    "payload, is_binary, problem",
    [
        (b"not json", False, "not valid JSON"),
        (b"[1, 2]", False, "not a JSON object"),
        (b'{"data": 1}', False, "without a path"),
        (b'{"path": "", "data": 1}', False, "without a path"),
        (b'{"path": 5}', False, "without a path"),
        (b'{"path": "a", "id": 5}', False, "id must be a string"),
        (b"\xff\xfe", False, "not valid JSON"),
        (b"\x00\x00", True, "shorter than its 4-byte header"),
        (b"\x00\x00\x00\x09{}", True, "longer than the message"),
        (b"\x00\x00\x00\x02{}tail", True, "without a path"),
    ],
)
def test_invalid_messages_say_what_is_wrong(payload, is_binary, problem):
    with pytest.raises(InvalidMessage, match=problem):
        decode(payload, is_binary)


def test_json_nested_too_deeply_is_an_invalid_message():
    deep = b'{"path": "a", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidMessage, match="nested too deeply"):
        decode(deep, False)


def test_a_path_past_the_bounds_is_an_invalid_message():
    from tcphub.ws.envelope import MAX_PATH_LENGTH, MAX_PATH_SEGMENTS

    long = json.dumps({"path": "x" * (MAX_PATH_LENGTH + 1)}).encode()
    many = json.dumps({"path": ".".join(["s"] * (MAX_PATH_SEGMENTS + 1))}).encode()
    for payload in (long, many):
        with pytest.raises(InvalidMessage, match="passes the bound"):
            decode(payload, False)
    at_bound = ".".join(["s"] * MAX_PATH_SEGMENTS)
    assert decode(json.dumps({"path": at_bound}).encode(), False).path == at_bound
