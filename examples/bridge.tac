# A gateway composed by hand:  twistd -ny examples/bridge.tac
# Lines from TCP clients go up a WebSocket, tagged with the sender's address;
# what comes down on hub.* goes to the client it names, or to everyone.
# TCPHUB_PORT and TCPHUB_UPSTREAM override the defaults; TCPHUB_ADMIN adds the
# operations port (e.g. tcp:9100:interface=127.0.0.1, loopback only).
# (tcphub.Bridge does the same with byte-exact payloads and flow control: see the README.)
import os

from twisted.application.service import Application, MultiService

from tcphub import HubProtocol, TcpServer, WebSocketHandler

application = Application("tcphub-bridge")
services = MultiService()
services.setServiceParent(application)

upstream = WebSocketHandler(url=os.environ.get("TCPHUB_UPSTREAM", "ws://127.0.0.1:8765/"))
upstream.setServiceParent(services)


class Tagging(HubProtocol):
    def messageReceived(self, payload):
        tagged = {"client": self.client_id, "from": self.address, "text": payload.decode("utf-8", "replace")}
        upstream.send("hub.in", tagged).addErrback(lambda failure: None)  # counted in get_status()


hub = TcpServer(port=int(os.environ.get("TCPHUB_PORT", "3000")), protocol=Tagging)
hub.setServiceParent(services)


def downstream(message, context):
    line = f"[{message.get('from', 'upstream')}] {message['text']}".encode()
    if "client" in message:
        return hub.send(message["client"], line)
    return hub.broadcast(line)


upstream.add_route("hub.#", downstream)

if os.environ.get("TCPHUB_ADMIN"):
    from tcphub.ops.service import AdminService

    AdminService(os.environ["TCPHUB_ADMIN"], hub=hub, upstream=upstream).setServiceParent(services)
