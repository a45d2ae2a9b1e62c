// Node `ws` 8, a peer in uringcast's benchmarks (scripts/bench.sh, bench_deflate.sh), written as
// ws's README shows: a WebSocketServer, and a broadcast that loops over the clients calling
// `send` on each; here one `Set` of clients per topic.
//
// The benchmark's URL convention (scripts/peers/README.md):
//   /<topic>          joins <topic>; every message it sends goes to the topic, itself included
//   /publish/<topic>  joins nothing; every message it sends goes to <topic>'s subscribers
// MODE=echo sends each message back to its sender instead.
// Limits as for every server in the benchmark: messages up to 16 MiB (`maxPayload`), and a
// client with more than 1 MiB waiting to be sent (`bufferedAmount`) is closed as a slow
// consumer. No pings (uringcast runs with --ping-interval 0).
// Env: PORT (required), MODE=broadcast|echo (broadcast), DEFLATE=1 (permessage-deflate with
// ws's defaults: a zlib stream per socket with context takeover, messages of 1 KiB and more).
// CERT and KEY (PEM files): wss:// through an https.Server, as ws's README shows.
const fs = require("fs");
const https = require("https");
const { WebSocketServer, WebSocket } = require("ws");

const port = Number(process.env.PORT);
const echo = process.env.MODE === "echo";
const BACKPRESSURE_LIMIT = 1024 * 1024;
const topics = new Map(); // topic -> Set of subscribed sockets

const options = {
  perMessageDeflate: process.env.DEFLATE === "1",
  maxPayload: 16 * 1024 * 1024,
  clientTracking: false,
};
let wss;
if (process.env.CERT) {
  const server = https.createServer({
    cert: fs.readFileSync(process.env.CERT),
    key: fs.readFileSync(process.env.KEY),
  });
  wss = new WebSocketServer({ ...options, server });
  server.listen(port, "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
} else {
  wss = new WebSocketServer({ ...options, host: "127.0.0.1", port });
  wss.on("listening", () => console.log(`listening on 127.0.0.1:${port}`));
}

function roomOf(url) {
  const publishOnly = url.startsWith("/publish/");
  const path = publishOnly ? url.slice("/publish".length) : url;
  return { topic: path === "/" ? "/" : path.slice(1), publishOnly };
}

function publish(topic, data, isBinary) {
  const subscribers = topics.get(topic);
  if (!subscribers) return;
  for (const client of subscribers) {
    if (client.readyState !== WebSocket.OPEN) continue;
    if (client.bufferedAmount > BACKPRESSURE_LIMIT) {
      client.terminate(); // a slow consumer
      continue;
    }
    client.send(data, { binary: isBinary });
  }
}

wss.on("connection", (ws, req) => {
  ws.on("error", () => {});
  if (echo) {
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
    return;
  }
  const { topic, publishOnly } = roomOf(req.url);
  if (!publishOnly) {
    if (!topics.has(topic)) topics.set(topic, new Set());
    topics.get(topic).add(ws);
    ws.on("close", () => {
      const subscribers = topics.get(topic);
      subscribers.delete(ws);
      if (subscribers.size === 0) topics.delete(topic);
    });
  }
  ws.on("message", (data, isBinary) => publish(topic, data, isBinary));
});
