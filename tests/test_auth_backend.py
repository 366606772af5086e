"""
--auth-url: a real HTTP backend, run in the test on 127.0.0.1, decides who
a member is; the hub (in memory, on a Clock for its deadlines) asks it over
real sockets, and fails closed when it is slow, down, or answers garbage.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tcphub.hub.auth_backend import HttpAuthenticator
from tcphub.hub.structured import StructuredProtocol
from tests.test_structured import said, send


class Backend(Resource):
    """Answers by the token: each a case the hub must survive."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[dict] = []
        self.held: list = []

    def render_POST(self, request):
        question = json.loads(request.content.read())
        self.asked.append({**question, "content-type": request.getHeader(b"content-type")})
        request.setHeader(b"content-type", b"application/json")
        answers = {
            "good": (200, {"user": "dave", "name": "Dave", "rooms": ["ops-*"]}),
            "bad": (401, {"reason": "no such token"}),
            "banned": (403, {}),
            "teapot": (500, {}),
        }
        token = question["token"]
        if token == "slow":
            self.held.append(request)
            return NOT_DONE_YET
        if token == "garbage":
            return b"<html>not json"
        if token == "huge":
            return b'{"user": "' + b"x" * (100 * 1024) + b'"}'
        status, answer = answers[token]
        request.setResponseCode(status)
        return json.dumps(answer).encode()


@pytest.fixture
def backend():
    resource = Backend()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/auth"
    yield resource
    for request in resource.held:
        if not request.finished and not request._disconnected:
            request.finish()
    pytest_twisted.blockon(port.stopListening())


def asking(hub, url: str, timeout: float = 1.0) -> list:
    """The hub's auth is the backend; returns the checks made, each a
    Deferred that fires (with None) once the member has its answer."""
    checks: list = []

    class Watched(HttpAuthenticator):
        def authenticate(self, token, peer):
            asked = super().authenticate(token, peer)
            answered: Deferred = Deferred()
            checks.append(answered)
            asked.addBoth(lambda result: (reactor.callLater(0, answered.callback, None), result)[1])
            return asked

    hub.factory.auth = Watched(url, timeout=timeout, clock=hub.clock, reactor=reactor)
    return checks


@pytest_twisted.inlineCallbacks
def test_the_backend_says_who_the_member_is_and_what_rooms(hub_factory, backend):
    hub = hub_factory(protocol=StructuredProtocol)
    checks = asking(hub, backend.url)
    client, transport = hub.connect("127.0.0.9")
    send(client, "hub.auth", {"token": "good"})
    yield checks[0]
    assert said(transport) == [{"path": "hub.auth", "id": "1", "data": {
        "user": "dave", "name": "Dave", "session": client.session}}]
    [question] = backend.asked
    assert question["token"] == "good" and question["peer"].startswith("127.0.0.9:")
    assert question["content-type"] == b"application/json"
    send(client, "hub.join", {"room": "sales"})
    assert said(transport)[0]["data"]["code"] == "forbidden"


@pytest.mark.parametrize("token, code, reason", [
    ("bad", "invalid_token", "no such token"),
    ("banned", "forbidden", "refused by the auth backend"),
    ("teapot", "auth_unavailable", "the auth backend answered HTTP 500"),
    ("garbage", "auth_unavailable", "the auth backend's answer is not a JSON object"),
    ("huge", "auth_unavailable", "the auth backend answered more than 65536 bytes"),
])
@pytest_twisted.inlineCallbacks
def test_a_refusal_or_a_bad_answer_refuses_the_member(hub_factory, backend, token, code, reason):
    hub = hub_factory(protocol=StructuredProtocol)
    checks = asking(hub, backend.url)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token})
    yield checks[0]
    [refusal] = said(transport)
    assert (refusal["data"]["code"], refusal["data"]["reason"]) == (code, reason)
    assert transport.disconnecting and hub.factory.get_metrics().auth_failed == 1


@pytest_twisted.inlineCallbacks
def test_a_backend_that_does_not_answer_in_time_refuses_on_the_hubs_clock(hub_factory, backend):
    hub = hub_factory(protocol=StructuredProtocol)
    checks = asking(hub, backend.url, timeout=1.0)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": "slow"})
    while not backend.held:  # the backend has the question: now only the hub's clock can end it
        yield _turn()
    gone = backend.held[0].notifyFinish()
    hub.clock.advance(0.999)
    assert transport.value() == b""
    hub.clock.advance(0.001)
    yield checks[0]
    assert said(transport)[0]["data"]["reason"] == "the auth backend cannot be asked: no answer within 1 s"
    yield gone.addErrback(lambda failure: None)  # the hub hung up on it


@pytest_twisted.inlineCallbacks
def test_a_backend_that_is_down_refuses(hub_factory):
    from tests.test_websocket import refused_port

    hub = hub_factory(protocol=StructuredProtocol)
    checks = asking(hub, f"http://127.0.0.1:{refused_port()}/auth")
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": "good"})
    yield checks[0]
    refusal = said(transport)[0]["data"]
    assert refusal["code"] == "auth_unavailable" and "ConnectionRefusedError" in refusal["reason"]


def test_the_url_must_be_http_and_is_never_shown_with_its_secrets():
    from twisted.internet.task import Clock

    with pytest.raises(ValueError, match=r"not 'ftp://u:\*\*\*@h/'"):
        HttpAuthenticator("ftp://u:pw@h/", clock=Clock(), reactor=reactor)


def _turn() -> Deferred:
    turned: Deferred = Deferred()
    reactor.callLater(0, turned.callback, None)
    return turned
