"""Route patterns: exact, * and #, the most specific wins, conflicts."""

from __future__ import annotations

import pytest

from tcphub.errors import InvalidRoute, RouteConflict
from tcphub.routing import Router


def router(*patterns: str) -> Router[str]:
    routes: Router[str] = Router()
    for pattern in patterns:
        routes.add(pattern, pattern)
    return routes


@pytest.mark.parametrize(
    "path, expected",
    [
        ("chat.message", "chat.message"),
        ("chat.typing", "chat.*"),
        ("chat.room.message", "chat.#"),
        ("chat", "chat.#"),
        ("user.status", None),
        ("chatter.message", None),
    ],
)
def test_exact_then_star_then_hash(path, expected):
    assert router("chat.#", "chat.*", "chat.message").match(path) == expected


@pytest.mark.parametrize(
    "patterns, path, expected",
    [
        (["a.#", "a.*.*"], "a.b.c", "a.*.*"),
        (["a.*.c", "a.b.#"], "a.b.c", "a.b.#"),
        (["#", "a.#"], "a.b", "a.#"),
        (["#.c", "a.#"], "a.b.c", "a.#"),
        (["*.b.*", "#.b.#"], "x.b.y", "*.b.*"),
        (["#"], "anything.at.all", "#"),
    ],
)
def test_the_most_specific_pattern_wins_whatever_the_order(patterns, path, expected):
    assert router(*patterns).match(path) == expected
    assert router(*reversed(patterns)).match(path) == expected


def test_star_is_exactly_one_segment():
    routes = router("a.*")
    assert routes.match("a") is None
    assert routes.match("a.b.c") is None


def test_registering_a_pattern_twice_is_a_conflict_unless_replaced():
    routes = router("chat.*")
    with pytest.raises(RouteConflict, match="chat"):
        routes.add("chat.*", "other")
    routes.add("chat.*", "other", replace=True)
    assert routes.match("chat.x") == "other"


def test_remove():
    routes = router("chat.*", "chat.message")
    assert routes.remove("chat.message") == "chat.message"
    assert routes.match("chat.message") == "chat.*"
    routes.remove("chat.*")
    assert routes.patterns() == []
    with pytest.raises(KeyError):
        routes.remove("chat.*")


@pytest.mark.parametrize("pattern", ["", "chat..message", ".chat", "chat*", "a.b#", 7])
def test_invalid_patterns(pattern):
    with pytest.raises(InvalidRoute):
        Router().add(pattern, "x")
