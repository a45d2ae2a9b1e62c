// clients/js/uringcast-resume.js in headless Chromium, against a uringcast --mode pusher
// server with --history. The page runs two stock pusher-js instances on one channel: one
// wrapped by the module, one plain. Events 1-3 reach both; both disconnect; events 4-5 are
// triggered while they are away; both reconnect; event 6 is triggered once both are
// subscribed again. The wrapped one must see 1-6 exactly once and in order, the plain one
// 1-3 and 6 (so the test fails if resuming does nothing). Every event's data must be exactly
// what was triggered: pusher-js ignores the top-level offset and epoch. The wrapped one also
// holds a second channel that gets more events while it is away than the server keeps
// (--history 100): that resume fails, `onResumeFailed` says so with the channel's head, and
// live events follow. Prints `ok resume`.
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
const wrapper = path.join(__dirname, '..', '..', '..', 'clients', 'js', 'uringcast-resume.js');

const page = `<!doctype html><meta charset="utf-8"><title>pending</title>
<script src="/pusher.min.js"></script>
<script src="/uringcast-resume.js"></script>
<script>
const options = {
  wsHost: ${JSON.stringify(env.PUSHER_HOST)}, wsPort: ${Number(env.PUSHER_PORT)}, forceTLS: false,
  enabledTransports: ['ws'], disableStats: true, cluster: 'local',
};
const post = (url, body) => fetch(url, { method: 'POST', body: JSON.stringify(body || {}) });
const clients = {
  wrapped: { pusher: new Pusher(${JSON.stringify(env.PUSHER_KEY)}, options), seen: [], subscribed: 0 },
  plain: { pusher: new Pusher(${JSON.stringify(env.PUSHER_KEY)}, options), seen: [], subscribed: 0 },
};
const failures = [];
uringcastResume(clients.wrapped.pusher, {
  onResumeFailed: (channel, head) => failures.push([channel, head && head.offset]),
});
const farSeen = [];
clients.wrapped.pusher.subscribe('resume-far').bind('story', (data) => { farSeen.push(data); step(); });
let stage = 0;
function all(test) { return Object.values(clients).every(test); }
async function step() {
  if (stage === 0 && all((c) => c.subscribed === 1)) {
    stage = 1;
    await post('/trigger', { from: 1, to: 3 });
  } else if (stage === 1 && all((c) => c.seen.length === 3)) {
    stage = 2;
    for (const c of Object.values(clients)) c.pusher.disconnect();
    await post('/trigger', { from: 4, to: 5 });
    await post('/trigger', { from: 1, to: 101, channel: 'resume-far' });
    for (const c of Object.values(clients)) c.pusher.connect();
  } else if (stage === 2 && all((c) => c.subscribed === 2)) {
    stage = 3;
    await post('/trigger', { from: 6, to: 6 });
    await post('/trigger', { from: 102, to: 102, channel: 'resume-far' });
  } else if (stage === 3 && all((c) => c.seen.length && c.seen[c.seen.length - 1].n === 6)
             && farSeen.length) {
    stage = 4;
    await post('/report', {
      wrapped: clients.wrapped.seen, plain: clients.plain.seen, failures, far: farSeen,
    });
  }
}
for (const c of Object.values(clients)) {
  const channel = c.pusher.subscribe('resume-news');
  channel.bind('pusher:subscription_succeeded', () => { c.subscribed += 1; step(); });
  channel.bind('story', (data) => { c.seen.push(data); step(); });
}
</script>`;

let chromium;
const timer = setTimeout(() => finish(new Error('resume scenario hung')), 60000);
function finish(error) {
  clearTimeout(timer);
  if (chromium) chromium.kill('SIGKILL');
  if (error) {
    console.error('resume scenario failed:', error);
    process.exit(1);
  }
  console.log('ok resume');
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
      } else if (req.url === '/pusher.min.js' || req.url === '/uringcast-resume.js') {
        res.writeHead(200, { 'Content-Type': 'application/javascript' });
        res.end(fs.readFileSync(req.url === '/pusher.min.js' ? pusherJs : wrapper));
      } else if (req.url === '/trigger') {
        const { from, to, channel } = JSON.parse(body);
        for (let n = from; n <= to; n++) {
          // In order: each trigger is answered once the server has published it.
          await sdk.trigger(channel || 'resume-news', 'story', { n });
        }
        res.writeHead(204);
        res.end();
      } else if (req.url === '/report') {
        res.writeHead(204);
        res.end();
        const seen = JSON.parse(body);
        const events = (ns) => ns.map((n) => ({ n }));
        assert.deepStrictEqual(seen.wrapped, events([1, 2, 3, 4, 5, 6]));
        assert.deepStrictEqual(seen.plain, events([1, 2, 3, 6]));
        assert.deepStrictEqual(seen.failures, [['resume-far', 101]]);
        assert.deepStrictEqual(seen.far, [{ n: 102 }]);
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
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'uringcast-pusher-resume-'));
  chromium = spawn(env.CHROMIUM || 'chromium', [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    `--user-data-dir=${profile}`, '--remote-debugging-port=0',
    `http://127.0.0.1:${server.address().port}/`,
  ], { stdio: 'ignore' });
  chromium.on('exit', (code) => finish(new Error(`chromium exited early (${code})`)));
});
