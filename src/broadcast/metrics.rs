//! Broadcast counters per worker, and the Prometheus text exposition of all counters.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::uplink::Uplink;
use super::Mailboxes;

/// Counters of the broadcast engine on one worker.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    /// Publishes made on this worker (by handlers, HTTP or the handle).
    pub publishes: AtomicU64,
    /// Frames queued to subscribers by this worker's fan-outs.
    pub deliveries: AtomicU64,
    /// Frames dropped for slow subscribers (`--slow-consumer drop`).
    pub drops: AtomicU64,
    /// Subscriptions refused by a topic limit (name length, subscriptions per connection,
    /// topics per worker).
    pub subscribe_refusals: AtomicU64,
    /// WebSocket upgrades refused with 403 for an `Origin` not in `--allowed-origins`.
    pub origin_refusals: AtomicU64,
    /// Handler callbacks that panicked; each closed its connection with 1011.
    pub handler_panics: AtomicU64,
    /// Publishes to this worker dropped because its mailbox was full.
    pub mailbox_drops: AtomicU64,
    /// Payload bytes of messages received.
    pub bytes_in: AtomicU64,
    /// Recoveries (subscriptions from a position the client presented) that gave the
    /// subscriber exactly what it missed.
    pub recoveries_exact: AtomicU64,
    /// Recoveries that could not (the subscriber was told "not recovered").
    pub recoveries_failed: AtomicU64,
    /// Publications sent from history by exact recoveries.
    pub replayed: AtomicU64,
    /// Gaps in a topic's positions on this worker (a full mailbox) filled from history.
    pub gaps_filled: AtomicU64,
    /// Gaps that history could not fill: the topic's subscribers here were sent a reset.
    pub gaps_reported: AtomicU64,
    /// Server-Sent Event streams opened.
    pub streams_opened: AtomicU64,
    /// Requests and connections refused, by reason (tokens, caps per address, connection
    /// and server): `uringcast_refusals_total{reason="..."}`.
    pub refusals: crate::refusal::RefusalCounts,
    /// Subscribers per topic on this worker; written by the worker, read by HTTP publishes.
    pub(crate) topics: TopicCounts,
}

impl BroadcastStats {
    /// Subscribers of `topic` on this worker.
    pub fn topic_count(&self, topic: &str) -> u64 {
        self.topics.get(topic)
    }
}

/// Subscribers per topic on one worker, readable from any thread.
///
/// The worker registers a topic when its first local subscriber joins and removes it when the
/// last one leaves; in between, joins and leaves only touch the topic's counter (see
/// `topic::Topics`), so the lock is taken once per topic's lifetime on the worker, not once per
/// subscription.
///
/// The same two moments tell the node's uplink (the broker link), when there is one, that the
/// topic appeared on or left this worker.
#[derive(Debug, Default)]
pub(crate) struct TopicCounts {
    live: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    uplink: OnceLock<Arc<dyn Uplink>>,
}

impl TopicCounts {
    /// Registers a topic that is new on this worker; returns its counter (at 0).
    pub(crate) fn open(&self, name: &Arc<str>) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        if let Ok(mut live) = self.live.lock() {
            live.insert(Arc::clone(name), Arc::clone(&counter));
        }
        if let Some(uplink) = self.uplink.get() {
            uplink.interest(name, true);
        }
        counter
    }

    /// Tells `uplink` of every topic that appears or leaves from now on.
    pub(crate) fn set_uplink(&self, uplink: Arc<dyn Uplink>) {
        let _ = self.uplink.set(uplink);
    }

    /// Forgets a topic whose last subscriber on this worker left.
    pub(crate) fn close(&self, name: &Arc<str>) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(name);
        }
        if let Some(uplink) = self.uplink.get() {
            uplink.interest(name, false);
        }
    }

    /// Subscribers of `topic`.
    pub(crate) fn get(&self, topic: &str) -> u64 {
        self.live.lock().map_or(0, |live| {
            live.get(topic).map_or(0, |c| c.load(Ordering::Relaxed))
        })
    }

    /// Topics, and subscriptions over all of them.
    pub(crate) fn total(&self) -> (u64, u64) {
        self.live.lock().map_or((0, 0), |live| {
            let subscriptions = live.values().map(|c| c.load(Ordering::Relaxed)).sum();
            (live.len() as u64, subscriptions)
        })
    }
}

/// Renders every counter of every worker in the Prometheus text format (version 0.0.4).
pub(crate) fn render(hub: &Mailboxes) -> String {
    let mut out = String::new();
    let driver = &hub.shared.stats;
    let mut family = |name: &str, help: &str, kind: &str, value: &dyn Fn(usize) -> u64| {
        let _ = writeln!(out, "# HELP uringcast_{name} {help}");
        let _ = writeln!(out, "# TYPE uringcast_{name} {kind}");
        for worker in 0..driver.len() {
            let _ = writeln!(
                out,
                "uringcast_{name}{{worker=\"{worker}\"}} {}",
                value(worker)
            );
        }
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family("connections", "Open connections.", "gauge", &|w| {
        load(&driver[w].connections)
    });
    family(
        "connections_accepted_total",
        "Connections accepted.",
        "counter",
        &|w| load(&driver[w].accepted),
    );
    family("messages_in_total", "Messages received.", "counter", &|w| {
        load(&driver[w].messages_in)
    });
    family(
        "bytes_in_total",
        "Payload bytes received.",
        "counter",
        &|w| load(&hub.stats[w].bytes_in),
    );
    family(
        "messages_out_total",
        "Frames queued to connections.",
        "counter",
        &|w| load(&driver[w].frames_out),
    );
    family(
        "bytes_out_total",
        "Bytes sent to connections.",
        "counter",
        &|w| load(&driver[w].bytes_out),
    );
    family(
        "publishes_total",
        "Publishes made on the worker.",
        "counter",
        &|w| load(&hub.stats[w].publishes),
    );
    family(
        "deliveries_total",
        "Frames queued to subscribers by fan-out.",
        "counter",
        &|w| load(&hub.stats[w].deliveries),
    );
    family(
        "drops_total",
        "Frames dropped for slow subscribers.",
        "counter",
        &|w| load(&hub.stats[w].drops),
    );
    family(
        "mailbox_drops_total",
        "Publishes dropped at a full worker mailbox.",
        "counter",
        &|w| load(&hub.stats[w].mailbox_drops),
    );
    family(
        "pending_bytes",
        "Bytes allocated for unfinished messages, request bodies and TLS records (bounded by --max-pending-bytes).",
        "gauge",
        &|w| load(&driver[w].pending_bytes),
    );
    family(
        "pending_budget_closes_total",
        "Connections closed with 1013 (or answered 503) for want of room in --max-pending-bytes.",
        "counter",
        &|w| load(&driver[w].pending_budget_closes),
    );
    family(
        "subscribe_refusals_total",
        "Subscriptions refused by a topic limit (name length, per connection, per worker).",
        "counter",
        &|w| load(&hub.stats[w].subscribe_refusals),
    );
    family(
        "origin_refusals_total",
        "WebSocket upgrades refused with 403 for an Origin not in --allowed-origins.",
        "counter",
        &|w| load(&hub.stats[w].origin_refusals),
    );
    family(
        "handler_panics_total",
        "Handler callbacks that panicked; each closed its connection with 1011.",
        "counter",
        &|w| load(&hub.stats[w].handler_panics),
    );
    family(
        "tls_failures_total",
        "TLS sessions closed for a protocol error (bad handshake, plaintext on the TLS port).",
        "counter",
        &|w| load(&driver[w].tls_failures),
    );
    family(
        "deflate_upgrades_total",
        "Connections that negotiated permessage-deflate (--deflate).",
        "counter",
        &|w| load(&driver[w].deflate_upgrades),
    );
    family(
        "deflate_compressions_total",
        "Messages compressed (once per worker and window size for a broadcast), including \
         those sent plain because compression did not shrink them.",
        "counter",
        &|w| load(&driver[w].deflate_compressions),
    );
    family(
        "deflate_frames_out_total",
        "Frames queued compressed.",
        "counter",
        &|w| load(&driver[w].deflate_frames_out),
    );
    family(
        "deflate_inflations_total",
        "Compressed messages received and inflated.",
        "counter",
        &|w| load(&driver[w].deflate_inflations),
    );
    family(
        "timers",
        "Entries on the worker's timer wheel (about one per connection).",
        "gauge",
        &|w| load(&driver[w].timers),
    );
    family(
        "submit_failures_total",
        "io_uring submits refused with an error other than a full completion queue.",
        "counter",
        &|w| load(&driver[w].submit_failures),
    );
    family(
        "slow_consumer_closes_total",
        "Connections closed with 1008 for a send backlog over the limit.",
        "counter",
        &|w| load(&driver[w].slow_consumer_closes),
    );
    family(
        "stale_completions_total",
        "Completions for slots already reused.",
        "counter",
        &|w| load(&driver[w].stale_completions),
    );
    family(
        "recv_buffer_starvation_total",
        "Times the receive buffer ring ran dry.",
        "counter",
        &|w| load(&driver[w].recv_buffer_starvation),
    );
    family("topics", "Topics with subscribers.", "gauge", &|w| {
        hub.stats[w].topics.total().0
    });
    family("subscriptions", "Subscriptions.", "gauge", &|w| {
        hub.stats[w].topics.total().1
    });
    family(
        "sse_streams_opened_total",
        "Server-Sent Event streams opened.",
        "counter",
        &|w| load(&hub.stats[w].streams_opened),
    );
    if let Some(log) = &hub.log {
        family(
            "recoveries_exact_total",
            "Subscriptions from a position the client presented that got exactly what they missed.",
            "counter",
            &|w| load(&hub.stats[w].recoveries_exact),
        );
        family(
            "recoveries_not_recovered_total",
            "Subscriptions from a position the client presented that could not be served exactly (told so).",
            "counter",
            &|w| load(&hub.stats[w].recoveries_failed),
        );
        family(
            "replayed_total",
            "Publications sent from history by recoveries (exact ones, and a new epoch given from its start).",
            "counter",
            &|w| load(&hub.stats[w].replayed),
        );
        family(
            "gaps_filled_total",
            "Gaps in a topic's positions on a worker filled from history.",
            "counter",
            &|w| load(&hub.stats[w].gaps_filled),
        );
        family(
            "gaps_reported_total",
            "Gaps history could not fill: the topic's subscribers there were sent a reset.",
            "counter",
            &|w| load(&hub.stats[w].gaps_reported),
        );
        log.render_metrics(&mut out);
    }
    render_refusals(&mut out, hub);
    if let Some(uplink) = hub.uplink() {
        uplink.render_metrics(&mut out);
    }
    if let Some(tls) = &hub.shared.tls {
        // Server-wide: the certificate is one for all workers.
        for (name, help, value) in [
            (
                "tls_reloads_total",
                "Certificate reloads that took effect (SIGHUP or ServerHandle::reload_tls).",
                &tls.reloads,
            ),
            (
                "tls_reload_failures_total",
                "Certificate reloads refused for a bad or unreadable file; the old pair stayed.",
                &tls.reload_failures,
            ),
        ] {
            server_wide(&mut out, name, help, "counter", "", load(value));
        }
    }
    out
}

/// Refusals summed over the workers, one sample per reason (every reason listed, 0 included,
/// so that a rate over them is defined from the start).
fn render_refusals(out: &mut String, hub: &Mailboxes) {
    let _ = writeln!(
        out,
        "# HELP uringcast_refusals_total Requests and connections refused, by reason."
    );
    let _ = writeln!(out, "# TYPE uringcast_refusals_total counter");
    for reason in crate::refusal::Reason::ALL {
        let sum: u64 = hub.stats.iter().map(|s| s.refusals.get(reason)).sum();
        let _ = writeln!(
            out,
            "uringcast_refusals_total{{reason=\"{}\"}} {sum}",
            reason.label()
        );
    }
}

/// Appends one family with a single sample, not per worker: its HELP and TYPE lines, then
/// `uringcast_NAME{LABELS} VALUE` (`labels` as `key="value"`, or empty).
pub(crate) fn server_wide(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    labels: &str,
    value: u64,
) {
    let _ = writeln!(out, "# HELP uringcast_{name} {help}");
    let _ = writeln!(out, "# TYPE uringcast_{name} {kind}");
    if labels.is_empty() {
        let _ = writeln!(out, "uringcast_{name} {value}");
    } else {
        let _ = writeln!(out, "uringcast_{name}{{{labels}}} {value}");
    }
}
