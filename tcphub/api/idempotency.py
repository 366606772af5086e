"""
Publishes made once per idempotency key within a window: L{LocalOnce} on
one hub, L{RedisOnce} across the hubs joined through Redis (C{SET NX}).
A key is first claimed (pending), then holds the first result; a request
with a key that is pending is told so (409), one with a key that is done
gets the first result again, and nothing is delivered twice.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

__all__ = ["DONE", "MAX_KEY", "NEW", "PENDING", "LocalOnce", "Once", "RedisOnce"]

NEW: Final = "new"
"""The key was free: this request makes the publish."""
PENDING: Final = "pending"
"""Another request with the key is being made now."""
DONE: Final = "done"
"""The key was used: its first result comes with it."""
MAX_KEY: Final = 256
"""The longest idempotency key taken, in characters."""
_PENDING_VALUE: Final = b"pending"


class Once(Protocol):
    def claim(self, key: str) -> Deferred[tuple[str, Any]]:
        """C{(NEW, None)}, C{(PENDING, None)} or C{(DONE, first result)}."""

    def complete(self, key: str, result: Any) -> None:
        """The publish of C{key} is made: C{result} is its answer from now on."""

    def abandon(self, key: str) -> None:
        """The publish of C{key} failed: the key is free again."""


class LocalOnce:
    """Keys in memory for C{window} seconds on C{clock}, at most C{max_keys}
    (the oldest go first: a key is then usable again before its window ends)."""

    def __init__(self, window: float, clock: IReactorTime, max_keys: int = 100_000) -> None:
        self.window = window
        self._clock = clock
        self._max = max_keys
        self._keys: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def claim(self, key: str) -> Deferred[tuple[str, Any]]:
        now = self._clock.seconds()
        while self._keys:  # the expired go first (they are in the order claimed)
            oldest, (expires, _) = next(iter(self._keys.items()))
            if expires > now and len(self._keys) < self._max:
                break
            del self._keys[oldest]
        held = self._keys.get(key)
        if held is None:
            self._keys[key] = (now + self.window, _PENDING_VALUE)
            return succeed((NEW, None))
        result = held[1]
        return succeed((PENDING, None) if result is _PENDING_VALUE else (DONE, result))

    def complete(self, key: str, result: Any) -> None:
        held = self._keys.get(key)
        if held is not None:
            self._keys[key] = (held[0], result)

    def abandon(self, key: str) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)


class RedisOnce:
    """Keys in the Redis the hubs are joined through (C{bus}, a
    L{tcphub.bus.redis.RedisBus}), for C{window} seconds: two hubs given one
    key publish once."""

    def __init__(self, bus: Any, window: float) -> None:
        self._bus = bus
        self.window = window

    def claim(self, key: str) -> Deferred[tuple[str, Any]]:
        name = self._bus.key("once", key)
        milliseconds = int(self.window * 1000)

        def decide(reply: Any) -> Any:
            if reply is not None:
                return (NEW, None)
            return self._bus.execute(b"GET", name).addCallback(held)

        def held(value: bytes | None) -> tuple[str, Any]:
            if value is None:  # gone between the two commands: its window ended
                return (PENDING, None)
            if value == _PENDING_VALUE:
                return (PENDING, None)
            return (DONE, json.loads(value))

        claimed: Deferred[tuple[str, Any]] = self._bus.execute(b"SET", name, _PENDING_VALUE, b"NX", b"PX",
                                                               milliseconds).addCallback(decide)
        return claimed

    def complete(self, key: str, result: Any) -> None:
        self._bus.execute(b"SET", self._bus.key("once", key), json.dumps(result), b"XX", b"KEEPTTL").addErrback(
            lambda _: None)

    def abandon(self, key: str) -> None:
        self._bus.execute(b"DEL", self._bus.key("once", key)).addErrback(lambda _: None)
