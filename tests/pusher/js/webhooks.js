// Receives a uringcast --mode pusher server's webhooks and checks them with the `pusher` Node
// SDK's webhook() helper. Protocol with tests/pusher/clients.rs: prints `webhook-port N` once
// listening, reads the uringcast port from stdin, drives pusher-js clients to cause every
// event type, and prints `ok webhooks` when each arrived signed and valid. The first batch
// is answered 500, so the server's retry is exercised too.
'use strict';

const assert = require('assert');
const http = require('http');
const readline = require('readline');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const env = process.env;
const WAIT_MS = 10000;
const received = [];
let refusedOnce = false;
let invalid = 0;
let waiters = [];

function sdkFor(port) {
  return new PusherServer({
    appId: env.PUSHER_APP_ID, key: env.PUSHER_KEY, secret: env.PUSHER_SECRET,
    host: '127.0.0.1', port: String(port), useTLS: false,
  });
}
let sdk = sdkFor(1);

const receiver = http.createServer((req, res) => {
  let rawBody = '';
  req.on('data', (chunk) => { rawBody += chunk; });
  req.on('end', () => {
    if (!refusedOnce) {
      refusedOnce = true;
      res.writeHead(500);
      res.end();
      return;
    }
    const webhook = sdk.webhook({ headers: req.headers, rawBody });
    if (!webhook.isValid()) {
      invalid += 1;
    } else {
      assert.ok(webhook.getTime() instanceof Date);
      received.push(...webhook.getEvents());
    }
    res.writeHead(200);
    res.end();
    waiters = waiters.filter((w) => !w());
  });
});

// Resolves when `check(received)` holds, or rejects after WAIT_MS.
function until(what, check) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}: got ${JSON.stringify(received)}`)), WAIT_MS);
    const waiter = () => {
      if (!check(received)) return false;
      clearTimeout(timer);
      resolve();
      return true;
    };
    if (!waiter()) waiters.push(waiter);
  });
}

function client(port, user) {
  return new Pusher(env.PUSHER_KEY, {
    wsHost: '127.0.0.1', wsPort: port, forceTLS: false, enabledTransports: ['ws'],
    disableStats: true, cluster: 'local',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        callback(null, sdk.authorizeChannel(socketId, channelName, { user_id: user, user_info: {} }));
      },
    },
  });
}

function subscribed(channel) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('subscription timed out')), WAIT_MS);
    channel.bind('pusher:subscription_succeeded', () => { clearTimeout(timer); resolve(); });
  });
}

const has = (name, extra = {}) => (events) => events.some((e) => e.name === name
  && Object.entries(extra).every(([k, v]) => e[k] === v));

async function main(port) {
  sdk = sdkFor(port);
  const a = client(port, 'u1');
  const ca = a.subscribe('presence-hooks');
  await subscribed(ca);
  await until('occupied and member_added', (ev) => has('channel_occupied', { channel: 'presence-hooks' })(ev)
    && has('member_added', { channel: 'presence-hooks', user_id: 'u1' })(ev));
  const b = client(port, 'u2');
  const cb = b.subscribe('presence-hooks');
  await subscribed(cb);
  cb.trigger('client-ping', { n: 1 });
  await until('client_event', has('client_event', { channel: 'presence-hooks', event: 'client-ping', user_id: 'u2' }));
  const clientEvent = received.find((e) => e.name === 'client_event');
  assert.deepStrictEqual(JSON.parse(clientEvent.data), { n: 1 });
  assert.match(clientEvent.socket_id, /^\d+\.\d+$/);
  b.disconnect();
  await until('member_removed', has('member_removed', { user_id: 'u2' }));
  a.disconnect();
  await until('channel_vacated', has('channel_vacated', { channel: 'presence-hooks' }));
  assert.strictEqual(invalid, 0);
  assert.strictEqual(received.filter((e) => e.name === 'channel_occupied').length, 1, 'occupied once');
}

const timer = setTimeout(() => { console.error('webhooks scenario hung'); process.exit(2); }, 60000);
receiver.listen(0, '127.0.0.1', () => {
  console.log(`webhook-port ${receiver.address().port}`);
  const lines = readline.createInterface({ input: process.stdin });
  lines.once('line', (line) => {
    main(Number(line.trim())).then(
      () => { clearTimeout(timer); console.log('ok webhooks'); process.exit(0); },
      (error) => { console.error('webhooks scenario failed:', error); process.exit(1); },
    );
  });
});
