"""The baseline: what a Twisted user writes without tcphub (Int32StringReceiver).

    python twisted_int32.py echo|timed|broadcast

timed: echo with an idle timeout of 300 s, as Twisted's TimeoutMixin gives one.
"""

import sys

from twisted.internet import protocol, reactor
from twisted.protocols.basic import Int32StringReceiver
from twisted.protocols.policies import TimeoutMixin


class Echo(Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def stringReceived(self, string):
        self.sendString(string)


class TimedEcho(TimeoutMixin, Echo):
    def connectionMade(self):
        self.setTimeout(300)

    def dataReceived(self, data):
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self):
        self.transport.abortConnection()


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


factory = protocol.Factory.forProtocol({"echo": Echo, "timed": TimedEcho}.get(sys.argv[1], Broadcast))
factory.noisy = False
factory.clients = set()
port = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
print(f"listening on {port.getHost().port}", flush=True)
reactor.run()
