// Socket.IO 4 (protocol v5 over Engine.IO v4), a peer for uringcast-load's `--protocol
// socketio` (loadgen/tests/socketio.rs) and the benchmarks, written as Socket.IO's documentation
// shows: a `Server` attached to an `http.Server`, a room per topic (`socket.join(topic)`), and a
// broadcast to the room (`io.to(topic).emit(...)`).
//
// Clients connect to /socket.io/?EIO=4&transport=websocket (WebSocket only, no polling), with
// the topic in the query:
//   &topic=<topic>              joins <topic>; every `publish` event it emits goes to the room
//                               as a `message` event, itself included
//   &topic=<topic>&publish=1    joins nothing; its `publish` events go to <topic>'s room
// MODE=echo: every `echo` event goes back to its sender as an `echo` event.
// Limits as for the other peers: messages up to 16 MiB (`maxHttpBufferSize`).
// Env: PORT (required; 0 picks a free port), MODE=broadcast|echo (broadcast), DEFLATE=1
// (permessage-deflate), PING_INTERVAL_MS and PING_TIMEOUT_MS (Socket.IO's defaults: 25000 and
// 20000). Listens on 127.0.0.1 only and prints `listening on 127.0.0.1:PORT` once it does.
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT);
const echo = process.env.MODE === "echo";

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  maxHttpBufferSize: 16 * 1024 * 1024,
  perMessageDeflate: process.env.DEFLATE === "1",
  pingInterval: Number(process.env.PING_INTERVAL_MS || 25000),
  pingTimeout: Number(process.env.PING_TIMEOUT_MS || 20000),
});

io.on("connection", (socket) => {
  if (echo) {
    socket.on("echo", (data) => socket.emit("echo", data));
    return;
  }
  const topic = String(socket.handshake.query.topic || "/");
  if (socket.handshake.query.publish !== "1") socket.join(topic);
  socket.on("publish", (data) => io.to(topic).emit("message", data));
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${httpServer.address().port}`);
});
