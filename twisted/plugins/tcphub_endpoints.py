# The reuseport: server endpoint string (tcphub.bus.reuseport), loaded when used:
# every program that parses an endpoint string reads this file.
from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _ReusePort:
    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> IStreamServerEndpoint:
        from tcphub.bus.reuseport import parse

        return parse(reactor, *args, **kwargs)


reuseport = _ReusePort()
