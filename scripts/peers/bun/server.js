// Bun.serve (uWebSockets inside; BoringSSL for TLS), a peer in uringcast's benchmarks
// (scripts/bench.sh, bench_wss.sh), written as Bun's WebSocket docs show: `server.upgrade`
// with per-socket data, `ws.subscribe(topic)` and `server.publish(topic, message)`.
//
// The benchmark's URL convention (scripts/peers/README.md):
//   /<topic>          joins <topic>; every message it sends goes to the topic, itself included
//   /publish/<topic>  joins nothing; every message it sends goes to <topic>'s subscribers
// MODE=echo sends each message back to its sender instead.
// Limits as for every server in the benchmark: messages up to 16 MiB (`maxPayloadLength`), and
// a socket with more than 1 MiB waiting to be sent is closed (`backpressureLimit`,
// `closeOnBackpressureLimit`). No idle timeout and no pings (uringcast runs with
// --ping-interval 0).
// Env: PORT (0: any), MODE=broadcast|echo (broadcast), CERT and KEY (PEM files: wss://),
// DEFLATE=1 (permessage-deflate with Bun's defaults).
const echo = process.env.MODE === "echo";
const tls = process.env.CERT
  ? { cert: Bun.file(process.env.CERT), key: Bun.file(process.env.KEY) }
  : undefined;

function roomOf(url) {
  const path = url.slice(url.indexOf("/", url.indexOf("//") + 2));
  const publishOnly = path.startsWith("/publish/");
  const rest = publishOnly ? path.slice("/publish".length) : path;
  return { topic: rest === "/" ? "/" : rest.slice(1), publishOnly };
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT || 0),
  tls,
  fetch(req, server) {
    if (server.upgrade(req, { data: roomOf(req.url) })) return;
    return new Response("ok");
  },
  websocket: {
    maxPayloadLength: 16 * 1024 * 1024,
    backpressureLimit: 1024 * 1024,
    closeOnBackpressureLimit: true,
    idleTimeout: 0,
    sendPings: false,
    perMessageDeflate: process.env.DEFLATE === "1",
    open(ws) {
      if (!echo && !ws.data.publishOnly) ws.subscribe(ws.data.topic);
    },
    message(ws, message) {
      if (echo) ws.send(message);
      else server.publish(ws.data.topic, message);
    },
  },
});
console.log(`listening on 127.0.0.1:${server.port}`);
