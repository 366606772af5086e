"""
A WebSocket server that is not our code: the `websockets` package's server,
run as a subprocess by the tests.

It echoes every message, except text messages whose JSON path is:
  - "server.say": sends each string in data as a raw text frame (anything, even invalid JSON);
  - "server.say.binary": sends each base64 string in data, decoded, as a raw binary frame;
  - "server.hold": keeps the message, to echo it on "server.release" (a late reply).
With --reject it answers every handshake with HTTP 503; with --greet it sends
{"path": "server.hello", "data": {"greeting": "hello"}} on every connection;
with --close-at-open CODE it closes every connection with CODE
("authentication failed") right after the handshake; with --require-auth it
answers 401 to a handshake without "Authorization: Bearer ..."; with
--reject-status CODE it answers that status (with --retry-after N and
--location URL as headers); with
--subprotocols a,b it offers those; with --cert and --key it speaks TLS (wss://).
It prints "listening on PORT" once ready, and per connection "handshake
auth=... origin=... agent=...", "open <extensions>" and "subprotocol <name>".
"""

import argparse
import asyncio
import base64
import json
import ssl
from http import HTTPStatus

from websockets.asyncio.server import serve


GREET = False
CLOSE_AT_OPEN = None


async def echo(connection) -> None:
    extensions = ",".join(e.name for e in connection.protocol.extensions) or "none"
    print(f"open {extensions}", flush=True)
    print(f"subprotocol {connection.subprotocol}", flush=True)
    if CLOSE_AT_OPEN is not None:
        await connection.close(CLOSE_AT_OPEN, "authentication failed")
        print(f"connection closed: code {connection.close_code}", flush=True)
        return
    if GREET:
        await connection.send(json.dumps({"path": "server.hello", "data": {"greeting": "hello"}}))
    held = []
    try:
        await serve_messages(connection, held)
    finally:
        print(f"connection closed: code {connection.close_code}", flush=True)


async def serve_messages(connection, held) -> None:
    async for message in connection:
        command = None
        if isinstance(message, str):
            try:
                command = json.loads(message)
            except ValueError:
                pass
        path = command.get("path") if isinstance(command, dict) else None
        if path == "server.say":
            for raw in command["data"]:
                await connection.send(raw)
        elif path == "server.say.binary":
            for raw in command["data"]:
                await connection.send(base64.b64decode(raw))
        elif path == "server.hold":
            held.append(message)
        elif path == "server.release":
            for message in held:
                await connection.send(message)
            held.clear()
        else:
            await connection.send(message)


REJECT = False
REQUIRE_AUTH = False
REJECT_STATUS = None
RETRY_AFTER = None
LOCATION = None


def check_handshake(connection, request):
    headers = request.headers
    print(f"handshake auth={headers.get('Authorization')!r} origin={headers.get('Origin')!r} "
          f"agent={headers.get('User-Agent')!r}", flush=True)
    if REJECT:
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
    if REJECT_STATUS is not None:
        response = connection.respond(HTTPStatus(REJECT_STATUS), "no\n")
        if RETRY_AFTER is not None:
            response.headers["Retry-After"] = RETRY_AFTER
        if LOCATION is not None:
            response.headers["Location"] = LOCATION
        return response
    if REQUIRE_AUTH and not (headers.get("Authorization") or "").startswith("Bearer "):
        return connection.respond(HTTPStatus.UNAUTHORIZED, "token needed\n")
    return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reject", action="store_true")
    parser.add_argument("--greet", action="store_true")
    parser.add_argument("--close-at-open", type=int)
    parser.add_argument("--require-auth", action="store_true")
    parser.add_argument("--reject-status", type=int)
    parser.add_argument("--retry-after")
    parser.add_argument("--location")
    parser.add_argument("--subprotocols")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    global GREET, CLOSE_AT_OPEN, REJECT, REQUIRE_AUTH, REJECT_STATUS, RETRY_AFTER, LOCATION
    GREET = args.greet
    CLOSE_AT_OPEN = args.close_at_open
    REJECT = args.reject
    REQUIRE_AUTH = args.require_auth
    REJECT_STATUS = args.reject_status
    RETRY_AFTER = args.retry_after
    LOCATION = args.location
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
    async with serve(
        echo, "127.0.0.1", args.port, ssl=context,
        process_request=check_handshake,
        subprotocols=args.subprotocols.split(",") if args.subprotocols else None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
