"""asyncio streams, the same wire format; --uvloop runs it on uvloop.

    python asyncio_streams.py echo|broadcast [--uvloop]
"""

import asyncio
import struct
import sys

HEADER = struct.Struct(">I")
clients = set()


async def serve(reader, writer, echo):
    clients.add(writer)
    try:
        while True:
            header = await reader.readexactly(4)
            frame = header + await reader.readexactly(HEADER.unpack(header)[0])
            if echo:
                writer.write(frame)
                await writer.drain()
            else:
                for client in clients:
                    if client is not writer:
                        client.write(frame)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        clients.discard(writer)
        writer.close()


async def main():
    echo = sys.argv[1] == "echo"
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, echo), "127.0.0.1", 0, backlog=4096
    )
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if "--uvloop" in sys.argv:
    import uvloop

    uvloop.run(main())
else:
    asyncio.run(main())
