"""What the Python WebSocket peers (websockets_server.py, socketio_server.py)
share: the TCP sender of a fan-out, and the line bench/run.py waits for."""

import asyncio
from typing import Awaitable, Callable


async def announce_and_serve(mode: str, ws_port: int, fan_out: Callable[[bytes], Awaitable[None] | None]) -> None:
    """In mode "wsfanout", take int32 frames from TCP senders on a port of
    its own and hand each payload to C{fan_out}; print the ports; serve
    until killed."""

    async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(4), "big")
                sent = fan_out(await reader.readexactly(length))
                if sent is not None:
                    await sent
        except asyncio.IncompleteReadError:
            writer.close()

    if mode == "wsfanout":
        senders = await asyncio.start_server(sender, "127.0.0.1", 0, backlog=4096)
        print(f"listening on {senders.sockets[0].getsockname()[1]} ws {ws_port}", flush=True)
    else:
        print(f"listening on 0 ws {ws_port}", flush=True)
    await asyncio.Future()
