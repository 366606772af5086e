"""
The deadlines of many connections on one timer: L{FixedDelay} (one delay,
a queue) and L{Timetable} (any times, a heap), on a L{Clock}.
"""

import random

import pytest
from twisted.internet.task import Clock

from tcphub._deadlines import FixedDelay, Timetable

# -- FixedDelay ----------------------------------------------------------------


def test_deadlines_fire_in_order_exactly_on_the_clock_on_one_timer():
    clock, fired = Clock(), []
    deadlines = FixedDelay(clock, 10.0, fired.append)
    deadlines.add("a")
    clock.advance(0.25)
    deadlines.add("b")
    deadlines.add("c")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(9.5)
    assert fired == []
    clock.advance(0.25)
    assert fired == ["a"]
    clock.advance(0.25)
    assert fired == ["a", "b", "c"] and clock.getDelayedCalls() == []


def test_a_withdrawn_deadline_does_not_fire_and_the_last_one_withdrawn_stops_the_timer():
    clock, fired = Clock(), []
    deadlines = FixedDelay(clock, 10.0, fired.append)
    first = deadlines.add("a")
    second = deadlines.add("b")
    deadlines.withdraw(first)
    clock.advance(10)
    assert fired == ["b"]
    third = deadlines.add("c")
    deadlines.withdraw(third)
    assert clock.getDelayedCalls() == [] and len(deadlines) == 0, "nothing left to fire: no timer"
    assert second.item is None, "a deadline that fired lets go of its item"


def test_an_item_added_when_its_deadline_fires_gets_its_own_delay():
    clock, fired = Clock(), []
    deadlines: FixedDelay[str] = FixedDelay(clock, 5.0, lambda item: (fired.append(item), deadlines.add(item)))
    deadlines.add("a")
    clock.advance(5)
    clock.advance(4.75)
    assert fired == ["a"]
    clock.advance(0.25)
    assert fired == ["a", "a"]
    deadlines.stop()
    assert clock.getDelayedCalls() == []


# -- Timetable -------------------------------------------------------------------


def test_a_timetable_fires_each_deadline_exactly_at_its_time_in_time_order_on_one_timer():
    clock, fired = Clock(), []
    timetable = Timetable(clock, fired.append)
    times = [7.5, 3.25, 10.0, 3.25, 0.5]
    for index, due in enumerate(times):
        timetable.add(due, index)
        assert len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 0.5, "the timer moves to an earlier deadline added"
    for now in sorted(set(times)):
        clock.advance(now - clock.seconds() - 0.125)
        before = list(fired)
        clock.advance(0.125)
        assert fired[len(before):] and all(times[index] == now for index in fired[len(before):])
        assert before == fired[:len(before)]
    assert fired == [4, 1, 3, 0, 2] and clock.getDelayedCalls() == []


def test_a_deadline_added_as_one_fires_comes_due_in_its_turn_and_a_raising_fire_leaves_the_rest_their_timer():
    clock, fired = Clock(), []

    def fire(item):
        fired.append((item, clock.seconds()))
        if item == "again":
            timetable.add(clock.seconds() + 1.5, "later")
        if item == "raises":
            raise ZeroDivisionError()

    timetable = Timetable(clock, fire)
    timetable.add(1.0, "again")
    timetable.add(1.0, "raises")
    timetable.add(2.0, "next")
    with pytest.raises(ZeroDivisionError):
        clock.advance(1.0)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    clock.advance(0.5)
    assert fired == [("again", 1.0), ("raises", 1.0), ("next", 2.0), ("later", 2.5)]
    assert clock.getDelayedCalls() == []


def test_withdrawn_deadlines_do_not_fire_and_churn_leaves_the_heap_at_most_twice_the_live_ones():
    clock, fired = Clock(), []
    timetable = Timetable(clock, fired.append)
    live = {timetable.add(1000.0 + index, ("held", index)) for index in range(100)}
    rng = random.Random(28)
    for index in range(20_000):  # connections that come and go, each with a deadline
        deadline = timetable.add(1000.0 + rng.random() * 1000, ("gone", index))
        timetable.withdraw(deadline)
        assert len(timetable) <= 2 * len(live) + 1, "withdrawn deadlines are let go, not kept to their time"
    timetable.add(10.0, ("soon", 0))
    clock.advance(3000)
    assert sorted(fired) == [("held", index) for index in range(100)] + [("soon", 0)]
    assert fired[0] == ("soon", 0) and clock.getDelayedCalls() == []


def test_withdrawing_the_last_live_deadline_stops_the_timer_and_empties_the_heap():
    clock, fired = Clock(), []
    timetable = Timetable(clock, fired.append)
    first, second = timetable.add(5.0, "a"), timetable.add(6.0, "b")
    timetable.withdraw(first)
    assert len(clock.getDelayedCalls()) == 1
    timetable.withdraw(second)
    assert clock.getDelayedCalls() == [] and len(timetable) == 0 and fired == []


def test_a_deadline_comes_when_the_clock_reaches_its_timer_even_a_rounding_short_of_it():
    clock, fired = Clock(), []
    timetable = Timetable(clock, fired.append)
    clock.advance(0.2)
    timetable.add(0.9, "a")
    clock.advance(0.9 - 0.2)
    assert clock.seconds() < 0.9, "the timer's own time: 0.2 + (0.9 - 0.2) falls an ulp short"
    assert fired == ["a"] and clock.getDelayedCalls() == []


@pytest.mark.parametrize("kind", ["fixed", "timetable"])
def test_deadlines_added_while_others_fire_leave_one_timer_for_the_next_not_a_wake_up_for_nothing(kind):
    clock, fired = Clock(), []

    def fire(item):
        fired.append(item)
        if kind == "fixed":
            deadlines.add(item + "'")
        else:
            deadlines.add(clock.seconds() + 4.0, item + "'")

    armed = []
    call_later = clock.callLater
    clock.callLater = lambda delay, *rest: armed.append(clock.seconds() + delay) or call_later(delay, *rest)
    deadlines = FixedDelay(clock, 4.0, fire) if kind == "fixed" else Timetable(clock, fire)
    for item in "ab":
        deadlines.add(item) if kind == "fixed" else deadlines.add(4.0, item)
    clock.advance(4.0)
    assert fired == ["a", "b"]
    assert armed == [4.0, 8.0], "armed once for the first, once for the next"
    deadlines.stop()
