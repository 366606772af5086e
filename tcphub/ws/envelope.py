"""
The WebSocket handler's wire format: pure Python, no Twisted.

A text message is a JSON object::

    {"path": "chat.message", "data": <any JSON value>, "id": "<optional>"}

A binary message carries C{bytes} data::

    <4-byte big-endian length N><N bytes: UTF-8 JSON header {"path": ..., "id": ...}><payload>

C{path} is a non-empty string of at most L{MAX_PATH_LENGTH} characters and
L{MAX_PATH_SEGMENTS} dotted segments.  C{id} is optional: L{WebSocketHandler.request}
sets it, and a reply to a request carries the same C{id}.

That is L{PathDataCodec}, the default L{Codec}; a handler given another one
speaks a third-party service's own JSON (its messages still become
envelopes, with the same bounds on their paths).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from tcphub.errors import InvalidMessage

_HEADER_LENGTH = struct.Struct(">I")

MAX_PATH_LENGTH = 1024
"""The longest incoming path taken, in characters: a longer one is an L{InvalidMessage}."""
MAX_PATH_SEGMENTS = 64
"""The most segments an incoming path may have."""


@dataclass(frozen=True)
class Envelope:
    path: str
    data: Any
    id: str | None = None


class Codec(Protocol):
    """How messages and envelopes map to each other on the wire."""

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        """The envelope of one incoming message; raise L{InvalidMessage} saying what is wrong."""

    def encode(self, envelope: Envelope) -> tuple[bytes, bool]:
        """C{(payload, is_binary)} for one outgoing envelope; raise
        L{TypeError} or L{ValueError} for what the format cannot carry."""


class PathDataCodec:
    """The default codec: C{{"path", "data", "id"}} (see the module docstring)."""

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        return decode(payload, is_binary)

    def encode(self, envelope: Envelope) -> tuple[bytes, bool]:
        return encode(envelope)


def check_envelope(envelope: object) -> Envelope:
    """Return C{envelope} if a codec's result can be routed: an L{Envelope}
    with a bounded path and a string or no id; raise L{InvalidMessage}."""
    if not isinstance(envelope, Envelope):
        raise InvalidMessage(f"a codec returned {type(envelope).__name__}, not an Envelope")
    path = envelope.path
    if not isinstance(path, str) or not path:
        raise InvalidMessage(f"message without a path (a non-empty string): {path!r:.80}")
    if len(path) > MAX_PATH_LENGTH or path.count(".") >= MAX_PATH_SEGMENTS:
        raise InvalidMessage(
            f"message path of {len(path)} characters and {path.count('.') + 1} segments passes "
            f"the bound of {MAX_PATH_LENGTH} characters and {MAX_PATH_SEGMENTS} segments: "
            f"{_preview(path.encode('utf-8', 'replace'))}"
        )
    if envelope.id is not None and not isinstance(envelope.id, str):
        raise InvalidMessage(f"message id must be a string, not {envelope.id!r:.80}")
    return envelope


def encode(envelope: Envelope) -> tuple[bytes, bool]:
    """Return C{(payload, is_binary)}; raise TypeError/ValueError for data JSON cannot carry."""
    if not isinstance(envelope.path, str) or not envelope.path:
        raise ValueError(f"a message path is a non-empty string, not {envelope.path!r}")
    header: dict[str, Any] = {"path": envelope.path}
    if envelope.id is not None:
        header["id"] = envelope.id
    if isinstance(envelope.data, (bytes, bytearray, memoryview)):
        encoded = json.dumps(header, separators=(",", ":")).encode()
        return _HEADER_LENGTH.pack(len(encoded)) + encoded + bytes(envelope.data), True
    header["data"] = envelope.data
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), False


def decode(payload: bytes, is_binary: bool) -> Envelope:
    """Parse one incoming message; raise L{InvalidMessage} saying what is wrong."""
    if is_binary:
        if len(payload) < _HEADER_LENGTH.size:
            raise InvalidMessage("binary message shorter than its 4-byte header length")
        (length,) = _HEADER_LENGTH.unpack_from(payload)
        end = _HEADER_LENGTH.size + length
        if end > len(payload):
            raise InvalidMessage(f"binary message header of {length} bytes is longer than the message")
        header = _json_object(payload[_HEADER_LENGTH.size : end], "binary message header")
        data: Any = payload[end:]
    else:
        header = _json_object(payload, "text message")
        data = header.get("data")
    path = header.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidMessage(f"message without a path (a non-empty string): {_preview(payload)}")
    return check_envelope(Envelope(path=path, data=data, id=header.get("id")))


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidMessage(f"{what} is not valid JSON ({error}): {_preview(raw)}") from None
    except RecursionError:
        raise InvalidMessage(f"{what} is JSON nested too deeply to decode: {_preview(raw)}") from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"{what} is not a JSON object: {_preview(raw)}")
    return value


def _preview(raw: bytes, limit: int = 80) -> str:
    text = repr(bytes(raw[:limit]))
    return text + ("..." if len(raw) > limit else "")
