"""The baseline: what a Twisted user writes without tcphub (Int32StringReceiver).

    python twisted_int32.py echo|broadcast
"""

import sys

from twisted.internet import protocol, reactor
from twisted.protocols.basic import Int32StringReceiver


class Echo(Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def stringReceived(self, string):
        self.sendString(string)


class Broadcast(Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def connectionMade(self):
        self.factory.clients.add(self)

    def connectionLost(self, reason):
        self.factory.clients.discard(self)

    def stringReceived(self, string):
        for client in self.factory.clients:
            if client is not self:
                client.sendString(string)


factory = protocol.Factory.forProtocol(Echo if sys.argv[1] == "echo" else Broadcast)
factory.noisy = False
factory.clients = set()
port = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
print(f"listening on {port.getHost().port}", flush=True)
reactor.run()
