// pusher-js in headless Chromium against a uringcast --mode pusher server. This Node script
// serves a page and pusher-js's browser build on 127.0.0.1, with an auth endpoint signing with
// the `pusher` Node SDK; starts Chromium (CHROMIUM, default `chromium`) on the page; when the
// page says it is subscribed, triggers events through the SDK; and checks what the page
// reports. Prints `ok chromium`. Same environment as clients.js.
'use strict';

const assert = require('assert');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { spawn } = require('child_process');
const PusherServer = require('pusher');

const env = process.env;
const sdk = new PusherServer({
  appId: env.PUSHER_APP_ID, key: env.PUSHER_KEY, secret: env.PUSHER_SECRET,
  host: env.PUSHER_HOST, port: env.PUSHER_PORT, useTLS: false,
});
const pusherJs = path.join(path.dirname(require.resolve('pusher-js')), '..', 'web', 'pusher.min.js');

const page = `<!doctype html><meta charset="utf-8"><title>pending</title>
<script src="/pusher.min.js"></script>
<script>
const seen = { events: [], members: 0, cacheMiss: false };
const pusher = new Pusher(${JSON.stringify(env.PUSHER_KEY)}, {
  wsHost: ${JSON.stringify(env.PUSHER_HOST)}, wsPort: ${Number(env.PUSHER_PORT)}, forceTLS: false,
  enabledTransports: ['ws'], disableStats: true, cluster: 'local',
  channelAuthorization: { endpoint: '/auth', transport: 'ajax' },
});
let subscribed = 0;
const ready = () => { if (++subscribed === 3) fetch('/ready', { method: 'POST' }); };
const news = pusher.subscribe('browser-news');
news.bind('pusher:subscription_succeeded', ready);
news.bind('headline', (data) => { seen.events.push(data); report(); });
const room = pusher.subscribe('presence-browser');
room.bind('pusher:subscription_succeeded', (members) => { seen.members = members.count; ready(); });
const empty = pusher.subscribe('cache-browser-empty');
empty.bind('pusher:cache_miss', () => { seen.cacheMiss = true; ready(); });
function report() {
  if (seen.events.length === 2) fetch('/report', { method: 'POST', body: JSON.stringify(seen) });
}
</script>`;

let chromium;
const timer = setTimeout(() => finish(new Error('chromium scenario hung')), 60000);
function finish(error) {
  clearTimeout(timer);
  if (chromium) chromium.kill('SIGKILL');
  if (error) {
    console.error('chromium scenario failed:', error);
    process.exit(1);
  }
  console.log('ok chromium');
  process.exit(0);
}

const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', async () => {
    try {
      if (req.url === '/') {
        res.writeHead(200, { 'Content-Type': 'text/html' });
        res.end(page);
      } else if (req.url === '/pusher.min.js') {
        res.writeHead(200, { 'Content-Type': 'application/javascript' });
        res.end(fs.readFileSync(pusherJs));
      } else if (req.url === '/auth') {
        const form = new URLSearchParams(body);
        const auth = sdk.authorizeChannel(form.get('socket_id'), form.get('channel_name'),
          { user_id: 'browser', user_info: { agent: 'chromium' } });
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(auth));
      } else if (req.url === '/ready') {
        res.writeHead(204);
        res.end();
        await sdk.trigger('browser-news', 'headline', { n: 1 });
        await sdk.trigger(['browser-news', 'presence-browser'], 'headline', { n: 2 });
      } else if (req.url === '/report') {
        res.writeHead(204);
        res.end();
        const seen = JSON.parse(body);
        assert.deepStrictEqual(seen.events, [{ n: 1 }, { n: 2 }]);
        assert.strictEqual(seen.members, 1);
        assert.strictEqual(seen.cacheMiss, true);
        finish();
      } else {
        res.writeHead(404);
        res.end();
      }
    } catch (error) {
      finish(error);
    }
  });
});

server.listen(0, '127.0.0.1', () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'uringcast-pusher-chromium-'));
  chromium = spawn(env.CHROMIUM || 'chromium', [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    `--user-data-dir=${profile}`, '--remote-debugging-port=0',
    `http://127.0.0.1:${server.address().port}/`,
  ], { stdio: 'ignore' });
  chromium.on('exit', (code) => finish(new Error(`chromium exited early (${code})`)));
});
