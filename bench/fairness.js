// One flooder, many listeners and a measuring pair against a line-framed
// broadcast hub: node bench/fairness.js PORT LISTENERS SECONDS
// Prints one JSON line: the pair's one-way latency (sender -> hub -> receiver)
// p50/p99 in µs, the pings sent and received, and the bytes the flooder sent.
"use strict";
const net = require("net");

const [port, listeners, seconds] = process.argv.slice(2).map(Number);
const deadline = Date.now() + seconds * 1000;

function connect() {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => resolve(socket));
    socket.setNoDelay(true);
    socket.on("error", reject);
  });
}

async function main() {
  const sinks = [];
  for (let i = 0; i < listeners; i++) {
    const s = await connect();
    s.on("data", () => {});
    sinks.push(s);
  }
  const sender = await connect();
  const receiver = await connect();
  sender.on("data", () => {});
  const sentAt = new Map();
  const latencies = [];
  let pending = "";
  receiver.on("data", (chunk) => {
    const now = process.hrtime.bigint();
    pending += chunk.toString("latin1");
    let index;
    while ((index = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, index);
      pending = pending.slice(index + 1);
      if (line.startsWith("ping ")) {
        const start = sentAt.get(line);
        if (start !== undefined) latencies.push(Number(now - start) / 1000);
      }
    }
  });
  const flooder = await connect();
  flooder.on("data", () => {});
  flooder.on("error", () => {});
  await new Promise((resolve) => setTimeout(resolve, 200)); // every connection accepted
  let flooded = 0;
  const block = Buffer.alloc(65536, "\n");
  (async () => {
    while (Date.now() < deadline && !flooder.destroyed) {
      flooded += block.length;
      if (!flooder.write(block)) await new Promise((resolve) => flooder.once("drain", resolve));
    }
  })();
  let pings = 0;
  while (Date.now() < deadline) {
    const line = `ping ${pings++}`;
    sentAt.set(line, process.hrtime.bigint());
    sender.write(line + "\n");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await new Promise((resolve) => setTimeout(resolve, 1000)); // late pings land or count as lost
  latencies.sort((a, b) => a - b);
  const at = (q) => (latencies.length ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]) : null);
  console.log(JSON.stringify({ p50_us: at(0.5), p99_us: at(0.99), pings, received: latencies.length, flooded }));
  for (const s of [...sinks, sender, receiver, flooder]) s.destroy();
}

main().catch((error) => {
  console.error(String(error));
  process.exit(1);
});
