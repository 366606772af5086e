"""
The line chat of twistd tcphub's default mode: in memory, then as people use
it, with three real sockets against twistd.
"""

from __future__ import annotations

import socket

from tcphub.hub.modes import ChatProtocol
from tests.processes import Twistd


def lines(transport) -> list[bytes]:
    value = transport.value()
    transport.clear()
    return value.splitlines()


def test_a_client_starts_in_the_lobby_and_talks_to_its_current_room(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    ann, ann_t = hub.connect()
    assert lines(ann_t)[:2] == [f"* welcome, guest-{ann.client_id[:6]}".encode(), b"* you are in #lobby"]
    bob, bob_t = hub.connect()
    assert f"* guest-{bob.client_id[:6]} joined #lobby".encode() in lines(ann_t)
    lines(bob_t)
    ann.dataReceived(b"/nick ann\n")
    bob.dataReceived(b"/nick bob\n")
    assert lines(ann_t) == [b"* you are now ann", f"* guest-{bob.client_id[:6]} is now bob".encode()]
    lines(bob_t)
    ann.dataReceived(b"hello\n")
    assert lines(bob_t) == [b"#lobby <ann> hello"] and lines(ann_t) == []
    bob.dataReceived(b"/join chess\n")
    assert lines(bob_t) == [b"* you are in #chess"]
    bob.dataReceived(b"e4\n")
    assert lines(ann_t) == [], "chess is bob's current room; ann is not in it"
    ann.dataReceived(b"/who\n/rooms\n")
    assert lines(ann_t) == [b"* in #lobby: ann, bob", b"* rooms: #chess (1), #lobby (2)"]
    bob.dataReceived(b"/leave\n")
    assert lines(bob_t) == [b"* you left #chess; now in #lobby"]
    hub.lose(bob)
    assert lines(ann_t) == [b"* bob left #lobby"]
    assert hub.factory.rooms() == {"lobby": 1}


def test_bad_commands_and_names_get_a_clear_answer(hub_factory):
    hub = hub_factory(protocol=ChatProtocol, max_rooms_per_client=2)
    ann, ann_t = hub.connect()
    lines(ann_t)
    ann.dataReceived(b"/dance\n/nick two words\n/join " + b"x" * 200 + b"\n/join a\n/join b\n/leave nowhere\n")
    assert lines(ann_t) == [
        b"* unknown command /dance; commands: /nick NAME, /join ROOM, /leave [ROOM], /who (the current room), "
        b"/rooms, /help, /quit; any other line goes to the current room",
        b"* a nick is 1 to 32 printable characters, without spaces",
        b"* cannot join: a room is named by 1 to 128 characters, not '" + b"x" * 79,
        b"* you are in #a",
        b"* cannot join: already in 2 rooms (max_rooms_per_client=2)",
        b"* you are not in #nowhere",
    ]
    ann.dataReceived(b"/leave a\n/leave lobby\nanyone?\n/who\n")
    assert lines(ann_t)[-2:] == [b"* you are in no room: /join ROOM"] * 2


def _reader(sock: socket.socket):
    stream = sock.makefile("rb")

    def until(expected: bytes) -> list[bytes]:
        """Lines up to and including the first that starts with C{expected}."""
        seen = []
        while True:
            line = stream.readline()
            assert line, f"closed before {expected!r}; saw {seen}"
            seen.append(line.rstrip(b"\n"))
            if line.startswith(expected):
                return seen

    return until


def test_three_people_with_nc_two_rooms_and_who():
    with Twistd("tcphub", "--port", "0") as twistd:
        host, port = twistd.wait_listening()
        people = {}
        for name in ("ann", "bob", "cat"):
            sock = socket.create_connection((host, port), timeout=30)
            until = _reader(sock)
            until(b"* commands:")
            sock.sendall(b"/nick " + name.encode() + b"\n")
            until(b"* you are now " + name.encode())
            people[name] = (sock, until)
        try:
            cat, cat_until = people["cat"]
            cat.sendall(b"/join games\n")
            cat_until(b"* you are in #games")
            ann, ann_until = people["ann"]
            bob, bob_until = people["bob"]
            ann.sendall(b"hello lobby\n")
            assert bob_until(b"#lobby <ann>")[-1] == b"#lobby <ann> hello lobby"
            cat.sendall(b"gg\n")
            bob.sendall(b"/who\n")
            assert bob_until(b"* in #lobby")[-1] == b"* in #lobby: ann, bob, cat"
            cat.sendall(b"/who\n")
            assert cat_until(b"* in #games")[-1] == b"* in #games: cat"
            ann.sendall(b"/rooms\n")
            seen = ann_until(b"* rooms:")
            assert seen[-1] == b"* rooms: #games (1), #lobby (3)"
            assert not any(b"gg" in line for line in seen), "cat's line stayed in #games"
        finally:
            for sock, _ in people.values():
                sock.close()
        twistd.shutdown()


def test_history_replays_messages_with_their_time_and_no_join_or_leave_notices(hub_factory):
    """A newcomer reads what was said, each line with when (UTC); who came
    and went before it is not history, and notices take no room number."""
    hub = hub_factory(protocol=ChatProtocol, room_history=10)
    hub.clock.advance(14 * 3600 + 2 * 60 + 30)  # 1970-01-01 14:02:30 UTC
    ann, _ = hub.connect()
    ann.dataReceived(b"/nick ann\nanyone here?\n")
    hub.clock.advance(3600)
    cat, _ = hub.connect()
    cat.dataReceived(b"/nick cat\nhi ann\n/join games\n/leave lobby\n")
    bob, bob_t = hub.connect()
    received = lines(bob_t)
    replayed = [line for line in received if not line.startswith(b"* ")]
    assert replayed == [b"[14:02 UTC] #lobby <ann> anyone here?", b"[15:02 UTC] #lobby <cat> hi ann"]
    assert received.index(replayed[-1]) < received.index(b"* you are in #lobby"), "before it is told it is in"
    assert hub.factory.room_sequence("lobby") == 2, "only the two messages are numbered"
    ann.dataReceived(b"live\n")
    assert lines(bob_t) == [b"#lobby <ann> live"], "live lines carry no time"


def test_control_characters_reach_nobody_raw(hub_factory):
    """An escape sequence (clear the screen, retitle the terminal) from one
    nc user is shown escaped to the others; a tab and UTF-8 pass as they are."""
    hub = hub_factory(protocol=ChatProtocol)
    ann, ann_t = hub.connect()
    bob, bob_t = hub.connect()
    ann.dataReceived(b"/nick ann\n")
    lines(bob_t)
    ann.dataReceived(b"\x1b[2J\x1b]0;pwned\x07 caf\xc3\xa9\tok \xff\xc2\x85\n")
    assert lines(bob_t) == [b"#lobby <ann> \\x1b[2J\\x1b]0;pwned\\x07 caf\xc3\xa9\tok \\xff\\x85"]
    ann.dataReceived(b"/join \x1b[31mred\n")
    assert lines(ann_t)[-1] == b"* you are in #\\x1b[31mred"
    ann.dataReceived(b"hi\n")
    ann.dataReceived(b"/join lobby\n")
    bob.dataReceived(b"/who\n")
    assert b"\x1b" not in bob_t.value() and b"\x1b" not in ann_t.value()


def test_a_nick_in_use_is_refused_whatever_its_case_and_freed_when_its_owner_goes(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    ann, ann_t = hub.connect()
    bob, bob_t = hub.connect()
    ann.dataReceived(b"/nick alice\n")
    lines(bob_t)
    bob.dataReceived(b"/nick Alice\n")
    assert lines(bob_t) == [b"* Alice is taken: choose another nick"]
    ann.dataReceived(b"/nick ALICE\n")
    assert lines(ann_t)[-1] == b"* you are now ALICE", "one's own nick, in another case"
    ann.dataReceived(b"/nick ann\n")
    bob.dataReceived(b"/nick alice\n")
    assert lines(bob_t)[-1] == b"* you are now alice", "the old nick was freed"
    hub.lose(bob)
    cat, cat_t = hub.connect()
    cat.dataReceived(b"/nick alice\n")
    assert lines(cat_t)[-1] == b"* you are now alice", "a nick is free again once its owner left"


def test_a_guest_nick_taken_by_nick_does_not_make_two_guests_alike(hub_factory, monkeypatch):
    import secrets

    hub = hub_factory(protocol=ChatProtocol)
    ann, ann_t = hub.connect()
    monkeypatch.setattr(secrets, "token_hex", lambda size: "abcdef00" * (size // 4))
    ann.dataReceived(b"/nick guest-abcdef\n")
    bob, bob_t = hub.connect()
    assert ann.nick == "guest-abcdef" and bob.nick == f"guest-{bob.client_id}"


# -- the chat under authentication ------------------------------------------------------

SECRET = "an HMAC secret of thirty-two bytes or more, for HS256"


def authenticated_chat(hub_factory):
    from tcphub.hub.identity import JwtAuthenticator

    hub = hub_factory(protocol=ChatProtocol)
    hub.factory.auth = JwtAuthenticator(SECRET, clock=hub.clock)
    return hub


def chat_token(**claims) -> bytes:
    import jwt

    return jwt.encode({"sub": "alice", **claims}, SECRET, algorithm="HS256").encode()


def test_with_auth_the_chat_asks_for_a_token_first_and_closes_on_anything_else(hub_factory):
    hub = authenticated_chat(hub_factory)
    client, transport = hub.connect()
    assert lines(transport) == [b"* welcome: this hub asks who you are: /auth TOKEN"]
    client.dataReceived(b"hello\n")
    assert lines(transport) == [b"* unauthenticated: authenticate first: /auth TOKEN"]
    assert transport.disconnecting and hub.factory.rooms() == {}
    assert hub.factory.get_metrics().auth_failed == 1


def test_with_auth_the_nick_is_the_token_s_name_and_rooms_are_the_token_s(hub_factory):
    hub = authenticated_chat(hub_factory)
    ann, ann_t = hub.connect()
    lines(ann_t)
    ann.dataReceived(b"/auth " + chat_token(name="Alice", rooms=["lobby", "team-*"]) + b"\n")
    assert lines(ann_t)[:2] == [b"* welcome, Alice", b"* you are in #lobby"]
    ann.dataReceived(b"/nick Mallory\n/join secret\n/join team-red\n")
    assert lines(ann_t) == [b"* your nick is your token's name", b"* cannot join #secret: it is not among your rooms",
                            b"* you are in #team-red"]
    assert hub.factory.client(ann.client_id).user == "alice" and not ann_t.disconnecting
    other, other_t = hub.connect()
    lines(other_t)
    other.dataReceived(b"/auth " + chat_token(sub="al", name="Alice", rooms=["*"]) + b"\n")
    assert lines(other_t)[0] == b"* welcome, Alice~al", "another user's display name: shown with who it is"
    other.dataReceived(b"/join secret\n/rooms\n")
    ann.dataReceived(b"/rooms\n")
    assert b"#secret" in other_t.value() and b"#secret" not in ann_t.value(), "rooms not one's own are not listed"


def test_a_bad_token_in_the_chat_is_refused_with_its_reason_and_closed(hub_factory):
    hub = authenticated_chat(hub_factory)
    client, transport = hub.connect()
    lines(transport)
    client.dataReceived(b"/auth not-a-jwt\n")
    assert lines(transport) == [b"* invalid_token: the token is not a valid JWT (DecodeError)"]
    assert transport.disconnecting


def test_an_open_chat_needs_no_token(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    client, transport = hub.connect()
    lines(transport)
    client.dataReceived(b"/auth anything\n")
    assert lines(transport) == [b"* this hub asks for no token"]


class Names:
    """A relay of which only the names are used: each claim waits for the test."""

    def __init__(self) -> None:
        self.claims: list = []
        self.released: list = []

    def claim_name(self, name, owner):
        from twisted.internet.defer import Deferred

        self.claims.append((name, Deferred()))
        return self.claims[-1][1]

    def release_name(self, name, owner):
        self.released.append(name)

    def broadcast(self, payload, exclude, room, notice=False):
        """The other hubs' members are not this test's."""

    def following(self, room):
        return None  # it takes every room's messages


def test_under_a_relay_a_nick_is_taken_once_every_hub_agrees(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    names = Names()
    hub.factory.relay = names
    ann, ann_t = hub.connect()
    lines(ann_t)
    ann.dataReceived(b"/nick ann\n")
    assert lines(ann_t) == [] and names.claims[0][0] == "ann", "no answer before the other hubs'"
    names.claims[0][1].callback(False)
    assert lines(ann_t) == [b"* ann is taken: choose another nick"]
    ann.dataReceived(b"/nick anna\n")
    names.claims[1][1].callback(True)
    assert lines(ann_t) == [b"* you are now anna"] and ann.nick_shared
    bob, bob_t = hub.connect()
    bob.dataReceived(b"/nick ann\n")
    assert not lines(bob_t)[-1].startswith(b"* ann is taken"), "refused elsewhere, free here"
    hub.lose(bob)  # gone before the other hubs answer
    names.claims[2][1].callback(True)
    assert names.released == ["ann"], "a name claimed for a client gone is given back"
    hub.lose(ann)
    assert names.released == ["ann", "anna"]
    carl, carl_t = hub.connect()
    carl.dataReceived(b"/nick ann\n")
    assert len(names.claims) == 4, "the name bob asked for is free here again"


def test_help_quit_hash_room_names_and_no_second_announcement(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    ann, ann_t = hub.connect()
    bob, bob_t = hub.connect()
    lines(ann_t)
    ann.dataReceived(b"/help\n")
    assert lines(ann_t)[0].startswith(b"* commands: ")
    ann.dataReceived(b"/join #general\n")
    assert lines(ann_t) == [b"* you are in #general"] and "general" in hub.factory.rooms()
    lines(bob_t)
    ann.dataReceived(b"/join #lobby\n")
    assert lines(ann_t) == [b"* you are in #lobby"]
    assert lines(bob_t) == [], "back to a room one is in: not announced again"
    ann.dataReceived(b"/leave #general\n")
    assert lines(ann_t) == [b"* you left #general; now in #lobby"]
    ann.dataReceived(b"/quit\n")
    assert lines(ann_t) == [b"* bye"] and ann_t.disconnecting


def test_a_member_dropped_by_the_hub_is_announced_with_why_and_told_first(hub_factory):
    hub = hub_factory(protocol=ChatProtocol, timeout=60.0)
    ann, ann_t = hub.connect()
    bob, bob_t = hub.connect()
    ann.dataReceived(b"/nick ann\n")
    lines(bob_t)
    for _ in range(5):
        hub.clock.advance(30)
        bob.dataReceived(b"/who\n")  # bob stays; ann says nothing
    hub.lose(ann)
    assert b"* ann left #lobby (idle)" in lines(bob_t)


def test_twistd_tells_an_idle_nc_user_why_before_it_closes():
    with Twistd("tcphub", "--port", "0", "--timeout", "1") as twistd:
        _, port = twistd.wait_listening()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as nc:
            received = b""
            while chunk := nc.recv(65536):  # until the hub closes it
                received += chunk
        assert received.splitlines()[-1].startswith(b"* closing: idle: client "), received
        twistd.shutdown()


def test_a_draining_hub_tells_its_clients_to_reconnect_one_after_another_over_the_spread(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    clients = [hub.connect() for _ in range(3)]
    for _, transport in clients:
        lines(transport)
    done = hub.factory.go_away(9.0)
    told = [b"* this server is going away: reconnect to carry on" in lines(t) for _, t in clients]
    assert told == [True, False, False] and clients[0][1].disconnecting and not done.called
    hub.clock.advance(2.9)
    assert not any(lines(t) for _, t in clients[1:])
    hub.clock.advance(0.1)
    assert clients[1][1].disconnecting and not clients[2][1].disconnecting
    hub.clock.advance(3.0)
    assert clients[2][1].disconnecting and done.called
    for protocol, _ in clients:
        hub.lose(protocol)
    assert hub.factory.close_all(1.0).called and hub.timers() == []


def test_closing_all_while_the_clients_are_told_tells_no_more_and_ends_the_spread(hub_factory):
    hub = hub_factory(protocol=ChatProtocol)
    clients = [hub.connect() for _ in range(3)]
    done = hub.factory.go_away(10.0)
    closing = hub.factory.close_all(5.0)
    assert done.called and all(t.disconnecting for _, t in clients)
    for protocol, _ in clients:
        hub.lose(protocol)
    assert closing.called and hub.timers() == []
