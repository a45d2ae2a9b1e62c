// Node `ws` 8 echo server, written as its README shows, with permessage-deflate on when
// DEFLATE=1 (`perMessageDeflate: true`: ws's defaults, which keep a zlib stream per socket
// with context takeover and compress messages of 1 KiB and more).
// Env: PORT (required), DEFLATE=1.
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT);
const wss = new WebSocketServer({
  host: "127.0.0.1",
  port,
  perMessageDeflate: process.env.DEFLATE === "1",
  maxPayload: 16 * 1024 * 1024,
});
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
});
wss.on("listening", () => console.log(`listening on 127.0.0.1:${port}`));
