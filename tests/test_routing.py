"""Route patterns: exact, * and #, the most specific wins, conflicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcphub.errors import InvalidRoute, RouteConflict
from tcphub.ws.routing import Router


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


def _backtracking_model(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """The plain recursive definition: right, and exponential in the '#'s."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_backtracking_model(rest, path[skip:]) for skip in range(len(path) + 1))
    return bool(path) and (head == "*" or head == path[0]) and _backtracking_model(rest, path[1:])


@given(pattern=st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=7),
       path=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=9))
def test_matching_agrees_with_the_recursive_definition(pattern, path):
    routes = Router()
    routes.add(".".join(pattern), "target")
    expected = _backtracking_model(tuple(pattern), tuple(path))
    assert (routes.match(".".join(path)) == "target") is expected


def test_pathological_wildcards_match_in_linear_time():
    # A backtracking matcher took 24.6 s on this route and a 1.4 KB path, and
    # the whole suite's timeout on the catch-all against 300 KB.
    routes = router("#.a.#.a.#.b", "#")
    assert routes.match(".".join(["a"] * 700)) == "#"
    assert routes.match(".".join(["a"] * 150_000)) == "#"
    assert routes.match(".".join(["a"] * 700) + ".b") == "#.a.#.a.#.b"
