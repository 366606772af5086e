# The line chat of `twistd tcphub`, extended by subclassing:
#   twistd -ny examples/chat.tac     then     nc 127.0.0.1 3000
# Everything ChatProtocol does (/nick, /join, /leave, /who, /rooms, #lobby),
# plus a /me command, built on the hub's rooms: self.join(room),
# self.leave(room), self.rooms, self.broadcastMessage(payload, room=...).
# Browsers join the same chat at http://127.0.0.1:8080/ (WebSocketMembers).
# TCPHUB_PORT overrides the port, TCPHUB_WEBSOCKET the browsers' endpoint.
import os

from twisted.application.service import Application

from tcphub import TcpServer, WebSocketMembers
from tcphub.hub.modes import ChatProtocol


class Chat(ChatProtocol):
    def messageReceived(self, payload):
        if payload.startswith(b"/me ") and self.room is not None:
            action = b"#%s * %s %s" % (self.room.encode(), self.nick.encode(), payload[4:])
            self.broadcastMessage(action, room=self.room)
            self.sendMessage(action)
        else:
            super().messageReceived(payload)


application = Application("tcphub-chat")
hub = TcpServer(
    port=int(os.environ.get("TCPHUB_PORT", "3000")),
    framing="line",
    timeout=600,
    protocol=Chat,
)
hub.setServiceParent(application)
WebSocketMembers(hub, os.environ.get("TCPHUB_WEBSOCKET", "tcp:8080:interface=127.0.0.1")).setServiceParent(application)
