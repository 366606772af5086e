"""HandlerFactory alone: the Autobahn options it sets from its handler's options."""

from __future__ import annotations

import pytest
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.internet.testing import MemoryReactorClock

from tcphub import HandlerProtocol, WebSocketHandler
from tcphub.ws.protocol import HandlerFactory


class Mine(HandlerProtocol):
    pass


@pytest.mark.parametrize("compression", [True, False])
def test_the_factory_carries_its_handler_and_turns_autobahns_timers_off(compression):
    reactor = MemoryReactorClock()
    handler = WebSocketHandler(reactor=reactor, max_message_size=4096, compression=compression, protocol=Mine)
    factory = HandlerFactory(handler, handler.options, reactor, "ws://127.0.0.1:9/", reactor)
    assert factory.handler is handler and factory.protocol is Mine
    assert factory.options is handler.options and factory.clock is reactor
    assert (factory.openHandshakeTimeout, factory.closeHandshakeTimeout,
            factory.serverConnectionDropTimeout, factory.autoPingInterval) == (0, 0, 0, 0)
    assert (factory.maxMessagePayloadSize, factory.maxFramePayloadSize) == (4096, 4096)
    assert factory.failByDrop is False
    offers = factory.perMessageCompressionOffers
    assert [type(offer) for offer in offers] == ([PerMessageDeflateOffer] if compression else [])
    assert reactor.getDelayedCalls() == []
