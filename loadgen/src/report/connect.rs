//! The `connect` scenario's report.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{
    bytes_per_conn, histograms, mib, per_conn, wire, Diagnostics, Failure, Failures, LatencySummary,
};
use crate::capacity::Capacity;
use crate::scenario::traffic::{Deflate, WireTally};

/// The server's and the kernel's cost, from `/proc`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerUsage {
    /// The server's pid.
    pub pid: u32,
    /// CPU seconds (user + system) the server used from before the ramp to the hold sample.
    pub cpu_s: f64,
    /// CPU seconds the server used from the hold sample until it went idle after the close.
    pub close_cpu_s: Option<f64>,
    /// Server RSS before the ramp.
    pub rss_before_bytes: u64,
    /// Server RSS at the hold sample.
    pub rss_bytes: u64,
    /// Kernel slab before the ramp (system-wide).
    pub slab_before_bytes: u64,
    /// Kernel slab at the hold sample.
    pub slab_bytes: u64,
}

impl ServerUsage {
    /// RSS growth per open connection, if any are open.
    pub fn rss_per_conn(&self, open: u64) -> Option<f64> {
        per_conn(self.rss_before_bytes, self.rss_bytes, open)
    }

    /// Slab growth per open connection (both ends of each loopback connection).
    pub fn slab_per_conn(&self, open: u64) -> Option<f64> {
        per_conn(self.slab_before_bytes, self.slab_bytes, open)
    }
}

/// The settings a run was made with, as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingsSummary {
    /// The target URL.
    pub url: String,
    /// Connections asked for.
    pub connections: u64,
    /// Connections opened per second during the ramp.
    pub rate: f64,
    /// Hold time after the ramp.
    pub hold: Duration,
    /// Client threads.
    pub threads: usize,
    /// Source addresses (empty: the kernel picks).
    pub sources: Vec<String>,
    /// Server addresses connected to.
    pub targets: Vec<String>,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Time allowed for the closing handshake at the end.
    pub close_timeout: Duration,
    /// Whether `IP_BIND_ADDRESS_NO_PORT` was set before binding.
    pub bind_no_port: bool,
    /// Whether permessage-deflate was offered (`--deflate`).
    pub deflate: bool,
}

/// The latency histograms behind a [`ConnectReport`]'s summaries, µs, kept so that reports of
/// several processes add exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectHistograms {
    /// Connect submitted to the verified 101.
    pub handshake: Histogram<u64>,
    /// Connect submitted to the connect's completion.
    pub tcp_connect: Histogram<u64>,
    /// `wss://`: TCP connected to TLS established.
    pub tls_handshake: Histogram<u64>,
    /// Our close frame queued to the server's FIN.
    pub closing: Histogram<u64>,
}

/// Everything a `connect` run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectReport {
    /// How the run was made.
    pub settings: SettingsSummary,
    /// `--reconnect`: what reconnecting did.
    pub reconnect: crate::scenario::traffic::ReconnectTally,
    /// What the run could hold.
    pub capacity: Capacity,
    /// Connections open at the hold sample.
    pub reached: u64,
    /// Handshakes verified in all.
    pub established: u64,
    /// Established connections the server closed or reset before the end.
    pub dropped: Failures,
    /// Connections that never reached a verified 101.
    pub failed: Failures,
    /// Connections closed at the end with a completed closing handshake.
    pub closed_clean: u64,
    /// Connections closed at the end without one (timeout or error).
    pub closed_forced: u64,
    /// Connections still open when their thread gave up waiting (closed as its ring went).
    pub closed_abandoned: u64,
    /// Time from the first connection to the last close.
    pub duration: Duration,
    /// Time from the first connection until every handshake had finished.
    pub ramp: Duration,
    /// Time held after the ramp.
    pub hold: Duration,
    /// Handshake latency, connect submission to verified 101.
    pub latency: LatencySummary,
    /// TCP connect latency, connect submission to the connect's completion.
    pub connect_latency: LatencySummary,
    /// `wss://`: TLS handshake latency, TCP connected to TLS established (the upgrade's
    /// latency includes it), and how many handshakes resumed a session.
    pub tls: Option<(LatencySummary, u64)>,
    /// Closing handshake latency at the end: our close frame queued to the server's FIN.
    pub close_latency: LatencySummary,
    /// Server and kernel cost, with `--server-pid`.
    pub server: Option<ServerUsage>,
    /// Kernel slab before the ramp and at the hold sample, always measured.
    pub slab: Option<(u64, u64)>,
    /// This process's RSS at the hold sample.
    pub client_rss_bytes: Option<u64>,
    /// Counters that should be 0.
    pub diagnostics: Diagnostics,
    /// Connections that agreed to permessage-deflate, and the bytes after the handshakes.
    pub wire: WireTally,
    /// The histograms the latency summaries were taken from.
    pub histograms: ConnectHistograms,
    /// Wall-clock time the hold started, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// `--echo-sample`: the sampled connections' messages and their echoes.
    pub echo: SampleEcho,
}

/// `--echo-sample K`: every K-th connection sent one message during the hold; how many came
/// back intact. All zero without the flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleEcho {
    /// Messages sent (one per sampled open connection).
    pub sent: u64,
    /// Echoes received intact.
    pub received: u64,
    /// Messages never answered.
    pub missing: u64,
    /// Answers that were not the message sent.
    pub corrupt: u64,
}

impl ConnectReport {
    /// Whether every asked-for connection was open at the hold sample, every thread reported
    /// (a report missing a thread is not a success), and with `--echo-sample` every sampled
    /// connection got its message back intact.
    pub fn target_reached(&self) -> bool {
        self.reached >= self.settings.connections
            && self.diagnostics.threads_missing == 0
            && self.reconnect.gave_up == 0
            && self.echo.missing == 0
            && self.echo.corrupt == 0
    }

    /// The report as JSON (the `--json` file).
    pub fn json(&self) -> Value {
        let s = &self.settings;
        let failures = |f: &Failures| {
            let mut map = serde_json::Map::new();
            for kind in Failure::ALL {
                map.insert(kind.name().into(), f.count(kind).into());
            }
            Value::Object(map)
        };
        let server = self.server.map(|u| {
            json!({
                "pid": u.pid,
                "cpu_s": u.cpu_s,
                "close_cpu_s": u.close_cpu_s,
                "rss_bytes": u.rss_bytes,
                "rss_before_bytes": u.rss_before_bytes,
                "rss_per_conn_bytes": u.rss_per_conn(self.reached),
                "slab_bytes": u.slab_bytes,
                "slab_before_bytes": u.slab_before_bytes,
                "slab_per_conn_bytes": u.slab_per_conn(self.reached),
            })
        });
        let mut report = json!({
            "scenario": "connect",
            // The keys every scenario's report has; a connect run sends messages only with
            // --echo-sample.
            "loop": null,
            "sent": self.echo.sent,
            "received": self.echo.received,
            "expected": self.echo.sent,
            "missing": self.echo.missing,
            "duplicated": 0,
            "out_of_order": 0,
            "corrupt": self.echo.corrupt,
            "throughput_per_s": if self.ramp.is_zero() {
                0.0
            } else {
                self.established as f64 / self.ramp.as_secs_f64()
            },
            "settings": {
                "url": s.url,
                "connections": s.connections,
                "rate": s.rate,
                "duration_s": s.hold.as_secs_f64(),
                "threads": s.threads,
                "sources": s.sources,
                "target_addresses": s.targets,
                "handshake_timeout_s": s.handshake_timeout.as_secs_f64(),
                "close_timeout_s": s.close_timeout.as_secs_f64(),
                "bind_address_no_port": s.bind_no_port,
                "deflate": s.deflate,
            },
            "capacity": {
                "slots_per_thread": self.capacity.slots_per_thread,
                "slots": self.capacity.slots(),
                "sources": self.capacity.sources,
                "targets": self.capacity.targets,
                "pairs": self.capacity.pairs(),
                "ports_per_source": self.capacity.ports_per_source,
                "ports": self.capacity.ports(),
                "reachable": self.capacity.reachable(),
            },
            "connections": {
                "target": s.connections,
                "reached": self.reached,
                "established": self.established,
                "failed": failures(&self.failed),
                "failure_details": self.failed.details,
                "dropped": self.dropped.total(),
                "drop_details": self.dropped.details,
                "closed_clean": self.closed_clean,
                "closed_forced": self.closed_forced,
                "closed_abandoned": self.closed_abandoned,
            },
            "started_at_unix_s": self.started_at_unix_s,
            "duration_s": self.duration.as_secs_f64(),
            "ramp_s": self.ramp.as_secs_f64(),
            "hold_s": self.hold.as_secs_f64(),
            "latency_us": self.latency.json(),
            "connect_latency_us": self.connect_latency.json(),
            "tls_handshake_latency_us": self.tls.as_ref().map(|(l, _)| l.json()),
            "tls_resumed": self.tls.as_ref().map(|(_, r)| r),
            "close_latency_us": self.close_latency.json(),
            "server": server,
            "kernel": self.slab.map(|(before, hold)| json!({
                "slab_before_bytes": before,
                "slab_bytes": hold,
                "slab_per_conn_bytes": per_conn(before, hold, self.reached),
            })),
            "client": { "rss_bytes": self.client_rss_bytes },
            "diagnostics": self.diagnostics.json(),
            "histograms": histograms::json(&[
                ("latency_us", &self.histograms.handshake),
                ("connect_latency_us", &self.histograms.tcp_connect),
                ("tls_handshake_latency_us", &self.histograms.tls_handshake),
                ("close_latency_us", &self.histograms.closing),
            ]),
        });
        wire::extend(&mut report, self.deflate(), &self.wire);
        if let Some(all) = report.as_object_mut() {
            all.insert("reconnect".into(), super::reconnect::json(&self.reconnect));
        }
        report
    }

    fn deflate(&self) -> Deflate {
        Deflate::from_flags(self.settings.deflate, false)
    }

    /// The report as text.
    pub fn text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let sources = if s.sources.is_empty() {
            "source chosen by the kernel".to_owned()
        } else {
            format!("{} source addresses", s.sources.len())
        };
        let _ = writeln!(
            out,
            "connect {}: {} connections at {}/s, hold {:.1} s, {} threads, {sources}",
            s.url,
            s.connections,
            s.rate,
            s.hold.as_secs_f64(),
            s.threads
        );
        let _ = writeln!(
            out,
            "reached   {} of {} open at hold (established {}, dropped by the server {})",
            self.reached,
            s.connections,
            self.established,
            self.dropped.total()
        );
        let _ = write!(out, "failed    {}", self.failed.total());
        let kinds: Vec<String> = Failure::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.failed.count(*k)))
            .collect();
        let _ = writeln!(out, " ({})", kinds.join(", "));
        for (detail, count) in self.failed.details.iter().chain(&self.dropped.details) {
            let _ = writeln!(out, "          {count} x {detail}");
        }
        if let Some(line) = super::reconnect::text(&self.reconnect) {
            let _ = writeln!(out, "{line}");
        }
        let l = &self.latency;
        let _ = writeln!(
            out,
            "handshake µs (connect submitted → 101 verified): p50 {} p90 {} p99 {} p99.9 {} \
             p99.99 {} max {} (n={})",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.count
        );
        let c = &self.connect_latency;
        let _ = writeln!(
            out,
            "tcp connect µs (connect submitted → completed):  p50 {} p90 {} p99 {} p99.9 {} \
             p99.99 {} max {}",
            c.p50, c.p90, c.p99, c.p999, c.p9999, c.max
        );
        if let Some((t, resumed)) = &self.tls {
            let _ = writeln!(
                out,
                "tls µs (tcp connected → TLS established):       p50 {} p90 {} p99 {} p99.9 {} \
                 p99.99 {} max {} (n={}, {} resumed)",
                t.p50, t.p90, t.p99, t.p999, t.p9999, t.max, t.count, resumed
            );
        }
        let c = &self.close_latency;
        let _ = writeln!(
            out,
            "close µs (close frame queued → server FIN):     p50 {} p90 {} p99 {} p99.9 {} \
             p99.99 {} max {}",
            c.p50, c.p90, c.p99, c.p999, c.p9999, c.max
        );
        if let Some(u) = &self.server {
            let _ = writeln!(
                out,
                "server    pid {}: cpu {:.2} s to the hold sample, {} s closing; RSS {} → {} \
                 ({} per connection)",
                u.pid,
                u.cpu_s,
                u.close_cpu_s
                    .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2}")),
                mib(u.rss_before_bytes),
                mib(u.rss_bytes),
                bytes_per_conn(u.rss_per_conn(self.reached)),
            );
        }
        if let Some((before, hold)) = self.slab {
            let _ = writeln!(
                out,
                "kernel    Slab {} → {} ({} per connection, both ends of the loopback pair)",
                mib(before),
                mib(hold),
                bytes_per_conn(per_conn(before, hold, self.reached)),
            );
        }
        if let Some(rss) = self.client_rss_bytes {
            let _ = writeln!(out, "client    RSS {}", mib(rss));
        }
        let e = &self.echo;
        if e.sent > 0 {
            let _ = writeln!(
                out,
                "alive     {} of {} sampled connections echoed (missing {}, corrupt {})",
                e.received, e.sent, e.missing, e.corrupt
            );
        }
        let _ = writeln!(
            out,
            "closed    {} clean, {} forced, {} abandoned; run {:.1} s (ramp {:.1} s, hold {:.1} s)",
            self.closed_clean,
            self.closed_forced,
            self.closed_abandoned,
            self.duration.as_secs_f64(),
            self.ramp.as_secs_f64(),
            self.hold.as_secs_f64()
        );
        wire::write_deflate(&mut out, self.deflate(), &self.wire, self.established);
        self.diagnostics.write_if_any(&mut out, "warning");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ConnectReport {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000 {
            histogram.record(v).unwrap();
        }
        let mut failed = Failures::default();
        failed.add(Failure::Refused, "connect: refused".into());
        failed.add(Failure::Refused, "connect: refused".into());
        failed.add(Failure::Timeout, "no 101 within 10 s".into());
        ConnectReport {
            reconnect: Default::default(),
            settings: SettingsSummary {
                url: "ws://127.0.0.1:9001/".into(),
                connections: 100,
                rate: 1000.0,
                hold: Duration::from_secs(1),
                threads: 2,
                sources: vec![],
                targets: vec!["127.0.0.1:9001".into()],
                handshake_timeout: Duration::from_secs(10),
                close_timeout: Duration::from_secs(5),
                bind_no_port: false,
                deflate: false,
            },
            capacity: Capacity {
                threads: 2,
                slots_per_thread: 20_000,
                sources: 1,
                targets: 1,
                ports_by_pair: true,
                bind_no_port: true,
                ports_per_source: 28_232,
            },
            reached: 97,
            established: 97,
            dropped: Failures::default(),
            failed,
            closed_clean: 97,
            closed_forced: 0,
            closed_abandoned: 0,
            duration: Duration::from_secs(2),
            ramp: Duration::from_millis(100),
            hold: Duration::from_secs(1),
            latency: LatencySummary::of(&histogram),
            connect_latency: LatencySummary::default(),
            tls: None,
            close_latency: LatencySummary::default(),
            server: Some(ServerUsage {
                pid: 1,
                cpu_s: 0.5,
                close_cpu_s: Some(0.1),
                rss_before_bytes: 1000,
                rss_bytes: 1000 + 97 * 100,
                slab_before_bytes: 0,
                slab_bytes: 97 * 1000,
            }),
            slab: Some((0, 97 * 1000)),
            client_rss_bytes: Some(1 << 20),
            diagnostics: Diagnostics::default(),
            wire: WireTally::default(),
            histograms: ConnectHistograms {
                handshake: histogram.clone(),
                tcp_connect: histogram.clone(),
                tls_handshake: histogram.clone(),
                closing: histogram,
            },
            started_at_unix_s: 1.0e9,
            echo: SampleEcho::default(),
        }
    }

    #[test]
    fn summary_quantiles() {
        let l = report().latency;
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, 500);
        assert_eq!(l.max, 1000);
        assert!(l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.p9999);
        assert_eq!(
            LatencySummary::of(&Histogram::new(3).unwrap()),
            LatencySummary::default()
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = report();
        let j = r.json();
        assert_eq!(j["scenario"], "connect");
        assert_eq!(j["connections"]["target"], 100);
        assert_eq!(j["connections"]["reached"], 97);
        assert_eq!(j["connections"]["failed"]["refused"], 2);
        assert_eq!(j["connections"]["failed"]["timeout"], 1);
        assert_eq!(j["connections"]["failed"]["bad_handshake"], 0);
        assert_eq!(j["connections"]["failed"]["reset"], 0);
        assert_eq!(j["latency_us"]["count"], 1000);
        for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(j["latency_us"][key].is_u64(), "{key}");
        }
        assert_eq!(j["server"]["pid"], 1);
        assert_eq!(j["server"]["rss_per_conn_bytes"], 100.0);
        assert_eq!(j["server"]["slab_per_conn_bytes"], 1000.0);
        assert!(j["duration_s"].is_f64());
        assert_eq!(j["settings"]["threads"], 2);
        for key in [
            "sent",
            "received",
            "expected",
            "missing",
            "duplicated",
            "out_of_order",
            "corrupt",
        ] {
            assert_eq!(j[key], 0, "{key}");
        }
        assert!(j["loop"].is_null());
        assert_eq!(j["throughput_per_s"], 970.0);
        assert!(!r.target_reached());
        let text = r.text();
        assert!(text.contains("reached   97 of 100"), "{text}");
        assert!(text.contains("2 x connect: refused"), "{text}");
    }

    #[test]
    fn json_server_is_null_without_a_pid() {
        let mut r = report();
        r.server = None;
        r.reached = 0;
        let j = r.json();
        assert!(j["server"].is_null());
        assert!(j["kernel"]["slab_per_conn_bytes"].is_null());
    }
}
