"""RepeatedLog: a fault repeated thousands of times writes a few lines."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from tcphub import EchoProtocol, HubProtocol
from tcphub._repeats import RepeatedLog


def capture() -> tuple[Logger, list[dict]]:
    events: list[dict] = []
    return Logger(namespace="test", observer=events.append), events


def lines(events: list[dict]) -> list[str]:
    return [formatEvent(event) for event in events]


@pytest.fixture
def hub_log():
    """The hub's own log events, as emitted to the global publisher."""
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace", "").startswith("tcphub.hub"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_the_first_at_once_then_one_line_per_interval_while_they_come():
    log, events = capture()
    clock = Clock()
    repeats = RepeatedLog(log, clock, interval=10)
    for n in range(280):  # 280 in the first 10 s
        repeats.emit("refused", LogLevel.warn, "refused client {n}", n=n)
        clock.advance(10 / 280)
    assert lines(events)[0] == "refused client 0"
    clock.advance(0.1)
    assert lines(events)[1:] == ["279 more refused in the last 10 s (the last: refused client 279)"]
    assert (events[0]["fault"], events[0]["n"]) == ("refused", 0), "the fault's name is a field, as its own are"
    assert (events[1]["fault"], events[1]["count"]) == ("refused", 279), "so is a summary's count"
    for n in range(5):  # a trickle goes on: one line in the next window
        repeats.emit("refused", LogLevel.warn, "refused client {n}", n=n)
    clock.advance(10)
    assert lines(events)[2] == "5 more refused in the last 10 s (the last: refused client 4)"
    clock.advance(10)  # a quiet interval ends the window
    assert len(events) == 3 and clock.getDelayedCalls() == []
    repeats.emit("refused", LogLevel.warn, "refused again")
    assert lines(events)[3] == "refused again" and events[3]["log_level"] is LogLevel.warn


def test_kinds_are_counted_apart_and_stop_says_what_is_pending():
    log, events = capture()
    clock = Clock()
    repeats = RepeatedLog(log, clock, interval=10)
    for _ in range(3):
        repeats.emit("slow_consumers", LogLevel.warn, "slow")
        repeats.emit("timed_out", LogLevel.info, "idle")
    repeats.stop()
    assert sorted(lines(events)) == sorted([
        "slow", "idle",
        "2 more slow_consumers in the last 10 s (the last: slow)",
        "2 more timed_out in the last 10 s (the last: idle)",
    ])
    assert clock.getDelayedCalls() == []


@pytest.mark.logs_errors("the hook raises on purpose", ValueError)
def test_a_raising_handler_is_logged_at_error_with_its_traceback_then_counted(hub_factory, hub_log):
    class Broken(HubProtocol):
        def messageReceived(self, payload: bytes) -> None:
            raise ValueError(f"bad {payload!r}")

    hub = hub_factory(protocol=Broken)
    protocol, _ = hub.connect()
    protocol.dataReceived(b"".join(b"%d\n" % n for n in range(100)))
    assert hub.factory.get_metrics().handler_errors == 100
    events = [event for event in hub_log if event["log_level"] is not LogLevel.debug]
    assert len(events) == 1 and events[0]["log_level"] is LogLevel.error
    assert isinstance(events[0]["log_failure"], Failure)
    hub.clock.advance(10)
    events = [event for event in hub_log if event["log_level"] is not LogLevel.debug]
    assert len(events) == 2 and "99 more handler_errors in the last 10 s" in formatEvent(events[1])
    assert "bad b'99'" in formatEvent(events[1])


def test_a_flood_of_refusals_writes_two_lines_not_one_per_client(hub_factory, hub_log):
    hub = hub_factory(protocol=EchoProtocol, max_connections=1)
    for _ in range(1501):
        hub.connect()
    assert hub.factory.get_metrics().rejected == 1500
    hub.clock.advance(10)
    events = [event for event in hub_log if event["log_level"] is not LogLevel.debug]
    assert [event["log_level"] for event in events] == [LogLevel.warn, LogLevel.warn]
    assert formatEvent(events[1]).startswith("1499 more refused in the last 10 s")
