"""The baseline of an idle daemon's memory: bare Twisted's Int32StringReceiver
echo, run by twistd like the hub (twistd -ny twisted_idle.tac)."""

from twisted.application import internet, service
from twisted.internet import protocol
from twisted.protocols.basic import Int32StringReceiver


class Echo(Int32StringReceiver):
    def stringReceived(self, string):
        self.sendString(string)


application = service.Application("bare")
internet.TCPServer(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1").setServiceParent(application)
