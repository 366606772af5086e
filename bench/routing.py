"""
Route matching against hostile paths: a 1 MiB path and the longest path
accepted, against 100 wildcard routes; and, for scale, the backtracking
matcher tcphub used before on a path it froze the reactor with.

    .venv/bin/python bench/routing.py
"""

from __future__ import annotations

import json
import time

from tcphub.ws.envelope import MAX_PATH_LENGTH, MAX_PATH_SEGMENTS, decode
from tcphub.errors import InvalidMessage
from tcphub.ws.routing import Router


def backtracking(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """The matcher before: exponential in the number of '#'."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(backtracking(rest, path[skip:]) for skip in range(len(path) + 1))
    return bool(path) and (head == "*" or head == path[0]) and backtracking(rest, path[1:])


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    routes: Router[int] = Router()
    for n in range(100):
        routes.add(f"#.a{n}.#.a.#.b", n)
    huge = json.dumps({"path": ".".join(["a"] * (512 * 1024))}).encode()

    def reject() -> None:
        try:
            decode(huge, False)
        except InvalidMessage:
            return
        raise SystemExit("a 1 MiB path was accepted")

    longest = ".".join(["a"] * MAX_PATH_SEGMENTS)
    assert len(longest) <= MAX_PATH_LENGTH
    print("| case | time |")
    print("|---|---|")
    print(f"| a message with a 1 MiB path: decoded and refused (InvalidMessage) | {timed(reject) * 1e3:.2f} ms |")
    print(f"| the longest accepted path ({MAX_PATH_SEGMENTS} segments) against 100 wildcard routes "
          f"| {timed(lambda: routes.match(longest)) * 1e3:.2f} ms |")
    spread = ".".join(["a"] * 150_000)
    print(f"| a 300 KB path (150,000 segments, past the bound) against 100 wildcard routes, matcher alone "
          f"| {timed(lambda: routes.match(spread)):.2f} s |")
    pattern = ("#", "a", "#", "a", "#", "b")
    single: Router[int] = Router()
    single.add(".".join(pattern), 0)
    for segments in (100, 200):
        path = ["a"] * segments
        print(f"| route #.a.#.a.#.b, a {segments}-segment path: the backtracking matcher (before) "
              f"| {timed(lambda: backtracking(pattern, tuple(path))):.3f} s |")
        print(f"| the same: tcphub's matcher (now) "
              f"| {timed(lambda: single.match('.'.join(path))) * 1e3:.3f} ms |")


if __name__ == "__main__":
    main()
