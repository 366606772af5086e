"""
The WebSocket client; it knows nothing of the hub, and is imported only when
used (it brings Autobahn, which an idle hub does not need).

  - L{envelope}: the JSON envelope C{{"path", "data", "id"}};
  - L{routing}: paths and wildcard routes (pure);
  - L{reconnect}: L{ReconnectingClientService} and the backoff policies;
  - L{protocol}: L{HandlerProtocol}, its deadlines, and the typed Autobahn factory;
  - L{requests}: requests waiting for their replies;
  - L{handler}: L{WebSocketHandler}, the service.

The public names are importable from C{tcphub}.
"""
