"""
What goes over the bus, and how it is written: one L{BusMessage} per
broadcast or send a hub makes, tagged with the node that made it (a node
drops its own when they come back).  Pure: no I/O.

The encoding starts with a NUL byte and a version, then a JSON header line,
then the payload as it is: no payload can look like a number to a client
that guesses types, and any bytes pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from tcphub.errors import BusError

__all__ = ["BROADCAST", "DISCONNECT", "HANDED", "NOTICE", "SEND", "TAKE", "TRANSPORTS", "BusMessage", "decode",
           "encode"]

TRANSPORTS: Final = ("pubsub", "streams")
"""How the messages cross Redis: a pub/sub channel, or a Redis Stream."""

BROADCAST: Final = "b"
"""To every client (of C{room}, if set) but those in C{exclude}."""
NOTICE: Final = "n"
"""As L{BROADCAST}, but not numbered or kept in the room's history (who joined, who left)."""
SEND: Final = "s"
"""To the one client C{target}, on whichever node holds it."""
DISCONNECT: Final = "d"
"""Close the client C{target}, or (C{target} None) every client of the user the payload names."""
TAKE: Final = "h"
"""To every node: hand the live session whose id has the digest in the
payload over to the store, for the node that asks (a member back there)."""
HANDED: Final = "H"
"""To the node C{target}, which sent a L{TAKE}: the digest, a space, and
C{1} (the session is in the store now) or C{0} (it is not live here)."""

_MAGIC: Final = b"\x00th1\n"


@dataclass(frozen=True)
class BusMessage:
    node: str
    """The node that published it."""
    kind: str
    """L{BROADCAST}, L{NOTICE}, L{SEND}, L{DISCONNECT}, L{TAKE} or L{HANDED}."""
    payload: bytes
    room: str | None = None
    exclude: tuple[str, ...] = ()
    target: str | None = None
    instance: str | None = None
    """The process that published it (on a stream: a node's id outlives its processes)."""
    seq: int | None = None
    """Its number among the process's messages (1, 2, ...), on a stream: a
    reader drops one it has had (a publish sent again after a lost reply),
    and counts those a gap shows it never had."""


def encode(message: BusMessage) -> bytes:
    header: dict[str, object] = {"n": message.node, "k": message.kind}
    if message.room is not None:
        header["r"] = message.room
    if message.exclude:
        header["x"] = list(message.exclude)
    if message.target is not None:
        header["t"] = message.target
    if message.instance is not None:
        header["i"], header["q"] = message.instance, message.seq
    return _MAGIC + json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + message.payload


def decode(data: bytes) -> BusMessage:
    """Raise L{BusError} for what no tcphub wrote."""
    if not data.startswith(_MAGIC):
        raise BusError(f"not a tcphub bus message: {data[:20]!r}")
    end = data.find(b"\n", len(_MAGIC))
    if end < 0:
        raise BusError("a bus message without its header line")
    try:
        header = json.loads(data[len(_MAGIC):end])
        node, kind = header["n"], header["k"]
        room, exclude, target = header.get("r"), tuple(header.get("x", ())), header.get("t")
        instance, seq = header.get("i"), header.get("q")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BusError(f"a bus message with a bad header: {error}") from None
    if kind not in (BROADCAST, NOTICE, SEND, DISCONNECT, TAKE, HANDED) or not isinstance(node, str) or (
            kind in (SEND, HANDED) and not isinstance(target, str)) or (
            instance is not None and (not isinstance(instance, str) or type(seq) is not int)):
        raise BusError(f"a bus message with a bad header: {header!r:.100}")
    return BusMessage(node=node, kind=kind, payload=data[end + 1:], room=room, exclude=exclude, target=target,
                      instance=instance, seq=seq)
