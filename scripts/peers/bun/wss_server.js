// Idle wss server: Bun.serve (uWebSockets + BoringSSL), echo.
const [cert, key] = [process.env.CERT, process.env.KEY];
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT || 0),
  tls: { cert: Bun.file(cert), key: Bun.file(key) },
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response("ok");
  },
  websocket: {
    message(ws, msg) { ws.send(msg); },
  },
});
console.log(`listening on 127.0.0.1:${server.port}`);
