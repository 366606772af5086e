"""
The benchmarks' second load generator: Python asyncio (on uvloop when it is
installed), beside Node's (bench/loadgen.js), so that a figure that holds for
one kind of client is checked against another. Speaks to 127.0.0.1 the
protocols bench/loadgen.js speaks; prints one JSON line of results; exits 1
if a payload comes back wrong or a delivery out of order.

    python loadgen_py.py echo       PORT CONNS INFLIGHT SIZE SECONDS
    python loadgen_py.py natsreqrep PORT CONNS INFLIGHT SIZE SECONDS  (echo's load as NATS requests to
                                    a responder of this process subscribed to "svc")
    python loadgen_py.py fanout     PORT RECEIVERS SIZE MESSAGES      (int32 receivers and sender)
    python loadgen_py.py natsfanout PORT RECEIVERS SIZE MESSAGES      (NATS subscribers of one subject)
    python loadgen_py.py wsfanout   PORT WSPORT RECEIVERS SIZE MESSAGES  (the sender on TCP, the receivers
                                    WebSocket clients of ws://127.0.0.1:WSPORT/ws)
    python loadgen_py.py siofanout  PORT WSPORT RECEIVERS SIZE MESSAGES  (the receivers socket.io clients,
                                    counting the events' binary attachments)
    python loadgen_py.py splitfanout PORT PORT2 RECEIVERS SIZE MESSAGES  (receivers alternate between the
                                    two ports, the sender on PORT: two nodes of one hub)
    python loadgen_py.py room       PORT IDLE RECEIVERS SIZE MESSAGES  (fan-out to a room of RECEIVERS among
                                    IDLE other connections: receivers join with a "Jr" frame)
    python loadgen_py.py churn      PORT CONCURRENCY SECONDS          (connect, one echo, close; NATS:
    python loadgen_py.py natschurn  PORT CONCURRENCY SECONDS           a PING and its PONG)
    python loadgen_py.py idle       PORT CONNS   (prints {"ready": n}, holds them until stdin closes;
    python loadgen_py.py natsidle   PORT CONNS    NATS clients that sent CONNECT, WebSocket clients of
    python loadgen_py.py wsidle     WSPORT CONNS  ws://127.0.0.1:WSPORT/ws, socket.io clients)
    python loadgen_py.py sioidle    WSPORT CONNS
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from typing import Callable, Sequence

HOST = "127.0.0.1"
_LENGTH = struct.Struct(">I")
_WS_LENGTH_16 = struct.Struct(">H")
_WS_LENGTH_64 = struct.Struct(">Q")


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def int32_frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def message(sequence: int, size: int) -> bytes:
    """A fan-out's message: "M", its sequence number, "M"s up to SIZE."""
    return b"M" + _LENGTH.pack(sequence) + b"M" * (size - 5)


def nats_publish(subject: str, payload: bytes, reply: str = "") -> bytes:
    return f"PUB {subject} {reply + ' ' if reply else ''}{len(payload)}\r\n".encode() + payload + b"\r\n"


class Reader(asyncio.Protocol):
    """A connection whose stream is cut into payloads, each given to
    C{on_payload}; L{cut} is the protocol's cutter, L{opening} what it says
    first. C{around_read}, if set, is called before and after each read is
    cut (True, then False).

    A fan-out's receiver (C{fanout}, set when the class L{follows}) cuts
    frames only until its first message: from there on it compares each
    read whole with the bytes it must receive (L{Deliveries.expected}), one
    C{memcmp} a read. Cut one by one in Python, 64-byte frames cap 1,000
    receivers at about 3 M deliveries a second on one core, below the
    servers measured; compared whole, at about 40 M."""

    around_read: Callable[[bool], None] | None = None
    follows = True
    fanout: Deliveries | None = None
    expected = b""
    position = -1  # where in C{expected} the reader is, once it follows

    def __init__(self, on_payload: Callable[[bytes], None]) -> None:
        self.on_payload = on_payload
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(self.opening())  # type: ignore[attr-defined]

    def opening(self) -> bytes:
        return b""

    def data_received(self, data: bytes) -> None:
        if self.position >= 0:
            self.follow(data)
            return
        if self.around_read is not None:
            self.around_read(True)
        buffer = self.buffer + data if self.buffer else data
        self.buffer = buffer[self.cut(buffer):]
        if self.around_read is not None:
            self.around_read(False)

    def cut(self, buffer: bytes) -> int:
        """Hand every whole payload of C{buffer} on; return the bytes used."""
        raise NotImplementedError

    def follows_from(self, buffer: bytes, at: int, start: int, stop: int, after: int) -> bool:
        """The frame C{buffer[at:after]} carries the payload
        C{buffer[start:stop]}: if it is a fan-out's first message, follow the
        stream from there, the rest of C{buffer} included, and say so."""
        if self.fanout is None or buffer[start] != 0x4D:  # "M": not a probe
            return False
        self.expected = self.fanout.expected(buffer[at:start], buffer[stop:after])
        self.position = 0
        self.follow(buffer[at:])
        return True

    def follow(self, data: bytes) -> None:
        if not self.expected.startswith(data, self.position):
            fail("fanout: a receiver read other bytes than its messages in order")
        self.position += len(data)
        if self.position == len(self.expected):
            assert self.fanout is not None
            self.fanout.completed()


class Int32Reader(Reader):
    def cut(self, buffer: bytes) -> int:
        at, end = 0, len(buffer)
        while end - at >= 4:
            (length,) = _LENGTH.unpack_from(buffer, at)
            if end - at - 4 < length:
                break
            if self.follows_from(buffer, at, at + 4, at + 4 + length, at + 4 + length):
                return end
            self.on_payload(buffer[at + 4:at + 4 + length])
            at += 4 + length
        return at


class NatsReader(Reader):
    """MSG payloads (the other lines, INFO and +OK, skipped; a PING answered)."""

    subscribe = b""

    def opening(self) -> bytes:
        return b'CONNECT {"verbose":false,"pedantic":false,"name":"tcphub-bench-py"}\r\n' + self.subscribe

    def cut(self, buffer: bytes) -> int:
        at = 0
        while True:
            end = buffer.find(b"\r\n", at)
            if end < 0:
                return at
            if buffer[at] == 0x4D:  # "MSG <subject> <sid> [reply] <size>"
                fields = buffer[at:end].split(b" ")
                size = int(fields[-1])
                if len(buffer) < end + 2 + size + 2:
                    return at
                if self.follows_from(buffer, at, end + 2, end + 2 + size, end + 2 + size + 2):
                    return len(buffer)
                self.on_message(buffer[end + 2:end + 2 + size], fields[3] if len(fields) == 5 else b"")
                at = end + 2 + size + 2
                continue
            if buffer.startswith(b"PING", at):
                self.transport.write(b"PONG\r\n")  # type: ignore[attr-defined]
            at = end + 2

    def on_message(self, payload: bytes, reply: bytes) -> None:
        self.on_payload(payload)


class WebSocketReader(Reader):
    """The server's frames (final, unmasked) after the upgrade; text and
    binary payloads to L{on_frame}."""

    path = "/ws"

    def __init__(self, on_payload: Callable[[bytes], None]) -> None:
        super().__init__(on_payload)
        self.upgraded = False

    def opening(self) -> bytes:
        return (f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()

    def cut(self, buffer: bytes) -> int:
        at = 0
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return 0
            if b" 101 " not in buffer[:16]:
                fail(f"wsfanout: {buffer[:200]!r}")
            self.upgraded = True
            self.upgraded_now()
            at = end + 4
        end = len(buffer)
        while end - at >= 2:
            length, header = buffer[at + 1] & 0x7F, 2
            if length == 126:
                if end - at < 4:
                    break
                (length,), header = _WS_LENGTH_16.unpack_from(buffer, at + 2), 4
            elif length == 127:
                if end - at < 10:
                    break
                (length,), header = _WS_LENGTH_64.unpack_from(buffer, at + 2), 10
            if end - at - header < length:
                break
            if buffer[at] & 0x0F in (1, 2) and self.follows_from(buffer, at, at + header, at + header + length,
                                                                  at + header + length):
                return end
            self.on_frame(buffer[at + header:at + header + length], buffer[at] & 0x0F)
            at += header + length
        return at

    def upgraded_now(self) -> None:
        pass

    def on_frame(self, payload: bytes, opcode: int) -> None:
        if opcode in (1, 2):
            self.on_payload(payload)


class SocketIOReader(WebSocketReader):
    """A socket.io client (Engine.IO 4 over a WebSocket from the start) in the
    default namespace: an event with bytes comes as a text frame and a binary
    frame; only the binary ones are counted."""

    path = "/socket.io/?EIO=4&transport=websocket"
    follows = False  # each message is two frames: the event and its attachment

    def upgraded_now(self) -> None:
        self.transport.write(b"\x81\x82\x00\x00\x00\x00" + b"40")  # type: ignore[attr-defined]

    def on_frame(self, payload: bytes, opcode: int) -> None:
        if opcode == 2:
            self.on_payload(payload)


class Deliveries:
    """Each receiver's messages counted and checked in order; a probe (b"P")
    says a receiver is registered."""

    def __init__(self, receivers: int, messages: int, size: int) -> None:
        self.receivers = receivers
        self.messages = messages
        self.payloads = [message(sequence, size) for sequence in range(messages)]
        self.probed = 0
        self.complete = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expected: dict[tuple[bytes, bytes], bytes] = {}

    def expected(self, prefix: bytes, suffix: bytes) -> bytes:
        """Every message in order, each between C{prefix} and C{suffix}
        (its frame's header and trailer): what a receiver must read from its
        first message on."""
        key = (prefix, suffix)
        if key not in self._expected:
            self._expected[key] = b"".join(prefix + payload + suffix for payload in self.payloads)
        return self._expected[key]

    def completed(self) -> None:
        self.complete += 1
        if self.complete == self.receivers:
            self.done.set_result(None)

    def taker(self) -> Callable[[bytes], None]:
        count = 0
        probed = False

        def take(payload: bytes) -> None:
            nonlocal count, probed
            if payload[0] == 0x50:  # "P"
                if not probed:
                    probed = True
                    self.probed += 1
                return
            if _LENGTH.unpack_from(payload, 1)[0] != count:
                fail("fanout: a receiver got a message out of order")
            count += 1
            if count == self.messages:
                self.completed()

        return take


async def fanout_with(reader: type[Reader], ports: Sequence[int], sender_port: int, receivers: int, size: int,
                      messages: int, encode: Callable[[bytes], bytes] = int32_frame,
                      sender: type[Reader] = Int32Reader) -> dict:
    """RECEIVERS clients of C{ports} (one after another), each a C{reader};
    MESSAGES of SIZE bytes from one C{sender} client of C{sender_port}, once
    every receiver has a probe."""
    loop = asyncio.get_running_loop()
    run = Deliveries(receivers, messages, size)

    def receiver() -> Reader:
        protocol = reader(run.taker())
        if reader.follows:
            protocol.fanout = run
        return protocol

    transports = []
    for index in range(receivers):
        transport, _ = await loop.create_connection(receiver, HOST, ports[index % len(ports)])
        transports.append(transport)
    writer, _ = await loop.create_connection(lambda: sender(lambda payload: None), HOST, sender_port)
    while run.probed < receivers:
        writer.write(encode(b"P"))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # let the last probes land
    started = time.perf_counter()
    for payload in run.payloads:
        writer.write(encode(payload))
        if writer.get_write_buffer_size() > 1 << 20:
            while writer.get_write_buffer_size() > 1 << 16:
                await asyncio.sleep(0.001)
    try:
        await asyncio.wait_for(run.done, 120)
    except asyncio.TimeoutError:
        fail(f"fanout: not every receiver got all {messages} in 120 s")
    elapsed = time.perf_counter() - started
    writer.close()
    for transport in transports:
        transport.close()
    return {"messages": messages, "receivers": receivers, "seconds": elapsed,
            "deliveries_per_second": messages * receivers / elapsed}


class NatsSubscriber(NatsReader):
    subscribe = b"SUB bench 1\r\n"


class RoomMember(Int32Reader):
    """A receiver that joins room "r" of the benchmarks' room server."""

    def opening(self) -> bytes:
        return int32_frame(b"Jr")


async def fanout(port: int, receivers: int, size: int, messages: int) -> dict:
    return await fanout_with(Int32Reader, [port], port, receivers, size, messages)


async def splitfanout(port: int, port2: int, receivers: int, size: int, messages: int) -> dict:
    return await fanout_with(Int32Reader, [port, port2], port, receivers, size, messages)


async def room(port: int, idle_count: int, receivers: int, size: int, messages: int) -> dict:
    held = await connect_many(port, idle_count, Int32Reader)
    try:
        return {**await fanout_with(RoomMember, [port], port, receivers, size, messages), "idle": len(held)}
    finally:
        for transport in held:
            transport.close()


async def natsfanout(port: int, receivers: int, size: int, messages: int) -> dict:
    return await fanout_with(NatsSubscriber, [port], port, receivers, size, messages,
                             lambda payload: nats_publish("bench", payload), NatsReader)


async def wsfanout(port: int, ws_port: int, receivers: int, size: int, messages: int) -> dict:
    return await fanout_with(WebSocketReader, [ws_port], port, receivers, size, messages)


async def siofanout(port: int, ws_port: int, receivers: int, size: int, messages: int) -> dict:
    return await fanout_with(SocketIOReader, [ws_port], port, receivers, size, messages)


async def connect_many(port: int, count: int, reader: type[Reader]) -> list[asyncio.BaseTransport]:
    """COUNT clients of C{port}, each a C{reader} whose payloads are dropped, 500 at a time."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    while len(transports) < count:
        batch = min(500, count - len(transports))
        made = await asyncio.gather(*(loop.create_connection(lambda: reader(lambda payload: None), HOST, port)
                                      for _ in range(batch)))
        transports += [transport for transport, _ in made]
    return transports


async def hold(port: int, count: int, reader: type[Reader]) -> dict:
    """Hold COUNT clients open until stdin closes (the idle measure reads the server's RSS meanwhile)."""
    loop = asyncio.get_running_loop()
    held = await connect_many(port, count, reader)
    print(json.dumps({"ready": len(held)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for transport in held:
        transport.close()
    return {"closed": len(held)}


async def idle(port: int, count: int) -> dict:
    return await hold(port, count, Int32Reader)


async def natsidle(port: int, count: int) -> dict:
    return await hold(port, count, NatsReader)


async def wsidle(port: int, count: int) -> dict:
    return await hold(port, count, WebSocketReader)


async def sioidle(port: int, count: int) -> dict:
    return await hold(port, count, SocketIOReader)


async def churn_with(port: int, concurrency: int, seconds: float, hello: bytes, answered: bytes) -> dict:
    """CONCURRENCY loops of: connect, write C{hello}, read until C{answered}
    has come, close; for SECONDS."""
    deadline = time.perf_counter() + seconds
    connections = 0

    async def worker() -> None:
        nonlocal connections
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(hello)
            seen = b""
            while answered not in seen:
                data = await reader.read(65536)
                if not data:
                    fail("churn: the server closed before it answered")
                seen += data
            writer.close()
            await writer.wait_closed()
            connections += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"connections": connections, "seconds": elapsed, "per_second": connections / elapsed}


async def churn(port: int, concurrency: int, seconds: int) -> dict:
    return await churn_with(port, concurrency, seconds, int32_frame(b"churn"), int32_frame(b"churn"))


async def natschurn(port: int, concurrency: int, seconds: int) -> dict:
    return await churn_with(port, concurrency, seconds, NatsReader(lambda payload: None).opening() + b"PING\r\n",
                            b"PONG\r\n")


async def round_trips(reader: Callable[[int, Callable[[bytes], None]], Reader], port: int, conns: int, inflight: int,
                      size: int, seconds: float, request: Callable[[int, bytes], bytes]) -> dict:
    """INFLIGHT requests of SIZE bytes at a time on each of CONNS connections
    for SECONDS, each answer checked (its number and its connection's marker)
    and timed; a read's answers are replaced in one write, as loadgen.js does.
    C{reader(index, on_payload)} is connection C{index}'s protocol;
    C{request(index, payload)} a request's bytes on it."""
    loop = asyncio.get_running_loop()
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    done = 0

    async def connection(index: int) -> None:
        marker = index % 251
        sent_at: list[float] = []
        state = {"sequence": 0, "expected": 0, "outstanding": 0, "received": 0}
        over = loop.create_future()

        def batch(count: int) -> bytes:
            now = time.perf_counter()
            sent_at.extend([now] * count)
            parts = []
            for number in range(state["sequence"], state["sequence"] + count):
                payload = bytearray([marker]) * size
                payload[0:4] = _LENGTH.pack(number)
                parts.append(request(index, bytes(payload)))
            state["sequence"] += count
            state["outstanding"] += count
            return b"".join(parts)

        def answer(payload: bytes) -> None:
            if len(payload) != size or _LENGTH.unpack_from(payload)[0] != state["expected"] \
                    or payload[-1] != marker:
                fail(f"round trip: wrong payload on connection {index}")
            latencies.append(now - sent_at[state["expected"]])
            state["expected"] += 1
            state["received"] += 1

        now = 0.0

        def around_read(starting: bool) -> None:
            nonlocal now, done
            if starting:
                now = time.perf_counter()
                state["received"] = 0
                return
            done += state["received"]
            state["outstanding"] -= state["received"]
            if now < deadline:
                if state["received"]:
                    transport.write(batch(state["received"]))
            elif state["outstanding"] == 0 and not over.done():
                over.set_result(None)

        protocol = reader(index, answer)
        transport, _ = await loop.create_connection(lambda: protocol, HOST, port)
        await ready(protocol)
        protocol.around_read = around_read
        transport.write(batch(inflight))
        await over
        transport.close()

    async def ready(protocol: Reader) -> None:
        if isinstance(protocol, NatsReader):
            await protocol_pong(protocol)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(connection(index) for index in range(conns))), seconds + 60)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6

    return {"messages": done, "seconds": elapsed, "per_second": done / elapsed, "p50_us": percentile(0.5),
            "p99_us": percentile(0.99)}


async def protocol_pong(protocol: NatsReader) -> None:
    """Once the server has answered a PING: the subscriptions sent before it are in place."""
    pong = asyncio.get_running_loop().create_future()
    cut = protocol.cut

    def watching(buffer: bytes) -> int:
        if b"PONG\r\n" in buffer and not pong.done():
            pong.set_result(None)
        return cut(buffer)

    protocol.cut = watching  # type: ignore[method-assign]
    protocol.transport.write(b"PING\r\n")  # type: ignore[attr-defined]
    await pong
    protocol.cut = cut  # type: ignore[method-assign]


async def echo(port: int, conns: int, inflight: int, size: int, seconds: int) -> dict:
    return await round_trips(lambda index, on_payload: Int32Reader(on_payload), port, conns, inflight, size, seconds,
                             lambda index, payload: int32_frame(payload))


class Responder(NatsReader):
    """Answers each request on "svc" on its reply subject, one write per read."""

    subscribe = b"SUB svc 1\r\n"

    def cut(self, buffer: bytes) -> int:
        self.answers: list[bytes] = []
        used = super().cut(buffer)
        if self.answers:
            self.transport.write(b"".join(self.answers))  # type: ignore[attr-defined]
        return used

    def on_message(self, payload: bytes, reply: bytes) -> None:
        self.answers.append(nats_publish(reply.decode(), payload))


async def natsreqrep(port: int, conns: int, inflight: int, size: int, seconds: int) -> dict:
    loop = asyncio.get_running_loop()
    _, responder = await loop.create_connection(lambda: Responder(lambda payload: None), HOST, port)
    await protocol_pong(responder)

    def inbox_reader(index: int, on_payload: Callable[[bytes], None]) -> Reader:
        reader = NatsReader(on_payload)
        reader.subscribe = f"SUB _INBOX.{index} 1\r\n".encode()
        return reader

    try:
        return await round_trips(inbox_reader, port, conns, inflight, size, seconds,
                                 lambda index, payload: nats_publish("svc", payload, f"_INBOX.{index}"))
    finally:
        responder.transport.close()


MODES = {"echo": (echo, 5), "natsreqrep": (natsreqrep, 5), "fanout": (fanout, 4), "natsfanout": (natsfanout, 4),
         "wsfanout": (wsfanout, 5), "siofanout": (siofanout, 5), "splitfanout": (splitfanout, 5), "room": (room, 5),
         "churn": (churn, 3), "natschurn": (natschurn, 3), "idle": (idle, 2), "natsidle": (natsidle, 2),
         "wsidle": (wsidle, 2), "sioidle": (sioidle, 2)}


def main() -> None:
    mode, *numbers = sys.argv[1:]
    if mode not in MODES or len(numbers) != MODES[mode][1]:
        fail(__doc__.strip().split("\n\n")[1])
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    print(json.dumps(run(MODES[mode][0](*map(int, numbers)))))


if __name__ == "__main__":
    main()
