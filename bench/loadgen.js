// The benchmarks' load generator: Node's net module, so that the client is not
// the bottleneck. Speaks int32 framing (4-byte big-endian length) to 127.0.0.1.
// Prints one JSON line of results; exits 1 if a payload comes back wrong.
//
//   node loadgen.js echo   PORT CONNS INFLIGHT SIZE SECONDS
//   node loadgen.js fanout PORT RECEIVERS SIZE MESSAGES
//   node loadgen.js room   PORT IDLE RECEIVERS SIZE MESSAGES  (fan-out to a room of RECEIVERS
//                          among IDLE other connections: receivers join with a "Jr" frame)
//   node loadgen.js wsfanout PORT WSPORT RECEIVERS SIZE MESSAGES  (the sender on TCP, the receivers
//                          WebSocket clients of ws://127.0.0.1:WSPORT/ws)
//   node loadgen.js siofanout PORT WSPORT RECEIVERS SIZE MESSAGES  (the same, the receivers socket.io
//                          clients of WSPORT over a WebSocket, counting the events' binary attachments)
//   node loadgen.js splitfanout PORT PORT2 RECEIVERS SIZE MESSAGES  (receivers alternate between
//                          the two ports, the sender on PORT: two nodes of one hub)
//   node loadgen.js natsfanout PORT RECEIVERS SIZE MESSAGES  (the same fan-out through a NATS server:
//                          RECEIVERS subscribers of one subject, the sender publishing to it, in
//                          the NATS protocol)
//   node loadgen.js natsreqrep PORT CONNS INFLIGHT SIZE SECONDS  (echo's load as NATS requests: a
//                          responder subscribed to "svc" answers each on its reply subject, every
//                          connection waiting on an inbox of its own)
//   node loadgen.js idle   PORT CONNS          (prints {"ready": n}, holds them until stdin closes)
//   node loadgen.js wsidle WSPORT CONNS        (the same, WebSocket clients of ws://127.0.0.1:WSPORT/ws)
//   node loadgen.js sioidle WSPORT CONNS       (the same, socket.io clients)
//   node loadgen.js natsidle PORT CONNS        (the same, NATS clients that sent CONNECT)
//   node loadgen.js churn  PORT CONCURRENCY SECONDS
//   node loadgen.js natschurn PORT CONCURRENCY SECONDS  (churn's loop, a NATS PING and PONG as its round trip)
"use strict";
const net = require("net");

const [mode, port, ...rest] = process.argv.slice(2);
const HOST = "127.0.0.1";

function fail(message) {
  console.error(message);
  process.exit(1);
}

// A stream cut into int32 frames. FOLLOW, if given, is a fan-out receiver's
// (see receiving): from its first message on, it takes the stream whole.
function framer(onFrame, follow = null) {
  let buffered = Buffer.alloc(0);
  let following = null;
  return (chunk) => {
    if (following) return following(chunk);
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    let offset = 0;
    while (buffered.length - offset >= 4) {
      const length = buffered.readUInt32BE(offset);
      if (buffered.length - offset - 4 < length) break;
      const end = offset + 4 + length;
      if (follow && (following = follow(buffered, offset, offset + 4, end, end))) return;
      onFrame(buffered.subarray(offset + 4, offset + 4 + length));
      offset += 4 + length;
    }
    buffered = buffered.subarray(offset);
  };
}

function frame(payload) {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(payload.length);
  return Buffer.concat([header, payload]);
}

function connect(to = port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port: Number(to) }, () => resolve(socket));
    socket.setNoDelay(true);
    socket.once("error", reject);
  });
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : null;
}

async function echo(conns, inflight, size, seconds) {
  const sockets = await Promise.all(Array.from({ length: conns }, connect));
  const requests = (index, marker, first, count) => {
    const out = Buffer.allocUnsafe(count * (4 + size));
    for (let i = 0; i < count; i++) {
      const at = i * (4 + size);
      out.writeUInt32BE(size, at);
      out.fill(marker, at + 4, at + 4 + size);
      out.writeUInt32BE(first + i, at + 4);
    }
    return out;
  };
  return roundTrips("echo", sockets, inflight, size, seconds, requests, (socket, onPayload) => framer(onPayload));
}

// INFLIGHT requests of SIZE bytes at a time on each of SOCKETS for SECONDS,
// each answer checked (its number and its connection's marker) and timed.
// Batched so that this process is not the bottleneck: each incoming chunk's
// answers are checked, and their replacements go out in one write.
// REQUESTS(index, marker, first, count) makes a batch's bytes (payloads
// numbered from FIRST, the number in their first 4 bytes, the marker in their
// last); READER(socket, onPayload) cuts what comes back into payloads.
async function roundTrips(name, sockets, inflight, size, seconds, requests, reader) {
  const deadline = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  let done = 0;
  const latencies = [];
  const started = process.hrtime.bigint();
  await Promise.all(sockets.map((socket, index) => new Promise((resolve) => {
    const marker = index % 251;
    const sentAt = [];
    let sentHead = 0;
    let sequence = 0;
    let expected = 0;
    let outstanding = 0;
    const batch = (count) => {
      const now = process.hrtime.bigint();
      for (let i = 0; i < count; i++) sentAt.push(now);
      const out = requests(index, marker, sequence, count);
      sequence += count;
      outstanding += count;
      return out;
    };
    let received = 0;
    let now = 0n;
    const read = reader(socket, (payload) => {
      if (payload.length !== size || payload.readUInt32BE(0) !== expected || payload[size - 1] !== marker) {
        fail(`${name}: wrong payload on connection ${index}`);
      }
      expected += 1;
      latencies.push(Number(now - sentAt[sentHead++]) / 1000);
      received += 1;
    });
    socket.removeAllListeners("data");
    socket.on("data", (chunk) => {
      now = process.hrtime.bigint();
      received = 0;
      read(chunk);
      done += received;
      outstanding -= received;
      if (now < deadline) { if (received) socket.write(batch(received)); }
      else if (outstanding === 0) resolve();
    });
    socket.write(batch(inflight));
  })));
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  sockets.forEach((socket) => socket.destroy());
  latencies.sort((a, b) => a - b);
  return { messages: done, seconds: elapsed, per_second: done / elapsed,
           p50_us: percentile(latencies, 0.5), p99_us: percentile(latencies, 0.99) };
}

// COUNT connections opened by OPEN, BATCH at a time (the listen backlog holds a batch).
async function connectMany(count, batch, open) {
  const sockets = [];
  for (let i = 0; i < count; i += batch) {
    sockets.push(...await Promise.all(Array.from({ length: Math.min(batch, count - i) }, () => open())));
  }
  return sockets;
}

async function room(idleCount, receivers, size, messages) {
  const idle = await connectMany(idleCount, 500, connect);
  try {
    return { ...await fanout(receivers, size, messages, true), idle: idle.length };
  } finally {
    idle.forEach((socket) => socket.destroy());
  }
}

async function fanout(receivers, size, messages, joinRoom = false, secondPort = null) {
  const sockets = [];
  for (let i = 0; i < receivers; i++) {
    const socket = await connect(secondPort !== null && i % 2 ? secondPort : port);
    if (joinRoom) socket.write(frame(Buffer.from("Jr")));
    sockets.push(socket);
  }
  return fanoutTo(sockets, framer, size, messages);
}

async function splitfanout(port2, receivers, size, messages) {
  return fanout(receivers, size, messages, false, port2);
}

async function wsfanout(wsPort, receivers, size, messages) {
  // Receivers are raw sockets that do the WebSocket handshake and cut the
  // server's (unmasked) frames themselves: Node 20's WebSocket client is
  // slower than the servers measured.
  return fanoutTo(await connectMany(receivers, 100, () => wsConnect(Number(wsPort))), wsFramer, size, messages);
}

async function siofanout(wsPort, receivers, size, messages) {
  // An event with bytes comes as a text frame (the event, a placeholder)
  // and a binary frame (the bytes): only the binary ones are counted.
  const attachments = (onPayload) => wsFramer((payload, opcode) => { if (opcode === 2) onPayload(payload); });
  return fanoutTo(await connectMany(receivers, 100, () => sioConnect(Number(wsPort))), attachments, size, messages);
}

// The receivers' SOCKETS, each cut into payloads by CUT, count a broadcast of
// MESSAGES from a TCP sender; they are closed after.
async function fanoutTo(sockets, cut, size, messages) {
  const deliveries = receiving(sockets.length, messages, size);
  sockets.forEach((socket, index) => {
    socket.on("data", cut((payload) => deliveries.take(index, payload), deliveries.follower()));
  });
  try {
    return await broadcastFrom(sockets.length, messages, deliveries);
  } finally {
    sockets.forEach((socket) => socket.destroy());
  }
}

function wsConnect(wsPort, path = "/ws") {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port: wsPort }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${HOST}:${wsPort}\r\nUpgrade: websocket\r\n`
                   + "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   + "Sec-WebSocket-Version: 13\r\n\r\n");
    });
    socket.setNoDelay(true);
    socket.once("error", reject);
    let head = Buffer.alloc(0);
    const onHead = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      if (!head.subarray(0, 12).toString().includes("101")) reject(new Error(`wsfanout: ${head.toString()}`));
      socket.removeListener("data", onHead);
      resolve(socket);
      const rest = head.subarray(end + 4);
      if (rest.length) socket.emit("data", rest);
    };
    socket.on("data", onHead);
  });
}

// A socket.io client (Engine.IO 4 over a WebSocket from the start) that has
// asked to join the default namespace.
function sioConnect(wsPort) {
  return wsConnect(wsPort, "/socket.io/?EIO=4&transport=websocket").then((socket) => {
    socket.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0x34, 0x30]));  // "40", masked with a zero key
    return socket;
  });
}

// A stream cut into the server's WebSocket frames (final, unmasked): each
// text or binary payload to ONPAYLOAD, with its opcode; FOLLOW as framer's.
function wsFramer(onPayload, follow = null) {
  let buffered = Buffer.alloc(0);
  let following = null;
  return (chunk) => {
    if (following) return following(chunk);
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    let offset = 0;
    while (buffered.length - offset >= 2) {
      let length = buffered[offset + 1] & 0x7f;
      let header = 2;
      if (length === 126) {
        if (buffered.length - offset < 4) break;
        length = buffered.readUInt16BE(offset + 2);
        header = 4;
      } else if (length === 127) {
        if (buffered.length - offset < 10) break;
        length = Number(buffered.readBigUInt64BE(offset + 2));
        header = 10;
      }
      if (buffered.length - offset - header < length) break;
      const opcode = buffered[offset] & 0x0f;
      const end = offset + header + length;
      if ((opcode === 1 || opcode === 2) && follow && (following = follow(buffered, offset, offset + header, end, end))) {
        return;
      }
      if (opcode === 1 || opcode === 2) onPayload(buffered.subarray(offset + header, offset + header + length), opcode);
      offset += header + length;
    }
    buffered = buffered.subarray(offset);
  };
}

// A fan-out's message: "M", its sequence number, "M"s up to SIZE.
function message(sequence, size) {
  const payload = Buffer.alloc(size, 0x4d);
  payload.writeUInt32BE(sequence, 1);
  return payload;
}

// Counts each receiver's messages, checking their order. A receiver whose
// cutter takes a follower() cuts frames only until its first message: from
// there on it compares each chunk whole with the bytes it must receive (every
// message in order, in its first message's frame), one memcmp a chunk. Cut
// one by one, 64-byte frames cap 1,000 receivers below the fastest servers
// (Node net, about 8 M deliveries a second on one core).
function receiving(receivers, messages, size) {
  const counts = new Array(receivers).fill(0);
  const seenProbe = new Array(receivers).fill(false);
  const expected = new Map();
  let finished;
  const completed = () => { state.complete += 1; if (state.complete === receivers) finished(); };
  const state = {
    probed: 0,
    complete: 0,
    done: new Promise((resolve) => { finished = resolve; }),
    payloads: Array.from({ length: messages }, (_, sequence) => message(sequence, size)),
    // Every message in order, each between PREFIX and SUFFIX (its frame's header and trailer).
    expected(prefix, suffix) {
      const key = prefix.toString("hex") + "/" + suffix.toString("hex");
      if (!expected.has(key)) expected.set(key, Buffer.concat(state.payloads.flatMap((p) => [prefix, p, suffix])));
      return expected.get(key);
    },
    // FOLLOW(buffered, at, start, stop, after): the frame buffered[at:after]
    // carries the payload buffered[start:stop]; if it is the first message,
    // the chunk handler that takes the stream from there, else null.
    follower() {
      return (buffered, at, start, stop, after) => {
        if (buffered[start] !== 0x4d) return null;
        const whole = state.expected(buffered.subarray(at, start), buffered.subarray(stop, after));
        let position = 0;
        const follow = (chunk) => {
          if (position + chunk.length > whole.length
              || whole.compare(chunk, 0, chunk.length, position, position + chunk.length) !== 0) {
            fail("fanout: a receiver read other bytes than its messages in order");
          }
          position += chunk.length;
          if (position === whole.length) completed();
        };
        follow(buffered.subarray(at));
        return follow;
      };
    },
    take(index, payload) {
      if (payload[0] === 0x50) {  // "P": a probe, to know every receiver is registered
        if (!seenProbe[index]) { seenProbe[index] = true; state.probed += 1; }
        return;
      }
      if (payload.readUInt32BE(1) !== counts[index]) fail(`fanout: receiver ${index} got a message out of order`);
      counts[index] += 1;
      if (counts[index] === messages) completed();
    },
  };
  return state;
}

// A TCP sender (made by OPEN, its messages by ENCODE: int32 frames unless
// told) broadcasts MESSAGES once every receiver has seen a probe.
async function broadcastFrom(receivers, messages, deliveries, open = connect, encode = frame) {
  const sender = await open();
  sender.on("data", () => {});
  while (deliveries.probed < receivers) {
    sender.write(encode(Buffer.from("P")));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));  // let the last probes land
  const started = process.hrtime.bigint();
  for (const payload of deliveries.payloads) {
    if (!sender.write(encode(payload))) await new Promise((resolve) => sender.once("drain", resolve));
  }
  const timeout = setTimeout(() => fail(`fanout: not every receiver got all ${messages} in 120 s`), 120000);
  await deliveries.done;
  clearTimeout(timeout);
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  sender.destroy();
  return { messages, receivers, seconds: elapsed, deliveries_per_second: (messages * receivers) / elapsed };
}

// The NATS protocol's messages out of a stream: each MSG's payload to
// ONPAYLOAD, with its reply subject if any; a PING is answered (the other
// lines, INFO and +OK, are skipped); FOLLOW as framer's.
function natsReader(socket, onPayload, follow = null) {
  let buffered = Buffer.alloc(0);
  let following = null;
  return (chunk) => {
    if (following) return following(chunk);
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    let offset = 0;
    for (;;) {
      const end = buffered.indexOf("\r\n", offset);
      if (end < 0) break;
      if (buffered[offset] === 0x4d) {  // "MSG <subject> <sid> [reply] <size>"
        const line = buffered.toString("latin1", offset, end);
        const size = Number(line.slice(line.lastIndexOf(" ") + 1));
        if (buffered.length < end + 2 + size + 2) break;
        if (follow && (following = follow(buffered, offset, end + 2, end + 2 + size, end + 2 + size + 2))) return;
        const fields = line.split(" ");
        onPayload(buffered.subarray(end + 2, end + 2 + size), fields.length === 5 ? fields[3] : null);
        offset = end + 2 + size + 2;
        continue;
      }
      if (buffered[offset] === 0x50 && buffered[offset + 1] === 0x49) socket.write("PONG\r\n");
      offset = end + 2;
    }
    buffered = buffered.subarray(offset);
  };
}

function natsConnect() {
  return connect().then((socket) => {
    socket.write('CONNECT {"verbose":false,"pedantic":false,"name":"tcphub-bench"}\r\n');
    return socket;
  });
}

async function natsfanout(receivers, size, messages) {
  const sockets = await connectMany(receivers, 100, async () => {
    const socket = await natsConnect();
    socket.write("SUB bench 1\r\n");
    return socket;
  });
  const deliveries = receiving(sockets.length, messages, size);
  sockets.forEach((socket, index) => {
    socket.on("data", natsReader(socket, (payload) => deliveries.take(index, payload), deliveries.follower()));
  });
  const publish = (payload) => Buffer.concat([Buffer.from(`PUB bench ${payload.length}\r\n`), payload, Buffer.from("\r\n")]);
  try {
    return await broadcastFrom(sockets.length, messages, deliveries, natsConnect, publish);
  } finally {
    sockets.forEach((socket) => socket.destroy());
  }
}

// Once the server has answered a PING: what was sent before it is done.
function natsPong(socket) {
  return new Promise((resolve) => {
    let seen = "";
    const look = (chunk) => {
      seen = (seen + chunk.toString("latin1")).slice(-4096);
      if (seen.includes("PONG\r\n")) {
        socket.removeListener("data", look);
        resolve();
      }
    };
    socket.on("data", look);
  });
}

async function natsreqrep(conns, inflight, size, seconds) {
  const responder = await natsConnect();
  const answers = [];
  responder.on("data", natsReader(responder, (payload, reply) => {
    answers.push(Buffer.from(`PUB ${reply} ${payload.length}\r\n`), payload, Buffer.from("\r\n"));
  }));
  // One write per read of the responder, as echo's servers answer a read's requests.
  responder.on("data", () => { if (answers.length) responder.write(Buffer.concat(answers.splice(0))); });
  responder.write("SUB svc 1\r\nPING\r\n");
  await natsPong(responder);  // subscribed before any request
  const sockets = await Promise.all(Array.from({ length: conns }, natsConnect));
  await Promise.all(sockets.map((socket, index) => {
    socket.write(`SUB _INBOX.${index} 1\r\nPING\r\n`);
    return natsPong(socket);
  }));
  const requests = (index, marker, first, count) => {
    const parts = [];
    for (let i = 0; i < count; i++) {
      const payload = Buffer.alloc(size, marker);
      payload.writeUInt32BE(first + i, 0);
      parts.push(Buffer.from(`PUB svc _INBOX.${index} ${size}\r\n`), payload, Buffer.from("\r\n"));
    }
    return Buffer.concat(parts);
  };
  try {
    return await roundTrips("natsreqrep", sockets, inflight, size, seconds, requests, natsReader);
  } finally {
    responder.destroy();
  }
}

async function wsidle(conns) {
  return idle(conns, () => wsConnect(Number(port)));
}

async function sioidle(conns) {
  return idle(conns, () => sioConnect(Number(port)));
}

async function natsidle(conns) {
  return idle(conns, natsConnect);
}

async function idle(conns, open = connect) {
  const sockets = await connectMany(conns, 500, open);
  console.log(JSON.stringify({ ready: sockets.length }));
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  sockets.forEach((socket) => socket.destroy());
  return { closed: sockets.length };
}

// Connections made, used for one round trip (by ROUNDTRIP, which ends the
// socket when it is answered) and closed, CONCURRENCY at a time.
async function churn(concurrency, seconds, open = connect, roundTrip = echoOnce) {
  const deadline = Date.now() + seconds * 1000;
  let connections = 0;
  const started = process.hrtime.bigint();
  const worker = async () => {
    while (Date.now() < deadline) {
      const socket = await open();
      await new Promise((resolve) => {
        socket.on("close", resolve);
        roundTrip(socket);
      });
      connections += 1;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  return { connections, seconds: elapsed, per_second: connections / elapsed };
}

function echoOnce(socket) {
  socket.on("data", framer(() => { socket.end(); }));
  socket.write(frame(Buffer.from("churn")));
}

async function natschurn(concurrency, seconds) {
  return churn(concurrency, seconds, natsConnect, (socket) => {
    natsPong(socket).then(() => socket.end());
    socket.write("PING\r\n");
  });
}

const numbers = rest.map(Number);
const modes = {
  echo, fanout, splitfanout, wsfanout, siofanout, natsfanout, natsreqrep, idle, wsidle, sioidle, natsidle, churn,
  natschurn, room,
};
if (!modes[mode]) fail(`usage: node loadgen.js ${Object.keys(modes).join("|")} PORT ...`);
modes[mode](...numbers).then((result) => {
  console.log(JSON.stringify(result));
  process.exit(0);
}, (error) => fail(String(error)));
