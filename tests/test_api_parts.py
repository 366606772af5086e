"""The HTTP API's parts alone, on a Clock: keys, idempotency keys, the bus's disconnect message."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from tcphub.api.idempotency import DONE, NEW, PENDING, LocalOnce
from tcphub.api.keys import ApiKeys
from tcphub.bus import codec


def claimed(once: LocalOnce, key: str):
    results: list = []
    once.claim(key).addCallback(results.append)
    return results[0]


def test_a_key_is_new_then_pending_then_done_until_its_window_ends():
    clock = Clock()
    once = LocalOnce(300.0, clock)
    assert claimed(once, "k") == (NEW, None)
    assert claimed(once, "k") == (PENDING, None)
    once.complete("k", {"offset": 1})
    assert claimed(once, "k") == (DONE, {"offset": 1})
    clock.advance(299.9)
    assert claimed(once, "k") == (DONE, {"offset": 1})
    clock.advance(0.1)
    assert claimed(once, "k") == (NEW, None), "remembered for the window only"


def test_an_abandoned_key_is_free_again_and_the_store_is_bounded():
    once = LocalOnce(300.0, Clock(), max_keys=3)
    claimed(once, "failed")
    once.abandon("failed")
    assert claimed(once, "failed") == (NEW, None)
    for n in range(10):
        claimed(once, f"k{n}")
    assert len(once) <= 3


def test_keys_are_named_and_read_from_either_header(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# name key\nbilling 0123456789abcdef-billing\nalone-key-0123456789\n")
    keys = ApiKeys(str(path))
    assert keys.name_of(Headers({b"authorization": [b"Bearer 0123456789abcdef-billing"]})) == "billing"
    assert keys.name_of(Headers({b"x-api-key": [b"alone-key-0123456789"]})) == "api"
    for headers in ({}, {b"authorization": [b"Basic 0123456789abcdef-billing"]}, {b"x-api-key": [b""]},
                    {b"authorization": [b"Bearer 0123456789abcdef-billin"]}):
        assert keys.name_of(Headers(headers)) is None, headers


@pytest.mark.parametrize("message", [
    codec.BusMessage(node="a", kind=codec.DISCONNECT, payload=b"", target="b-123"),
    codec.BusMessage(node="a", kind=codec.DISCONNECT, payload="alice".encode(), target=None),
])
def test_a_disconnect_crosses_the_bus_as_it_was_made(message):
    assert codec.decode(codec.encode(message)) == message
