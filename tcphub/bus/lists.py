"""
L{MemberLists}: what a node tells Redis of its rooms' members, kept apart
from its I/O.  Pure: no Twisted, no sockets.

Each room a node has members in has a hash on Redis,
C{PREFIX:DB:members:NODE-ROOM} (node ids have no dash, so the name is
unambiguous), with a field per member: its client id, and as value what the
room's list shows of it (L{HubProtocol.presence}, as JSON; empty when it
shows nothing).  Every node reads the others' hashes for C{cluster_members}
and C{cluster_presence} (the chat's C{/who}, the structured C{hub.who}).

Each heartbeat writes only the members whose line changed since the last
one (a join, a leave, a C{presenceChanged}), in one script (L{SCRIPT}) that
also renews every hash's time to live: a room of 10,000 where one member
changed costs one line, not 10,000.  The lists are written whole when Redis
may not have them (a new connection, a heartbeat later than the time to
live), which L{MemberLists.rewrite} asks for.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Mapping

from tcphub.bus.resp import bulk

__all__ = ["MemberLists", "SCRIPT"]

SCRIPT = b"""
local at = 2
for _, key in ipairs(KEYS) do
  local op, sets, dels = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  at = at + 3
  if op ~= '~' then redis.call('DEL', key) end
  local last = at + 2 * sets - 1
  for from = at, last, 1000 do
    redis.call('HSET', key, unpack(ARGV, from, math.min(from + 999, last)))
  end
  at = last + 1
  last = at + dels - 1
  for from = at, last, 1000 do
    redis.call('HDEL', key, unpack(ARGV, from, math.min(from + 999, last)))
  end
  at = last + 1
  if op ~= '-' then redis.call('PEXPIRE', key, ARGV[1]) end
end
return #KEYS
"""
"""KEYS: room hashes; ARGV[1]: their time to live (ms); then, for each key
in turn, its operation (C{=} written whole, C{~} changed lines, C{-} gone),
how many fields to set and to remove, the fields and values to set, the
fields to remove.  C{unpack} takes at most 1,000 at a time (Lua's stack)."""

MAX_ARGUMENTS = 100_000
"""The most keys and arguments in one script call (Redis takes up to 1,048,576): a
whole rewrite of larger lists is cut into several calls, which the bus sends
within one transaction."""

_WHOLE, _CHANGED, _GONE = bulk(b"="), bulk(b"~"), bulk(b"-")
_NONE = bulk(b"")
_NUMBERS = [bulk(b"%d" % n) for n in range(256)]
_UNCHANGED = (_CHANGED, _NUMBERS[0], _NUMBERS[0])
_ENCODER = json.JSONEncoder(ensure_ascii=False)

Lines = Callable[[str, "Iterable[str] | None"], Mapping[str, object]]
"""The hub's view of a room's members here: C{lines(room, ids)} maps each
member of C{room} (or each of C{ids} that is one) to what its list shows of
it (None: nothing), in the order they joined."""


class MemberLists:
    """
    Which lines of a node's room lists changed since the last heartbeat, and
    the commands that tell Redis.  C{key(room)} names a room's hash.
    """

    def __init__(self, key: Callable[[str], bytes]) -> None:
        self._key = key
        self._changed: dict[str, dict[str, None]] | None = None
        """Members whose line changed since the last write, by room (None: every list is written whole)."""
        self._listed: dict[str, bytes] = {}
        """The rooms whose hash Redis has from this node, each with its key as RESP writes it."""

    def changed(self, room: str, client_id: str) -> None:
        """C{client_id} joined or left C{room}, or what its line shows changed."""
        changed = self._changed
        if changed is not None:
            changed.setdefault(room, {})[client_id] = None

    def rewrite(self) -> None:
        """Redis may not have the lists (a new connection, a late heartbeat):
        the next write is whole.  Nothing is noted meanwhile."""
        self._changed = None

    def keys(self) -> list[bytes]:
        """Every hash this node may have on Redis (to delete as it leaves)."""
        return [self._key(room) for room in self._listed]

    def commands(self, rooms: Mapping[str, int], lines: Lines, ttl_ms: int) -> list[bytes]:
        """The script calls (as RESP writes them) that bring Redis's lists to
        the node's C{rooms} (those with members) and renew them; the next
        write notes changes from here."""
        keys: list[bytes] = []
        args: list[bytes] = []
        calls: list[bytes] = []

        def flush() -> None:
            if keys:
                calls.append(b"".join([b"*%d\r\n" % (4 + len(keys) + len(args)), bulk(b"EVAL"), bulk(SCRIPT),
                                       bulk(b"%d" % len(keys)), *keys, bulk(b"%d" % ttl_ms), *args]))
                keys.clear()
                args.clear()

        def line(key: bytes, op: bytes, sets: list[bytes], dels: list[bytes]) -> None:
            """One hash's changes, in as many calls as they take (the first with C{op})."""
            if len(keys) + len(args) + 4 + len(sets) + len(dels) <= MAX_ARGUMENTS:  # the usual: it fits
                keys.append(key)
                args.extend((op, _number(len(sets) // 2), _number(len(dels)), *sets, *dels))
                return
            while True:
                space = max(0, MAX_ARGUMENTS - len(keys) - len(args) - 4)
                pairs = min(len(sets) // 2, space // 2)
                removed = min(len(dels), space - 2 * pairs)
                if keys and (MAX_ARGUMENTS - len(keys) - len(args) < 4 or (sets or dels) and not pairs + removed):
                    flush()  # no room left in this call
                    continue
                keys.append(key)
                args.extend((op, _number(pairs), _number(removed), *sets[:2 * pairs], *dels[:removed]))
                sets, dels, op = sets[2 * pairs:], dels[removed:], _CHANGED
                if not sets and not dels:
                    return
                flush()

        listed, changed = self._listed, self._changed
        self._changed = {}
        for room in [room for room in listed if room not in rooms]:
            line(listed.pop(room), _GONE, [], [])
        if changed is None:
            for room in rooms:
                listed[room] = key = bulk(self._key(room))
                line(key, _WHOLE, _encoded(lines(room, None)), [])
        else:
            for room, ids in changed.items():
                if room not in rooms:
                    continue  # gone from here: dropped above, or never written
                shown = lines(room, ids)
                gone = [bulk(client_id.encode("utf-8")) for client_id in ids if client_id not in shown]
                if room in listed:
                    line(listed[room], _CHANGED, _encoded(shown), gone)
                else:
                    listed[room] = key = bulk(self._key(room))
                    line(key, _WHOLE, _encoded(lines(room, None)), [])
            for room, key in listed.items():
                if room not in changed:
                    if len(keys) + len(args) + 4 > MAX_ARGUMENTS:
                        flush()
                    keys.append(key)
                    args.extend(_UNCHANGED)
        flush()
        return calls


def _number(n: int) -> bytes:
    return _NUMBERS[n] if n < 256 else bulk(b"%d" % n)


def _encoded(shown: Mapping[str, object]) -> list[bytes]:
    """Each member's field and value, as RESP writes them."""
    encode = _ENCODER.encode
    return [part for client_id, presence in shown.items() for part in (
        bulk(client_id.encode("utf-8")),
        _NONE if presence is None else bulk(encode(presence).encode("utf-8")))]
