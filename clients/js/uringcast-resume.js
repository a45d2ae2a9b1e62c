// uringcast-resume: recovery for a stock pusher-js instance on a uringcast `--mode pusher`
// server started with `--history`. No fork of pusher-js: the module wraps an instance.
//
//   const pusher = new Pusher(key, options);
//   const resume = uringcastResume(pusher, { onResumeFailed(channel, head) { ... } });
//
// With history on, the server gives every channel event its position in the channel's
// stream as top-level `"offset"` and `"epoch"` fields (pusher-js drops fields it does not
// know before an event reaches the app), and `pusher_internal:subscription_succeeded` the
// position live events start from. The module reads them from the raw WebSocket messages of
// each connection pusher-js opens and keeps the last position per channel. Whenever pusher-js
// subscribes to a channel again (after any reconnect), the module adds `"resume": {"epoch",
// "offset"}` to that `pusher:subscribe` (through the instance's `send_event`), and the server
// sends exactly the events missed before the live ones. When it cannot (the history no
// longer holds them, the server restarted, a presence channel), the channel gets the event
// `uringcast:resume_failed` and `onResumeFailed(channel, head)` is called; what follows is
// live, from `head`.
//
// Public pieces of pusher-js used: `send_event`, `connection.bind('connected'|'message')`,
// and the connection's transport's raw `message` event (pusher-js 7 and 8).
(function (root, factory) {
  if (typeof module === 'object' && module.exports) {
    module.exports = factory();
  } else {
    root.uringcastResume = factory();
  }
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  function uringcastResume(pusher, options) {
    const onResumeFailed = (options && options.onResumeFailed) || function () {};
    const positions = new Map();
    let watched = null;

    function note(text) {
      if (typeof text !== 'string'
          || (text.indexOf('"epoch"') < 0 && text.indexOf('uringcast:resume_failed') < 0)) {
        return;
      }
      let message;
      try {
        message = JSON.parse(text);
      } catch (e) {
        return;
      }
      if (!message || typeof message.channel !== 'string') return;
      if (message.event === 'uringcast:resume_failed') {
        failed(message);
      } else if (typeof message.epoch === 'string' && typeof message.offset === 'number') {
        positions.set(message.channel, { epoch: message.epoch, offset: message.offset });
      }
    }

    function failed(message) {
      let head = null;
      try {
        head = JSON.parse(message.data);
      } catch (e) { /* no head */ }
      if (head && typeof head.epoch === 'string' && typeof head.offset === 'number') {
        positions.set(message.channel, { epoch: head.epoch, offset: head.offset });
      } else {
        positions.delete(message.channel);
      }
      onResumeFailed(message.channel, head);
    }

    // Each connection pusher-js opens: its transport emits every raw message event.
    function watch() {
      const connection = pusher.connection && pusher.connection.connection;
      const transport = connection && connection.transport;
      if (!transport || transport === watched || typeof transport.bind !== 'function') return;
      watched = transport;
      transport.bind('message', (event) => note(event && event.data));
    }
    pusher.connection.bind('connected', watch);
    pusher.connection.bind('message', watch);
    watch();

    const send = pusher.send_event.bind(pusher);
    pusher.send_event = function (name, data, channel) {
      if (name === 'pusher:subscribe' && data && positions.has(data.channel)) {
        data = Object.assign({}, data, { resume: positions.get(data.channel) });
      } else if (name === 'pusher:unsubscribe' && data) {
        positions.delete(data.channel);
      }
      return send(name, data, channel);
    };

    return {
      /** The last position seen on `channel`: `{epoch, offset}`, or undefined. */
      position(channel) {
        const at = positions.get(channel);
        return at && { epoch: at.epoch, offset: at.offset };
      },
      /** Forgets `channel`'s position: its next subscription starts live. */
      forget(channel) {
        positions.delete(channel);
      },
    };
  }

  return uringcastResume;
});
