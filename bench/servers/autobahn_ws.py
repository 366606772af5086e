"""The WebSocket fan-out baseline: what a Twisted user writes with Autobahn
alone.  A TCP sender (int32 frames) on one port; every message goes to each
WebSocket client of the second port (/ws on a twisted.web site, as tcphub's
members are served), framed once (Autobahn's prepared message), binary.

    python autobahn_ws.py wsfanout
"""

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import protocol, reactor
from twisted.protocols.basic import Int32StringReceiver
from twisted.web.resource import Resource
from twisted.web.server import Site

clients = set()


class Receiver(WebSocketServerProtocol):
    def onOpen(self):
        clients.add(self)

    def onClose(self, wasClean, code, reason):
        clients.discard(self)


class Sender(Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def stringReceived(self, string):
        prepared = members.prepareMessage(string, isBinary=True)
        for client in clients:
            client.sendPreparedMessage(prepared)


members = WebSocketServerFactory()
members.protocol = Receiver
members.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
root = Resource()
root.putChild(b"ws", WebSocketResource(members))
site = Site(root)
site.noisy = False
ws_port = reactor.listenTCP(0, site, backlog=4096, interface="127.0.0.1")
senders = protocol.Factory.forProtocol(Sender)
senders.noisy = False
port = reactor.listenTCP(0, senders, backlog=4096, interface="127.0.0.1")
print(f"listening on {port.getHost().port} ws {ws_port.getHost().port}", flush=True)
reactor.run()
