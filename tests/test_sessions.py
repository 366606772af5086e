"""
Sessions of the structured protocol: a member whose connection drops comes
back with C{hub.resume} as itself, in its rooms, with what it missed; in
memory on a Clock (L{tcphub.testing.MemoryHub}), with real signed tokens;
then twistd with raw TCP clients.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred, succeed

from tcphub.hub.identity import Identity, JwtAuthenticator, RoomPatterns
from tcphub.hub.modes import ChatProtocol
from tcphub.hub.protocol import GONE
from tcphub.hub.sessions import SessionState, StoredSession, session_digest
from tcphub.hub.structured import StructuredProtocol
from tests.processes import Twistd
from tests.test_bus import HubMember
from tests.test_structured import SECRET, jwt_hub, open_hub, said, send, token


def joined(hub, *rooms):
    """A member in C{rooms}, its replies read; returns it, its transport and its session id."""
    member, transport = hub.connect()
    for room in rooms:
        send(member, "hub.join", {"room": room})
    session = said(transport)[0]["data"]["session"]
    return member, transport, session


def test_a_member_back_with_hub_resume_is_itself_in_its_rooms_and_gets_what_it_missed_once_in_order(hub_factory):
    hub = open_hub(hub_factory, room_history=10)
    ann, ann_t, _ = joined(hub, "chess")
    bob, bob_t, session = joined(hub, "chess", "go")
    name = bob.identity.name
    send(ann, "hub.publish", {"room": "chess", "data": "e4"})
    said(bob_t)
    hub.lose(bob)
    assert hub.factory.get_metrics().sessions_parked == 1
    for move in ("e5", "Nf3"):
        send(ann, "hub.publish", {"room": "chess", "data": move})
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session}, "r")
    replies = said(back_t)
    assert [(each["data"]["offset"], each["data"]["data"]) for each in replies[:2]] == [(2, "e5"), (3, "Nf3")]
    epoch = hub.factory.room_epoch("chess")
    assert replies[2] == {"path": "hub.resume", "id": "r", "data": {
        "session": back.session, "user": bob.identity.user, "name": name, "refused": [],
        "rooms": {"chess": {"epoch": epoch, "offset": 3, "members": 2, "recovered": True},
                  "go": {"epoch": hub.factory.room_epoch("go"), "offset": 0, "members": 1, "recovered": True}}}}
    assert back.rooms == ("chess", "go") and back.session != session, "the id is spent"
    send(ann, "hub.publish", {"room": "chess", "data": "Nc6"})
    assert [each["data"]["offset"] for each in said(back_t)] == [4]

    again, again_t = hub.connect()
    send(again, "hub.resume", {"session": session})
    assert said(again_t)[0]["data"]["code"] == "unknown_session", "a session is taken back once"
    metrics = hub.factory.get_metrics()
    assert (metrics.sessions_resumed, metrics.sessions_refused, metrics.sessions_parked) == (1, 1, 0)


def test_the_offsets_a_member_says_it_saw_bring_back_what_the_cut_connection_had_in_flight(hub_factory):
    hub = open_hub(hub_factory, room_history=10)
    ann, _, _ = joined(hub, "chess")
    bob, bob_t, session = joined(hub, "chess")
    for move in ("e4", "e5"):
        send(ann, "hub.publish", {"room": "chess", "data": move})
    hub.lose(bob)  # the hub sent it 2; the cut lost the second on the way
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session, "offsets": {"chess": 1, "elsewhere": 3}})
    replies = said(back_t)
    assert [each["data"]["data"] for each in replies[:-1]] == ["e5"]
    assert replies[-1]["data"]["rooms"]["chess"]["recovered"] is True


def test_a_parked_session_holds_its_rooms_so_a_message_sent_to_no_one_meanwhile_is_not_lost(hub_factory):
    hub = open_hub(hub_factory, room_history=10)
    bob, _, session = joined(hub, "solo")
    epoch = hub.factory.room_epoch("solo")
    hub.lose(bob)  # the room's only member: the room waits for it
    assert hub.factory.rooms() == {} and hub.factory.get_metrics().rooms == 0, "a held room has no members to show"
    hub.factory.broadcast(b"said while you were away", room="solo")
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session})
    replies = back_t.value().splitlines()
    assert replies[0] == b"said while you were away"
    assert hub.factory.room_epoch("solo") == epoch
    assert b'"recovered":true' in replies[1]


def test_a_session_not_resumed_within_the_window_expires_and_lets_its_rooms_go(hub_factory):
    hub = open_hub(hub_factory, room_history=10, resume_window=30.0)
    bob, _, session = joined(hub, "solo")
    epoch = hub.factory.room_epoch("solo")
    hub.lose(bob)
    hub.clock.advance(29.999)
    assert hub.factory.get_metrics().sessions_parked == 1
    hub.clock.advance(0.001)
    metrics = hub.factory.get_metrics()
    assert (metrics.sessions_parked, metrics.sessions_expired) == (0, 1)
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session})
    assert said(back_t)[0]["data"]["code"] == "unknown_session"
    send(back, "hub.join", {"room": "solo"})
    assert said(back_t)[0]["data"]["epoch"] != epoch, "the room went with the session"


def test_past_as_many_parked_sessions_as_connections_the_oldest_goes(hub_factory):
    hub = open_hub(hub_factory, max_connections=2)
    first, _, first_session = joined(hub, "a")
    second, _, _ = joined(hub, "a")
    hub.lose(first)
    hub.lose(second)
    third, _, _ = joined(hub, "a")
    hub.lose(third)
    metrics = hub.factory.get_metrics()
    assert (metrics.sessions_parked, metrics.sessions_expired) == (2, 1)
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": first_session})
    assert said(back_t)[0]["data"]["code"] == "unknown_session"


def test_resuming_a_live_session_takes_it_over_and_closes_the_other_connection(hub_factory):
    hub = open_hub(hub_factory, room_history=10)
    ann, _, _ = joined(hub, "chess")
    bob, bob_t, session = joined(hub, "chess")  # half-open: the hub has not seen it go
    send(ann, "hub.publish", {"room": "chess", "data": "e4"})
    said(bob_t)
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session, "offsets": {"chess": 0}})
    assert said(bob_t) == [{"path": "hub.error", "data": {
        "code": "session_taken", "reason": "this session was resumed on another connection", "path": None}}]
    assert bob_t.disconnecting
    replies = said(back_t)
    assert [each["data"]["data"] for each in replies[:-1]] == ["e4"]
    assert replies[-1]["data"]["rooms"]["chess"]["recovered"] is True
    hub.lose(bob)
    assert hub.factory.get_metrics().sessions_parked == 0, "the session went with the other"
    assert list(hub.factory.presence_by_id("chess")) == [ann.client_id, back.client_id]


def test_a_session_id_is_a_credential_for_a_hub_that_asks_for_tokens(hub_factory):
    hub = jwt_hub(hub_factory)
    alice, alice_t = hub.connect()
    send(alice, "hub.auth", {"token": token(name="Alice")})
    session = said(alice_t)[0]["data"]["session"]
    send(alice, "hub.join", {"room": "chess"})
    hub.lose(alice)
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session})
    assert said(back_t)[0]["data"]["name"] == "Alice"
    hub.clock.advance(60)  # past auth_timeout: the session was its credentials
    assert not back_t.disconnecting and back.rooms == ("chess",)


def test_a_resume_is_checked_against_the_identity_the_member_has_now(hub_factory):
    hub = jwt_hub(hub_factory)
    alice, alice_t = hub.connect()
    send(alice, "hub.auth", {"token": token()})
    session = said(alice_t)[0]["data"]["session"]
    for room in ("team-red", "team-blue"):
        send(alice, "hub.join", {"room": room})
    hub.lose(alice)

    mallory, mallory_t = hub.connect()
    send(mallory, "hub.auth", {"token": token(sub="mallory")})
    send(mallory, "hub.resume", {"session": session})
    assert said(mallory_t)[-1]["data"]["code"] == "unknown_session", "not another user's session"

    back, back_t = hub.connect()
    send(back, "hub.auth", {"token": token(rooms=["team-red"])})
    send(back, "hub.resume", {"session": session})
    reply = said(back_t)[-1]["data"]
    assert (list(reply["rooms"]), reply["refused"]) == (["team-red"], ["team-blue"])
    assert back.rooms == ("team-red",)
    assert hub.factory.rooms() == {"team-red": 1}, "the refused room was let go"


def test_a_session_is_kept_no_longer_than_its_token_and_not_after_the_hub_closed_it(hub_factory):
    hub = jwt_hub(hub_factory)
    hub.clock.advance(1000)
    alice, alice_t = hub.connect()
    send(alice, "hub.auth", {"token": token(exp=1010)})
    session = said(alice_t)[0]["data"]["session"]
    hub.lose(alice)
    hub.clock.advance(10)
    assert hub.factory.get_metrics().sessions_expired == 1

    closed, closed_t = hub.connect()
    send(closed, "hub.auth", {"token": token(exp=1040)})
    hub.clock.advance(hub.factory.auth_grace + 30)  # the token expired: the hub closes it
    assert closed_t.disconnecting
    hub.lose(closed)
    assert hub.factory.get_metrics().sessions_parked == 0
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": session})
    assert said(back_t)[0]["data"]["code"] == "unknown_session"


@pytest.mark.parametrize("data", [{}, {"session": 5}, {"session": ""}, {"session": "x" * 65},
                                  {"session": "s", "offsets": []}, {"session": "s", "offsets": {"a": -1}},
                                  {"session": "s", "offsets": {"a": True}}])
def test_a_malformed_resume_is_refused(hub_factory, data):
    hub = open_hub(hub_factory)
    member, transport = hub.connect()
    send(member, "hub.resume", data)
    assert said(transport)[0]["data"]["code"] == "bad_request"


def test_a_resume_comes_before_any_join(hub_factory):
    hub = open_hub(hub_factory)
    gone, _, session = joined(hub, "chess")
    hub.lose(gone)
    member, transport, _ = joined(hub, "go")
    send(member, "hub.resume", {"session": session})
    assert said(transport)[0]["data"] == {"code": "bad_request", "reason": "resume before joining any room",
                                          "path": "hub.resume"}
    assert hub.factory.get_metrics().sessions_parked == 1


# -- twistd, with nc-like clients ------------------------------------------------------


def test_twistd_keeps_a_dropped_member_s_session_for_the_resume_window():
    with Twistd("tcphub", "--port", "0", "--mode", "hub", "--room-history", "100",
                "--resume-window", "60") as twistd:
        _, port = twistd.wait_listening()
        ann, bob = HubMember(port), HubMember(port)
        try:
            ann.ask("hub.join", {"room": "chess"})
            session = bob.ask("hub.join", {"room": "chess"})["session"]
            bob.close()
            for number in range(1, 51):  # said after bob's drop, or before the hub saw it
                ann.ask("hub.publish", {"room": "chess", "data": ["ann", number]})
            bob = HubMember(port)
            reply = bob.ask("hub.resume", {"session": session, "offsets": {"chess": 0}})
            assert bob.got["chess"] == [("ann", number) for number in range(1, 51)]
            assert reply["rooms"]["chess"]["recovered"] is True
            ann.ask("hub.publish", {"room": "chess", "data": ["ann", 51]})
            bob.read_some(1)
            assert bob.offsets["chess"] == 51
        finally:
            ann.close()
            bob.close()
        twistd.shutdown()


# -- the chat's sessions (the chat page's, over WebSocket) -----------------------------


def lines(transport) -> list[str]:
    """What the hub wrote to one member since the last look, a line each."""
    value = transport.value()
    transport.clear()
    return value.decode().splitlines()


def session_of(said: list[str]) -> str:
    [session] = [line.removeprefix("* session ") for line in said if line.startswith("* session ")]
    return session


def chat(hub_factory, **options):
    hub = hub_factory(protocol=ChatProtocol, **options)
    carol, carol_t = hub.connect()  # nc
    carol.dataReceived(b"/nick carol\n/join games\nbefore the drop\n")
    assert not [line for line in lines(carol_t) if line.startswith("* session")], "nc has no use for one"
    return hub, carol, carol_t


def typed(member, *said: str) -> None:
    """What a page sends: a message each."""
    for each in said:
        member.dataReceived(each.encode())


def test_the_chat_page_back_with_its_session_has_its_nick_rooms_and_the_lines_it_missed_once(hub_factory):
    hub, carol, carol_t = chat(hub_factory, room_history=10)
    page, page_t = hub.connect_member()
    typed(page, "/nick alice", "/join games")
    session = session_of(lines(page_t))
    lines(carol_t)
    hub.lose(page)
    assert lines(carol_t) == ["* alice left #lobby", "* alice left #games"]
    carol.dataReceived(b"meanwhile one\nmeanwhile two\n")
    back, back_t = hub.connect_member(resume=session)
    said = lines(back_t)
    assert said[:4] == ["* you are now alice", "* welcome back, alice", "* you are in #lobby",
                        said[3]] and said[3].endswith("] #games <carol> meanwhile one")
    assert said[4].endswith("] #games <carol> meanwhile two") and said[5] == "* you are in #games"
    assert session_of(said) != session, "an id serves once"
    assert not [line for line in said if "before the drop" in line], "nothing it had is said twice"
    assert lines(carol_t) == ["* alice joined #lobby", "* alice joined #games"]
    assert back.rooms == ("lobby", "games") and back.room == "games"


def test_the_chat_page_is_told_what_it_could_not_get_back(hub_factory):
    hub, carol, carol_t = chat(hub_factory, room_history=1)
    page, page_t = hub.connect_member()
    typed(page, "/join games")
    session = session_of(lines(page_t))
    hub.lose(page)
    carol.dataReceived(b"meanwhile one\nmeanwhile two\n")
    back, back_t = hub.connect_member(resume=session)
    assert "* #games: some of what was said while you were away is lost (history_lost)" in lines(back_t)
    assert hub.factory.get_metrics().unrecovered == 1

    stranger, stranger_t = hub.connect_member(resume="forged")
    said = lines(stranger_t)
    assert said[0] == ("* could not resume your session (it expired, or the server restarted): "
                       "what was said meanwhile is not shown")
    assert said[1].startswith("* welcome, guest-") and stranger.rooms == ("lobby",)
    assert hub.factory.get_metrics().sessions_refused == 1


def test_the_chat_page_resuming_a_session_the_hub_thinks_live_takes_it_and_alice_never_leaves(hub_factory):
    hub, carol, carol_t = chat(hub_factory)
    page, page_t = hub.connect_member()
    typed(page, "/nick alice", "/join games")
    session = session_of(lines(page_t))
    lines(carol_t)
    back, back_t = hub.connect_member(resume=session)  # the old connection is half-open
    assert page.state == GONE, "dropped"
    hub.lose(page)
    assert "* welcome back, alice" in lines(back_t) and back.rooms == ("lobby", "games")
    assert not [line for line in lines(carol_t) if " left " in line]
    assert hub.factory.get_metrics().sessions_parked == 0


def test_a_chat_page_s_session_is_its_credentials_on_a_hub_that_asks_for_tokens(hub_factory):
    hub = hub_factory(protocol=ChatProtocol, auth_timeout=10.0)
    hub.factory.auth = JwtAuthenticator(SECRET, clock=hub.clock)
    page, page_t = hub.connect_member()
    typed(page, f"/auth {token(name='Alice')}")
    session = session_of(lines(page_t))
    hub.lose(page)
    back, back_t = hub.connect_member(resume=session)
    said = lines(back_t)
    assert said[0] == "* welcome back, Alice" and "* you are in #lobby" in said
    hub.clock.advance(60)  # past auth_timeout
    assert not back_t.disconnecting and back.user == "alice"


def test_a_session_taken_on_another_node_is_refused_here_and_one_redis_lacks_is_this_node_s(hub_factory):
    """With a store (Redis), a session this node parked serves once across
    the nodes: gone from the store (another node took it), it is refused
    here too; never stored (Redis was away), it is this node's."""
    hub = hub_factory(protocol=StructuredProtocol)
    sessions = hub.factory.sessions

    class Store:
        def __init__(self) -> None:
            self.kept: dict = {}
            self.takes: list[Deferred] = []

        def keep(self, session_id, state, client_id, wait):
            self.kept[session_id] = state
            return succeed(len(self.kept) == 1)  # Redis takes the first, and is away for the second

        def take(self, session_id):
            self.takes.append(Deferred())
            return self.takes[-1]

    store = sessions.store = Store()

    class Owner:
        user = None

    state = SessionState("ann", {}, None)
    taken: list = []
    for _ in range(2):
        session_id = sessions.open(Owner())
        sessions.park(session_id, state, "n1-1")
        sessions.take_anywhere(session_id, Owner(), None, "127.0.0.1:1").addCallback(taken.append)
        store.takes[-1].callback(None)
    assert taken == [None, state]
    assert hub.factory.get_metrics().sessions_refused == 1 and sessions.parked == 0


def test_a_resume_whose_connection_drops_while_the_store_answers_leaves_the_session_to_try_again(hub_factory):
    """The member's connection closes between its C{hub.resume} and Redis's
    answer: the session is parked again where it was (this node's, its rooms
    still held; another node's, back in the store), not lost."""
    hub = open_hub(hub_factory)
    sessions = hub.factory.sessions

    class Store:
        def __init__(self) -> None:
            self.takes: list[Deferred] = []
            self.given: list = []

        def keep(self, session_id, state, client_id, wait):
            return succeed(False)  # Redis away as the session was parked: this node's only

        def take(self, session_id):
            self.takes.append(Deferred())
            return self.takes[-1]

        def give_back(self, session_id, stored, wait):
            self.given.append((session_id, stored, wait))
            return succeed(True)

    store = sessions.store = Store()
    bob, bob_t, session = joined(hub, "chess")
    hub.lose(bob)
    back, _ = hub.connect()
    send(back, "hub.resume", {"session": session})
    hub.lose(back)
    store.takes[-1].callback(None)  # not in Redis: this node's own, taken for a connection gone
    # Parked: bob's again, and the one the closed connection had of its own.
    assert sessions.parked == 2 and hub.factory.room_size("chess") == 0 and "chess" in hub.factory.room_names()
    again, again_t = hub.connect()
    send(again, "hub.resume", {"session": session}, "r")
    store.takes[-1].callback(None)
    assert said(again_t)[-1]["data"]["rooms"]["chess"]["recovered"] is True and again.rooms == ("chess",)

    stored = StoredSession(SessionState("cat", {"go": ("e1", 3)}, None), "n2-7", {"go": None})
    other, _ = hub.connect()
    send(other, "hub.resume", {"session": "another-node-s"})
    hub.lose(other)
    store.takes[-1].callback(stored)
    assert store.given == [("another-node-s", stored, sessions.window)], "back in the store, as it was"


def test_the_chat_page_whose_connection_drops_while_the_store_answers_can_resume_after(hub_factory):
    hub, carol, carol_t = chat(hub_factory)
    takes: list[Deferred] = []

    class Store:
        def keep(self, session_id, state, client_id, wait):
            return succeed(False)

        def take(self, session_id):
            takes.append(Deferred())
            return takes[-1]

    hub.factory.sessions.store = Store()
    page, page_t = hub.connect_member()
    typed(page, "/nick alice", "/join games")
    session = session_of(lines(page_t))
    hub.lose(page)
    cut, _ = hub.connect_member(resume=session)
    hub.lose(cut)
    takes[-1].callback(None)
    back, back_t = hub.connect_member(resume=session)
    takes[-1].callback(None)
    said = lines(back_t)
    assert said[:2] == ["* you are now alice", "* welcome back, alice"] and back.rooms == ("lobby", "games")


@pytest.mark.parametrize("why", ["stopping", "expired"])
def test_a_session_given_back_as_the_hub_stops_or_past_its_token_lets_its_rooms_go(hub_factory, why):
    hub = open_hub(hub_factory)
    sessions = hub.factory.sessions
    bob, _, session = joined(hub, "chess")
    hub.lose(bob)

    class Taker:
        user = None

    state = sessions.take(session, Taker(), None, "127.0.0.1:1")
    assert "chess" in hub.factory.room_names(), "taken: its rooms held for the taker"
    if why == "stopping":
        sessions.clear()
    else:
        state = replace(state, identity=Identity("u1", "Bob", RoomPatterns(["*"]), hub.factory.clock.seconds()))
    sessions.give_back(session, state)
    assert sessions.parked == 0 and "chess" not in hub.factory.room_names()


class HandoverStore:
    """A store whose answers the test gives: C{takes} and C{asks} wait on
    Deferreds; what is kept is recorded."""

    def __init__(self) -> None:
        self.kept: dict = {}
        self.takes: list[Deferred] = []
        self.asks: list[tuple[str, Deferred]] = []

    def keep(self, session_id, state, client_id, wait):
        self.kept[session_id] = (state, client_id, wait)
        return succeed(True)

    def take(self, session_id):
        self.takes.append(Deferred())
        return self.takes[-1]

    def ask_handover(self, session_id):
        self.asks.append((session_id, Deferred()))
        return self.asks[-1][1]


@pytest.mark.parametrize("handed", [True, False])
def test_a_session_neither_here_nor_in_the_store_is_asked_of_the_other_hubs_and_taken_once_handed_over(
        hub_factory, handed):
    """A member back on this hub while its old hub still holds its
    connection: the other hubs are asked for the session, and once one has
    put it in the store it is taken from there; if none had it live, it is
    refused as unknown."""
    hub = open_hub(hub_factory, room_history=10)
    store = hub.factory.sessions.store = HandoverStore()
    back, back_t = hub.connect()
    send(back, "hub.resume", {"session": "live-elsewhere"})
    store.takes[-1].callback(None)
    assert [session for session, _ in store.asks] == ["live-elsewhere"]
    assert said(back_t) == [] and not back_t.disconnecting, "held until the other hubs answer"
    store.asks[-1][1].callback(handed)
    if not handed:
        assert said(back_t)[-1]["data"]["code"] == "unknown_session" and len(store.takes) == 1
        assert hub.factory.get_metrics().sessions_refused == 1
        return
    cat = Identity("guest-9", "cat", RoomPatterns(["*"]), None)
    store.takes[-1].callback(StoredSession(SessionState("cat", {}, cat), "n2-7", {}))  # its rooms: tests/test_bus.py
    assert said(back_t)[-1]["data"]["name"] == "cat" and hub.factory.get_metrics().sessions_resumed == 1


def test_a_session_live_here_is_handed_over_to_the_store_when_another_hub_asks_for_it(hub_factory):
    """Another hub asks (by the id's digest, never the id): the connection
    here is told and closed, and the session goes to the store for the
    window with its member's client id, not parked here; a digest of no
    live session here is answered False."""
    hub = open_hub(hub_factory)
    sessions = hub.factory.sessions
    store = sessions.store = HandoverStore()
    bob, bob_t, session = joined(hub, "chess")
    asked: list = []
    sessions.hand_over_to_store(session_digest("no-such-session")).addCallback(asked.append)
    sessions.hand_over_to_store(session_digest(session)).addCallback(asked.append)
    assert asked == [False, True]
    assert said(bob_t)[-1]["data"]["code"] == "session_taken" and bob_t.disconnecting
    state, client_id, wait = store.kept[session]
    assert state.rooms.keys() == {"chess"} and client_id == bob.client_id and wait == sessions.window
    hub.lose(bob)
    assert sessions.parked == 0, "it went to the other hub"
    sessions.hand_over_to_store(session_digest(session)).addCallback(asked.append)
    assert asked[-1] is False, "handed over once"


def test_another_hub_s_session_given_back_past_its_token_is_not_put_back_in_the_store(hub_factory):
    """Its taker's connection closed while the store answered, but its
    identity has expired meanwhile: nothing is kept for it."""
    hub = open_hub(hub_factory)
    sessions = hub.factory.sessions
    given: list = []

    class Store:
        def give_back(self, session_id, stored, wait):
            given.append((session_id, wait))
            return succeed(True)

    sessions.store = Store()
    now = hub.factory.clock.seconds()
    for expires, session_id in ((now + 5, "fresh"), (now, "expired")):
        identity = Identity("u1", "Bob", RoomPatterns(["*"]), expires)
        sessions.give_back(session_id, StoredSession(SessionState("Bob", {}, identity), "b-1", {}))
    assert given == [("fresh", 5)]


def test_a_live_session_past_its_token_is_not_put_in_the_store_for_another_hub(hub_factory):
    hub = open_hub(hub_factory)
    sessions = hub.factory.sessions
    store = sessions.store = HandoverStore()
    expired = Identity("u1", "Bob", RoomPatterns(["*"]), hub.factory.clock.seconds())

    class Owner:
        user, client_id, handed = "u1", "n1-1", False

        def hand_over(self):
            self.handed = True
            return SessionState("Bob", {}, expired)

    owner = Owner()
    session = sessions.open(owner)
    asked: list = []
    sessions.hand_over_to_store(session_digest(session)).addCallback(asked.append)
    assert asked == [False] and store.kept == {} and owner.handed, "its connection closed; nothing kept"
