"""Logging a fault that may repeat thousands of times: once per burst."""

from __future__ import annotations


def first_of_a_burst(count: int) -> bool:
    """Whether the C{count}th occurrence of a kind of fault is logged: the
    first, then each power of two, so that a flood of them writes a few lines
    (each saying the count so far), not one per occurrence; the metrics count
    every one."""
    return count & (count - 1) == 0
