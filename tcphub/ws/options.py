"""
L{HandlerOptions}: every setting of a L{WebSocketHandler}, checked once,
frozen, and read by the handler, its connections and its send queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, FrozenSet, Mapping, Tuple, Union

from tcphub import _checks
from tcphub._version import version
from tcphub.ws.envelope import Codec, PathDataCodec
from tcphub.ws.reconnect import DEFAULT_JITTER, RetryPolicy, backoff_policy, check_backoff

__all__ = ["HandlerOptions", "Headers", "parse_proxy"]

Headers = Union[Mapping[str, str], Callable[[], Any]]
"""Extra handshake headers: a mapping, or a callable returning one (or a
Deferred of one), called before every attempt (a fresh token each time)."""


def parse_proxy(proxy: str) -> tuple[str, int]:
    """C{(host, port)} of a C{host:port} proxy (C{[::1]:3128} for IPv6);
    raise L{ValueError} for anything else."""
    host, _, port = proxy.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"proxy takes host:port, not {proxy!r}")
    return host.strip("[]"), int(port)


def _default_protocol() -> type:
    from tcphub.ws.protocol import HandlerProtocol

    return HandlerProtocol


@dataclass(frozen=True)
class HandlerOptions:
    """
    The settings of a handler, each checked when the object is made (a
    L{ValueError} or L{TypeError} that names it).  Times are in seconds, on
    the handler's clock; sizes in bytes.
    """

    reconnect: bool = True
    """Reconnect when a connection ends (else the first end is final)."""
    max_retries: int | None = 5
    """Retries (rounds of the URLs) in a row before giving up; None: never.
    0 without C{reconnect}."""
    backoff: str | RetryPolicy = "exponential"
    """C{linear}, C{exponential}, or a policy: attempt number -> delay."""
    ping_interval: float = 30.0
    """A ping this often while open (0: none)."""
    ping_timeout: float | None = None
    """A pong must come within this; None: the interval, at most 10 s."""
    initial_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = DEFAULT_JITTER
    open_timeout: float = 10.0
    """TCP connect plus the opening handshake."""
    close_timeout: float = 5.0
    """The closing handshake, after which TCP is dropped."""
    min_uptime: float = 5.0
    """A connection open this long resets the retry count."""
    fatal_close_codes: FrozenSet[int] = frozenset()
    """Close codes from the server that end reconnecting."""
    max_concurrent_handlers: int = 1000
    max_message_size: int = 1024 * 1024
    """Incoming; larger closes with 1009."""
    max_send_size: int | None = None
    max_queue: int = 1000
    """Messages queued while disconnected or while the write buffer is full."""
    max_queue_bytes: int = 16 * 1024 * 1024
    request_timeout: float = 30.0
    error_path: str | None = None
    """A reply on this path errbacks its request with L{RequestRefused}
    (C{"hub.error"} for a tcphub hub in C{--mode hub}); None: every reply
    fires its request with its data."""
    compression: bool = True
    """Offer permessage-deflate."""
    headers: Headers | None = None
    subprotocols: Tuple[str, ...] = ()
    origin: str | None = None
    user_agent: str = field(default_factory=lambda: f"tcphub/{version()}")
    proxy: str | None = None
    """An HTTP proxy, C{host:port}, for ws:// (HTTP CONNECT)."""
    codec: Codec = field(default_factory=PathDataCodec)
    """How messages map to envelopes (see L{tcphub.ws.envelope.Codec})."""
    tls_options: Any = None
    """C{IOpenSSLClientConnectionCreator} for wss:// (e.g. a private CA)."""
    protocol: type = field(default_factory=_default_protocol)
    """The L{HandlerProtocol} subclass each connection runs."""

    def __post_init__(self) -> None:
        _checks.flag("reconnect", self.reconnect)
        _checks.count_or_none("max_retries", self.max_retries, minimum=0)
        if not self.reconnect:
            object.__setattr__(self, "max_retries", 0)
        _checks.number("ping_interval", self.ping_interval, minimum=0)
        if self.ping_timeout is None:
            object.__setattr__(self, "ping_timeout", min(self.ping_interval, 10.0))
        else:
            _checks.number("ping_timeout", self.ping_timeout, above=0)
        for name in ("open_timeout", "close_timeout", "request_timeout"):
            _checks.number(name, getattr(self, name), above=0)
        _checks.number("min_uptime", self.min_uptime, minimum=0)
        codes = frozenset(self.fatal_close_codes)
        for code in codes:
            _checks.number("fatal_close_codes", code, minimum=1000, maximum=4999, integer=True)
        object.__setattr__(self, "fatal_close_codes", codes)
        _checks.count("max_concurrent_handlers", self.max_concurrent_handlers)
        _checks.count("max_message_size", self.max_message_size)
        _checks.count_or_none("max_send_size", self.max_send_size)
        _checks.count("max_queue", self.max_queue, minimum=0)
        _checks.count("max_queue_bytes", self.max_queue_bytes, minimum=0)
        _checks.flag("compression", self.compression)
        if self.headers is not None and not (isinstance(self.headers, Mapping) or callable(self.headers)):
            raise TypeError(f"headers takes a mapping or a callable returning one, not {self.headers!r:.80}")
        if isinstance(self.subprotocols, str):
            raise TypeError(f"subprotocols takes a collection of names, not one: [{self.subprotocols!r}]")
        subprotocols = tuple(self.subprotocols)
        if any(not isinstance(name, str) or not name for name in subprotocols):
            raise ValueError(f"subprotocols takes names, not {subprotocols!r:.80}")
        object.__setattr__(self, "subprotocols", subprotocols)
        if self.proxy is not None:
            parse_proxy(self.proxy)
        codec = self.codec
        if not (callable(getattr(codec, "decode", None)) and callable(getattr(codec, "encode", None))):
            raise TypeError(f"codec takes an object with decode() and encode(), not {codec!r:.80}")
        check_backoff(self.initial_delay, self.max_delay, self.jitter)
        self.retry_policy()

    def retry_policy(self) -> RetryPolicy:
        """The backoff policy these options name."""
        return backoff_policy(self.backoff, initial_delay=self.initial_delay,
                              max_delay=self.max_delay, jitter=self.jitter)

    @property
    def effective_ping_timeout(self) -> float:
        """C{ping_timeout}, filled in."""
        assert self.ping_timeout is not None
        return self.ping_timeout
