"""
Browser members: WebSocket clients that join the hub beside its TCP clients.
It knows the hub through its public API and its message-transport interface.

  - L{limits}: the defaults (importable without loading Autobahn);
  - L{origins}: which pages may connect (the C{Origin} check), pure;
  - L{member}: a WebSocket connection as a hub member (the Autobahn server
    protocol, and the message transport the hub's protocol runs on);
  - L{service}: L{WebSocketMembers}, the C{twisted.web} site (C{/ws} and a chat page).
"""
