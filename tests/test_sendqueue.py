"""SendQueue alone: straight through, queued, bounded, cancelled, flushed, and the producer paced."""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from tcphub import NotConnected, QueueFull
from tcphub.ws.sendqueue import SendQueue


class Connection:
    def __init__(self) -> None:
        self.can_send = True
        self.written: list[bytes] = []
        self.producer = None
        self.refuse: set[bytes] = set()

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


def write(connection: Connection, payload: bytes, is_binary: bool) -> Failure | None:
    if payload in connection.refuse:
        return Failure(ValueError(f"refused {payload!r}"))
    connection.written.append(payload)
    return None


def results(deferreds) -> list:
    seen: list = []
    for d in deferreds:
        d.addBoth(seen.append)
    return seen


def not_connected() -> NotConnected:
    return NotConnected("no connection")


def test_a_message_goes_straight_out_while_the_connection_can_take_it():
    queue, connection = SendQueue(10, 1000, write), Connection()
    queue.attach(connection)
    assert results([queue.send(b"now", False, True, not_connected)]) == [None]
    assert connection.written == [b"now"] and len(queue) == 0


def test_without_a_connection_messages_wait_in_order_within_both_bounds():
    queue = SendQueue(2, 10, write)
    first, second = queue.send(b"12345", False, True, not_connected), queue.send(b"678", False, True, not_connected)
    assert (len(queue), queue.queued_bytes) == (2, 8)
    [too_many] = results([queue.send(b"9", False, True, not_connected)])
    assert isinstance(too_many.value, QueueFull) and "2 messages" in str(too_many.value)
    bytes_queue = SendQueue(5, 10, write)
    bytes_queue.send(b"12345678", False, True, not_connected)
    [too_big] = results([bytes_queue.send(b"abc", False, True, not_connected)])
    assert isinstance(too_big.value, QueueFull) and "max_queue_bytes=10" in str(too_big.value)
    connection = Connection()
    connection.refuse = {b"12345"}
    outcomes = results([first, second])
    queue.attach(connection)
    assert isinstance(outcomes[0].value, ValueError) and outcomes[1] is None, "one failure fails that message alone"
    assert connection.written == [b"678"] and (len(queue), queue.queued_bytes) == (0, 0)


def test_a_message_that_may_not_wait_fails_with_the_callers_error():
    [failure] = results([SendQueue(10, 1000, write).send(b"x", False, False, not_connected)])
    assert isinstance(failure.value, NotConnected)


def test_a_full_write_buffer_queues_and_its_drain_flushes():
    queue, connection = SendQueue(10, 1000, write), Connection()
    queue.attach(connection)
    connection.producer.pauseProducing()
    waiting = queue.send(b"later", False, True, not_connected)
    assert connection.written == [] and not queue.writable
    connection.producer.resumeProducing()
    assert connection.written == [b"later"] and results([waiting]) == [None]


def test_cancelling_a_queued_message_takes_it_out():
    queue = SendQueue(10, 1000, write)
    kept, cancelled = queue.send(b"kept", False, True, not_connected), queue.send(b"gone", False, True, not_connected)
    cancelled.cancel()
    cancelled.addErrback(lambda _: None)
    assert (len(queue), queue.queued_bytes) == (1, 4)
    connection = Connection()
    queue.attach(connection)
    assert connection.written == [b"kept"] and results([kept]) == [None]


def test_a_producer_is_paused_while_nothing_can_be_written_and_resumed_after():
    queue, connection, producer = SendQueue(10, 1000, write), Connection(), Producer()
    queue.register_producer(producer)
    assert producer.calls == ["pause"], "no connection yet"
    queue.attach(connection)
    queue.update_flow()
    assert producer.calls == ["pause", "resume"]
    connection.producer.pauseProducing()
    assert producer.calls[-1] == "pause"
    with pytest.raises(RuntimeError, match="registered already"):
        queue.register_producer(Producer())


def test_fail_all_fails_every_waiting_message():
    queue = SendQueue(10, 1000, write)
    outcomes = results([queue.send(b"a", False, True, not_connected), queue.send(b"b", False, True, not_connected)])
    queue.fail_all(NotConnected("closed"))
    assert [type(each.value) for each in outcomes] == [NotConnected, NotConnected]
    assert (len(queue), queue.queued_bytes) == (0, 0)
