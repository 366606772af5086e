"""PendingRequests alone, on a Clock: ids, replies, deadlines, failures."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tcphub import HandlerClosed, RequestRefused, RequestTimeout
from tcphub.ws.requests import PendingRequests


def test_a_reply_fires_its_request_and_cancels_its_deadline():
    clock = Clock()
    requests = PendingRequests(clock)
    request_id, reply = requests.open("rpc.add", 5.0)
    results: list = []
    reply.addCallback(results.append)
    assert requests.is_ours(request_id) and len(requests) == 1
    assert requests.answer(request_id, 3, "rpc.add") is True
    assert results == [3] and len(requests) == 0
    assert clock.getDelayedCalls() == []


def test_ids_are_fresh_and_only_ours_are_recognised():
    requests = PendingRequests(Clock())
    first, one = requests.open("a", 1.0)
    second, two = requests.open("a", 1.0)
    assert first != second
    assert not requests.is_ours(None)
    assert not requests.is_ours("peer-chosen-id")
    assert not PendingRequests(Clock()).is_ours(first), "another handler's prefix"
    requests.fail_all(HandlerClosed("done"))
    for reply in (one, two):
        reply.addErrback(lambda failure: failure.trap(HandlerClosed))


def test_the_deadline_is_exact_to_the_clock_and_a_late_reply_is_refused():
    clock = Clock()
    requests = PendingRequests(clock)
    request_id, reply = requests.open("slow", 2.5)
    failures: list = []
    reply.addErrback(failures.append)
    clock.advance(2.4999)
    assert failures == []
    clock.advance(0.0001)
    assert failures[0].check(RequestTimeout)
    assert "'slow' within 2.5 s" in failures[0].getErrorMessage()
    assert requests.answer(request_id, "late", "slow") is False


def test_fail_and_fail_all_errback_and_leave_no_timer():
    clock = Clock()
    requests = PendingRequests(clock)
    one, first = requests.open("a", 9.0)
    _, second = requests.open("b", 9.0)
    errors: list = []
    first.addErrback(lambda failure: errors.append(type(failure.value)))
    second.addErrback(lambda failure: errors.append(type(failure.value)))
    requests.fail(one, Failure(ValueError("send failed")))
    requests.fail(one, Failure(ValueError("twice: ignored")))
    requests.fail_all(HandlerClosed("closed"))
    assert errors == [ValueError, HandlerClosed]
    assert len(requests) == 0 and clock.getDelayedCalls() == []


@pytest.mark.parametrize("timeout", [0.001, 30.0])
def test_each_request_has_its_own_deadline(timeout):
    clock = Clock()
    requests = PendingRequests(clock)
    _, reply = requests.open("x", timeout)
    reply.addErrback(lambda failure: None)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [timeout]
    clock.advance(timeout)
    assert len(requests) == 0


def test_a_reply_on_the_error_path_errbacks_with_its_code_and_reason():
    requests = PendingRequests(Clock(), error_path="hub.error")
    request_id, reply = requests.open("hub.join", 5.0)
    failures: list = []
    reply.addErrback(failures.append)
    assert requests.answer(request_id, {"code": "forbidden", "reason": "not yours"}, "hub.error") is True
    refused = failures[0].value
    assert isinstance(refused, RequestRefused) and (refused.code, refused.reason) == ("forbidden", "not yours")
    other_id, other = requests.open("hub.join", 5.0)
    results: list = []
    other.addCallback(results.append)
    requests.answer(other_id, {"room": "r"}, "hub.join")
    assert results == [{"room": "r"}]
