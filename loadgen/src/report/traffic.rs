//! The message scenarios' (`echo`, `broadcast`) report.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{bytes_per_conn, histograms, mib, per_conn, wire, Failure, Failures, LatencySummary};
use crate::scenario::broadcast::ClosedLoopTally;
use crate::scenario::churn::ChurnTally;
use crate::scenario::traffic::{NodeTally, Outcome, Tally};

/// How a message scenario paced its sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// Sends on a fixed schedule; latency from the scheduled time.
    Open,
    /// Each send waits for an answer; latency from the actual send.
    Closed,
}

impl Loop {
    /// The JSON value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// Everything an `echo` or `broadcast` run measured.
pub struct TrafficReport {
    /// `"echo"` or `"broadcast"`.
    pub scenario: &'static str,
    /// Every flag's value, as given or defaulted.
    pub settings: Value,
    /// How sends were paced.
    pub pace: Loop,
    /// One line saying what ran.
    pub headline: String,
    /// What `received` counts, for people: "echoes", "deliveries".
    pub unit: &'static str,
    /// The measurements.
    pub outcome: Outcome,
    /// Broadcast with `--inflight`: its publishes completed, timed out, and most outstanding.
    pub closed_loop: Option<ClosedLoopTally>,
    /// `pusher --churn`: presence members that joined, left, and failed.
    pub churn: Option<ChurnTally>,
}

impl TrafficReport {
    /// Messages received per second of traffic.
    pub fn throughput(&self) -> f64 {
        let seconds = self.outcome.duration.as_secs_f64();
        if seconds > 0.0 {
            self.outcome.tally.received as f64 / seconds
        } else {
            0.0
        }
    }

    /// Whether every connection was up and every message arrived once, intact, in order.
    pub fn clean(&self) -> bool {
        let o = &self.outcome;
        let t = &o.tally;
        o.reached == o.target
            && o.dropped.total() == 0
            && t.missing == 0
            && t.errors() == 0
            && o.sender_errors == 0
            && o.diagnostics.threads_missing == 0
            && o.reconnect.gave_up == 0
            && self.churn.as_ref().is_none_or(|c| c.failed == 0)
    }

    /// Messages sent per second of traffic (publishes, for broadcast).
    pub fn sent_per_s(&self) -> f64 {
        let seconds = self.outcome.duration.as_secs_f64();
        if seconds > 0.0 {
            self.outcome.tally.sent as f64 / seconds
        } else {
            0.0
        }
    }

    /// The title of the `--plot` curve.
    pub fn plot_title(&self) -> String {
        format!(
            "{} latency by percentile ({} loop)",
            self.scenario,
            self.pace.name()
        )
    }

    /// The latency histogram (µs).
    pub fn latency(&self) -> &Histogram<u64> {
        &self.outcome.tally.latency
    }

    /// The report as JSON (the `--json` file).
    pub fn json(&self) -> Value {
        let o = &self.outcome;
        let t: &Tally = &o.tally;
        let per_message = |cpu_s: f64| (t.received > 0).then(|| cpu_s * 1e6 / t.received as f64);
        let server = o.server.as_ref().map(|s| {
            json!({
                "pid": s.pid,
                "cpu_s": s.cpu_s,
                "cpu_per_message_us": per_message(s.cpu_s),
                "rss_bytes": s.rss_bytes,
                "rss_before_bytes": s.rss_before_bytes,
                "rss_connected_bytes": s.rss_connected_bytes,
                "rss_per_conn_bytes": per_conn(s.rss_before_bytes, s.rss_connected_bytes, o.reached),
            })
        });
        let failures = |f: &Failures| {
            let mut map = serde_json::Map::new();
            for kind in Failure::ALL {
                map.insert(kind.name().into(), f.count(kind).into());
            }
            Value::Object(map)
        };
        let node_keys: Vec<String> = t.nodes.iter().map(|n| node_key(&n.address)).collect();
        let mut named_histograms = vec![
            ("latency_us", &t.latency),
            ("handshake_latency_us", &o.handshake),
            ("connect_latency_us", &o.tcp_connect),
            ("tls_handshake_latency_us", &o.tls_handshake),
            ("close_latency_us", &o.closing),
        ];
        named_histograms.extend(
            node_keys
                .iter()
                .map(String::as_str)
                .zip(t.nodes.iter().map(|n| &n.latency)),
        );
        let mut report = json!({
            "scenario": self.scenario,
            "settings": self.settings,
            "loop": self.pace.name(),
            "connections": {
                "target": o.target,
                "reached": o.reached,
                "established": o.established,
                "failed": failures(&o.failed),
                "failure_details": o.failed.details,
                "dropped": o.dropped.total(),
                "drop_details": o.dropped.details,
                "closed_clean": o.closed_clean,
                "closed_forced": o.closed_forced,
                "closed_abandoned": o.closed_abandoned,
            },
            "sent": t.sent,
            "received": t.received,
            "expected": t.expected,
            "missing": t.missing,
            "duplicated": t.duplicated,
            "out_of_order": t.out_of_order,
            "corrupt": t.corrupt,
            "publish_errors": o.sender_errors,
            "started_at_unix_s": o.started_at_unix_s,
            "duration_s": o.duration.as_secs_f64(),
            "throughput_per_s": self.throughput(),
            "sent_per_s": self.sent_per_s(),
            "closed_loop": self.closed_loop.map(|c| json!({
                "inflight": c.inflight,
                "publish_timeout_s": c.timeout_s,
                "completed": c.completed,
                "timed_out": c.timed_out,
                "max_outstanding": c.max_outstanding,
            })),
            "churn": self.churn.as_ref().map(|c| json!({
                "rate": c.rate,
                "joined": c.joined,
                "left": c.left,
                "failed": c.failed,
                "first_error": c.first_error,
            })),
            "interrupted": o.interrupted,
            "latency_us": LatencySummary::of(&t.latency).json(),
            "handshake_latency_us": LatencySummary::of(&o.handshake).json(),
            "connect_latency_us": LatencySummary::of(&o.tcp_connect).json(),
            "tls_handshake_latency_us": (!o.tls_handshake.is_empty())
                .then(|| LatencySummary::of(&o.tls_handshake).json()),
            "tls_resumed": (!o.tls_handshake.is_empty()).then_some(o.tls_resumed),
            "close_latency_us": LatencySummary::of(&o.closing).json(),
            "server": server,
            "client": {
                "cpu_s": o.client_cpu_s,
                "cpu_per_message_us": per_message(o.client_cpu_s),
                "rss_bytes": o.client_rss_bytes,
            },
            "diagnostics": o.diagnostics.json(),
            "nodes": (!t.nodes.is_empty()).then(|| nodes_json(&t.nodes)),
            "histograms": histograms::json(&named_histograms),
        });
        wire::extend(&mut report, o.deflate, &o.wire);
        if let Some(all) = report.as_object_mut() {
            all.insert("reconnect".into(), super::reconnect::json(&o.reconnect));
            if self.scenario == "sse" {
                all.insert("streams".into(), super::reconnect::streams_json(&t.streams));
            }
        }
        report
    }

    /// The report as text.
    pub fn text(&self) -> String {
        let o = &self.outcome;
        let t = &o.tally;
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline);
        if o.interrupted {
            let _ = writeln!(out, "interrupted by Ctrl-C: figures cover what ran");
        }
        let _ = writeln!(
            out,
            "loop      {} ({})",
            self.pace.name(),
            match self.pace {
                Loop::Open => "latency from each message's scheduled send time",
                Loop::Closed => "latency from each message's actual send",
            }
        );
        let _ = write!(
            out,
            "conns     {} of {} up when traffic started; failed {}",
            o.reached,
            o.target,
            o.failed.total()
        );
        let kinds: Vec<String> = Failure::ALL
            .iter()
            .filter(|k| o.failed.count(**k) > 0)
            .map(|k| format!("{} {}", k.name(), o.failed.count(*k)))
            .collect();
        if !kinds.is_empty() {
            let _ = write!(out, " ({})", kinds.join(", "));
        }
        let _ = writeln!(out, "; dropped by the server {}", o.dropped.total());
        for (detail, count) in o.failed.details.iter().chain(&o.dropped.details) {
            let _ = writeln!(out, "          {count} x {detail}");
        }
        let _ = writeln!(
            out,
            "messages  sent {} received {} expected {}: missing {} duplicated {} out of order {} \
             corrupt {}",
            t.sent, t.received, t.expected, t.missing, t.duplicated, t.out_of_order, t.corrupt
        );
        if o.sender_errors > 0 {
            let _ = writeln!(out, "publish   {} requests failed", o.sender_errors);
        }
        let _ = writeln!(
            out,
            "rate      {:.0} {}/s over {:.2} s",
            self.throughput(),
            self.unit,
            o.duration.as_secs_f64()
        );
        if let Some(c) = &self.churn {
            let _ = writeln!(
                out,
                "churn     {} presence members joined, {} left, {} failed (asked: {}/s){}",
                c.joined,
                c.left,
                c.failed,
                c.rate,
                c.first_error
                    .as_ref()
                    .map(|e| format!("; first failure: {e}"))
                    .unwrap_or_default()
            );
        }
        if let Some(c) = &self.closed_loop {
            let _ = writeln!(
                out,
                "publish   {:.0}/s, closed loop: {} in flight, at most {} outstanding; {} \
                 completed, {} timed out after {} s",
                self.sent_per_s(),
                c.inflight,
                c.max_outstanding,
                c.completed,
                c.timed_out,
                c.timeout_s
            );
        }
        let l = LatencySummary::of(&t.latency);
        let _ = writeln!(
            out,
            "latency µs p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (n={})",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.count
        );
        for n in &t.nodes {
            let l = LatencySummary::of(&n.latency);
            let _ = writeln!(
                out,
                "node      {}: {} subscribers, received {} expected {} missing {}; latency µs p50 {} \
                 p90 {} p99 {} p99.9 {} max {} (n={})",
                n.address,
                n.subscribers,
                n.received,
                n.expected,
                n.missing,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                l.count
            );
        }
        if self.scenario == "sse" {
            out.push_str(&super::reconnect::streams_text(&t.streams));
        }
        if let Some(line) = super::reconnect::text(&o.reconnect) {
            let _ = writeln!(out, "{line}");
        }
        wire::write_deflate(&mut out, o.deflate, &o.wire, o.established);
        wire::write_bytes(&mut out, &o.wire);
        if !o.tls_handshake.is_empty() {
            let h = LatencySummary::of(&o.tls_handshake);
            let u = LatencySummary::of(&o.handshake);
            let _ = writeln!(
                out,
                "tls       handshake µs p50 {} p99 {} max {} (n={}, {} resumed); upgrade, TLS \
                 included, p50 {} p99 {}",
                h.p50, h.p99, h.max, h.count, o.tls_resumed, u.p50, u.p99
            );
        }
        if let Some(s) = &o.server {
            let per = if t.received > 0 {
                format!(", {:.2} µs per message", s.cpu_s * 1e6 / t.received as f64)
            } else {
                String::new()
            };
            let _ =
                writeln!(
                out,
                "server    pid {}: cpu {:.2} s{per}; RSS {} → {} connected ({} per connection) \
                 → {} at the end",
                s.pid,
                s.cpu_s,
                mib(s.rss_before_bytes),
                mib(s.rss_connected_bytes),
                bytes_per_conn(per_conn(s.rss_before_bytes, s.rss_connected_bytes, o.reached)),
                mib(s.rss_bytes),
            );
        }
        let per = if t.received > 0 {
            format!(
                ", {:.2} µs per message",
                o.client_cpu_s * 1e6 / t.received as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "client    cpu {:.2} s{per}; RSS {}",
            o.client_cpu_s,
            o.client_rss_bytes.map_or_else(|| "n/a".to_owned(), mib)
        );
        o.diagnostics.write_if_any(&mut out, "note");
        out
    }
}

/// The key of node `address`'s latency histogram in the report's `histograms`.
pub fn node_key(address: &str) -> String {
    format!("latency_us@{address}")
}

/// The report's `nodes`: each server address's subscribers, deliveries and latency.
fn nodes_json(nodes: &[NodeTally]) -> Value {
    nodes
        .iter()
        .map(|n| {
            json!({
                "address": n.address,
                "subscribers": n.subscribers,
                "received": n.received,
                "expected": n.expected,
                "missing": n.missing,
                "latency_us": LatencySummary::of(&n.latency).json(),
            })
        })
        .collect()
}
