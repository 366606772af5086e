"""
Several hubs as one through a real Redis server (on a UNIX socket in the
test's directory): twistd processes, raw socket clients on every node.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
import signal
import socket
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tcphub import RedisBus, TcpServer
from tcphub.bus import lists
from tcphub.hub.modes import ChatProtocol
from tests.clients import LineClient
from tests.processes import REDIS_SERVER, REPO, OutputProcess, RedisServer, Twistd

ADMIN = r"tcphub admin listening on (?P<host>[^ ]+):(?P<port>\d+)"


@pytest.fixture
def redis(tmp_path):
    servers: list[RedisServer] = []

    class Redis:
        def start(self, *options: str) -> RedisServer:
            server = RedisServer(tmp_path, *options)
            servers.append(server)
            return server

        def restart(self, server: RedisServer) -> RedisServer:
            again = server.restart()
            servers.append(again)
            return again

    yield Redis()
    for server in servers:
        server.kill()


class Client:
    """A line client of one node."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lines = self.socket.makefile("rb")

    def say(self, line: str) -> None:
        self.socket.sendall(line.encode() + b"\n")

    def read(self) -> str:
        line = self.lines.readline()
        assert line.endswith(b"\n"), f"closed after {line!r}"
        return line[:-1].decode()

    def read_until(self, last: str) -> list[str]:
        """The lines up to and including C{last}."""
        seen = []
        while not seen or seen[-1] != last:
            seen.append(self.read())
        return seen

    def answer(self, command: str, begins: str) -> str:
        """Send a chat command; the first line after it that begins with C{begins}."""
        self.say(command)
        return next(line for line in iter(self.read, None) if line.startswith(begins))

    def ask_id(self) -> str:
        self.say("id")
        return self.read().removeprefix("id ")

    def close(self) -> None:
        self.lines.close()
        self.socket.close()


class Node:
    """C{twistd -ny tests/bus_hub.tac} as node C{name}."""

    def __init__(self, name: str, redis: RedisServer, monkeypatch) -> None:
        monkeypatch.setenv("TCPHUB_REDIS", redis.url)
        monkeypatch.setenv("TCPHUB_NODE", name)
        self.twistd = Twistd("-y", str(REPO / "tests" / "bus_hub.tac"))
        _, self.port = self.twistd.wait_listening()
        self.twistd.wait_for(f"bus: node {name} subscribed")

    def client(self) -> Client:
        return Client(self.port)


def eventually(check, what: str, attempts: int = 3000) -> None:
    """Ask C{check()} until it holds (each ask is an HTTP round trip to a
    node), up to C{attempts} times."""
    for _ in range(attempts):
        if check():
            return
    raise AssertionError(f"never {what}")


def shut_down(clients, nodes) -> None:
    """Close the clients, then stop each node as an operator would."""
    for client in clients:
        client.close()
    for node in nodes:
        node.twistd.shutdown()


@contextmanager
def killed_after(nodes):
    """Whatever happens in the block, no node outlives it."""
    try:
        yield
    finally:
        for node in nodes:
            node.twistd.kill()


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def test_broadcasts_room_broadcasts_and_sends_cross_three_nodes_once_and_in_order(redis, monkeypatch):
    server = redis.start()
    nodes = [Node(name, server, monkeypatch) for name in "abc"]
    with killed_after(nodes):
        clients = {f"{node}{i}": nodes["abc".index(node)].client() for node in "abc" for i in (1, 2)}
        ids = {name: client.ask_id() for name, client in clients.items()}
        assert all(ids[name].startswith(name[0] + "-") for name in ids), ids
        for name in ("a1", "b1", "b2", "c1"):
            clients[name].say("join r")
            assert clients[name].read() == "joined r"
        # The others of every node get every broadcast once, in order.
        for n in range(50):
            clients["a1"].say(f"all {n}")
        clients["a1"].say("end")
        expected = [f"all {n}" for n in range(50)] + ["end"]
        for name, client in clients.items():
            if name != "a1":
                assert client.read_until("end") == expected, name
        # A room broadcast, with ids of two other nodes excluded.
        clients["a2"].say(f"roomx r {ids['b1']},{ids['c1']} to the room")
        clients["a2"].say("end")
        for name in ("a1", "b2"):
            assert clients[name].read_until("end") == ["to the room", "end"], name
        for name in ("b1", "c1"):
            assert clients[name].read() == "end", f"{name} was excluded"
        # A room broadcast from a member: the room's others on every node.
        clients["b1"].say("room r from b1")
        clients["b1"].say("end")
        for name in ("a1", "b2", "c1"):
            assert clients[name].read_until("end") == ["from b1", "end"], name
        # A send to a client of another node; one to a client of this node that
        # is not there fails (one to another node's is at most once: it cannot).
        clients["c2"].say(f"send {ids['a2']} just for a2")
        assert clients["a2"].read_until("end") == ["end"]  # b1's, then:
        assert clients["a2"].read() == "just for a2"
        clients["c2"].say("end")
        assert clients["a2"].read() == "end"
        clients["b1"].say("end 2")  # published by b after anything b did with c2's send
        assert clients["a2"].read() == "end 2", "the send came once, from c2's node only"
        # c2 has "end 2" from b through Redis before its own sends are answered on
        # its node: a2 having it says nothing of when c's node delivers it.
        assert [clients["c2"].read() for _ in range(3)] == ["end", "end", "end 2"]
        clients["c2"].say("send z-00 nobody")
        clients["c2"].say(f"send c-{'0' * 32} nobody here")
        assert clients["c2"].read() == "failed", "no answer for another node's client, one for this node's"
        shut_down(clients.values(), nodes)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PluginNode:
    """C{twistd tcphub --redis … --admin …} as the README runs it."""

    def __init__(self, name: str, redis: RedisServer, *options: str, db: int = 0) -> None:
        self.name = name
        self.twistd = Twistd("tcphub", "--redis", f"{redis.url}?db={db}", "--node-id", name,
                             "--admin", "tcp:0:interface=127.0.0.1", *options)
        _, self.port = self.twistd.wait_listening()
        self.admin = int(self.twistd.wait_for(ADMIN)["port"])
        self.twistd.wait_for(f"bus: node {name} subscribed")

    def varz(self) -> dict:
        return get_json(self.admin, "/varz")



class BroadcastPair:
    """Nodes a and b (broadcast mode) on one Redis, a sender and a local
    client on a, a remote client on b; every process is killed on exit."""

    def __init__(self, redis: RedisServer, *options: str) -> None:
        self.a = self.b = None
        try:
            self.a = PluginNode("a", redis, "--port", "0", "--mode", "broadcast", *options)
            self.b = PluginNode("b", redis, "--port", "0", "--mode", "broadcast", *options)
        except BaseException:
            self.__exit__()
            raise
        self.sender, self.local, self.remote = Client(self.a.port), Client(self.a.port), Client(self.b.port)
        eventually(lambda: (self.a.varz()["hub"]["connections"], self.b.varz()["hub"]["connections"]) == (2, 1),
                   "every client in its node's table")

    def __enter__(self) -> BroadcastPair:
        return self

    def shutdown(self) -> None:
        shut_down((self.sender, self.local, self.remote), (self.a, self.b))

    def __exit__(self, *exc_info: object) -> None:
        for node in (self.a, self.b):
            if node is not None:
                node.twistd.kill()


def test_deployments_on_one_redis_are_apart_by_database_and_by_prefix(redis):
    """Pub/sub channels are global to a Redis: the database number and
    --redis-prefix name the channel, so each deployment hears only its own."""
    server = redis.start()
    broadcast = ("--port", "0", "--mode", "broadcast")
    a, same = PluginNode("a", server, *broadcast), PluginNode("s", server, *broadcast)
    db1, db1_peer = PluginNode("b", server, *broadcast, db=1), PluginNode("p", server, *broadcast, db=1)
    other, other_peer = (PluginNode(name, server, *broadcast, "--redis-prefix", "shop") for name in "oq")
    nodes = (a, same, db1, db1_peer, other, other_peer)
    with killed_after(nodes):
        clients = [Client(node.port) for node in nodes]
        eventually(lambda: all(node.varz()["hub"]["connections"] == 1 for node in nodes), "a client on each")
        eventually(lambda: [node.varz()["bus"]["nodes"] for node in nodes] == [2] * 6, "each sees its peer",
                   100_000)
        clients[0].say("to deployment tcphub:0")
        assert clients[1].read() == "to deployment tcphub:0"
        # Redis has pushed that publish to every subscriber of its channel by
        # now: a node of another deployment would read it before its own peer's.
        clients[3].say("to deployment tcphub:1")
        clients[5].say("to deployment shop:0")
        assert clients[2].read() == "to deployment tcphub:1"
        assert clients[4].read() == "to deployment shop:0"
        shut_down(clients, nodes)


def test_a_second_live_process_with_a_nodes_id_exits_1_with_one_line_and_the_first_goes_on(redis):
    server = redis.start()
    first = PluginNode("a", server, "--port", "0", "--mode", "broadcast")
    peer = PluginNode("b", server, "--port", "0", "--mode", "broadcast")
    with killed_after((first, peer)), Twistd("tcphub", "--redis", server.url, "--node-id", "a",
                                             "--port", "0") as second:
        second.wait_for("bus: node id a is held by another process")
        # The first keeps the id (it refreshes it every second); the second
        # gives up once a dead process would have let it go (node_ttl, 3 s).
        assert second.process.wait(timeout=60) == 1
        second.drain()
        refusals = [line for line in second.lines if "another live process is node a" in line]
        assert len(refusals) == 1 and "give each process its own --node-id" in refusals[0], second.output
        assert "Traceback" not in second.output
        one, two = Client(first.port), Client(peer.port)
        eventually(lambda: first.varz()["bus"]["nodes"] == 2, "the first still one of two nodes", 100_000)
        two.say("still one hub")
        assert one.read() == "still one hub"
        shut_down((one, two), (first, peer))
    assert "held by another process" not in first.twistd.output


@pytest.mark.parametrize("options, url_tail, why", [
    ((), "?db=99", "refused database 99: ERR DB index is out of range"),
    (("--cluster-enabled", "yes"), "", "is a Redis Cluster, which the bus does not support"),
])
def test_a_redis_the_bus_cannot_use_ends_twistd_with_one_line_and_status_1(redis, options, url_tail, why):
    server = redis.start(*options)
    with Twistd("tcphub", "--port", "0", "--redis", server.url + url_tail) as twistd:
        assert twistd.process.wait(timeout=60) == 1
        twistd.drain()
    assert len([line for line in twistd.lines if why in line]) == 1, twistd.output
    assert "Traceback" not in twistd.output


def test_a_node_restarted_at_once_takes_its_id_back_once_the_old_process_has_let_it_go(redis):
    server = redis.start()
    first = PluginNode("a", server, "--port", "0")
    alive = b"tcphub:0:alive:a"
    eventually(lambda: redis_command(server, b"GET", alive) is not None, "node a's claim in Redis")
    old = redis_command(server, b"GET", alive)
    first.twistd.stop(signal.SIGKILL)  # its alive key stays for node_ttl
    again = PluginNode("a", server, "--port", "0")
    with killed_after((again,)):
        eventually(lambda: redis_command(server, b"GET", alive) not in (None, old),
                   "the new process holding node a's id", 100_000)
        again.twistd.mark()
        if "is held by another process" in again.twistd.output:  # it started within node_ttl, as it mostly does
            again.twistd.wait_for("bus: node id a is this process's now")
        assert again.twistd.process.poll() is None
        again.twistd.shutdown()


def test_two_processes_share_one_port_and_are_one_hub(redis):
    server = redis.start()
    port = free_port()
    listen = ("--listen", f"reuseport:{port}:interface=127.0.0.1", "--mode", "broadcast")
    nodes = [PluginNode(name, server, *listen) for name in "ab"]
    with killed_after(nodes):
        clients = [Client(port) for _ in range(20)]
        # The kernel spreads connections over both processes (each gets one
        # with probability 1 - 2 * 2**-20): wait until both tables hold all 20.
        eventually(lambda: sum(node.varz()["hub"]["connections"] for node in nodes) == 20, "20 clients")
        counts = [node.varz()["hub"]["connections"] for node in nodes]
        assert min(counts) > 0, counts
        for n in range(100):
            clients[0].say(f"message {n}")
        clients[0].say("end")
        expected = [f"message {n}" for n in range(100)] + ["end"]
        for client in clients[1:]:
            assert client.read_until("end") == expected
        shut_down(clients, nodes)


def test_on_pub_sub_redis_killed_and_restarted_mid_stream_the_queue_waits_for_the_other_nodes(redis):
    server = redis.start()
    with BroadcastPair(server, "--redis-bus", "pubsub") as pair:
        a, b, sender, local, remote = pair.a, pair.b, pair.sender, pair.local, pair.remote
        # Node a knows of b (a heartbeat): after the outage it waits for b to
        # subscribe again before it sends what it queued.
        eventually(lambda: a.varz()["bus"]["nodes"] == 2, "node a seeing node b", 100_000)
        for n in range(50):
            sender.say(f"before {n}")
        sender.say("up")
        before = [f"before {n}" for n in range(50)] + ["up"]
        assert local.read_until("up") == before and remote.read_until("up") == before
        since = a.twistd.mark()
        server.kill()
        a.twistd.wait_for("bus: lost Redis", since=since)
        for n in range(50):
            sender.say(f"during {n}")
        sender.say("down")
        during = [f"during {n}" for n in range(50)] + ["down"]
        assert local.read_until("down") == during, "local delivery goes on without Redis"
        assert a.varz()["bus"]["queued"] == 51
        # Node b is frozen while Redis comes back: node a must hold its queue
        # until b has subscribed again, or b would miss it.
        b.twistd.process.send_signal(signal.SIGSTOP)
        try:
            since = a.twistd.mark()
            server = redis.restart(server)
            a.twistd.wait_for("bus: node a subscribed", since=since)
            a.twistd.wait_for("bus: node a publishing", since=since)
            assert (a.varz()["bus"]["publisher"], a.varz()["bus"]["queued"]) == ("waiting", 51)
        finally:
            b.twistd.process.send_signal(signal.SIGCONT)
        sender.say("after")
        assert remote.read_until("after") == during + ["after"], "the queue arrives once, in order"
        assert local.read() == "after"
        bus = a.varz()["bus"]
        assert (bus["queued"], bus["dropped"], bus["publisher"]) == (0, 0, "flowing")
        pair.shutdown()
        assert "Redis refused" not in a.twistd.output, "commands cut by the outage are not Redis's refusals"

def test_the_chats_rooms_command_counts_every_nodes_members(redis):
    server = redis.start()
    a, b = PluginNode("a", server, "--port", "0"), PluginNode("b", server, "--port", "0")
    with killed_after((a, b)):
        ann, bob, cat = Client(a.port), Client(b.port), Client(b.port)
        for client in (ann, bob, cat):
            client.read_until("* you are in #lobby")
        cat.say("/join games")
        cat.read_until("* you are in #games")

        # Node b's rooms reach node a with its next heartbeat (1 s).
        eventually(lambda: ann.answer("/rooms", "* rooms:") == "* rooms: #games (1), #lobby (3)",
                   "the cluster's rooms in /rooms", 100_000)
        shut_down((ann, bob, cat), (a, b))


def command_calls(server: RedisServer, name: str) -> int:
    """How many times Redis ran C{name} (C{INFO commandstats})."""
    found = re.search(rf"cmdstat_{name}:calls=(\d+)", redis_command(server, b"INFO", b"commandstats").decode())
    return int(found[1]) if found else 0


def test_a_nodes_rooms_are_read_whole_by_the_others_only_when_they_changed(redis):
    server = redis.start()
    a, b = PluginNode("a", server, "--port", "0"), PluginNode("b", server, "--port", "0")
    with killed_after((a, b)):
        ann = Client(a.port)
        ann.read_until("* you are in #lobby")
        eventually(lambda: b.varz()["bus"]["cluster_rooms"] == {"lobby": 1}, "a's lobby read by b")
        whole = command_calls(server, "hgetall")
        versions = command_calls(server, "hget")
        # Each node asks each other's version every heartbeat (1 s): three of b's at least.
        eventually(lambda: command_calls(server, "hget") >= versions + 6, "three heartbeats", 100_000)
        assert command_calls(server, "hgetall") == whole, "nothing changed: no rooms read whole"
        bob = Client(a.port)
        bob.read_until("* you are in #lobby")
        eventually(lambda: b.varz()["bus"]["cluster_rooms"] == {"lobby": 2}, "a's new member read by b")
        assert command_calls(server, "hgetall") > whole
        shut_down((ann, bob), (a, b))


def test_the_chats_who_names_every_nodes_members_and_skips_what_no_node_wrote(redis):
    server = redis.start()
    a, b = PluginNode("a", server, "--port", "0"), PluginNode("b", server, "--port", "0")
    with killed_after((a, b)):
        ann, bob, cat = Client(a.port), Client(b.port), Client(b.port)
        for client, nick in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
            client.read_until("* you are in #lobby")
            client.say(f"/nick {nick}")
            client.read_until(f"* you are now {nick}")
        # On Redis, not a node's writing: no JSON; JSON that is no nick; two
        # nicks in one line, which would pass for two lines in one parse.
        for node, garbage in (("y", b"{not json"), ("z", b'{"eve": 1}'), ("x", b'"xia", "xu"')):
            redis_command(server, b"SET", f"tcphub:0:alive:{node}".encode(), b"1", b"PX", b"600000")
            redis_command(server, b"SADD", b"tcphub:0:nodes", node.encode())
            redis_command(server, b"HSET", f"tcphub:0:members:{node}-lobby".encode(), f"{node}-1".encode(), garbage,
                          f"{node}-2".encode(), f'"{node}an"'.encode())

        # Node b's members reach node a with its next heartbeat (1 s); the
        # nodes' lists come in no particular order.
        eventually(lambda: sorted(ann.answer("/who", "* in #lobby: ").removeprefix("* in #lobby: ").split(", "))
                   == ["ann", "bob", "cat", "xan", "yan", "zan"], "the cluster's members in /who", 100_000)
        shut_down((ann, bob, cat), (a, b))


def test_hub_who_lists_every_nodes_members_with_their_user_and_name_and_counts_them_all(redis):
    server = redis.start()
    a, b = (PluginNode(name, server, "--port", "0", "--mode", "hub") for name in "ab")
    with killed_after((a, b)):
        ann, bob, cat = HubMember(a.port), HubMember(b.port), HubMember(b.port)
        users = {}
        for member in (ann, bob, cat):
            users[member] = member.ask("hub.auth", {})["user"]  # an open hub: a guest's
            member.ask("hub.join", {"room": "games"})
        redis_command(server, b"SET", b"tcphub:0:alive:z", b"1", b"PX", b"600000")
        redis_command(server, b"SADD", b"tcphub:0:nodes", b"z")
        redis_command(server, b"HSET", b"tcphub:0:members:z-games", b"z-1", b'"a nick"', b"z-2", b'{"user": 1}',
                      b"z-3", b"")

        # Node b's members reach node a with its next heartbeat (1 s).
        def listed() -> bool:
            who = ann.ask("hub.who", {"room": "games"})
            return who["total"] == 3 and len(who["members"]) == 3
        eventually(listed, "the cluster's members in hub.who", 100_000)
        who = ann.ask("hub.who", {"room": "games"})
        assert sorted(member["user"] for member in who["members"]) == sorted(users.values())
        assert all(member["name"] for member in who["members"]), who
        for member in (ann, bob, cat):
            member.close()


def test_a_node_killed_is_forgotten_from_the_cluster_rooms_within_its_time_to_live(redis):
    server = redis.start()
    a, b = PluginNode("a", server, "--port", "0"), PluginNode("b", server, "--port", "0")
    with killed_after((a, b)):
        # The default mode is the chat: every client starts in #lobby.
        clients = [Client(a.port), Client(b.port), Client(b.port)]
        for client in clients:
            client.read_until("* you are in #lobby")
        eventually(lambda: a.varz()["bus"]["cluster_rooms"] == {"lobby": 3}, "3 in the cluster's lobby")
        assert a.varz()["bus"]["nodes"] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{a.admin}/metrics", timeout=30) as response:
            metrics = {sample.name: sample.value for family in text_string_to_metric_families(response.read().decode())
                       for sample in family.samples if sample.name.startswith("tcphub_bus_")}
        gauges = [metrics[f"tcphub_bus_{name}"] for name in ("nodes", "connected", "subscribed")]
        assert gauges == [2, 1, 1]
        assert metrics["tcphub_bus_published_total"] >= 1, "the joins' announcements went on the bus"
        b.twistd.stop(signal.SIGKILL)
        # Gone within node_ttl (3 s) and a heartbeat (1 s); the bound here is
        # a count of asks, not a time: the suite has no timed assertions.
        eventually(lambda: a.varz()["bus"]["cluster_rooms"] == {"lobby": 1}, "node b forgotten", 100_000)
        assert a.varz()["bus"]["nodes"] == 1
        shut_down(clients, (a,))


def test_a_node_killed_mid_broadcast_leaves_the_others_a_run_of_its_messages_once_in_order(redis):
    """Node a is SIGKILLed while its member publishes a burst: node b's
    member has what reached Redis, a run from the first with no gap and
    nothing twice, and node b goes on (its own member's message arrives
    after)."""
    server = redis.start()
    options = ("--port", "0", "--mode", "hub")
    a, b = (PluginNode(name, server, *options) for name in "ab")
    with killed_after((a, b)):
        eventually(lambda: [node.varz()["bus"]["nodes"] for node in (a, b)] == [2, 2], "each sees the other",
                   100_000)
        publisher, watcher, other = HubMember(a.port), HubMember(b.port), HubMember(b.port)
        for member in (publisher, watcher, other):
            member.ask("hub.join", {"room": "r"})
        publisher.socket.sendall(b"".join(
            json.dumps({"path": "hub.publish", "data": {"room": "r", "data": ["a", n]}, "id": str(n)}).encode()
            + b"\n" for n in range(5000)))
        watcher.read_some(1)  # the burst is under way
        a.twistd.stop(signal.SIGKILL)
        other.ask("hub.publish", {"room": "r", "data": ["b", END]})
        watcher.read_until_ends(["b"])
        got = [n for who, n in watcher.got["r"] if who == "a"]
        assert got == list(range(len(got))), "a run from the first: nothing twice, no gap, in order"
        assert watcher.got["r"][-1] == ("b", END)
        for member in (watcher, other):
            member.close()


def test_a_slow_redis_pauses_the_publisher_and_nothing_is_lost(redis):
    server = redis.start()
    with BroadcastPair(server) as pair:
        a, sender, local, remote = pair.a, pair.sender, pair.local, pair.remote
        server.process.send_signal(signal.SIGSTOP)  # Redis reads nothing more
        sent = []
        try:
            for n in range(1000):  # 60 MB at most; the buffers fill long before
                line = f"{n} " + "x" * 60_000
                sender.say(line)
                sent.append(line)
                assert local.read() == line, "local delivery goes on"
                if a.varz()["bus"]["publisher"] == "paused":
                    break
            assert a.varz()["bus"]["publisher"] == "paused"
            for n in range(5):  # these wait in the queue
                line = f"queued {n}"
                sender.say(line)
                sent.append(line)
                assert local.read() == line
            assert a.varz()["bus"]["queued"] >= 5
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert [remote.read() for _ in sent] == sent
        bus = a.varz()["bus"]
        assert (bus["publisher"], bus["queued"], bus["dropped"]) == ("flowing", 0, 0)
        pair.shutdown()


def test_a_burst_past_the_bus_queue_on_a_healthy_redis_holds_the_senders_back_and_loses_nothing(redis):
    """Twenty clients of node a write 1,000 lines each at once: 20,000
    publishes, twice the bus queue's 10,000, faster than one reactor turn
    hands them to Redis.  The full queue pauses reading from a's clients
    until Redis has taken half of it; nothing is dropped, and node b's
    member reads every line, each sender's in order."""
    server = redis.start()
    a = PluginNode("a", server, "--port", "0", "--mode", "broadcast")
    b = PluginNode("b", server, "--port", "0", "--mode", "broadcast")
    with killed_after((a, b)):
        remote = Client(b.port)
        senders = [Client(a.port) for _ in range(20)]
        eventually(lambda: (a.varz()["hub"]["connections"], b.varz()["hub"]["connections"]) == (20, 1),
                   "every client in its node's table")
        eventually(lambda: a.varz()["bus"]["nodes"] == 2, "node a seeing node b", 100_000)
        for index, sender in enumerate(senders):
            sender.socket.sendall(b"".join(b"%d %d\n" % (index, n) for n in range(1000)))
        for index, sender in enumerate(senders):
            sender.say(f"{index} end")
        got: dict[int, list[int]] = {index: [] for index in range(20)}
        ended = 0
        while ended < 20:
            index, n = remote.read().split()
            if n == "end":
                ended += 1
            else:
                got[int(index)].append(int(n))
        assert all(numbers == list(range(1000)) for numbers in got.values()), {
            index: len(numbers) for index, numbers in got.items()}
        bus = a.varz()["bus"]
        assert (bus["dropped"], bus["queued"]) == (0, 0)
        shut_down([remote, *senders], (a, b))
    assert "bus queue is full" not in a.twistd.output


@pytest_twisted.inlineCallbacks
def test_cluster_members_lists_the_room_on_every_live_node(redis):
    server = redis.start()
    a = PluginNode("a", server, "--port", "0")
    with killed_after((a,)):
        client = Client(a.port)
        client.read_until("* you are in #lobby")
        eventually(lambda: a.varz()["bus"]["cluster_rooms"] == {"lobby": 1}, "a's lobby in Redis")
        [a_member] = get_json(a.admin, "/connz")["connections"]
        # An observer node in this process, with a member of its own.
        hub = TcpServer(port=0, protocol=ChatProtocol)
        observer = RedisBus(hub, server.url, node_id="o")
        yield hub.start()
        observer.startService()
        try:
            local = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", hub.port), LineClient())
            yield local.when_received(2)  # the welcome: it is in the lobby
            for _ in range(1000):  # until o's heartbeat has written its room and read a's
                if observer.cluster_rooms() == {"lobby": 2}:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
            assert observer.cluster_rooms() == {"lobby": 2}
            members = yield observer.cluster_members("lobby")
            assert sorted(members) == sorted([a_member["id"], hub.clients()[0].id])
            local.transport.loseConnection()
            yield local.lost
        finally:
            yield observer.stopService()
            yield hub.stop()
        client.close()
        a.twistd.shutdown()


PASSWORD = "n0t-in-ps-or-logs"


class Shown(ChatProtocol):
    """A chat member whose line in its rooms' lists a test sets."""

    shown: object = None

    @property
    def presence(self) -> object:
        return self.shown


@pytest_twisted.inlineCallbacks
def test_a_rooms_list_on_redis_follows_its_members_line_by_line_in_calls_cut_short(redis, monkeypatch):
    monkeypatch.setattr(lists, "MAX_ARGUMENTS", 9)  # the script's calls cut after 2 or 3 lines
    server = redis.start()
    hub = TcpServer(port=0, protocol=Shown)
    bus = RedisBus(hub, server.url, node_id="n", heartbeat=0.05)
    yield hub.start()
    bus.startService()
    members = []
    key = b"tcphub:0:members:n-chess"

    def listed() -> dict[bytes, bytes]:
        reply = redis_command(server, b"HGETALL", key)
        return dict(zip(reply[::2], reply[1::2]))

    @pytest_twisted.inlineCallbacks
    def until(expected: dict[bytes, bytes], what: str):
        for _ in range(1000):  # heartbeats every 50 ms
            if listed() == expected:
                return
            yield deferLater(reactor, 0.01, lambda: None)
        assert listed() == expected, what

    try:
        for n in range(7):
            member = hub.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10000 + n))
            member.makeConnection(StringTransport())
            member.shown = {"nick": f"m{n}"} if n % 2 else f"m{n}"
            hub.factory.join(member.client_id, "chess")
            members.append(member)
        lines = {member.client_id.encode(): json.dumps(member.shown).encode() for member in members}
        yield until(lines, "every member's line")
        assert int(redis_command(server, b"PTTL", key)) > 0, "the list goes with its node"
        members[2].shown = "renamed"
        members[2].presenceChanged()
        for member in members[3:6]:
            hub.factory.leave(member.client_id, "chess")
            del lines[member.client_id.encode()]
        lines[members[2].client_id.encode()] = b'"renamed"'
        yield until(lines, "the changed lines")
        assert sorted((yield bus.cluster_members("chess"))) == sorted(line.decode() for line in lines)
        for member in members:
            hub.factory.leave(member.client_id, "chess")
        yield until({}, "a room gone from the node: its list gone")
    finally:
        for member in members:
            member.transport.loseConnection()
            member.connectionLost(Failure(ConnectionDone()))
        yield bus.stopService()
        yield hub.stop()


@pytest.mark.parametrize("source", ["file", "environment"])
def test_the_redis_password_comes_from_a_file_or_the_environment_and_stays_out_of_sight(
        redis, tmp_path, monkeypatch, source):
    server = redis.start("--requirepass", PASSWORD)
    if source == "file":
        secret = tmp_path / "redis-password"
        secret.write_text(PASSWORD + "\n")
        options: tuple[str, ...] = ("--redis-password-file", str(secret))
    else:
        monkeypatch.setenv("TCPHUB_REDIS_PASSWORD", PASSWORD)  # twistd inherits the environment
        options = ()
    node = PluginNode("a", server, "--port", "0", *options)
    try:
        varz = json.dumps(node.varz())
        node.twistd.shutdown()
    finally:
        node.twistd.kill()
    assert PASSWORD not in varz and PASSWORD not in node.twistd.output
    assert "refused tcphub's login" not in node.twistd.output


def test_a_wrong_redis_password_is_logged_without_the_password(redis, tmp_path):
    server = redis.start("--requirepass", PASSWORD)
    secret = tmp_path / "redis-password"
    secret.write_text("wrong-" + PASSWORD)
    twistd = Twistd("tcphub", "--port", "0", "--redis", server.url, "--redis-password-file", str(secret))
    try:
        twistd.wait_for("refused tcphub's login")
        # Both connections retry with a backoff: one line, then one a burst.
        twistd.wait_for(r"\d+ more bus_login_refused in the last 10 s")
        twistd.stop(signal.SIGTERM)
    finally:
        twistd.kill()
    assert PASSWORD not in twistd.output
    assert len([line for line in twistd.lines if "refused tcphub's login" in line]) == 2, twistd.output


def test_a_redis_that_stops_answering_is_noticed_within_the_command_timeout_and_rejoined(redis):
    server = redis.start()
    node = PluginNode("a", server, "--port", "0")
    with killed_after((node,)):
        since = node.twistd.mark()
        server.process.send_signal(signal.SIGSTOP)
        try:
            node.twistd.wait_for(r"bus: Redis at unix://\S+ has not answered for \d+\.\d s; dropping the connection",
                                 since=since)
            status, body = readyz(node.admin)
            assert status == 503 and body.startswith("bus disconnected"), body
        finally:
            server.process.send_signal(signal.SIGCONT)
        eventually(lambda: readyz(node.admin)[0] == 200, "ready again once Redis answers", 100_000)
        node.twistd.shutdown()


def test_a_nick_in_use_on_one_node_is_refused_on_the_others_and_free_once_its_owner_leaves(redis):
    server = redis.start()
    a = PluginNode("a", server, "--port", "0")
    b = PluginNode("b", server, "--port", "0")
    with killed_after((a, b)):
        carol, other = Client(a.port), Client(b.port)
        carol.read_until("* you are in #lobby")
        other.read_until("* you are in #lobby")
        carol.say("/nick carol")
        assert carol.read_until("* you are now carol")[-1] == "* you are now carol"
        other.say("/nick Carol")
        assert other.read_until("* Carol is taken: choose another nick")
        carol.close()
        for _ in range(1000):  # the name is released as carol's connection goes
            other.say("/nick Carol")
            if other.read() == "* you are now Carol":
                break
        else:
            raise AssertionError("carol's nick was never released")
        other.close()
        a.twistd.shutdown()
        b.twistd.shutdown()


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_readyz_is_503_with_the_reason_while_the_bus_is_disconnected(redis):
    server = redis.start()
    a = PluginNode("a", server, "--port", "0")
    with killed_after((a,)):
        assert readyz(a.admin) == (200, "ready\n")
        server.kill()
        eventually(lambda: readyz(a.admin)[0] == 503, "503 once Redis is gone")
        status, body = readyz(a.admin)
        assert body.startswith("bus disconnected: Redis at unix://") and "is down" in body, body
        redis.restart(server)
        eventually(lambda: readyz(a.admin)[0] == 200, "ready again with Redis back")
        a.twistd.shutdown()


def test_an_unreachable_redis_is_named_with_why_once_per_burst_and_no_object_address():
    from tests.test_websocket import refused_port

    port = refused_port()
    twistd = Twistd("tcphub", "--port", "0", "--redis", f"redis://127.0.0.1:{port}/0")
    try:
        twistd.wait_for(rf"bus: cannot reach Redis at redis://127\.0\.0\.1:{port}/0: Connection was refused.*"
                        r"; retrying in \d+\.\d s$")
        twistd.shutdown()
    finally:
        twistd.kill()
    assert " object at 0x" not in twistd.output and "Scheduling retry" not in twistd.output
    assert twistd.output.count("bus: cannot reach Redis") <= 2


# -- the bus on a Redis Stream (--redis-bus streams) -------------------------------------


MAGIC = b"\x00th1\n"
"""What a bus message begins with."""


def redis_command(redis: RedisServer, *command: bytes):
    """One command on a fresh connection to C{redis}, in RESP2 written here
    (redis-cli cannot pass a NUL byte), and its reply."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(redis.socket))
        sock.sendall(b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part)
                                                          for part in command))
        replies = sock.makefile("rb")

        def reply():
            line = replies.readline()[:-2]
            kind, rest = line[:1], line[1:]
            if kind == b"$":
                return None if rest == b"-1" else replies.read(int(rest) + 2)[:-2]
            if kind == b"*":
                return [reply() for _ in range(int(rest))]
            assert kind in (b"+", b":"), line
            return rest

        return reply()


def client_id(redis: RedisServer, name: str) -> str:
    """The Redis id of the connection named C{name} (the bus names its two)."""
    for entry in redis.cli("CLIENT", "LIST").splitlines():
        fields = dict(part.split("=", 1) for part in entry.split() if "=" in part)
        if fields.get("name") == name:
            return fields["id"]
    raise AssertionError(f"no connection named {name}")


def test_on_a_stream_a_node_cut_off_while_redis_restarts_from_its_aof_misses_nothing(redis):
    """Node b's reading connection is cut and b frozen (it cannot connect
    again), node a goes on publishing, Redis is killed (SIGKILL) and started
    again from its append-only file; b, thawed, reads on from the last entry
    it had: every message once, in order.  With pub/sub, b would never get
    what was published while its subscription was down."""
    server = redis.start("--appendonly", "yes", "--appendfsync", "always")
    with BroadcastPair(server, "--redis-bus", "streams") as pair:
        a, b, sender, local, remote = pair.a, pair.b, pair.sender, pair.local, pair.remote
        for n in range(20):
            sender.say(f"before {n}")
        sender.say("up")
        before = [f"before {n}" for n in range(20)] + ["up"]
        assert local.read_until("up") == before and remote.read_until("up") == before
        b.twistd.process.send_signal(signal.SIGSTOP)
        try:
            server.cli("CLIENT", "KILL", "ID", client_id(server, "tcphub:b:subscriber"))
            for n in range(50):
                sender.say(f"during {n}")
            sender.say("down")
            during = [f"during {n}" for n in range(50)] + ["down"]
            assert local.read_until("down") == during
            eventually(lambda: a.varz()["bus"]["published"] >= 72 and a.varz()["bus"]["queued"] == 0,
                       "node a handing its messages to Redis")
            eventually(lambda: int(server.cli("XLEN", "tcphub:0:stream")) >= 72, "the stream holding them")
            since = a.twistd.mark()
            server.kill()
            a.twistd.wait_for("bus: lost Redis", since=since)
            server = redis.restart(server)
            a.twistd.wait_for("bus: node a publishing", since=since)
        finally:
            b.twistd.process.send_signal(signal.SIGCONT)
        sender.say("after")
        assert remote.read_until("after") == during + ["after"], "once each, in order, nothing lost"
        assert local.read() == "after"
        bus = b.varz()["bus"]
        assert (bus["missed"], bus["dropped"], bus["bad_messages"]) == (0, 0, 0)
        pair.shutdown()
        for node in (a, b):
            assert "Traceback" not in node.twistd.output and "Unhandled" not in node.twistd.output


def test_on_a_stream_a_copy_is_dropped_a_gap_is_counted_and_garbage_is_named(redis):
    """What a reader meets on a stream that is not one message once: a copy
    of an entry (a publish sent again after a lost reply), numbers with a
    gap (entries trimmed, or lost by a Redis restarted empty), and entries
    no tcphub wrote; each is counted, and the others go on."""
    server = redis.start()
    with BroadcastPair(server, "--redis-bus", "streams") as pair:
        b, sender, remote = pair.b, pair.sender, pair.remote
        sender.say("first")
        assert remote.read() == "first"
        [(_, fields)] = redis_command(server, b"XRANGE", b"tcphub:0:stream", b"-", b"+")
        message = fields[1]
        head, _, payload = message[len(MAGIC):].partition(b"\n")
        header = json.loads(head)
        assert (header["n"], header["q"], payload) == ("a", 1, b"first")
        since = b.twistd.mark()
        other = {**header, "n": "c", "i": "another process"}
        for forged in (message,  # the copy
                       MAGIC + json.dumps({**other, "q": 1}).encode() + b"\nfrom c",
                       MAGIC + json.dumps({**other, "q": 5}).encode() + b"\nfrom c after a gap",
                       b"no tcphub wrote this"):
            redis_command(server, b"XADD", b"tcphub:0:stream", b"*", b"m", forged)
        sender.say("second")
        assert [remote.read() for _ in range(3)] == ["from c", "from c after a gap", "second"]
        bus = b.varz()["bus"]
        assert (bus["duplicates"], bus["missed"], bus["bad_messages"]) == (1, 3, 1)
        b.twistd.wait_for(r"bus: missed 3 messages of node c \(3 so far\)", since=since)
        b.twistd.wait_for("dropped a message on the bus channel", since=since)
        pair.shutdown()


class HubMember:
    """A raw TCP member of a node in --mode hub (the structured protocol):
    what rooms deliver is kept, by room; a reply is returned."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lines = self.socket.makefile("rb")
        self.got: dict[str, list[tuple[str, int]]] = {}
        """Each room's deliveries, as (publisher, number)."""
        self.offsets: dict[str, int] = {}
        self.epochs: dict[str, str] = {}
        """Each room's epoch, as its last delivery said."""
        self.session = None
        self._asked = 0

    def ask(self, path: str, data: dict) -> dict:
        self._asked += 1
        request = f"{path}-{self._asked}"
        self.socket.sendall(json.dumps({"path": path, "data": data, "id": request}).encode() + b"\n")
        while True:
            message = self._next()
            if message.get("id") == request:
                assert message["path"] == path, message
                data = message["data"]
                self.session = data.get("session", self.session)
                if path == "hub.join":
                    self.offsets[data["room"]] = data["offset"]
                elif path == "hub.resume":
                    self.offsets.update({room: place["offset"] for room, place in data["rooms"].items()})
                return data

    def _next(self) -> dict:
        line = self.lines.readline()
        assert line.endswith(b"\n"), f"closed after {line!r}"
        return self._took(line)

    def read_until_closed(self) -> list[str]:
        """Read what the node sends until it closes: the paths of what was not a room's delivery."""
        paths = []
        for line in self.lines:
            paths.append(self._took(line)["path"])
        return [path for path in paths if not path.startswith("room.")]

    def _took(self, line: bytes) -> dict:
        message = json.loads(line)
        if message["path"].startswith("room."):
            data = message["data"]
            self.got.setdefault(data["room"], []).append(tuple(data["data"]))
            self.offsets[data["room"]] = data["offset"]
            self.epochs[data["room"]] = data["epoch"]
        return message

    def read_some(self, count: int) -> None:
        """Read C{count} deliveries (what else came stays unread)."""
        seen = sum(len(got) for got in self.got.values())
        while sum(len(got) for got in self.got.values()) < seen + count:
            self._next()

    def read_until_ends(self, publishers: list[str]) -> None:
        """Read until every publisher's last message to each room it is in has come."""
        def done() -> bool:
            return all((publisher, END) in self.got.get(room, []) for room in self.offsets
                       for publisher in publishers)
        while not done():
            self._next()

    def close(self) -> None:
        self.lines.close()
        self.socket.close()


WEBSOCKET = r"tcphub websocket listening on (?P<host>[^ ]+):(?P<port>\d+)"
END = -1
"""The number of a publisher's last message to a room."""
ROOMS = ("r1", "r2", "r3")


class ThreeNodes:
    """Issue 25's "done when" setting: three nodes on C{server}, a publisher
    on each in every room, and on each node two members, in r1 and r2 and
    in r2 and r3 (C{members}, in that order: C{members[2]} is node b's
    first)."""

    def __init__(self, server: RedisServer) -> None:
        self.nodes: list[PluginNode] = []
        self.members: list[HubMember] = []
        self.publishers: dict[HubMember, str] = {}
        for name in "abc":
            self.nodes.append(PluginNode(name, server, "--port", "0", "--mode", "hub", "--redis-bus", "streams",
                                         "--room-history", "1000"))
        for node, name in zip(self.nodes, "abc"):
            publisher = HubMember(node.port)
            self.publishers[publisher] = name
            for room in ROOMS:
                publisher.ask("hub.join", {"room": room})
        for node in self.nodes:
            for rooms in (("r1", "r2"), ("r2", "r3")):
                member = HubMember(node.port)
                for room in rooms:
                    member.ask("hub.join", {"room": room})
                self.members.append(member)

    def publish(self, numbers: range) -> None:
        """Each publisher says each number, to room C{ROOMS[n % 3]}."""
        for n in numbers:
            for publisher, name in self.publishers.items():
                publisher.ask("hub.publish", {"room": ROOMS[n % 3], "data": [name, n]})

    def end(self) -> None:
        """Each publisher's last message to every room, and every member has read up to them."""
        for publisher, name in self.publishers.items():
            for room in ROOMS:
                publisher.ask("hub.publish", {"room": room, "data": [name, END]})
        for member in self.members:
            member.read_until_ends(list(self.publishers.values()))

    def restart(self, redis, server: RedisServer, gone_while_down: range) -> tuple[RedisServer, list]:
        """Kill Redis, publish C{gone_while_down} while it is down, start it
        again: the new one, and where each node's output was at the kill."""
        since = [node.twistd.mark() for node in self.nodes]
        server.kill()
        for node, mark in zip(self.nodes, since):
            node.twistd.wait_for("bus: lost Redis", since=mark)
        self.publish(gone_while_down)
        return redis.restart(server), since

    def close(self) -> None:
        for member in [*self.members, *self.publishers]:
            member.close()
        for node in self.nodes:
            node.twistd.kill()


def test_three_nodes_on_a_stream_deliver_every_message_once_in_order_through_a_redis_restart_and_a_resume(redis):
    """Issue 25's "done when": three nodes on a Redis with AOF, members on
    every node in several rooms, a publisher on each; Redis SIGKILLed and
    started again mid-stream, a member gone and resumed mid-stream: every
    member gets every message of its rooms exactly once and in order, and
    the resumed one is told it recovered everything."""
    server = redis.start("--appendonly", "yes", "--appendfsync", "always")
    cluster = ThreeNodes(server)
    try:
        nodes, members = cluster.nodes, cluster.members
        cluster.publish(range(0, 30))
        resumed = members[2]  # on node b, in r1 and r2
        resumed.read_some(10)  # of 60: the rest is cut with the connection
        resumed.close()
        server, since = cluster.restart(redis, server, range(30, 60))
        for node, mark in zip(nodes, since):
            node.twistd.wait_for(f"bus: node {node.name} publishing", since=mark)
        back = HubMember(nodes[1].port)
        back.got, back.offsets = resumed.got, resumed.offsets
        reply = back.ask("hub.resume", {"session": resumed.session, "offsets": resumed.offsets})
        assert sorted(reply["rooms"]) == ["r1", "r2"]
        assert all(room["recovered"] for room in reply["rooms"].values()), reply
        members[2] = back
        cluster.publish(range(60, 90))
        cluster.end()
        for member in members:
            for room, got in member.got.items():
                for name in cluster.publishers.values():
                    said = [n for n in range(90) if ROOMS[n % 3] == room] + [END]
                    assert [n for who, n in got if who == name] == said, (
                        member.port, [node.port for node in nodes], member is back, room, name,
                        [node.varz()["bus"] for node in nodes])
        bus = [node.varz()["bus"] for node in nodes]
        assert [each["missed"] for each in bus] == [0, 0, 0]
    finally:
        cluster.close()


def test_three_nodes_through_a_redis_restarted_empty_repeat_nothing_and_every_member_sees_a_new_epoch(redis):
    """The other half of issue 25's "done when": as above, but Redis comes
    back without its data: the member back after the restart is told it
    could not recover (a new epoch), every other member's deliveries carry a
    new epoch from then on, and nobody gets a message twice or out of order
    (what the lost stream held unread may be missing: that is what the new
    epoch says)."""
    server = redis.start()
    cluster = ThreeNodes(server)
    try:
        nodes, members = cluster.nodes, cluster.members
        cluster.publish(range(0, 30))
        cut = members[2]  # on node b, in r1 and r2
        cut.read_some(10)
        cut.close()
        for member in members:
            if member is not cut:
                member.read_some(30)  # each has had some, in each of its rooms: their epochs are known
        before = {id(member): dict(member.epochs) for member in members}
        server, since = cluster.restart(redis, server, range(30, 60))  # no persistence: empty
        for node, mark in zip(nodes, since):
            node.twistd.wait_for("has lost the bus's data", since=mark)
        back = HubMember(nodes[1].port)
        back.got = cut.got
        reply = back.ask("hub.resume", {"session": cut.session, "offsets": cut.offsets})
        assert {room: (place["recovered"], place["reason"]) for room, place in reply["rooms"].items()} == {
            "r1": (False, "epoch_changed"), "r2": (False, "epoch_changed")}
        assert all(place["epoch"] != before[id(cut)][room] for room, place in reply["rooms"].items())
        members[2] = back
        cluster.publish(range(60, 90))
        cluster.end()
        for member in members:
            for room, got in member.got.items():
                for name in cluster.publishers.values():
                    numbers = [n for who, n in got if who == name][:-1]
                    assert numbers == sorted(set(numbers)), (room, name, "nothing twice, in order")
                    assert numbers[-1] == 87 + ROOMS.index(room), "the last before the end came"
            if member is not back:
                assert all(member.epochs[room] != before[id(member)][room] for room in member.epochs), (
                    "a new epoch on what came after the restart")
    finally:
        cluster.close()


def test_on_streams_a_node_reads_only_the_rooms_it_has_members_in_and_a_room_from_its_first_member_on(redis):
    """socket.io users' complaint about its Redis adapter: every message
    reaches every instance.  Here a room's messages go to its own stream,
    which only the nodes with members in it read."""
    server = redis.start()
    a, b = (PluginNode(name, server, "--port", "0", "--mode", "hub") for name in "ab")
    with killed_after((a, b)):
        ann, bob = HubMember(a.port), HubMember(b.port)
        for member, room in ((ann, "games"), (ann, "lobby"), (bob, "lobby")):
            member.ask("hub.join", {"room": room})
        for n in range(20):
            ann.ask("hub.publish", {"room": "games", "data": ["ann", n]})
        ann.ask("hub.publish", {"room": "lobby", "data": ["ann", END]})
        bob.read_until_ends(["ann"])
        assert b.varz()["bus"]["received"] == 1, "node b never read the games, where it has no member"
        assert redis_command(server, b"XLEN", b"tcphub:0:room:games") == b"20"

        bob.ask("hub.join", {"room": "games"})  # node b reads the games from now on
        for n in range(3):
            ann.ask("hub.publish", {"room": "games", "data": ["ann", 100 + n]})
        ann.ask("hub.publish", {"room": "games", "data": ["ann", END]})
        bob.read_until_ends(["ann"])
        assert bob.got["games"] == [("ann", 100), ("ann", 101), ("ann", 102), ("ann", END)]
        assert b.varz()["bus"]["received"] == 5
        for member in (ann, bob):
            member.close()


def test_on_streams_a_room_held_for_a_member_away_is_still_read_and_the_member_gets_all_it_missed(redis):
    server = redis.start()
    a, b = (PluginNode(name, server, "--port", "0", "--mode", "hub", "--room-history", "100") for name in "ab")
    with killed_after((a, b)):
        ann, bob = HubMember(a.port), HubMember(b.port)
        for member, room in ((ann, "chess"), (ann, "probe"), (bob, "chess")):
            member.ask("hub.join", {"room": room})
        bob.close()  # the only member of chess on node b: the room is held for it
        eventually(lambda: b.varz()["hub"]["sessions_parked"] == 1, "bob's session parked", 100_000)
        for n in range(3):
            ann.ask("hub.publish", {"room": "chess", "data": ["ann", n]})
        cat = HubMember(b.port)
        cat.ask("hub.join", {"room": "probe"})
        ann.ask("hub.publish", {"room": "probe", "data": ["ann", END]})  # said after chess's three: read after them
        cat.read_until_ends(["ann"])
        back = HubMember(b.port)
        reply = back.ask("hub.resume", {"session": bob.session, "offsets": {"chess": bob.offsets["chess"]}})
        assert reply["rooms"]["chess"]["recovered"] is True, reply
        assert back.got["chess"] == [("ann", 0), ("ann", 1), ("ann", 2)]
        for member in (ann, back, cat):
            member.close()


def test_a_member_drained_from_its_node_resumes_on_another_and_gets_every_message_once_in_order(redis):
    """Issue 25's lame duck: a node that drains (SIGTERM) tells its members
    to reconnect elsewhere; one that resumes its session on another node
    gets, from the room's stream, every message it had not had (said while
    it moved, and while its node drained), then the live ones: each once."""
    server = redis.start()
    options = ("--port", "0", "--mode", "hub", "--room-history", "1000")
    a = PluginNode("a", server, *options, "--drain-spread", "0.5")
    b = PluginNode("b", server, *options)
    with killed_after((a, b)):
        moving, ann, bob = HubMember(a.port), HubMember(a.port), HubMember(b.port)
        for member in (moving, ann, bob):
            member.ask("hub.join", {"room": "r"})
        for n in range(10):
            ann.ask("hub.publish", {"room": "r", "data": ["ann", n]})
            bob.ask("hub.publish", {"room": "r", "data": ["bob", n]})
        moving.read_some(5)
        a.twistd.process.send_signal(signal.SIGTERM)
        for n in range(10, 15):  # while node a drains
            bob.ask("hub.publish", {"room": "r", "data": ["bob", n]})
        assert moving.read_until_closed() == ["hub.reconnect"]
        for n in range(15, 20):  # while the member moves
            bob.ask("hub.publish", {"room": "r", "data": ["bob", n]})
        assert a.twistd.process.wait(timeout=30) == -signal.SIGTERM  # a clean stop re-raises its signal
        back = HubMember(b.port)
        back.got = moving.got
        reply = back.ask("hub.resume", {"session": moving.session})
        assert reply["rooms"]["r"]["recovered"] is True, reply
        assert reply["user"].startswith("a-") and reply["name"] == f"guest-{reply['user'][:6]}", reply
        bob.ask("hub.publish", {"room": "r", "data": ["bob", END]})
        back.read_until_ends(["bob"])
        assert [n for who, n in back.got["r"] if who == "ann"] == list(range(10))
        assert [n for who, n in back.got["r"] if who == "bob"] == [*range(20), END]
        again = HubMember(b.port)  # a session serves once
        again.socket.sendall(json.dumps({"path": "hub.resume", "data": {"session": moving.session}}).encode() + b"\n")
        assert again._next()["data"]["code"] == "unknown_session"
        for member in (moving, ann, bob, back, again):
            member.close()


def test_a_node_drained_mid_burst_hands_every_member_over_with_each_message_once_in_order(redis):
    """The lame duck under load: a publisher on the draining node has a
    burst in flight as SIGTERM comes, one on the other node goes on; every
    member of the drained node (the publisher too) resumes on the other and
    gets every message that was published, of both, once and in order, in
    each of its rooms, and the publisher none of its own."""
    server = redis.start()
    options = ("--port", "0", "--mode", "hub", "--room-history", "50000", "--room-history-bytes", "16000000")
    a = PluginNode("a", server, *options, "--drain-spread", "0.5")
    b = PluginNode("b", server, *options)
    rooms = ("r1", "r2")
    with killed_after((a, b)):
        m1, m2, ann = (HubMember(a.port) for _ in range(3))  # told to go in this order, ann last
        bob, watcher = HubMember(b.port), HubMember(b.port)
        joined = {ann: rooms, m1: rooms, m2: ("r1",), bob: rooms, watcher: rooms}
        for member, its_rooms in joined.items():
            for room in its_rooms:
                member.ask("hub.join", {"room": room})
        a.twistd.process.send_signal(signal.SIGTERM)
        published: list[int] = []  # ann's publishes node a took before it closed her: those it answered
        sent, closed = 0, False
        while not closed:  # bursts of 50, until node a tells her to go (the others are told meanwhile)
            assert sent < 100_000, "node a never told ann to go"
            ann.socket.sendall(b"".join(json.dumps({"path": "hub.publish", "data": {
                "room": rooms[n % 2], "data": ["ann", n]}, "id": f"p{n}"}).encode() + b"\n"
                                        for n in range(sent, sent + 50)))
            sent += 50
            while len(published) < sent:
                line = ann.lines.readline()
                if not line:
                    closed = True
                    break
                message = ann._took(line)
                if message["path"] == "hub.publish":
                    published.append(int(message["id"][1:]))
        assert 0 < len(published) < sent and published == list(range(len(published))), (sent, published)
        for n in range(100):
            bob.ask("hub.publish", {"room": rooms[n % 2], "data": ["bob", n]})
        moved = {}
        for member in (ann, m1, m2):
            if member is not ann:
                member.read_until_closed()
            back = HubMember(b.port)
            back.got = member.got
            reply = back.ask("hub.resume", {"session": member.session})
            assert all(room["recovered"] for room in reply["rooms"].values()), json.dumps(reply)
            moved[member] = back
        assert a.twistd.process.wait(timeout=30) == -signal.SIGTERM
        for room in rooms:
            moved[ann].ask("hub.publish", {"room": room, "data": ["ann", END]})
            bob.ask("hub.publish", {"room": room, "data": ["bob", END]})
        for member in (moved[m1], moved[m2], watcher):
            member.read_until_ends(["ann", "bob"])
        moved[ann].read_until_ends(["bob"])  # a publisher gets its replies, not its own messages
        bob.read_until_ends(["ann"])
        for old, member in ((m1, moved[m1]), (m2, moved[m2]), (bob, bob), (watcher, watcher), (ann, moved[ann])):
            for room in joined[old]:
                got = member.got[room]
                said = {"ann": [n for n in published if rooms[n % 2] == room] + [END],
                        "bob": [*range(room == "r2", 100, 2), END]}
                for who, its in said.items():
                    assert [n for by, n in got if by == who] == ([] if old is {"ann": ann, "bob": bob}[who]
                                                                 else its), (room, who, got)
        for member in (ann, m1, m2, bob, watcher, *moved.values()):
            member.close()


def test_a_member_cut_from_one_node_resumes_on_another_is_told_what_was_lost_on_the_way_and_the_id_is_spent(redis):
    server = redis.start()
    options = ("--port", "0", "--mode", "hub", "--room-history", "100")
    a, b = (PluginNode(name, server, *options) for name in "ab")
    with killed_after((a, b)):
        cut, ann, bob, watcher = HubMember(a.port), HubMember(a.port), HubMember(b.port), HubMember(a.port)
        for member, room in ((cut, "r"), (cut, "s"), (ann, "r"), (bob, "r"), (bob, "s"), (watcher, "s")):
            member.ask("hub.join", {"room": room})
        ann.ask("hub.publish", {"room": "r", "data": ["ann", 0]})
        cut.read_some(1)
        bob.ask("hub.publish", {"room": "s", "data": ["bob", 0]})
        watcher.read_some(1)  # node a has sent it to the cut member too, which will never read it
        cut.close()
        eventually(lambda: a.varz()["hub"]["sessions_parked"] == 1, "the session parked", 100_000)
        for n in range(1, 4):
            ann.ask("hub.publish", {"room": "r", "data": ["ann", n]})
            bob.ask("hub.publish", {"room": "s", "data": ["bob", n]})
        back = HubMember(b.port)
        back.got = cut.got
        back.socket.sendall(b"".join(json.dumps({"path": path, "data": data, "id": path}).encode() + b"\n" for path, data in (
            ("hub.resume", {"session": cut.session, "offsets": cut.offsets}), ("hub.join", {"room": "t"}))))
        replies: list[dict] = []
        while len(replies) < 2:
            message = back._next()
            if not message["path"].startswith("room."):
                replies.append(message)
        assert [reply["id"] for reply in replies] == ["hub.resume", "hub.join"], "the join waited for the resume"
        rooms = replies[0]["data"]["rooms"]
        assert {room: (place["recovered"], place.get("reason")) for room, place in rooms.items()} == {
            "r": (True, None), "s": (False, "history_lost")}, "bob's 0 was lost on the way: no other node can say which"
        assert back.got == {"r": [("ann", n) for n in range(4)]}
        ann.ask("hub.publish", {"room": "r", "data": ["ann", END]})
        back.read_some(1)
        assert back.got["r"][-1] == ("ann", END), "then the live ones"
        spent = HubMember(a.port)  # its old node still had it parked: spent now, everywhere
        spent.socket.sendall(json.dumps({"path": "hub.resume", "data": {"session": cut.session}}).encode() + b"\n")
        assert spent._next()["data"]["code"] == "unknown_session"
        assert a.varz()["hub"]["sessions_parked"] == 0
        redis_command(server, b"SET", b"tcphub:0:session:forged", b'{"name": "x", "rooms": {"r": [1]}}')
        forged = HubMember(b.port)  # what Redis holds under a session's key is checked, not trusted
        forged.socket.sendall(json.dumps({"path": "hub.resume", "data": {"session": "forged"}}).encode() + b"\n")
        assert forged._next()["data"]["code"] == "unknown_session"
        forged.close()
        for member in (ann, bob, back, spent, watcher):
            member.close()


def test_a_member_back_on_another_node_for_a_message_older_than_the_history_ttl_is_told_history_expired(redis):
    """--room-history-ttl bounds what a member recovers on another node as
    it does on its own: a message it missed is older than that by Redis's
    clock (its stream ids are in it), so the room says history_expired."""
    server = redis.start()
    options = ("--port", "0", "--mode", "hub", "--room-history", "100", "--room-history-ttl", "0.2")
    a, b = (PluginNode(name, server, *options) for name in "ab")
    with killed_after((a, b)):
        cut, ann = HubMember(a.port), HubMember(a.port)
        for member in (cut, ann):
            member.ask("hub.join", {"room": "r"})
        cut.close()
        eventually(lambda: a.varz()["hub"]["sessions_parked"] == 1, "the session parked", 100_000)
        ann.ask("hub.publish", {"room": "r", "data": ["ann", 0]})
        newest: list = []

        def in_the_stream() -> bool:  # the node writes it to Redis after the reply
            newest[:] = redis_command(server, b"XREVRANGE", b"tcphub:0:room:r", b"+", b"-", b"COUNT", b"1")
            return bool(newest)

        eventually(in_the_stream, "the message in the room's stream", 100_000)
        published_ms = int(newest[0][0].partition(b"-")[0])

        def redis_ms() -> int:
            seconds, micros = redis_command(server, b"TIME")
            return int(seconds) * 1000 + int(micros) // 1000

        eventually(lambda: redis_ms() > published_ms + 200, "Redis's clock past the message's age", 100_000)
        back = HubMember(b.port)
        reply = back.ask("hub.resume", {"session": cut.session, "offsets": cut.offsets})
        assert (reply["rooms"]["r"]["recovered"], reply["rooms"]["r"]["reason"]) == (False, "history_expired")
        assert back.got == {}, "none of it given"
        for member in (ann, back):
            member.close()


def test_a_member_still_connected_to_one_node_resumes_on_another_which_takes_its_session_over(redis):
    """The member's old connection is still open on node a (half-open, or
    the same client's before a network change) as it comes back on node b:
    node a closes it with session_taken and hands the session over through
    Redis; the member is itself on b, in its room, with nothing lost.  An id
    no node has is refused once each node has said so."""
    server = redis.start()
    options = ("--port", "0", "--mode", "hub", "--room-history", "100")
    a, b = (PluginNode(name, server, *options) for name in "ab")
    with killed_after((a, b)):
        eventually(lambda: [node.varz()["bus"]["nodes"] for node in (a, b)] == [2, 2], "each sees the other",
                   100_000)
        old, ann = HubMember(a.port), HubMember(b.port)
        for member in (old, ann):
            member.ask("hub.join", {"room": "r"})
        for n in range(3):
            ann.ask("hub.publish", {"room": "r", "data": ["ann", n]})
        old.read_some(3)
        back = HubMember(b.port)
        back.got = old.got
        reply = back.ask("hub.resume", {"session": old.session, "offsets": old.offsets})
        assert reply["rooms"]["r"]["recovered"] is True and list(reply["rooms"]) == ["r"]
        told = [json.loads(line) for line in old.lines]
        assert [message["data"]["code"] for message in told if message["path"] == "hub.error"] == [
            "session_taken"], "the old connection told, and closed"
        ann.ask("hub.publish", {"room": "r", "data": ["ann", END]})
        back.read_some(1)
        assert back.got["r"] == [("ann", n) for n in range(3)] + [("ann", END)], "once each, in order"
        assert b.varz()["bus"]["handovers"] == 1
        eventually(lambda: a.varz()["hub"]["sessions_parked"] == 0, "nothing parked on node a", 100_000)
        stranger = HubMember(b.port)
        stranger.socket.sendall(json.dumps({"path": "hub.resume", "data": {"session": "no-such"}}).encode() + b"\n")
        assert stranger._next()["data"]["code"] == "unknown_session"
        assert b.varz()["bus"]["handovers"] == 1
        for member in (ann, back, stranger):
            member.close()


def read_until(page, wanted: str) -> list[str]:
    """The chat page's lines (a WebSocket client's messages) up to one that begins with C{wanted}."""
    lines: list[str] = []
    while not lines or not lines[-1].startswith(wanted):
        lines.append(page.recv(timeout=30))
    return lines


def ann_in_games(page) -> str:
    """The chat page becomes ann, in #games; its session id."""
    session = read_until(page, "* session ")[-1].split()[-1]
    page.send("/nick ann")
    read_until(page, "* you are now ann")
    page.send("/join games")
    read_until(page, "* you are in #games")
    return session


def test_the_chat_page_s_session_resumes_on_another_node_with_its_nick_rooms_and_the_lines_it_missed(redis):
    """The chat page, back after a drop on whichever node the load balancer
    gives it: its nick, its rooms (the current one last) and the lines said
    while it was away, read from the rooms' streams."""
    from websockets.sync.client import connect

    server = redis.start()
    options = ("--port", "0", "--websocket", "tcp:0:interface=127.0.0.1", "--room-history", "100")
    a, b = (PluginNode(name, server, *options) for name in "ab")
    with killed_after((a, b)):
        a_url, b_url = (f"ws://127.0.0.1:{node.twistd.wait_for(WEBSOCKET)['port']}/ws" for node in (a, b))

        with connect(a_url, proxy=None, open_timeout=30) as page:
            session = ann_in_games(page)
        eventually(lambda: a.varz()["hub"]["sessions_parked"] == 1, "the page's session parked", 100_000)
        bob = socket.create_connection(("127.0.0.1", b.port), timeout=30)
        lines = bob.makefile("rb")
        nick = lines.readline().decode().split()[-1]  # * welcome, guest-…
        for said in (b"/join games\n", b"hi games\n", b"/join lobby\n", b"hi lobby\n", b"/rooms\n"):
            bob.sendall(said)
        while not lines.readline().startswith(b"* rooms"):  # all said: the /rooms answer comes after
            pass
        with connect(f"{b_url}?resume={session}", proxy=None, open_timeout=30) as back:
            got = read_until(back, "* session ")
        assert got[0].startswith("* welcome back, ") and "* you are now ann" in got, got  # claimed across the nodes
        assert f"#games <{nick}> hi games" in got and f"#lobby <{nick}> hi lobby" in got, got
        assert [line for line in got if line.startswith("* you are in")] == ["* you are in #lobby",
                                                                            "* you are in #games"]
        assert not any("lost" in line for line in got), got
        bob.close()


def test_the_chat_page_still_connected_to_one_node_is_taken_over_by_its_resume_on_another(redis):
    """The page's old WebSocket is still open on node a (the hub has not
    seen it go) as it comes back on node b: node a drops the old one without
    a word, and the page is itself on b: its nick, its rooms."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    server = redis.start()
    options = ("--port", "0", "--websocket", "tcp:0:interface=127.0.0.1", "--room-history", "100")
    a, b = (PluginNode(name, server, *options) for name in "ab")
    with killed_after((a, b)):
        eventually(lambda: [node.varz()["bus"]["nodes"] for node in (a, b)] == [2, 2], "each sees the other",
                   100_000)
        a_url, b_url = (f"ws://127.0.0.1:{node.twistd.wait_for(WEBSOCKET)['port']}/ws" for node in (a, b))

        with connect(a_url, proxy=None, open_timeout=30) as old:
            session = ann_in_games(old)
            with connect(f"{b_url}?resume={session}", proxy=None, open_timeout=30) as back:
                got = read_until(back, "* session ")
            assert got[0].startswith("* welcome back, ") and "* you are now ann" in got, got
            assert [line for line in got if line.startswith("* you are in")] == ["* you are in #lobby",
                                                                                "* you are in #games"], got
            with pytest.raises(ConnectionClosed):
                while True:
                    old.recv(timeout=30)
        assert b.varz()["bus"]["handovers"] == 1


def test_on_a_stream_a_redis_restarted_empty_changes_every_room_s_epoch_and_repeats_nothing(redis):
    """Redis comes back without its data: what its stream held is gone, so
    a member back after the restart is told it cannot recover (a new epoch),
    the others see the new epoch on what comes next, and nothing is
    delivered twice."""
    server = redis.start()
    nodes = []
    members: list[HubMember] = []
    try:
        for name in "ab":
            nodes.append(PluginNode(name, server, "--port", "0", "--mode", "hub", "--redis-bus", "streams",
                                    "--room-history", "100"))
        publisher, staying, leaving = HubMember(nodes[0].port), HubMember(nodes[1].port), HubMember(nodes[1].port)
        members = [publisher, staying, leaving]
        for member in members:
            member.ask("hub.join", {"room": "r1"})
        epoch = staying.ask("hub.join", {"room": "r1"})["epoch"]
        for n in range(10):
            publisher.ask("hub.publish", {"room": "r1", "data": ["a", n]})
        leaving.read_some(10)
        leaving.close()
        # Kept in Redis (as node b knows): gone from it with the restart, it was not taken elsewhere.
        eventually(lambda: redis_command(server, b"EXISTS", f"tcphub:0:session:{leaving.session}".encode()) == b"1",
                   "the session kept in Redis")
        since = [node.twistd.mark() for node in nodes]
        server.kill()
        server = redis.restart(server)  # no persistence: empty
        for node, mark in zip(nodes, since):
            node.twistd.wait_for("has lost the bus's data", since=mark)
        back = HubMember(nodes[1].port)
        members.append(back)
        reply = back.ask("hub.resume", {"session": leaving.session, "offsets": leaving.offsets})
        assert reply["rooms"]["r1"]["recovered"] is False and reply["rooms"]["r1"]["reason"] == "epoch_changed"
        assert reply["rooms"]["r1"]["epoch"] != epoch
        for n in range(10, 20):
            publisher.ask("hub.publish", {"room": "r1", "data": ["a", n]})
        publisher.ask("hub.publish", {"room": "r1", "data": ["a", END]})
        for member in (staying, back):
            member.read_until_ends(["a"])
        assert staying.got["r1"] == [("a", n) for n in range(20)] + [("a", END)], "nothing twice, nothing lost"
        assert back.got["r1"] == [("a", n) for n in range(10, 20)] + [("a", END)]
    finally:
        for member in members:
            member.close()
        for node in nodes:
            node.twistd.kill()


class SentinelSetup:
    """A master and its replica on 127.0.0.1 ports, and one Sentinel
    watching them (quorum 1, a master down after 500 ms): Redis's own
    failover, with its real processes."""

    def __init__(self, directory, password: str | None = None) -> None:
        """C{password}: the Sentinel's own (its C{requirepass})."""
        self.master_port, self.replica_port, self.port = free_port(), free_port(), free_port()
        self.processes: list[OutputProcess] = []
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.master = self._start(directory / "master", [REDIS_SERVER, "--port", str(self.master_port), *common])
        self.replica = self._start(directory / "replica", [
            REDIS_SERVER, "--port", str(self.replica_port), *common,
            "--replicaof", "127.0.0.1", str(self.master_port)])
        self.replica.wait_for("MASTER <-> REPLICA sync: Finished with success")
        config = directory / "sentinel.conf"
        config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                          f"sentinel monitor main 127.0.0.1 {self.master_port} 1\n"
                          "sentinel down-after-milliseconds main 500\nsentinel failover-timeout main 10000\n"
                          + (f"requirepass {password}\n" if password else ""))
        self.sentinel = self._start(directory, [REDIS_SERVER, str(config), "--sentinel"], wait=False)
        self.sentinel.wait_for(r"\+slave slave 127\.0\.0\.1:%d" % self.replica_port)
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/main"

    def _start(self, directory, command, wait: bool = True) -> OutputProcess:
        directory.mkdir(exist_ok=True)
        process = OutputProcess([str(part) for part in command] + (["--dir", str(directory)] if wait else []))
        self.processes.append(process)
        if wait:
            process.wait_for("Ready to accept connections|ready to accept connections")
        return process

    def kill(self) -> None:
        for process in self.processes:
            process.kill()


def test_the_bus_follows_a_sentinel_failover_and_loses_nothing_it_had_said(tmp_path):
    """The master is SIGKILLed; Sentinel promotes the replica; both nodes
    ask Sentinel again, connect to the new master, and what node a said
    meanwhile reaches node b once, in order (--redis-bus streams).  (A
    failover an operator asks for, the old master living on as a replica,
    works the same: Redis drops its clients as it is demoted; it takes 17 s,
    so it is not in the default run.)"""
    setup = SentinelSetup(tmp_path)
    try:
        with BroadcastPair(setup, "--redis-bus", "streams") as pair:
            a, b, sender, local, remote = pair.a, pair.b, pair.sender, pair.local, pair.remote
            for node in (a, b):
                node.twistd.wait_for(f"Sentinel says the master of .* is at 127.0.0.1:{setup.master_port}")
            for n in range(20):
                sender.say(f"before {n}")
            sender.say("up")
            before = [f"before {n}" for n in range(20)] + ["up"]
            assert remote.read_until("up") == before and local.read_until("up") == before
            since = [node.twistd.mark() for node in (a, b)]
            setup.master.kill()
            for n in range(20):
                sender.say(f"during {n}")
            sender.say("down")
            setup.sentinel.wait_for(r"\+switch-master main 127\.0\.0\.1 %d 127\.0\.0\.1 %d"
                                    % (setup.master_port, setup.replica_port))
            for node, mark in zip((a, b), since):
                node.twistd.wait_for(f"Sentinel says the master of .* is at 127.0.0.1:{setup.replica_port}",
                                     since=mark)
            sender.say("after")
            during = [f"during {n}" for n in range(20)] + ["down"]
            assert remote.read_until("after") == during + ["after"], "once each, in order, nothing lost"
            assert local.read_until("after") == during + ["after"]
            assert b.varz()["bus"]["missed"] == 0
            pair.shutdown()
            for node in (a, b):
                assert "Traceback" not in node.twistd.output and "Unhandled" not in node.twistd.output
    finally:
        setup.kill()


def test_a_sentinel_with_its_own_password_is_asked_with_it_from_the_environment_and_refuses_without(
        tmp_path, monkeypatch):
    setup = SentinelSetup(tmp_path, password=PASSWORD)
    try:
        with Twistd("tcphub", "--port", "0", "--redis", setup.url) as refused:
            refused.wait_for(r"bus: cannot reach Redis at .*: no Sentinel knows where master 'main' is: "
                             r"127\.0\.0\.1:\d+: NOAUTH")
            refused.shutdown()
        monkeypatch.setenv("TCPHUB_REDIS_SENTINEL_PASSWORD", PASSWORD)  # twistd inherits the environment
        with Twistd("tcphub", "--port", "0", "--redis", setup.url, "--admin", "tcp:0:interface=127.0.0.1") as twistd:
            twistd.wait_for(f"Sentinel says the master of .* is at 127.0.0.1:{setup.master_port}")
            twistd.wait_for("bus: node .* subscribed")
            varz = json.dumps(get_json(int(twistd.wait_for(ADMIN)["port"]), "/varz"))
            twistd.shutdown()
        assert PASSWORD not in varz and PASSWORD not in twistd.output + refused.output
    finally:
        setup.kill()


def test_a_sentinel_that_cannot_be_reached_is_named_with_why():
    port = free_port()
    with Twistd("tcphub", "--port", "0", "--redis", f"redis+sentinel://127.0.0.1:{port}/main") as twistd:
        twistd.wait_for(rf"bus: cannot reach Redis at redis\+sentinel://127\.0\.0\.1:{port}/main: no Sentinel "
                        rf"knows where master 'main' is: 127\.0\.0\.1:{port}: .*refused.*; retrying in")
        twistd.shutdown()
