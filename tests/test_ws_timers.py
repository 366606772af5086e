"""
The WebSocket handler's deadlines in memory, without a server: a
MemoryReactorClock is both its reactor and its clock, a StringTransport its
connection, and the server's side of the handshake is written by hand.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from tcphub.testing import MemoryUpstream
from tcphub import (
    HandlerClosed,
    HandlerProtocol,
    HandlerState,
    InvalidMessage,
    NotConnected,
    RetryLimitReached,
    WebSocketHandler,
)


class Counting(HandlerProtocol):
    pings: list[float]

    def sendPing(self, payload=None):
        self.pings.append(self.factory.handler.clock.seconds())
        super().sendPing(payload)


class Link(MemoryUpstream):
    """One handler (with L{Counting} pings) and its in-memory connection."""

    def __init__(self, connect_to: str = "ws://127.0.0.1:9/", **options) -> None:
        Counting.pings = self.pings = []
        super().__init__(connect_to, protocol=Counting, **options)
        self.closes: list[tuple] = []
        self.ws.on("close", lambda context, code, reason: self.closes.append((code, reason)))

    def open(self) -> None:
        super().open()
        assert self.ws.get_status().connected

    def open_unchecked(self) -> None:
        MemoryUpstream.open(self)

    def finish(self) -> None:
        assert super().finish() == []


def _lost():
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    return Failure(ConnectionLost())


@pytest.mark.parametrize("interval", [0.25, 0.5, 1.5])
def test_pings_number_the_time_over_the_interval_for_any_interval(interval):
    link = Link(ping_interval=interval, ping_timeout=interval)
    link.open()
    for _ in range(40):
        link.reactor.advance(interval / 2)
        link.pong()
    assert link.pings == [interval * n for n in range(1, 21)]
    assert not link.transport.disconnecting
    link.finish()


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
def test_a_missing_pong_drops_the_connection_exactly_at_the_ping_timeout():
    link = Link(ping_interval=1.0, ping_timeout=0.5)
    link.open()
    link.reactor.advance(1.0)
    assert link.pings == [1.0]
    link.reactor.advance(0.25)
    assert not link.transport.disconnecting
    link.reactor.advance(0.25)
    assert link.transport.disconnecting
    link.protocol.connectionLost(_lost())
    assert link.closes == [(1006, "ping timeout: no pong within 0.5 s")]
    link.finish()


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
def test_the_open_timeout_is_exact():
    link = Link(open_timeout=0.5)
    link.reactor.advance(0.25)
    assert not link.transport.disconnecting
    link.reactor.advance(0.25)
    assert link.transport.disconnecting
    link.protocol.connectionLost(_lost())
    failures = []
    link.connected.addErrback(failures.append)
    link.reactor.advance(0)
    assert failures and failures[0].check(RetryLimitReached)
    assert "opening handshake timeout (0.5 s)" in str(failures[0].value)
    link.finish()


def test_the_close_timeout_is_exact():
    link = Link(ping_interval=0, close_timeout=0.75)
    link.open()
    link.ws.close()
    link.reactor.advance(0.5)
    assert not link.transport.disconnecting, "the server has 0.75 s to answer the close"
    link.reactor.advance(0.25)
    assert link.transport.disconnecting
    link.protocol.connectionLost(_lost())
    ((code, reason),) = link.closes
    assert (code, reason) == (1000, "closing handshake timeout (0.75 s)")
    link.finish()


def _failure_type(deferred) -> type:
    failures: list = []
    deferred.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0].type


def test_the_handler_lifecycle_is_one_explicit_state():
    idle = WebSocketHandler(reactor=MemoryReactorClock(), ping_interval=0)
    assert idle.state is HandlerState.IDLE
    assert _failure_type(idle.send("x", 1)) is NotConnected

    link = Link(ping_interval=0, reconnect=True, max_retries=None, initial_delay=1.0, jitter=0.0)
    ws = link.ws
    assert ws.state is HandlerState.CONNECTING
    with pytest.raises(RuntimeError, match="the handler is connecting"):
        ws.connect("ws://127.0.0.1:9/")
    link.open()
    assert ws.state is HandlerState.OPEN
    link.transport.loseConnection()
    link.protocol.connectionLost(_lost())
    assert ws.state is HandlerState.CONNECTING, "reconnecting"
    queued = ws.send("later", 1)
    assert ws.get_status().queued == 1 and not queued.called, "queued while reconnecting"
    closed = ws.close()
    link.reactor.advance(0)
    assert ws.state is HandlerState.CLOSED and closed.called
    assert _failure_type(queued) is HandlerClosed
    assert _failure_type(ws.send("after", 1)) is HandlerClosed
    assert ws.close() is not closed and ws.close().called, "closing again fires at once"

    again = ws.connect("ws://127.0.0.1:9/")
    assert ws.state is HandlerState.CONNECTING
    ws.close()
    link.reactor.advance(0)
    assert _failure_type(again) is HandlerClosed
    assert link.reactor.getDelayedCalls() == []


def test_a_handshake_that_completes_after_close_is_closed_at_once():
    link = Link(ping_interval=0)
    link.ws.close()
    assert link.ws.state is HandlerState.CLOSING
    link.open_unchecked()
    sent = link.transport.value().split(b"\r\n\r\n", 1)[1]
    assert sent[:1] == b"\x88", "a close frame (masked, as a client's are), at once"
    assert link.ws.state is not HandlerState.OPEN
    assert _failure_type(link.connected) is HandlerClosed
    link.transport.loseConnection()
    link.protocol.connectionLost(_lost())
    link.reactor.advance(0)
    assert link.ws.state is HandlerState.CLOSED
    assert link.reactor.getDelayedCalls() == []


@pytest.mark.logs_errors("the handler gives up, at error", RetryLimitReached)
def test_the_handler_gives_up_and_may_connect_again():
    link = Link(ping_interval=0)
    link.protocol.connectionLost(_lost())
    link.reactor.advance(0)
    assert link.ws.state is HandlerState.GIVEN_UP
    assert _failure_type(link.connected) is RetryLimitReached
    assert _failure_type(link.ws.send("x", 1)) is NotConnected
    again = link.ws.connect("ws://127.0.0.1:9/")
    assert link.ws.state is HandlerState.CONNECTING
    link.ws.close()
    link.reactor.advance(0)
    assert _failure_type(again) is HandlerClosed


def test_starting_the_service_of_a_handler_already_connecting_is_harmless():
    link = Link(ping_interval=0, url="ws://127.0.0.1:9/")
    link.ws.startService()  # e.g. a parent service started after connect()
    assert len(link.reactor.tcpClients) == 1 and link.ws.state is HandlerState.CONNECTING
    link.open()
    link.finish()


def test_the_close_event_of_a_users_close_sees_the_handler_closing():
    link = Link(ping_interval=0, reconnect=True, max_retries=None)
    link.open()
    states = []
    link.ws.on("close", lambda context, code, reason: states.append(link.ws.state))
    link.ws.close()
    link.transport.loseConnection()
    link.protocol.connectionLost(_lost())
    assert states == [HandlerState.CLOSING]
    link.finish()


def test_without_reconnect_a_send_before_the_first_open_is_not_queued():
    link = Link(ping_interval=0)
    assert _failure_type(link.ws.send("early", 1)) is NotConnected
    assert link.ws.get_status().queued == 0
    link.open()
    link.finish()


def test_cancelling_connect_stops_the_attempts():
    from twisted.internet.defer import CancelledError

    link = Link(ping_interval=0, reconnect=True, max_retries=None, jitter=0.0)
    link.transport.loseConnection()
    link.protocol.connectionLost(_lost())  # the first attempt failed: a retry is scheduled
    assert link.ws.state is HandlerState.CONNECTING
    link.connected.cancel()
    assert _failure_type(link.connected) is CancelledError
    link.reactor.advance(0)
    assert link.ws.state is HandlerState.CLOSED
    attempts = len(link.reactor.tcpClients)
    link.reactor.advance(60)
    assert len(link.reactor.tcpClients) == attempts, "no more attempts"
    assert link.reactor.getDelayedCalls() == []


def test_cancelling_a_queued_send_takes_it_out_of_the_queue():
    link = Link(ping_interval=0, reconnect=True, max_retries=None)
    first, second, third = (link.ws.send("q", n) for n in (1, 22, 333))
    assert link.ws.get_status().queued == 3
    second.cancel()
    second.addErrback(lambda failure: None)
    status = link.ws.get_status()
    assert status.queued == 2 and status.queued_bytes == sum(
        len(b'{"path":"q","data":%d}' % n) for n in (1, 333))
    link.open()
    assert first.called and third.called and link.ws.get_status().messages_sent == 2
    link.finish()


def test_cancelling_a_request_frees_it_at_once():
    link = Link(ping_interval=0)
    link.open()
    reply = link.ws.request("rpc", 1, timeout=30)
    assert link.ws.get_status().pending_requests == 1
    reply.cancel()
    reply.addErrback(lambda failure: None)
    assert link.ws.get_status().pending_requests == 0
    link.finish()


def test_a_plugged_codecs_invalid_messages_and_unbounded_paths_are_counted():
    from tests.test_websocket import TypePayload

    link = Link(ping_interval=0, codec=TypePayload())
    link.open()
    errors = []
    link.ws.on("error", lambda error, context: errors.append(error))
    for text in (b'{"no": "type"}', b'{"type": "' + b"a." * 70 + b'z"}'):
        # A server's text frame: unmasked, with a 16-bit length past 125 bytes.
        length = bytes([len(text)]) if len(text) < 126 else b"\x7e" + struct.pack(">H", len(text))
        link.protocol.dataReceived(b"\x81" + length + text)
    assert [type(error) for error in errors] == [InvalidMessage, InvalidMessage]
    assert "not a typed message" in str(errors[0]) and "passes the bound" in str(errors[1])
    assert link.ws.get_status().invalid_messages == 2
    link.finish()


def test_close_from_a_retry_callback_stops_at_once_and_schedules_nothing():
    """The retry event is emitted while the service decides its next delay:
    a stop from there ends it at once (Twisted's ClientService raised
    automat's re-entry error there on Twisted 26.10)."""
    link = Link(ping_interval=0, reconnect=True, max_retries=None, jitter=0.0)
    link.open()
    closed = []
    link.ws.on("retry", lambda attempt, delay, context: closed.append(link.ws.close()))
    link.transport.loseConnection()
    link.protocol.connectionLost(_lost())
    assert len(closed) == 1 and link.ws.state is HandlerState.CLOSED and closed[0].called
    attempts = len(link.reactor.tcpClients)
    link.reactor.advance(60)
    assert len(link.reactor.tcpClients) == attempts, "no more attempts"
    assert link.reactor.getDelayedCalls() == []


def test_an_error_callback_that_raises_is_logged_once_and_not_reported_to_itself(logged_errors):
    link = Link(ping_interval=0)
    link.open()
    calls = []

    def broken(error, context):
        calls.append(error)
        raise RuntimeError("error callback bug")

    link.ws.on("error", broken)
    with logged_errors.expected(RuntimeError, match="error event callback raised") as seen:
        link.protocol.dataReceived(b"\x81\x03{{{")  # invalid JSON
    assert len(calls) == 1 and isinstance(calls[0], InvalidMessage)
    assert len(seen) == 1
    status = link.ws.get_status()
    assert status.invalid_messages == 1 and status.handler_errors == 1
    assert status.connected
    link.finish()


def test_cancelling_connect_from_a_retry_callback_closes_once():
    link = Link(ping_interval=0, reconnect=True, max_retries=None, jitter=0.0)
    link.ws.on("retry", lambda attempt, delay, context: link.connected.cancel())
    link.transport.loseConnection()
    link.protocol.connectionLost(_lost())
    from twisted.internet.defer import CancelledError

    assert _failure_type(link.connected) is CancelledError
    link.reactor.advance(0)
    assert link.ws.state is HandlerState.CLOSED
    assert link.reactor.getDelayedCalls() == []


@pytest.mark.parametrize("url, host", [
    ("ws://[::1]:9/", b"[::1]:9"),
    ("ws://127.0.0.1:9/", b"127.0.0.1:9"),
])
def test_the_host_header_brackets_an_ipv6_address(url, host):
    """RFC 7230, section 5.4: Host is uri-host [":" port], an IPv6 literal in brackets."""
    link = Link(connect_to=url, ping_interval=0)
    assert re.search(rb"\r\nHost: ([^\r]+)\r\n", link.transport.value())[1] == host
    link.open()
    link.finish()


def test_unrouted_messages_are_logged_at_debug_and_summed_up_at_info_once_per_burst():
    """A handler that routes only part of a feed is not one info line per message."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        link = Link(ping_interval=0)
        link.open()
        for path in ("ticks", "ticks", "trades"):
            link.deliver(path, 1)
        unrouted = [event for event in events if "no route" in formatEvent(event)]
        assert [event["log_level"] for event in unrouted] == [LogLevel.debug] * 3
        assert not [event for event in events if event.get("fault") == "unrouted_messages"], "no line yet"
        link.reactor.advance(10)
        (summary,) = [event for event in events if event.get("fault") == "unrouted_messages"]
        assert summary["log_level"] == LogLevel.info and summary["count"] == 3
        assert formatEvent(summary) == ("3 unrouted_messages in the last 10 s "
                                        "(the last: no route for path 'trades')")
        link.reactor.advance(10)  # a quiet interval: no line, the window closes
        assert len([event for event in events if event.get("fault") == "unrouted_messages"]) == 1
        assert link.ws.get_status().unrouted_messages == 3
        link.finish()
    finally:
        globalLogPublisher.removeObserver(events.append)
