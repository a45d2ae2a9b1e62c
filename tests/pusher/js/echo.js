// Drives a uringcast --mode pusher server with Laravel Echo on pusher-js, its private and
// presence channels authorised by a small local auth endpoint (as a Laravel app's
// /broadcasting/auth) that signs with the `pusher` Node SDK's authorizeChannel. Run by
// tests/pusher/clients.rs with the same environment as clients.js; prints `ok echo`.
'use strict';

const assert = require('assert');
const http = require('http');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');
const path = require('path');
const { pathToFileURL } = require('url');

// laravel-echo 2.x is an ES module whose CommonJS build does not load (its package says
// "type": "module"); ES imports ignore NODE_PATH, so it is imported by its file.
async function loadEcho() {
  // require.resolve finds the CommonJS build (the `require` condition); its ES sibling is
  // dist/echo.js.
  const common = require.resolve('laravel-echo');
  return (await import(pathToFileURL(path.join(path.dirname(common), 'echo.js')).href)).default;
}
let Echo;

const env = process.env;
const host = env.PUSHER_HOST;
const port = Number(env.PUSHER_PORT);
const sdk = new PusherServer({
  appId: env.PUSHER_APP_ID, key: env.PUSHER_KEY, secret: env.PUSHER_SECRET,
  host, port: String(port), useTLS: false,
});
const WAIT_MS = 5000;

// The app's auth endpoint: the user comes from a header (a session cookie, in a real app).
function authServer() {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const user = req.headers['x-user'];
      const channel = form.get('channel_name');
      const presence = channel.startsWith('presence-')
        ? { user_id: user, user_info: { name: `User ${user}` } }
        : undefined;
      const auth = sdk.authorizeChannel(form.get('socket_id'), channel, presence);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(auth));
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function echo(authPort, user) {
  return new Echo({
    broadcaster: 'pusher',
    client: new Pusher(env.PUSHER_KEY, {
      wsHost: host, wsPort: port, forceTLS: false, enabledTransports: ['ws'],
      disableStats: true, cluster: 'local',
      channelAuthorization: {
        endpoint: `http://127.0.0.1:${authPort}/broadcasting/auth`,
        transport: 'ajax',
        headers: { 'X-User': user },
      },
    }),
  });
}

function within(what, register) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
    register((value) => { clearTimeout(timer); resolve(value); });
  });
}

async function main() {
  Echo = await loadEcho();
  const auth = await authServer();
  const authPort = auth.address().port;
  const alice = echo(authPort, 'alice');
  const bob = echo(authPort, 'bob');

  // A private channel: an event from the backend through the SDK, and a whisper.
  const orders = alice.private('orders');
  await within('alice on private-orders', (done) => orders.subscribed(done));
  const bobOrders = bob.private('orders');
  await within('bob on private-orders', (done) => bobOrders.subscribed(done));
  const shipped = within('OrderShipped', (done) => orders.listen('.OrderShipped', done));
  await sdk.trigger('private-orders', 'OrderShipped', { id: 7 });
  assert.deepStrictEqual(await shipped, { id: 7 });
  const typing = within('the whisper', (done) => bobOrders.listenForWhisper('typing', done));
  orders.whisper('typing', { name: 'alice' });
  assert.deepStrictEqual(await typing, { name: 'alice' });

  // A presence channel: here, joining, leaving.
  const here = await within('alice here', (done) => alice.join('chat').here(done));
  assert.deepStrictEqual(here.map((u) => u.name), ['User alice']);
  const joining = within('bob joining', (done) => alice.join('chat').joining(done));
  const bobHere = await within('bob here', (done) => bob.join('chat').here(done));
  assert.deepStrictEqual(bobHere.map((u) => u.name).sort(), ['User alice', 'User bob']);
  assert.deepStrictEqual(await joining, { name: 'User bob' });
  const leaving = within('bob leaving', (done) => alice.join('chat').leaving(done));
  bob.leave('chat');
  assert.deepStrictEqual(await leaving, { name: 'User bob' });

  alice.disconnect();
  bob.disconnect();
  auth.close();
}

const timer = setTimeout(() => { console.error('echo scenario hung'); process.exit(2); }, 30000);
main().then(
  () => { clearTimeout(timer); console.log('ok echo'); process.exit(0); },
  (error) => { console.error('echo scenario failed:', error); process.exit(1); },
);
