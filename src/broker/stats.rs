//! What the link counts, and its families in `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::BrokerUrl;

/// What the link counts, readable from any thread (`/metrics`).
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Whether the link is connected to the broker now.
    pub connected: AtomicBool,
    /// Publishes handed to the broker.
    pub published: AtomicU64,
    /// Publishes that could not reach the broker: it was unreachable, or refused them.
    pub publish_failures: AtomicU64,
    /// Publishes dropped because the link's outbound queue was full.
    pub publish_drops: AtomicU64,
    /// Messages received from the broker and handed to the workers.
    pub received: AtomicU64,
    /// Messages received that this node had published itself (not delivered twice).
    pub own_skipped: AtomicU64,
    /// Messages another node published that never arrived, from gaps in its sequence numbers.
    pub gaps: AtomicU64,
    /// Messages received twice (by sequence number), delivered once.
    pub repeats: AtomicU64,
    /// Messages received that could not be read, or were over `--max-message-bytes`.
    pub malformed: AtomicU64,
    /// Kafka records found in another partition than their topic's (a node that counted
    /// the partitions otherwise produced them): not delivered, their subscribers told.
    pub misplaced: AtomicU64,
    /// Messages received but dropped because the link's inbound queue was full.
    pub receive_drops: AtomicU64,
    /// Connections re-made after a loss.
    pub reconnects: AtomicU64,
    /// Topics this node is subscribed to at the broker.
    pub subscribed_topics: AtomicU64,
}

impl BrokerStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Appends the link's counters to `/metrics`.
pub(crate) fn render_metrics(stats: &BrokerStats, url: &BrokerUrl, out: &mut String) {
    let kind = match url {
        BrokerUrl::Redis(_) => "redis",
        BrokerUrl::RedisCluster(_) => "redis-cluster",
        BrokerUrl::Nats(_) => "nats",
        BrokerUrl::Kafka(_) => "kafka",
    };
    let connected = u64::from(stats.connected.load(Ordering::Relaxed));
    let families: [(&str, &str, &str, u64); 13] = [
        ("broker_connected", "1 while the broker link is connected.", "gauge", connected),
        ("broker_subscribed_topics", "Topics this node is subscribed to at the broker.", "gauge", load(&stats.subscribed_topics)),
        ("broker_published_total", "Publishes handed to the broker.", "counter", load(&stats.published)),
        ("broker_publish_failures_total", "Publishes that could not reach the broker (it was unreachable or refused them); delivered on this node only.", "counter", load(&stats.publish_failures)),
        ("broker_publish_drops_total", "Publishes dropped because the link's outbound queue was full; delivered on this node only.", "counter", load(&stats.publish_drops)),
        ("broker_received_total", "Messages from the broker handed to this node's workers.", "counter", load(&stats.received)),
        ("broker_own_skipped_total", "Messages from the broker that this node published (delivered here already).", "counter", load(&stats.own_skipped)),
        ("broker_gaps_total", "Messages of other nodes that never arrived, from gaps in their sequence numbers.", "counter", load(&stats.gaps)),
        ("broker_repeats_total", "Messages from the broker seen before, not delivered again.", "counter", load(&stats.repeats)),
        ("broker_malformed_total", "Messages from the broker that could not be read or were over --max-message-bytes.", "counter", load(&stats.malformed)),
        ("broker_misplaced_total", "Kafka records in another partition than their topic's (produced by a node that counted the partitions otherwise); not delivered, and the topic's subscribers here were told they missed something.", "counter", load(&stats.misplaced)),
        ("broker_receive_drops_total", "Messages from the broker dropped because the link's inbound queue was full.", "counter", load(&stats.receive_drops)),
        ("broker_reconnects_total", "Connections to the broker re-made after a loss.", "counter", load(&stats.reconnects)),
    ];
    let labels = format!("broker=\"{kind}\"");
    for (name, help, type_, value) in families {
        crate::broadcast::metrics::server_wide(out, name, help, type_, &labels, value);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
