"""The `websockets` library's own server (asyncio), as a Python peer: no
compression (as tcphub and Autobahn serve by default).

    python websockets_server.py wsidle      each connection held open until the client goes
    python websockets_server.py wsfanout    a TCP sender (int32 frames) on one port; each of
                                            its messages goes to every WebSocket client of the
                                            second port with the library's broadcast(), binary
"""

import asyncio
import sys

from _python_peer import announce_and_serve
from websockets.asyncio.server import broadcast, serve

clients: set = set()


async def hold(connection):
    clients.add(connection)
    try:
        await connection.wait_closed()
    finally:
        clients.discard(connection)


async def main(mode: str):
    async with serve(hold, "127.0.0.1", 0, compression=None, ping_interval=None, max_queue=16,
                     backlog=4096) as server:
        await announce_and_serve(mode, server.sockets[0].getsockname()[1], lambda payload: broadcast(clients, payload))


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "wsidle"))
