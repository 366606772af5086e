# A hub joined with others through Redis, for tests/test_bus.py:
#   TCPHUB_REDIS=unix:///…/redis.sock TCPHUB_NODE=a twistd -ny tests/bus_hub.tac
# Line commands: "id" (answers "id <client id>"), "join ROOM", "room ROOM TEXT"
# (to the room's others), "roomx ROOM ID,ID TEXT" (to the room but those ids),
# "send ID TEXT"; any other line goes to every other client.
import os

from twisted.application.service import Application

from tcphub import HubProtocol, RedisBus, TcpServer


class Commands(HubProtocol):
    def messageReceived(self, payload):
        command, _, rest = payload.partition(b" ")
        if command == b"id":
            self.sendMessage(b"id " + self.client_id.encode())
        elif command == b"join":
            self.join(rest.decode())
            self.sendMessage(b"joined " + rest)
        elif command == b"room":
            room, _, text = rest.partition(b" ")
            self.broadcastMessage(text, room=room.decode())
        elif command == b"roomx":
            room, _, rest = rest.partition(b" ")
            excluded, _, text = rest.partition(b" ")
            self.factory.broadcast(text, exclude=excluded.decode().split(","), room=room.decode())
        elif command == b"send":
            target, _, text = rest.partition(b" ")
            self.factory.send(target.decode(), text).addErrback(lambda failure: self.sendMessage(b"failed"))
        else:
            self.broadcastMessage(payload)


application = Application("tcphub-bus-test")
hub = TcpServer(port=0, framing="line", protocol=Commands)
hub.setServiceParent(application)
RedisBus(hub, os.environ["TCPHUB_REDIS"], node_id=os.environ["TCPHUB_NODE"]).setServiceParent(application)
