"""
The structured protocol (--mode hub) and who may do what: in memory on a
Clock with real signed tokens (HS256 and ES256, made with PyJWT), then
twistd with a WebSocketHandler and a raw TCP client.
"""

from __future__ import annotations

import json
import socket

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tcphub.hub.identity import JwtAuthenticator, RoomPatterns, TokenFile
from tcphub.hub.structured import StructuredProtocol
from tests.processes import Twistd

SECRET = "an HMAC secret of sixty-four bytes, as RFC 7518 asks for HS512 keys...."


def token(key=SECRET, algorithm="HS256", **claims) -> str:
    return jwt.encode({"sub": "alice", **claims}, key, algorithm=algorithm)


def said(transport) -> list[dict]:
    """The JSON messages the hub wrote to one client since the last look."""
    value = transport.value()
    transport.clear()
    return [json.loads(line) for line in value.splitlines()]


def send(client, path: str, data=None, request_id: str | None = "1") -> None:
    message = {"path": path, "data": data if data is not None else {}}
    if request_id is not None:
        message["id"] = request_id
    client.dataReceived(json.dumps(message).encode() + b"\n")


def open_hub(hub_factory, **options):
    return hub_factory(protocol=StructuredProtocol, **options)


def jwt_hub(hub_factory, key=SECRET, **options):
    hub = open_hub(hub_factory, auth_timeout=10.0)
    hub.factory.auth = JwtAuthenticator(key, clock=hub.clock, **options)
    return hub


# -- an open hub: the operations ------------------------------------------------------


def test_a_member_back_with_since_gets_what_it_missed_in_order_before_live_messages(hub_factory):
    hub = open_hub(hub_factory, room_history=10)
    ann, ann_t = hub.connect()
    bob, bob_t = hub.connect()
    for member in (ann, bob):
        send(member, "hub.join", {"room": "chess"})
    joined = said(bob_t)[0]["data"]
    send(ann, "hub.publish", {"room": "chess", "data": "e4"})
    seen = said(bob_t)[0]["data"]
    assert (seen["epoch"], seen["offset"]) == (joined["epoch"], 1)
    hub.lose(bob)  # bob drops; ann goes on
    for move in ("e5", "Nf3"):
        send(ann, "hub.publish", {"room": "chess", "data": move})
    bob, bob_t = hub.connect()
    send(bob, "hub.join", {"room": "chess", "since": {"epoch": seen["epoch"], "offset": 1}}, "back")
    replies = said(bob_t)
    assert [(each["data"]["offset"], each["data"]["data"]) for each in replies[:2]] == [(2, "e5"), (3, "Nf3")]
    assert replies[2] == {"path": "hub.join", "id": "back", "data": {
        "room": "chess", "members": 2, "epoch": seen["epoch"], "offset": 3, "recovered": True,
        "session": bob.session}}
    send(ann, "hub.publish", {"room": "chess", "data": "Nc6"})
    assert said(bob_t)[0]["data"]["offset"] == 4
    assert hub.factory.get_metrics().unrecovered == 0


@pytest.mark.parametrize("since, reason", [
    ({"epoch": "another", "offset": 1}, "epoch_changed"),
    ({"epoch": None, "offset": 9}, "offset_ahead"),
    ({"epoch": None, "offset": 0}, "history_lost"),
])
def test_a_member_that_cannot_get_all_it_missed_is_told_so_and_gets_none_of_it(hub_factory, since, reason):
    hub = open_hub(hub_factory, room_history=2)
    ann, _ = hub.connect()
    send(ann, "hub.join", {"room": "chess"})
    for move in ("e4", "e5", "Nf3"):  # the history keeps the last two
        send(ann, "hub.publish", {"room": "chess", "data": move})
    bob, bob_t = hub.connect()
    epoch = hub.factory.room_epoch("chess")
    send(bob, "hub.join", {"room": "chess", "since": {**since, "epoch": since["epoch"] or epoch}})
    assert said(bob_t) == [{"path": "hub.join", "id": "1", "data": {
        "room": "chess", "members": 2, "epoch": epoch, "offset": 3, "recovered": False, "reason": reason,
        "session": bob.session}}]
    assert hub.factory.get_metrics().unrecovered == 1


def test_a_member_back_for_a_message_older_than_the_history_ttl_is_told_history_expired(hub_factory):
    hub = open_hub(hub_factory, room_history=10, room_history_ttl=60)
    ann, _ = hub.connect()
    send(ann, "hub.join", {"room": "chess"})
    epoch = hub.factory.room_epoch("chess")
    send(ann, "hub.publish", {"room": "chess", "data": "e4"})
    hub.clock.advance(30)
    send(ann, "hub.publish", {"room": "chess", "data": "e5"})
    hub.clock.advance(31)  # e4 is 61 s old, e5 31 s
    bob, bob_t = hub.connect()
    send(bob, "hub.join", {"room": "chess", "since": {"epoch": epoch, "offset": 0}})
    (reply,) = said(bob_t)
    assert (reply["data"]["recovered"], reply["data"]["reason"]) == (False, "history_expired")
    cat, cat_t = hub.connect()
    send(cat, "hub.join", {"room": "chess", "since": {"epoch": epoch, "offset": 1}})
    replies = said(cat_t)
    assert [reply["data"].get("data") for reply in replies[:-1]] == ["e5"] and replies[-1]["data"]["recovered"]


def test_a_room_made_anew_has_another_epoch_so_an_old_offset_is_not_taken_for_its(hub_factory):
    hub = open_hub(hub_factory, room_history=5)
    ann, ann_t = hub.connect()
    send(ann, "hub.join", {"room": "chess"})
    first = said(ann_t)[0]["data"]["epoch"]
    send(ann, "hub.leave", {"room": "chess"})  # empty: gone, with its numbering
    send(ann, "hub.join", {"room": "chess"})
    said(ann_t)
    send(ann, "hub.publish", {"room": "chess", "data": "e4"})
    bob, bob_t = hub.connect()
    send(bob, "hub.join", {"room": "chess", "since": {"epoch": first, "offset": 0}})
    reply = said(bob_t)[-1]["data"]
    assert reply["recovered"] is False and reply["reason"] == "epoch_changed" and reply["epoch"] != first


@pytest.mark.parametrize("since", [5, {"epoch": 1, "offset": 0}, {"epoch": "e", "offset": -1},
                                   {"epoch": "e", "offset": True}, {"epoch": "e"}])
def test_a_malformed_since_is_refused(hub_factory, since):
    hub = open_hub(hub_factory)
    ann, ann_t = hub.connect()
    send(ann, "hub.join", {"room": "chess", "since": since})
    assert said(ann_t)[0]["data"]["code"] == "bad_request" and ann.rooms == ()


def test_a_draining_hub_sends_hub_reconnect_then_closes(hub_factory):
    hub = open_hub(hub_factory)
    ann, ann_t = hub.connect()
    said(ann_t)
    assert hub.factory.go_away(0.0).called
    assert said(ann_t) == [{"path": "hub.reconnect", "data": {"reason": "this server is going away"}}]
    assert ann_t.disconnecting


def test_members_join_publish_and_see_who_is_there_in_envelopes_a_handler_routes(hub_factory):
    hub = open_hub(hub_factory)
    ann, ann_t = hub.connect()
    bob, bob_t = hub.connect()
    send(ann, "hub.join", {"room": "chess"}, "j1")
    epoch = hub.factory.room_epoch("chess")
    assert said(ann_t) == [{"path": "hub.join", "id": "j1", "data": {
        "room": "chess", "members": 1, "epoch": epoch, "offset": 0, "session": ann.session}}], \
        "a join's reply says the member's session"
    send(bob, "hub.join", {"room": "chess"})
    said(bob_t)
    send(ann, "hub.publish", {"room": "chess", "data": {"move": "e4"}}, "p1")
    assert said(ann_t) == [{"path": "hub.publish", "id": "p1", "data": {"room": "chess", "offset": 1}}]
    assert said(bob_t) == [{"path": "room.chess", "data": {
        "room": "chess", "from": ann.identity.user, "name": ann.identity.name, "offset": 1, "epoch": epoch,
        "data": {"move": "e4"}}}]
    send(bob, "hub.publish", {"room": "chess", "data": "d5"})
    assert said(ann_t)[0]["data"]["offset"] == 2
    assert said(bob_t)[0]["data"] == {"room": "chess", "offset": 2}
    send(ann, "hub.who", {"room": "chess"})
    assert said(ann_t)[0]["data"] == {"room": "chess", "total": 2, "members": [
        {"user": ann.identity.user, "name": ann.identity.name},
        {"user": bob.identity.user, "name": bob.identity.name}]}
    send(bob, "hub.leave", {"room": "chess"})
    assert said(bob_t) == [{"path": "hub.leave", "id": "1", "data": {"room": "chess"}}]
    assert hub.factory.room_size("chess") == 1


@pytest.mark.parametrize("message, code", [
    (b"not json", "bad_message"),
    (b"[1, 2]", "bad_message"),
    (b'{"data": {}}', "bad_message"),
    (b'{"path": "hub.join", "id": 7, "data": {}}', "bad_message"),
    (b'{"path": "hub.join", "data": "chess"}', "bad_message"),
    (b"[" * 100_000, "bad_message"),
    (b'{"path": "hub.dance", "data": {}}', "unknown_path"),
    (b'{"path": "hub.join", "data": {"room": ""}}', "bad_room"),
    (b'{"path": "hub.leave", "data": {"room": "nowhere"}}', "not_in_room"),
    (b'{"path": "hub.publish", "data": {"room": "nowhere", "data": 1}}', "not_in_room"),
])
def test_a_bad_request_gets_an_error_with_a_code_and_the_member_stays(hub_factory, message, code):
    hub = open_hub(hub_factory, max_frame=200_000)
    client, transport = hub.connect()
    client.dataReceived(message + b"\n")
    [refusal] = said(transport)
    assert refusal["path"] == "hub.error" and refusal["data"]["code"] == code, refusal
    assert not transport.disconnecting and hub.factory.get_metrics().bad_requests == 1


# -- authentication -----------------------------------------------------------------------


def test_anything_before_the_token_is_refused_and_the_member_closed_with_its_reason(hub_factory):
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    send(client, "hub.join", {"room": "chess"})
    [refusal] = said(transport)
    assert refusal["data"]["code"] == "unauthenticated" and transport.disconnecting
    assert hub.factory.get_metrics().auth_failed == 1 and hub.factory.room_size("chess") == 0
    assert hub.factory.client(client.client_id).user is None


def test_a_signed_token_gives_the_member_its_user_name_and_rooms(hub_factory):
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token(name="Alice", rooms=["team-*", "!team-secret"])}, "a")
    assert said(transport) == [{"path": "hub.auth", "id": "a", "data": {
        "user": "alice", "name": "Alice", "session": client.session}}]
    assert len(client.session) == 32
    assert hub.factory.client(client.client_id).user == "alice", "/connz shows who"
    send(client, "hub.join", {"room": "team-red"})
    assert said(transport)[0]["path"] == "hub.join"
    for room in ("team-secret", "lobby"):
        send(client, "hub.join", {"room": room})
        [refusal] = said(transport)
        assert refusal["data"]["code"] == "forbidden", room
    assert not transport.disconnecting, "a refused room is not a disconnect"
    assert hub.factory.get_metrics().forbidden == 2
    assert hub.factory.rooms() == {"team-red": 1}


@pytest.mark.parametrize("given, code", [
    (lambda: token(key="another HMAC secret of sixty-four bytes, as RFC 7518 asks for HS512"), "invalid_token"),
    (lambda: jwt.encode({"sub": "alice"}, None, algorithm="none"), "invalid_token"),
    (lambda: token(algorithm="HS512"), "invalid_token"),
    (lambda: token(exp=999), "expired_token"),
    (lambda: token(nbf=2000), "invalid_token"),
    (lambda: jwt.encode({"name": "no sub"}, SECRET, algorithm="HS256"), "invalid_token"),
    (lambda: token(rooms="*"), "invalid_token"),
    (lambda: "x" * 9000, "invalid_token"),
    (lambda: "garbage", "invalid_token"),
])
def test_a_bad_token_is_refused_counted_and_closed_and_never_logged(hub_factory, given, code):
    hub = jwt_hub(hub_factory)
    hub.clock.advance(1000)
    client, transport = hub.connect()
    sent = given()
    send(client, "hub.auth", {"token": sent})
    [refusal] = said(transport)
    assert refusal["data"]["code"] == code, refusal
    assert transport.disconnecting and hub.factory.get_metrics().auth_failed == 1
    assert sent not in json.dumps(refusal)


def test_a_token_for_another_audience_is_refused(hub_factory):
    hub = jwt_hub(hub_factory, audience="tcphub")
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token(aud="someone-else")})
    assert said(transport)[0]["data"]["reason"] == "the token is for another audience"
    other, other_t = hub.connect()
    send(other, "hub.auth", {"token": token(aud="tcphub")})
    assert said(other_t)[0]["data"] == {"user": "alice", "name": "alice", "session": other.session}


def test_an_es256_token_is_checked_with_the_public_key_alone(hub_factory):
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    hub = jwt_hub(hub_factory, key=public, algorithms=["ES256"])
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token(key=private, algorithm="ES256", sub="bob")})
    assert said(transport)[0]["data"]["user"] == "bob"
    forger, forger_t = hub.connect()
    # The public key used as an HMAC secret: the classic algorithm confusion.
    send(forger, "hub.auth", {"token": jwt.encode({"sub": "mallory"}, "not the key, but thirty-two bytes long", algorithm="HS256")})
    assert said(forger_t)[0]["data"]["code"] == "invalid_token" and forger_t.disconnecting


def test_a_key_that_cannot_check_its_algorithm_is_refused_at_start():
    from twisted.internet.task import Clock

    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ValueError, match="the key cannot check HS256 tokens"):
        JwtAuthenticator(public, algorithms=["HS256"], clock=Clock())
    with pytest.raises(ValueError, match="JWT algorithms are some of"):
        JwtAuthenticator(SECRET, algorithms=["none"], clock=Clock())


def test_no_token_within_the_auth_timeout_closes_the_member(hub_factory):
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    hub.clock.advance(9.9)
    assert not transport.disconnecting
    hub.clock.advance(0.1)
    assert said(transport)[0]["data"]["code"] == "auth_timeout" and transport.disconnecting
    assert hub.factory.get_metrics().auth_timeouts == 1


def test_an_expiring_token_can_be_refreshed_and_otherwise_closes_after_the_grace(hub_factory):
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token(exp=100)})
    hub.clock.advance(90)
    send(client, "hub.auth", {"token": token(exp=200)})
    said(transport)
    hub.clock.advance(100 + 25 - 90 + 1)
    assert not transport.disconnecting, "the fresh token holds"
    hub.clock.advance(200 + 25 - hub.clock.seconds() - 0.5)
    assert not transport.disconnecting, "the grace"
    hub.clock.advance(0.5)
    assert said(transport)[-1]["data"]["code"] == "expired_token" and transport.disconnecting


def test_a_fresh_token_must_be_for_the_same_user(hub_factory):
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token()})
    send(client, "hub.auth", {"token": token(sub="mallory")})
    assert said(transport)[-1]["data"]["code"] == "forbidden"
    assert client.identity.user == "alice" and not transport.disconnecting


def test_a_fresh_token_with_another_name_changes_the_member_s_presence_in_its_rooms(hub_factory):
    """What a room's list shows of a member (its user and name, on every
    node under --redis) is written again when a fresh token renames it."""
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token()})
    send(client, "hub.join", {"room": "lobby"})
    changed: list = []
    hub.factory.on("presence", lambda client_id, rooms: changed.append((client_id, tuple(rooms))))
    send(client, "hub.auth", {"token": token(name="Alice B.")})
    assert changed == [(client.client_id, ("lobby",))]
    assert client.presence == {"user": "alice", "name": "Alice B."}


def test_static_tokens_from_a_file(hub_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# token user rooms\ns3cret-1 alice chess-* !chess-admin\ns3cret-2 bob\n")
    hub = open_hub(hub_factory)
    hub.factory.auth = TokenFile(str(tokens), default_rooms=["lobby"])
    alice, alice_t = hub.connect()
    send(alice, "hub.auth", {"token": "s3cret-1"})
    send(alice, "hub.join", {"room": "chess-1"})
    send(alice, "hub.join", {"room": "chess-admin"})
    assert [each["path"] for each in said(alice_t)] == ["hub.auth", "hub.join", "hub.error"]
    bob, bob_t = hub.connect()
    send(bob, "hub.auth", {"token": "s3cret-2"})
    send(bob, "hub.join", {"room": "lobby"})
    send(bob, "hub.join", {"room": "chess-1"})
    assert [each["path"] for each in said(bob_t)] == ["hub.auth", "hub.join", "hub.error"]
    eve, eve_t = hub.connect()
    send(eve, "hub.auth", {"token": "s3cret-3"})
    assert said(eve_t)[0]["data"]["code"] == "invalid_token" and eve_t.disconnecting


@pytest.mark.parametrize("patterns, room, allowed", [
    (["*"], "anything", True),
    (["team-*"], "team-red", True),
    (["team-*"], "teams", False),
    (["*-log"], "a-b-log", True),
    (["a*b*c"], "aXbYc", True),
    (["a*b*c"], "aXbY", False),
    (["*", "!secret*"], "secret-plans", False),
    (["!secret*", "*"], "public", True),
    ([], "lobby", False),
    (["a*" * 60 + "b"], "a" * 128, False),
])
def test_room_patterns(patterns, room, allowed):
    assert RoomPatterns(patterns).allows(room) is allowed


def test_a_room_past_the_member_s_bound_is_refused_with_its_code(hub_factory):
    hub = open_hub(hub_factory, max_rooms_per_client=1)
    client, transport = hub.connect()
    send(client, "hub.join", {"room": "a"})
    send(client, "hub.join", {"room": "b"})
    assert [each["path"] for each in said(transport)] == ["hub.join", "hub.error"]
    assert hub.factory.get_metrics().bad_requests == 1


class Backend:
    """An authenticator of one's own: each check waits until the test answers it."""

    def __init__(self) -> None:
        self.checks: list = []

    def authenticate(self, token: str, peer: str):
        from twisted.internet.defer import Deferred

        self.checks.append((token, peer, Deferred()))
        return self.checks[-1][2]


def test_an_authenticator_of_one_s_own_answers_later_and_one_check_runs_at_a_time(hub_factory):
    from tcphub.hub.identity import Identity

    hub = open_hub(hub_factory)
    backend = hub.factory.auth = Backend()
    client, transport = hub.connect("127.0.0.7")
    send(client, "hub.auth", {"token": "t1"}, "first")
    send(client, "hub.auth", {"token": "t2"}, "second")
    assert said(transport) == [{"path": "hub.error", "id": "second", "data": {
        "code": "busy", "reason": "a token is being checked already", "path": "hub.auth"}}]
    [(given, peer, check)] = backend.checks
    assert given == "t1" and peer.startswith("127.0.0.7:")
    check.callback(Identity(user="carol", name="Carol", rooms=RoomPatterns(["*"])))
    assert said(transport) == [{"path": "hub.auth", "id": "first", "data": {
        "user": "carol", "name": "Carol", "session": client.session}}]


@pytest.mark.logs_errors("the authenticator raises: a bug, logged and counted", ZeroDivisionError)
def test_an_authenticator_that_fails_refuses_the_member_and_the_hub_goes_on(hub_factory):
    class Broken:
        def authenticate(self, token: str, peer: str):
            raise ZeroDivisionError("a bug in the check")

    hub = open_hub(hub_factory)
    hub.factory.auth = Broken()
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": "t"})
    [refusal] = said(transport)
    assert refusal["data"]["code"] == "auth_unavailable" and transport.disconnecting
    assert hub.factory.get_metrics().handler_errors == 1


def test_a_member_that_leaves_is_remembered_with_its_user(hub_factory):
    hub = jwt_hub(hub_factory)
    client, transport = hub.connect()
    send(client, "hub.auth", {"token": token()})
    hub.lose(client)
    assert hub.factory.closed_connections()[0].user == "alice"


# -- twistd: a TCP client, the project's own WebSocketHandler, a foreign WebSocket client ---------


@pytest_twisted.inlineCallbacks
def test_twistd_hub_mode_with_jwt_for_nc_like_clients_and_the_websocket_handler(tmp_path):
    from tcphub import RequestRefused, WebSocketHandler

    key = tmp_path / "jwt-key"
    key.write_text(SECRET + "\n")
    alice, bob = token(name="Alice", rooms=["chess"]), token(sub="bob", rooms=["chess"])
    hub = Twistd("tcphub", "--port", "0", "--mode", "hub", "--auth-jwt-key", str(key),
                 "--websocket", "tcp:0:interface=127.0.0.1")
    handler = None
    try:
        _, port = hub.wait_listening()
        ws_port = int(hub.wait_for(r"tcphub websocket listening on [^ ]+:(\d+)")[1])
        handler = WebSocketHandler(url=f"ws://127.0.0.1:{ws_port}/ws", error_path="hub.error",
                                   ping_interval=0, reconnect=False)
        deliveries: list = []
        delivered: Deferred = Deferred()
        handler.add_route("room.#", lambda data, context: (deliveries.append(data), delivered.callback(None)))
        yield handler.connect()
        authenticated = yield handler.request("hub.auth", {"token": bob})
        assert authenticated == {"user": "bob", "name": "bob", "session": authenticated["session"]}
        joined = yield handler.request("hub.join", {"room": "chess"})
        assert joined == {"room": "chess", "members": 1, "epoch": joined["epoch"], "offset": 0,
                          "session": authenticated["session"]}
        try:
            yield handler.request("hub.join", {"room": "secret"})
        except RequestRefused as refused:
            assert refused.code == "forbidden"
        else:
            raise AssertionError("a room outside the token's was joined")

        with socket.create_connection(("127.0.0.1", port), timeout=30) as tcp:
            lines = tcp.makefile("rb")
            for path, data in (("hub.auth", {"token": alice}), ("hub.join", {"room": "chess"}),
                               ("hub.publish", {"room": "chess", "data": {"move": "e4"}})):
                tcp.sendall(json.dumps({"path": path, "data": data, "id": path}).encode() + b"\n")
                assert json.loads(lines.readline())["path"] == path
            yield delivered
        assert deliveries == [{"room": "chess", "from": "alice", "name": "Alice", "offset": 1,
                               "epoch": joined["epoch"], "data": {"move": "e4"}}]

        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30) as stranger:
            stranger.send(json.dumps({"path": "hub.join", "data": {"room": "chess"}}))
            assert json.loads(stranger.recv(timeout=30))["data"]["code"] == "unauthenticated"
            with pytest.raises(ConnectionClosed) as closed:
                stranger.recv(timeout=30)
        assert closed.value.rcvd.code == 4001

        # A program (not a browser) may authenticate in its handshake.
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30,
                     additional_headers={"Authorization": f"Bearer {bob}"}) as program:
            said_first = json.loads(program.recv(timeout=30))
            assert said_first == {"path": "hub.auth", "data": {"user": "bob", "name": "bob",
                                                               "session": said_first["data"]["session"]}}
            program.send(json.dumps({"path": "hub.join", "data": {"room": "chess"}, "id": "j"}))
            joined = json.loads(program.recv(timeout=30))
            assert (joined["path"], joined["id"], joined["data"]["room"]) == ("hub.join", "j", "chess")
        with connect(f"ws://127.0.0.1:{ws_port}/ws", open_timeout=30,
                     additional_headers={"Authorization": "Bearer forged"}) as forger:
            assert json.loads(forger.recv(timeout=30))["data"]["code"] == "invalid_token"
            with pytest.raises(ConnectionClosed) as closed:
                forger.recv(timeout=30)
        assert closed.value.rcvd.code == 4001
        yield handler.close()
        handler = None
        hub.shutdown()
    finally:
        if handler is not None:
            yield handler.close()
        hub.kill()
    for secret in (SECRET, alice, bob):
        assert secret not in hub.output


def test_an_address_that_keeps_failing_is_refused_unchecked_for_a_while(hub_factory):
    hub = jwt_hub(hub_factory)
    for _ in range(10):
        guesser, _ = hub.connect("127.0.0.5")
        send(guesser, "hub.auth", {"token": "guess"})
    right, right_t = hub.connect("127.0.0.5")
    send(right, "hub.auth", {"token": token()})
    assert said(right_t)[0]["data"]["code"] == "too_many_attempts" and right_t.disconnecting
    other, other_t = hub.connect("127.0.0.6")
    send(other, "hub.auth", {"token": token()})
    assert said(other_t)[0]["path"] == "hub.auth", "another address is not held back"
    hub.clock.advance(1.0)
    again, again_t = hub.connect("127.0.0.5")
    send(again, "hub.auth", {"token": token()})
    assert said(again_t)[0]["path"] == "hub.auth", "a second later it may try once more"
    assert hub.factory.get_metrics().auth_failed == 11


def test_failed_attempts_remember_a_bounded_number_of_addresses():
    from tcphub.hub.identity import FailedAttempts

    attempts = FailedAttempts(rate=1.0, burst=1, max_addresses=3)
    for n in range(3):
        attempts.failed(f"127.0.2.{n}", 0.0)
    attempts.failed("127.0.2.9", 0.5)
    assert len(attempts) == 3 and not attempts.blocked("127.0.2.0", 0.5), "the oldest went first"
    assert attempts.blocked("127.0.2.9", 0.5)
    for n in range(5):
        attempts.failed(f"127.0.3.{n}", 10.0)
    assert len(attempts) == 3


def test_a_websocket_member_refused_is_closed_4001_or_4003_for_a_forbidden_identity(hub_factory):
    from twisted.internet.defer import fail

    from tcphub import AuthRefused

    class Refusing:
        def authenticate(self, token, peer):
            return fail(AuthRefused(token, "refused"))

    hub = open_hub(hub_factory)
    hub.factory.auth = Refusing()
    closes = []
    for code in ("forbidden", "invalid_token"):
        member, transport = hub.connect_member("127.0.0.8")
        member.dataReceived(json.dumps({"path": "hub.auth", "data": {"token": code}}).encode())
        closes.append(transport.closed_with)
    assert closes == [4003, 4001]


@pytest.mark.parametrize("window, same_user", [("60", True), ("0", False)])
@pytest_twisted.inlineCallbacks
def test_a_hub_session_rejoins_its_rooms_after_a_drop_and_gets_what_it_missed_once_in_order(window, same_user):
    """HubSession over WebSocketHandler: the connection drops (its message
    is over the hub's max_frame: the hub closes it with 1009), a TCP member
    publishes meanwhile, and the handler, connected again, resumes its
    session (the same user; or, with no session kept, joins with since as
    a new guest) and reads the missed messages once, in order, before the
    live ones."""
    from tcphub import HubSession, WebSocketHandler

    hub = Twistd("tcphub", "--port", "0", "--mode", "hub", "--room-history", "10", "--max-frame", "500",
                 "--resume-window", window, "--websocket", "tcp:0:interface=127.0.0.1")
    handler = None
    try:
        _, port = hub.wait_listening()
        ws_port = int(hub.wait_for(r"tcphub websocket listening on [^ ]+:(\d+)")[1])
        handler = WebSocketHandler(url=f"ws://127.0.0.1:{ws_port}/ws", error_path="hub.error", ping_interval=0,
                                   initial_delay=0.1, jitter=0, max_retries=None)
        rejoined: Deferred = Deferred()
        session = HubSession(handler, rejoined=lambda room, reply: rejoined.callback((room, reply)))
        moves: list = []
        waits: list = []

        def delivered(data, context) -> None:
            moves.append((data["offset"], data["data"]))
            for count, waiting in waits:
                if len(moves) == count:
                    waiting.callback(None)

        def until(count: int) -> Deferred:
            waiting: Deferred = Deferred()
            waits.append((count, waiting))
            return waiting

        handler.add_route("room.#", delivered)
        tcp = socket.create_connection(("127.0.0.1", port), timeout=30)
        lines = tcp.makefile("rb")

        def say(path: str, data: dict) -> dict:  # from the reactor's thread: a short blocking round trip
            tcp.sendall(json.dumps({"path": path, "data": data, "id": path}).encode() + b"\n")
            reply = json.loads(lines.readline())
            assert reply["path"] == path
            return reply["data"]

        def others() -> list:
            return [member["user"] for member in say("hub.who", {"room": "chess"})["members"][1:]]

        say("hub.join", {"room": "chess"})
        yield handler.connect()
        joined = yield session.join("chess")
        before = others()
        dropped: Deferred = Deferred()

        def on_close(context, code, reason) -> None:
            if dropped.called:  # the test's own close, at its end
                return
            # Gone: what is said now, the session must get back.
            for move in ("e5", "Nf3"):
                say("hub.publish", {"room": "chess", "data": move})
            dropped.callback(code)

        handler.on("close", on_close)
        first = until(1)
        say("hub.publish", {"room": "chess", "data": "e4"})
        yield first
        handler.send("too.long", "x" * 600)
        assert (yield dropped) == 1009
        room, reply = yield rejoined
        assert room == "chess" and reply["recovered"] is True and reply["epoch"] == joined["epoch"]
        assert (others() == before) is same_user, "a resumed session is the same user"
        fourth = until(4)
        say("hub.publish", {"room": "chess", "data": "Nc6"})
        yield fourth
        assert moves == [(1, "e4"), (2, "e5"), (3, "Nf3"), (4, "Nc6")]
        assert session.rooms == {"chess": (joined["epoch"], 4)}
        lines.close()
        tcp.close()
    finally:
        if handler is not None:
            yield handler.close()
        hub.shutdown()
