"""python-socketio's server (asyncio, on aiohttp), as a Python peer: what a
socket.io user in Python would run. Its clients connect to
/socket.io/?EIO=4&transport=websocket and to the default namespace; no
compression (as tcphub, Autobahn and the `websockets` server serve).

    python socketio_server.py wsidle      each connection held open until the client goes
    python socketio_server.py wsfanout    a TCP sender (int32 frames) on one port; each of its
                                          messages goes to every client with sio.emit("m", bytes),
                                          which socket.io sends as an event and a binary attachment
"""

import asyncio
import sys

import socketio
from _python_peer import announce_and_serve
from aiohttp import web

# Pings far apart: a run is shorter than one interval, and a ping is no part of the load.
sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=600, ping_timeout=600, http_compression=False,
                           compression_threshold=1 << 30)


async def main(mode: str) -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    await announce_and_serve(mode, site._server.sockets[0].getsockname()[1], lambda payload: sio.emit("m", payload))


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "wsidle"))
