# A WebSocket client with routes:  twistd -ny examples/ws-client.tac
# TCPHUB_WS_URL sets the server (default ws://127.0.0.1:8765/).
import os

from twisted.application.service import Application
from twisted.logger import Logger

from tcphub import WebSocketHandler

log = Logger(namespace="ws-client")
application = Application("tcphub-ws-client")

handler = WebSocketHandler(
    url=os.environ.get("TCPHUB_WS_URL", "ws://127.0.0.1:8765/"),
    reconnect=True,
    max_retries=5,
    backoff="exponential",
    ping_interval=30,  # seconds (30000 ms in the TypeScript original)
)


def greeted(message, context):
    # metadata survives reconnections; connection_id is new for each one.
    context.metadata["greetings"] = context.metadata.get("greetings", 0) + 1
    log.info("greeted on connection {id}: {message}", id=context.connection_id, message=message)
    handler.send("client.hello", {"greetings": context.metadata["greetings"]})


def chat(message, context):
    log.info("chat from {user}: {text}", user=message.get("userId"), text=message.get("text"))


handler.add_route("server.*", greeted)
handler.add_route("chat.#", chat)
handler.on("unrouted", lambda envelope, context: log.info("nobody handles {path}", path=envelope.path))
handler.setServiceParent(application)
