# A hub that does not fit its open-file limit to max_connections, so that the
# tests can run it out of descriptors: twistd -ny tests/no_descriptor_limit.tac
from twisted.application.service import Application

from tcphub import TcpServer

application = Application("tcphub-emfile")
server = TcpServer(port=0, max_connections=10_000, raise_descriptor_limit=False)
server.on("error", lambda client_id, error: print(f"error event: {type(error).__name__}"))
server.setServiceParent(application)
