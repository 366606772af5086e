"""Connector alone: fail-over in turn, redirects, Retry-After, and final refusals."""

from __future__ import annotations

import email.utils

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from tcphub import HandshakeRejected
from tcphub.ws.connector import MAX_REDIRECTS, Connector, retry_after
from tcphub.ws.options import HandlerOptions
from tcphub.ws.protocol import HandlerFactory


class Listener:
    """A ConnectionListener that is never told anything here."""


def make(urls: list[str], **options) -> tuple[Connector, MemoryReactorClock, list[str]]:
    reactor = MemoryReactorClock()
    settings = HandlerOptions(**options)
    factory = HandlerFactory(Listener(), settings, reactor, urls[0], reactor)  # type: ignore[arg-type]
    aimed: list[str] = []
    return Connector(urls, settings, factory, reactor, aimed.append), reactor, aimed


def refused(status: int, **headers: str) -> HandshakeRejected:
    return HandshakeRejected(status, "refused", {key.replace("_", "-"): value for key, value in headers.items()})


def test_each_attempt_goes_to_the_next_url_with_the_factory_aimed_at_it():
    connector, reactor, aimed = make(["ws://127.0.0.1:1/a", "ws://127.0.0.1:2/b"])
    for _ in range(3):
        connector.connect(Factory())
    assert aimed == ["ws://127.0.0.1:1/a", "ws://127.0.0.1:2/b", "ws://127.0.0.1:1/a"]
    assert [client[1] for client in reactor.tcpClients] == [1, 2, 1]
    assert connector.factory.resource == "/a" and len(connector) == 2


def test_a_redirect_replaces_its_url_and_is_tried_at_once_up_to_a_bound():
    connector, reactor, aimed = make(["ws://127.0.0.1:1/old"])
    url = "ws://127.0.0.1:1/old"
    for n in range(MAX_REDIRECTS):
        target = f"ws://127.0.0.1:{10 + n}/new"
        refusal = connector.refused(url, refused(301, location=target.replace("ws:", "http:")), now=0.0)
        assert (refusal.final, refusal.delay, refusal.redirected_to) == (False, 0.0, target)
        url = target
    connector.connect(Factory())
    assert aimed[-1] == url
    assert connector.refused(url, refused(302, location="http://127.0.0.1:99/"), now=0.0).final
    connector.opened()
    assert not connector.refused(url, refused(302, location="http://127.0.0.1:99/"), now=0.0).final


def test_a_redirect_that_cannot_be_followed_is_final_and_says_why():
    connector, _, _ = make(["ws://127.0.0.1:1/"])
    refusal = connector.refused("ws://127.0.0.1:1/", refused(301, location="ftp://elsewhere/"), now=0.0)
    assert refusal.final and refusal.unfollowed.startswith("ftp://elsewhere/: not a WebSocket URL")


@pytest.mark.parametrize("status, final", [(400, True), (401, True), (404, True), (300, True),
                                           (408, False), (429, False), (500, False), (503, False)])
def test_client_errors_are_final_and_the_rest_retried(status, final):
    connector, _, _ = make(["ws://127.0.0.1:1/"])
    assert connector.refused("ws://127.0.0.1:1/", refused(status), now=0.0).final is final


def test_retry_after_sets_the_delay_at_most_max_delay():
    connector, _, _ = make(["ws://127.0.0.1:1/"], max_delay=30.0)
    url = "ws://127.0.0.1:1/"
    assert connector.refused(url, refused(503, retry_after="7"), now=0.0).delay == 7.0
    assert connector.refused(url, refused(429, retry_after="3600"), now=0.0).delay == 30.0
    assert connector.refused(url, refused(503), now=0.0).delay is None


def test_retry_after_takes_seconds_or_an_http_date():
    assert retry_after("12", now=0.0) == 12.0
    assert retry_after(email.utils.formatdate(1000.0, usegmt=True), now=990.0) == 10.0
    assert retry_after(email.utils.formatdate(1000.0, usegmt=True), now=2000.0) == 0.0
    assert retry_after("soon", now=0.0) is None and retry_after(None, now=0.0) is None
