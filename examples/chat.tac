# A chat room with nicknames, by subclassing the hub's protocol:
#   twistd -ny examples/chat.tac     then     nc 127.0.0.1 3000
# The first line a client sends is its name; every later line goes to the
# others as "name: text". TCPHUB_PORT overrides the port.
import os

from twisted.application.service import Application

from tcphub import HubProtocol, TcpServer


class ChatProtocol(HubProtocol):
    name = None

    def messageReceived(self, payload):
        if self.name is None:
            self.name = payload.strip() or self.client_id.encode()
            self.sendMessage(b"welcome, " + self.name)
            self.factory.broadcast(self.name + b" joined", exclude=[self.client_id])
        else:
            self.factory.broadcast(self.name + b": " + payload, exclude=[self.client_id])

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.name is not None:
            self.factory.broadcast(self.name + b" left")


application = Application("tcphub-chat")
TcpServer(
    port=int(os.environ.get("TCPHUB_PORT", "3000")),
    framing="line",
    timeout=600,
    protocol=ChatProtocol,
).setServiceParent(application)
