"""
L{SentinelEndpoint}: a client endpoint that asks Redis Sentinel where a
master is before each connection (C{redis+sentinel://…}), so that the bus
follows a failover: its connections to the old master drop (or, demoted to
a replica, it answers C{READONLY}, and the bus drops them), and the next
connection goes to the master Sentinel names then.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from tcphub.bus.resp import RedisProtocol
from tcphub.errors import BusError

__all__ = ["SentinelEndpoint"]


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """
    Connects to the master C{name} that the first of C{sentinels}
    (C{(host, port)} pairs, tried in order) that answers names.  Each ask
    takes at most C{timeout} seconds on C{reactor}'s clock.  C{moved(host,
    port)} is called when the master is another than at the last connection.
    C{password} logs in to the Sentinels (their own C{requirepass}, not the master's).
    """

    def __init__(self, reactor: Any, sentinels: list[tuple[str, int]], name: str, timeout: float,
                 moved: Callable[[str, int], None], password: str | None = None) -> None:
        self._reactor = reactor
        self._password = password
        self._sentinels = sentinels
        self._name = name
        self._timeout = timeout
        self._moved = moved
        self._master: tuple[str, int] | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        return self._ask(0, []).addCallback(self._connect_to, factory)

    def _connect_to(self, master: tuple[str, int], factory: Any) -> Deferred[Any]:
        if master != self._master:
            self._master = master
            self._moved(*master)
        return HostnameEndpoint(self._reactor, master[0], master[1], timeout=self._timeout).connect(factory)

    def _ask(self, index: int, why: list[str]) -> Deferred[tuple[str, int]]:
        """The master's address, from sentinel C{index} or, failing it, the next."""
        if index == len(self._sentinels):
            return fail(BusError(f"no Sentinel knows where master {self._name!r} is: {'; '.join(why)}"))
        host, port = self._sentinels[index]
        answered: Deferred[Any] = Deferred()
        opened: list[RedisProtocol] = []

        def ready(protocol: RedisProtocol) -> None:
            opened.append(protocol)
            if answered.called:  # given up on already (the timeout)
                protocol.transport.loseConnection()
                return
            if self._password is not None:  # refused: Redis's reason, never the password, is the answer
                protocol.command(b"AUTH", self._password).addErrback(settle)
            protocol.command(b"SENTINEL", b"get-master-addr-by-name", self._name).addBoth(settle)

        def settle(result: Any) -> None:
            """The answer, or why there is none, unless the ask was given up on (timed out)."""
            if answered.called:
                return
            if isinstance(result, Failure):
                answered.errback(result)
            else:
                answered.callback(result)

        def close(result: Any) -> Any:
            for protocol in opened:
                protocol.transport.loseConnection()
            return result

        def address(reply: Any) -> tuple[str, int]:
            if not (isinstance(reply, list) and len(reply) == 2):
                raise BusError(f"it does not monitor a master named {self._name!r}")
            return reply[0].decode("ascii", "replace"), int(reply[1])

        def next_one(failure: Failure) -> Deferred[tuple[str, int]]:
            return self._ask(index + 1, [*why, f"{host}:{port}: {failure.getErrorMessage()}"])

        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        connectProtocol(endpoint, RedisProtocol(ready, lambda: None)).addErrback(settle)
        answered.addTimeout(self._timeout, self._reactor)
        return answered.addBoth(close).addCallback(address).addErrback(next_one)
