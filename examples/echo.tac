# An echo server as a tac file:  twistd -ny examples/echo.tac
# Every line a client sends comes back to it. TCPHUB_PORT overrides the port.
import os

from twisted.application.service import Application

from tcphub import EchoProtocol, TcpServer

application = Application("tcphub-echo")

server = TcpServer(
    port=int(os.environ.get("TCPHUB_PORT", "3000")),
    host="127.0.0.1",
    keep_alive=True,
    timeout=30,  # seconds (Node's socket.setTimeout(30000) in milliseconds)
    protocol=EchoProtocol,
)
server.on("connection", lambda client: print(f"Client connected: {client.id}"))
server.on("disconnect", lambda client_id, reason: print(f"Client disconnected: {client_id}"))
server.setServiceParent(application)
