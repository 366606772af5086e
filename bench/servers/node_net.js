// Node's net module, the same wire format:  node node_net.js echo|broadcast
"use strict";
const net = require("net");
const echo = process.argv[2] === "echo";
const clients = new Set();
const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  clients.add(socket);
  let buffered = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    let offset = 0;
    while (buffered.length - offset >= 4) {
      const length = buffered.readUInt32BE(offset);
      if (buffered.length - offset - 4 < length) break;
      offset += 4 + length;
    }
    // The whole frames of this chunk, in one write per client.
    if (offset) {
      const frames = buffered.subarray(0, offset);
      if (echo) socket.write(frames);
      else for (const client of clients) if (client !== socket) client.write(frames);
    }
    buffered = buffered.subarray(offset);
  });
  socket.on("close", () => clients.delete(socket));
  socket.on("error", () => {});
});
server.listen({ port: 0, host: "127.0.0.1", backlog: 4096 }, () => {
  console.log(`listening on ${server.address().port}`);
});
