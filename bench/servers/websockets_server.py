"""The `websockets` library's own server (asyncio), as a Python peer for the
bytes a WebSocket connection costs: each connection is held open until the
client goes, no compression (as tcphub and Autobahn serve by default).

    python websockets_server.py wsidle
"""

import asyncio

from websockets.asyncio.server import serve


async def hold(connection):
    await connection.wait_closed()


async def main():
    async with serve(hold, "127.0.0.1", 0, compression=None, ping_interval=None, max_queue=16) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 0 ws {port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
