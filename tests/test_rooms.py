"""
Rooms and presence: the pure bookkeeping, the hub's API and events, room
broadcasts in memory (StringTransport clients on a Clock), and a property:
after any sequence of joins, leaves and disconnects, the hub's membership is
a simple model's.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from tests.clients import LineClient, connect
from tests.events import when_event
from tcphub import HubProtocol, InvalidRoomName, RoomLimitReached, UnknownClient
from tcphub.hub.rooms import MAX_ROOM_NAME, Rooms
from tcphub.testing import MemoryHub


class Talker(HubProtocol):
    """Joins the rooms it is told to: "join ROOM", "leave ROOM", "to ROOM text"."""

    def messageReceived(self, payload: bytes) -> None:
        verb, _, rest = payload.decode().partition(" ")
        if verb == "join":
            self.join(rest)
        elif verb == "leave":
            self.leave(rest)
        elif verb == "to":
            room, _, text = rest.partition(" ")
            self.broadcastMessage(text.encode(), room=room)


def test_rooms_keep_join_order_and_vanish_when_empty():
    rooms: Rooms[str] = Rooms(max_rooms_per_member=2)
    assert rooms.join("ann", "a") and rooms.join("bob", "a") and rooms.join("ann", "b")
    assert not rooms.join("ann", "a"), "joining twice changes nothing"
    assert list(rooms.members("a")) == ["ann", "bob"] and rooms.rooms_of("ann") == ("a", "b")
    with pytest.raises(RoomLimitReached, match="max_rooms_per_client=2"):
        rooms.join("ann", "c")
    assert rooms.leave_all("ann") == ["a", "b"]
    assert rooms.counts() == {"a": 1} and not rooms.leave("ann", "a")
    rooms.leave("bob", "a")
    assert rooms.counts() == {} and list(rooms.members("a")) == []


@pytest.mark.parametrize("name", ["", "x" * (MAX_ROOM_NAME + 1), None, b"bytes"])
def test_a_bad_room_name_is_refused_by_name(name):
    with pytest.raises(InvalidRoomName, match="1 to 128 characters"):
        Rooms().join("ann", name)


def test_a_room_broadcast_reaches_its_members_but_the_excluded_and_no_one_else(hub_factory):
    hub = hub_factory(protocol=Talker)
    (ann, ann_t), (bob, bob_t), (cat, cat_t), (dan, dan_t) = [hub.connect() for _ in range(4)]
    for protocol in (ann, bob, cat):
        protocol.dataReceived(b"join chess\n")
    dan.dataReceived(b"join go\n")
    hub.factory.broadcast(b"move e4", exclude=[cat.client_id], room="chess")
    assert (ann_t.value(), bob_t.value(), cat_t.value(), dan_t.value()) == (b"move e4\n", b"move e4\n", b"", b"")
    ann.dataReceived(b"to chess hello\n")
    assert ann_t.value() == b"move e4\n", "not to the sender"
    assert bob_t.value().endswith(b"hello\n") and cat_t.value() == b"hello\n" and dan_t.value() == b""
    assert hub.factory.broadcast(b"nobody", room="empty").called
    assert hub.factory.rooms() == {"chess": 3, "go": 1}
    assert [info.id for info in hub.factory.members("chess")] == [ann.client_id, bob.client_id, cat.client_id]
    assert hub.factory.client(ann.client_id).rooms == ("chess",) and ann.rooms == ("chess",)


def test_presence_events_and_a_disconnect_leaves_every_room(hub_factory):
    hub = hub_factory(protocol=Talker)
    ann, _ = hub.connect()
    bob, _ = hub.connect()
    ann.dataReceived(b"join a\njoin b\njoin a\n")
    bob.dataReceived(b"join a\nleave a\nleave never-joined\n")
    hub.lose(ann)
    presence = [event for event in hub.events if event[0] in ("join", "leave", "disconnect")]
    assert [event if event[0] != "disconnect" else event[:2] for event in presence] == [
        ("join", ann.client_id, "a"), ("join", ann.client_id, "b"),
        ("join", bob.client_id, "a"), ("leave", bob.client_id, "a", "left"),
        ("leave", ann.client_id, "a", "disconnected"), ("leave", ann.client_id, "b", "disconnected"),
        ("disconnect", ann.client_id),
    ]
    assert hub.factory.rooms() == {}
    metrics = hub.factory.get_metrics()
    assert (metrics.rooms, metrics.room_members) == (0, 0)


def test_room_bounds_and_unknown_clients_are_named_errors(hub_factory):
    hub = hub_factory(max_rooms_per_client=2)
    ann, _ = hub.connect()
    hub.factory.join(ann.client_id, "a")
    hub.factory.join(ann.client_id, "b")
    with pytest.raises(RoomLimitReached):
        hub.factory.join(ann.client_id, "c")
    with pytest.raises(InvalidRoomName):
        hub.factory.join(ann.client_id, "")
    with pytest.raises(UnknownClient):
        hub.factory.join("nobody", "a")
    with pytest.raises(UnknownClient):
        hub.factory.leave("nobody", "a")
    assert hub.factory.get_metrics().room_members == 2


@pytest.mark.logs_errors("the hook raises on purpose", RuntimeError)
def test_a_raising_hook_in_a_room_is_counted_and_the_room_goes_on(hub_factory):
    class Broken(Talker):
        def messageReceived(self, payload: bytes) -> None:
            if payload == b"boom":
                raise RuntimeError("hook bug")
            super().messageReceived(payload)

    hub = hub_factory(protocol=Broken)
    ann, _ = hub.connect()
    bob, bob_t = hub.connect()
    for protocol in (ann, bob):
        protocol.dataReceived(b"join r\n")
    ann.dataReceived(b"boom\nto r still\n")
    assert bob_t.value() == b"still\n" and hub.factory.get_metrics().handler_errors == 1


# An operation: (verb, client index, room index).
operations = st.lists(
    st.tuples(st.sampled_from(["join", "leave", "disconnect", "reconnect"]),
              st.integers(0, 4), st.integers(0, 3)),
    max_size=60,
)


@given(operations)
def test_membership_equals_a_simple_model_after_any_sequence(steps):
    hub = MemoryHub(max_rooms_per_client=3)
    try:
        clients = [hub.connect()[0] for _ in range(5)]
        model: dict[int, list[str]] = {index: [] for index in range(5)}
        for verb, index, room_index in steps:
            client, room = clients[index], f"room{room_index}"
            gone = client in hub.lost
            if verb == "reconnect":
                if gone:
                    clients[index] = hub.connect()[0]
                    model[index] = []
            elif gone:
                continue
            elif verb == "disconnect":
                hub.lose(client)
                model[index] = []
            elif verb == "join":
                if room in model[index]:
                    hub.factory.join(client.client_id, room)
                elif len(model[index]) >= 3:
                    with pytest.raises(RoomLimitReached):
                        hub.factory.join(client.client_id, room)
                else:
                    hub.factory.join(client.client_id, room)
                    model[index].append(room)
            else:
                hub.factory.leave(client.client_id, room)
                if room in model[index]:
                    model[index].remove(room)
            expected: dict[str, int] = {}
            for rooms in model.values():
                for name in rooms:
                    expected[name] = expected.get(name, 0) + 1
            assert hub.factory.rooms() == expected
            for position, each in enumerate(clients):
                if each not in hub.lost:
                    assert hub.factory.client(each.client_id).rooms == tuple(model[position])
    finally:
        assert hub.close() == []


# -- numbering and history -----------------------------------------------------------


def test_room_messages_are_numbered_per_room_until_the_room_empties(hub_factory):
    hub = hub_factory(protocol=Talker)
    ann, _ = hub.connect()
    bob, _ = hub.connect()
    ann.dataReceived(b"join r\njoin s\n")
    bob.dataReceived(b"join r\n")
    assert [ann.broadcastMessage(b"m", room="r") for _ in range(3)] == [1, 2, 3]
    assert ann.broadcastMessage(b"m", room="s") == 1
    assert hub.factory.room_sequence("r") == 3 and hub.factory.room_sequence("nowhere") == 0
    ann.dataReceived(b"leave s\n")
    assert hub.factory.room_sequence("s") == 0, "an empty room is gone, its numbering too"


def test_history_is_off_by_default(hub_factory):
    hub = hub_factory(protocol=Talker)
    ann, _ = hub.connect()
    ann.dataReceived(b"join r\n")
    hub.factory.broadcast(b"before", room="r")
    bob, bob_t = hub.connect()
    bob.dataReceived(b"join r\n")
    assert bob_t.value() == b"" and hub.factory.room_history("r") == []


def test_a_joiner_gets_the_rooms_last_messages_in_order_before_live_ones(hub_factory):
    hub = hub_factory(protocol=Talker, room_history=2)
    ann, _ = hub.connect()
    ann.dataReceived(b"join r\n")
    for text in (b"one", b"two", b"three"):
        hub.factory.broadcast(text, room="r")
    assert [kept.offset for kept in hub.factory.room_history("r")] == [2, 3]
    bob, bob_t = hub.connect()
    bob.dataReceived(b"join r\n")
    ann.dataReceived(b"to r four\n")
    assert bob_t.value() == b"two\nthree\nfour\n"
    bob.dataReceived(b"join r\n")
    assert bob_t.value() == b"two\nthree\nfour\n", "joining again replays nothing"


def test_history_is_bounded_in_bytes_too():
    rooms: Rooms[str] = Rooms(history=100, history_bytes=10)
    rooms.join("ann", "r")
    assert rooms.record("r", b"x" * 11, 1.0) == 1 and rooms.history("r") == [], "larger than the bound: not kept"
    for number in range(2, 6):
        rooms.record("r", b"%d---" % number, float(number))  # 5 bytes each
    assert rooms.history("r") == [(4, b"4---", 4.0), (5, b"5---", 5.0)]
    assert rooms.record("nowhere", b"x", 6.0) is None and rooms.history("nowhere") == []


def test_history_is_bounded_in_age_too_and_says_through_which_offset_it_let_go():
    rooms: Rooms[str] = Rooms(history=100, history_ttl=10)
    rooms.join("ann", "r")
    for number, at in ((1, 0.0), (2, 5.0), (3, 9.0)):
        rooms.record("r", b"%d" % number, at)
    assert [kept.offset for kept in rooms.history("r", 9.999)] == [1, 2, 3]
    assert [kept.offset for kept in rooms.history("r", 15.001)] == [3], "older than 10 s at 15.001"
    assert rooms.expired_through("r") == 2
    rooms.record("r", b"4", 30.0)  # recording ages the history too
    assert [kept.offset for kept in rooms.history("r")] == [4] and rooms.expired_through("r") == 3
    rooms.leave("ann", "r")
    rooms.join("ann", "r")
    assert rooms.expired_through("r") == 0, "a room made anew has let go of nothing"


@given(st.lists(st.binary(max_size=20), max_size=50), st.integers(0, 5), st.integers(0, 60))
def test_history_never_passes_its_bounds(messages, size, limit):
    rooms: Rooms[str] = Rooms(history=size, history_bytes=limit)
    rooms.join("ann", "r")
    for message in messages:
        rooms.record("r", message, 0.0)
    kept = rooms.history("r")
    assert len(kept) <= size and sum(len(each.frame) for each in kept) <= limit
    assert [each.offset for each in kept] == sorted(each.offset for each in kept)
    eligible = [message for message in messages if len(message) <= limit] if size else []
    assert [each.frame for each in kept] == eligible[len(eligible) - len(kept):], "the newest, in order"


@pytest_twisted.inlineCallbacks
def test_the_server_answers_room_sequence_and_room_history_as_its_hub_does(tcp_server):
    server = yield tcp_server(room_history=2)
    connected = when_event(server, "connection")
    client = yield connect(server.port, LineClient())
    (info,) = yield connected
    server.join(info.id, "news")
    for text in (b"one", b"two", b"three"):
        yield server.broadcast(text, room="news")
    yield client.when_received(3)
    assert server.room_sequence("news") == 3
    assert [kept[:2] for kept in server.room_history("news")] == [(2, b"two\n"), (3, b"three\n")]
    client.transport.loseConnection()
    yield client.lost
