"""
L{Connector}: where a handler's connection attempts go, and what a refused
handshake means.  One endpoint per URL (TCP, TLS for wss://, through an
HTTP proxy, with fresh headers before each attempt), tried in turn (a
standby server takes over at once); a redirect replaces its URL; a
C{Retry-After} sets the next delay; a client error is final.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

from autobahn.websocket.util import parse_url
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from zope.interface import implementer

from tcphub.errors import HandshakeRejected
from tcphub.ws.options import HandlerOptions, parse_proxy
from tcphub.ws.protocol import HandlerFactory, HeadersEndpoint

__all__ = ["MAX_REDIRECTS", "Connector", "Refusal", "check_fit", "retry_after"]

MAX_REDIRECTS = 3
"""Redirects followed in a row before a redirect is a final L{HandshakeRejected}."""
# Refused handshakes that retrying may cure: timeout, rate limit (the rest of 4xx are final).
_RETRIED_STATUSES = frozenset({408, 429})
_REDIRECTS = frozenset({301, 302, 307, 308})
_WS_SCHEMES = {"http": "ws", "https": "wss"}


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from C{Retry-After}: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class Refusal:
    """What to do about a refused handshake."""

    final: bool
    """Give up: retrying will not change the answer."""
    delay: float | None = None
    """Retry after this many seconds instead of the backoff's delay."""
    redirected_to: str | None = None
    """The URL now tried in place of the refusing one."""
    unfollowed: str | None = None
    """A redirect that could not be followed, and why."""


def check_fit(url: str, secure: bool, options: HandlerOptions) -> None:
    """Raise L{ValueError} if C{url} (wss:// if C{secure}) does not fit the
    options: C{tls_options} without wss://, or a proxy with it."""
    if options.tls_options is not None and not secure:
        raise ValueError(f"tls_options is given, but {url!r} is not a wss:// URL")
    if options.proxy is not None and secure:
        raise ValueError("a proxy is not supported with wss:// yet")


def endpoint_for(url: str, options: HandlerOptions, factory: HandlerFactory, reactor: Any) -> IStreamClientEndpoint:
    """Where the connections to C{url} go: TCP (TLS for wss://), through the
    proxy if any, with fresh headers before each attempt if asked.  Raises
    L{ValueError} for a URL that is not a WebSocket URL or does not fit the
    options."""
    try:
        secure, host, port, _, _, _ = parse_url(url)
    except Exception as error:
        raise ValueError(f"not a WebSocket URL: {url!r} ({error})") from None
    check_fit(url, secure, options)
    if options.proxy is not None:
        host, port = parse_proxy(options.proxy)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=options.open_timeout)
    if secure:
        endpoint = wrapClientTLS(options.tls_options or optionsForClientTLS(host), endpoint)
    if callable(options.headers):
        endpoint = HeadersEndpoint(endpoint, options.headers, factory)
    return endpoint


@implementer(IStreamClientEndpoint)
class Connector:
    """
    An endpoint whose every C{connect} goes to the next of C{urls}, with the
    factory aimed at it; C{aimed(url)} is told which.  L{refused} says what
    a refused handshake means and follows redirects.
    """

    def __init__(self, urls: list[str], options: HandlerOptions, factory: HandlerFactory, reactor: Any,
                 aimed: Callable[[str], None]) -> None:
        self._options = options
        self._reactor = reactor
        self.factory = factory
        self._targets = [(endpoint_for(url, options, factory, reactor), url) for url in urls]
        self._aimed = aimed
        self._next = 0
        self._redirects = 0

    def __len__(self) -> int:
        return len(self._targets)

    def connect(self, factory: Any) -> Deferred[Any]:
        endpoint, url = self._targets[self._next]
        self._next = (self._next + 1) % len(self._targets)
        self.factory.aim(url)
        self._aimed(url)
        return endpoint.connect(factory)

    def opened(self) -> None:
        """A connection opened: redirects count from zero again."""
        self._redirects = 0

    def refused(self, url: str, rejection: HandshakeRejected, now: float) -> Refusal:
        """What the refusal of the handshake to C{url} means: a redirect
        (at most L{MAX_REDIRECTS} in a row) is followed at once; a client
        error (4xx but 408 and 429) or a redirect too many is final; 429
        and 503 may say when to come back (C{Retry-After}, at most
        C{max_delay}); the rest is retried like a network error."""
        status = rejection.status
        if status in _REDIRECTS and rejection.location and self._redirects < MAX_REDIRECTS:
            parts = urlsplit(urljoin(url, rejection.location))
            target = urlunsplit(parts._replace(scheme=_WS_SCHEMES.get(parts.scheme, parts.scheme)))
            try:
                endpoint = endpoint_for(target, self._options, self.factory, self._reactor)
            except ValueError as error:
                return Refusal(final=True, unfollowed=f"{target}: {error}")
            for index, (_, each) in enumerate(self._targets):
                if each == url:
                    self._targets[index] = (endpoint, target)
                    self._next = index
            self._redirects += 1
            return Refusal(final=False, delay=0.0, redirected_to=target)
        if 300 <= status < 500 and status not in _RETRIED_STATUSES:
            return Refusal(final=True)
        seconds = retry_after(rejection.headers.get("retry-after"), now)
        return Refusal(final=False, delay=None if seconds is None else min(seconds, self._options.max_delay))
