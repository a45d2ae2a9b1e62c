// Drives a uringcast --mode pusher server with the real pusher-js client and the real
// `pusher` Node server SDK. Run by tests/pusher/clients.rs as
//   node clients.js SCENARIO
// with PUSHER_HOST, PUSHER_PORT, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET in the environment.
// Prints `ok SCENARIO` and exits 0 when every check passed; any failure throws (exit 1).
// Every wait is bounded; "never received" is shown by a marker sent later along the same path.
'use strict';

const assert = require('assert');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const env = process.env;
const host = env.PUSHER_HOST;
const port = Number(env.PUSHER_PORT);
const sdk = new PusherServer({
  appId: env.PUSHER_APP_ID,
  key: env.PUSHER_KEY,
  secret: env.PUSHER_SECRET,
  host,
  port: String(port),
  useTLS: false,
});

const WAIT_MS = 5000;

// A pusher-js client whose private/presence auth and sign-in are answered in-process by the
// Node SDK, as an app's auth endpoint would.
function client(user) {
  return new Pusher(env.PUSHER_KEY, {
    wsHost: host,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'local',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith('presence-')
          ? { user_id: user.id, user_info: { name: user.name } }
          : undefined;
        callback(null, sdk.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        callback(null, sdk.authenticateUser(socketId, { id: user.id, name: user.name }));
      },
    },
  });
}

// Resolves with the first `event` on `target` (a channel, a connection, a user), or rejects
// after WAIT_MS.
function next(target, event, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what || event}`)), WAIT_MS);
    const handler = (data) => {
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve(data);
    };
    target.bind(event, handler);
  });
}

async function connected(pusher) {
  if (pusher.connection.state !== 'connected') {
    await next(pusher.connection, 'connected', 'connection');
  }
  return pusher.connection.socket_id;
}

async function subscribe(pusher, name) {
  const channel = pusher.subscribe(name);
  await next(channel, 'pusher:subscription_succeeded', `subscription to ${name}`);
  return channel;
}

// Records every event of a channel, to show what never arrived.
function record(channel) {
  const seen = [];
  channel.bind_global((event, data) => seen.push({ event, data }));
  return seen;
}

const scenarios = {
  async public() {
    const a = client({ id: 'a', name: 'A' });
    const socketId = await connected(a);
    assert.match(socketId, /^\d+\.\d+$/);
    const news = await subscribe(a, 'news');
    const got = next(news, 'greet');
    await sdk.trigger('news', 'greet', { hello: 'world' });
    assert.deepStrictEqual(await got, { hello: 'world' });
    // Several channels in one trigger.
    const more = await subscribe(a, 'more-news');
    const both = Promise.all([next(news, 'multi'), next(more, 'multi')]);
    await sdk.trigger(['news', 'more-news'], 'multi', 'x');
    assert.deepStrictEqual(await both, ['x', 'x']);
    // Unsubscribed: nothing more arrives there; a marker on the other channel shows it.
    a.unsubscribe('more-news');
    const seen = record(more);
    const marker = next(news, 'marker');
    await sdk.trigger('more-news', 'late', 1);
    await sdk.trigger('news', 'marker', 1);
    await marker;
    assert.deepStrictEqual(seen, []);
    a.disconnect();
  },

  async private() {
    const a = client({ id: 'a', name: 'A' });
    const b = client({ id: 'b', name: 'B' });
    const [ca, cb] = [await subscribe(a, 'private-chat'), await subscribe(b, 'private-chat')];
    const seenByA = record(ca);
    // A client event reaches the others, never its sender.
    const got = next(cb, 'client-typing');
    assert.ok(ca.trigger('client-typing', { who: 'a' }));
    assert.deepStrictEqual(await got, { who: 'a' });
    const marker = next(ca, 'marker');
    await sdk.trigger('private-chat', 'marker', 1);
    await marker;
    assert.deepStrictEqual(seenByA.filter((e) => e.event === 'client-typing'), []);
    // A subscription with a forged signature is refused.
    const forged = new Pusher(env.PUSHER_KEY, {
      wsHost: host, wsPort: port, forceTLS: false, enabledTransports: ['ws'], cluster: 'local',
      channelAuthorization: { customHandler: (_p, cb2) => cb2(null, { auth: `${env.PUSHER_KEY}:${'0'.repeat(64)}` }) },
    });
    const refused = next(forged.subscribe('private-chat'), 'pusher:subscription_error');
    const error = await refused;
    assert.strictEqual(error.status, 401);
    forged.disconnect();
    // socket_id exclusion through the SDK: a does not get it, b does.
    const socketA = await connected(a);
    const toB = next(cb, 'excluded');
    const aMarker = next(ca, 'marker2');
    await sdk.trigger('private-chat', 'excluded', 'x', { socket_id: socketA });
    await sdk.trigger('private-chat', 'marker2', 1);
    await Promise.all([toB, aMarker]);
    assert.deepStrictEqual(seenByA.filter((e) => e.event === 'excluded'), []);
    a.disconnect();
    b.disconnect();
  },

  async presence() {
    const a = client({ id: 'u1', name: 'One' });
    const b = client({ id: 'u2', name: 'Two' });
    const a2 = client({ id: 'u1', name: 'One' }); // the same user in a second tab
    const ca = await subscribe(a, 'presence-room');
    assert.strictEqual(ca.members.count, 1);
    assert.strictEqual(ca.members.me.id, 'u1');
    const added = next(ca, 'pusher:member_added');
    const cb = await subscribe(b, 'presence-room');
    assert.strictEqual(cb.members.count, 2);
    assert.deepStrictEqual((await added).info, { name: 'Two' });
    const seenByB = record(cb);
    // u1's second tab: no member_added at b.
    const ca2 = await subscribe(a2, 'presence-room');
    assert.strictEqual(ca2.members.count, 2);
    // Client events on presence carry user_id, which pusher-js hands over as metadata.
    const typed = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for client-hi')), WAIT_MS);
      cb.bind('client-hi', (data, metadata) => { clearTimeout(timer); resolve([data, metadata]); });
    });
    ca.trigger('client-hi', { n: 1 });
    const [typedData, metadata] = await typed;
    assert.deepStrictEqual(typedData, { n: 1 });
    assert.strictEqual(metadata.user_id, 'u1');
    // The HTTP API sees two users and three subscriptions.
    const info = await (await sdk.get({ path: '/channels/presence-room', params: { info: 'user_count,subscription_count' } })).json();
    assert.deepStrictEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });
    const users = await (await sdk.get({ path: '/channels/presence-room/users' })).json();
    assert.deepStrictEqual(users.users.map((u) => u.id).sort(), ['u1', 'u2']);
    const list = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
    assert.deepStrictEqual(list, { channels: { 'presence-room': { user_count: 2 } } });
    // The second tab leaves: u1 is still present, no member_removed.
    a2.disconnect();
    const marker = next(cb, 'marker');
    await waitFor(async () => (await channelInfo('presence-room')).subscription_count === 2);
    await sdk.trigger('presence-room', 'marker', 1);
    await marker;
    assert.deepStrictEqual(seenByB.filter((e) => e.event.startsWith('pusher:member')), []);
    // The last tab leaves: member_removed, once.
    const removed = next(cb, 'pusher:member_removed');
    a.disconnect();
    assert.strictEqual((await removed).id, 'u1');
    assert.strictEqual(cb.members.count, 1);
    b.disconnect();
  },

  async cache() {
    await sdk.trigger('cache-prices', 'price', { v: 1 });
    await sdk.trigger('cache-prices', 'price', { v: 2 });
    const a = client({ id: 'a', name: 'A' });
    const channel = a.subscribe('cache-prices');
    assert.deepStrictEqual(await next(channel, 'price', 'the cached event'), { v: 2 });
    const empty = a.subscribe('cache-empty');
    await next(empty, 'pusher:cache_miss');
    a.disconnect();
  },

  async signin() {
    const d = client({ id: 'u9', name: 'Nine' });
    await connected(d);
    d.signin();
    await next(d.connection, 'message', 'signin_success').then(function wait(m) {
      return m.event === 'pusher:signin_success' ? m : next(d.connection, 'message').then(wait);
    });
    // A server-to-user event reaches the signed-in user.
    const hello = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for the user event')), WAIT_MS);
      d.user.bind('hello', (data) => { clearTimeout(timer); resolve(data); });
    });
    await sdk.sendToUser('u9', 'hello', { hi: 1 });
    assert.deepStrictEqual(await hello, { hi: 1 });
    // Terminating the user's connections closes them with 4009: pusher-js gives up.
    const closed = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for the close')), WAIT_MS);
      d.connection.bind('state_change', ({ current }) => {
        if (current === 'disconnected' || current === 'failed' || current === 'unavailable') {
          clearTimeout(timer);
          resolve(current);
        }
      });
    });
    const response = await sdk.terminateUserConnections('u9');
    assert.strictEqual(response.status, 200);
    await closed;
    d.disconnect();
  },

  async batch() {
    const a = client({ id: 'a', name: 'A' });
    const [c1, c2] = [await subscribe(a, 'b-one'), await subscribe(a, 'b-two')];
    const got = Promise.all([next(c1, 'e1'), next(c2, 'e2')]);
    await sdk.triggerBatch([
      { channel: 'b-one', name: 'e1', data: { n: 1 } },
      { channel: 'b-two', name: 'e2', data: { n: 2 } },
    ]);
    assert.deepStrictEqual(await got, [{ n: 1 }, { n: 2 }]);
    // More than ten events in a batch is a 400, and nothing is published.
    const eleven = Array.from({ length: 11 }, (_, i) => ({ channel: 'b-one', name: 'x', data: i }));
    await assert.rejects(sdk.triggerBatch(eleven), (e) => e.status === 400);
    // One bad event refuses the whole batch: the good one before it is not published.
    const seen = record(c1);
    const bad = [{ channel: 'b-one', name: 'early', data: 1 }, { channel: 'bad name', name: 'x', data: 1 }];
    await assert.rejects(sdk.triggerBatch(bad), (e) => e.status === 400);
    const marker = next(c1, 'marker');
    await sdk.trigger('b-one', 'marker', 1);
    await marker;
    assert.deepStrictEqual(seen.filter((e) => e.event === 'early'), []);
    // A wrong secret is a 401.
    const wrong = new PusherServer({ appId: env.PUSHER_APP_ID, key: env.PUSHER_KEY, secret: 'wrong', host, port: String(port), useTLS: false });
    await assert.rejects(wrong.trigger('b-one', 'x', 1), (e) => e.status === 401);
    a.disconnect();
  },
};

async function channelInfo(name) {
  return (await sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } })).json();
}

// Polls `check` until it holds (bounded): for counts the server updates when a close arrives.
async function waitFor(check) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const name = process.argv[2];
const timer = setTimeout(() => { console.error(`scenario ${name} hung`); process.exit(2); }, 30000);
scenarios[name]().then(
  () => { clearTimeout(timer); console.log(`ok ${name}`); process.exit(0); },
  (error) => { console.error(`scenario ${name} failed:`, error); process.exit(1); },
);
