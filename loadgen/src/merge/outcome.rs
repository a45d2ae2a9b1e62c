//! One report read back as an [`Outcome`], and outcomes added.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::error::LoadError;
use crate::report::{histograms, node_key, Diagnostics, Failure, Failures};
use crate::scenario::traffic::{
    new_histogram, Deflate, NodeTally, Outcome, ReconnectTally, Tally, WireTally,
};

/// `--deflate` and `--deflate-send` from a report's settings.
pub(super) fn deflate(settings: &Value) -> Deflate {
    Deflate::from_flags(
        settings["deflate"].as_bool().unwrap_or(false),
        settings["deflate_send"].as_bool().unwrap_or(false),
    )
}

/// Nothing measured: what the reports are added into.
pub(super) fn zero(deflate: Deflate) -> Outcome {
    Outcome {
        tally: Tally::default(),
        deflate,
        wire: WireTally::default(),
        target: 0,
        reached: 0,
        held: 0,
        established: 0,
        failed: Failures::default(),
        dropped: Failures::default(),
        closed_clean: 0,
        closed_forced: 0,
        closed_abandoned: 0,
        handshake: new_histogram(),
        tcp_connect: new_histogram(),
        tls_handshake: new_histogram(),
        tls_resumed: 0,
        closing: new_histogram(),
        ramp: Duration::ZERO,
        duration: Duration::ZERO,
        started_at_unix_s: 0.0,
        elapsed: Duration::ZERO,
        interrupted: false,
        server: None,
        client_cpu_s: 0.0,
        client_rss_bytes: None,
        slab: None,
        diagnostics: Diagnostics::default(),
        sender_errors: 0,
        reconnect: ReconnectTally::default(),
    }
}

/// Adds one report's outcome to `total` (its time span and server aside, which [`merge`](super::merge) takes).
pub(super) fn add(total: &mut Outcome, one: Outcome, name: &str) -> Result<(), LoadError> {
    // Every histogram read back has new_histogram's bounds: Tally::merge cannot fail to add.
    total.tally.merge(&one.tally);
    for (mine, theirs, key) in [
        (&mut total.handshake, &one.handshake, "handshake_latency_us"),
        (
            &mut total.tcp_connect,
            &one.tcp_connect,
            "connect_latency_us",
        ),
        (
            &mut total.tls_handshake,
            &one.tls_handshake,
            "tls_handshake_latency_us",
        ),
        (&mut total.closing, &one.closing, "close_latency_us"),
    ] {
        add_histogram(mine, theirs, name, key)?;
    }
    total.wire.merge(&one.wire);
    total.target += one.target;
    total.reached += one.reached;
    total.held += one.held;
    total.established += one.established;
    total.failed.merge(&one.failed);
    total.dropped.merge(&one.dropped);
    total.closed_clean += one.closed_clean;
    total.closed_forced += one.closed_forced;
    total.closed_abandoned += one.closed_abandoned;
    total.tls_resumed += one.tls_resumed;
    total.interrupted |= one.interrupted;
    total.client_cpu_s += one.client_cpu_s;
    total.client_rss_bytes = match (total.client_rss_bytes, one.client_rss_bytes) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    total.diagnostics.merge(&one.diagnostics);
    total.sender_errors += one.sender_errors;
    Ok(())
}

/// Adds `theirs` into `mine`, which has [`new_histogram`]'s bounds.
fn add_histogram(
    mine: &mut Histogram<u64>,
    theirs: &Histogram<u64>,
    name: &str,
    key: &str,
) -> Result<(), LoadError> {
    mine.add(theirs)
        .map_err(|e| LoadError::Usage(format!("{name}: histograms.{key} cannot be added: {e:?}")))
}

pub(super) fn missing(name: &str, what: &str) -> LoadError {
    LoadError::Usage(format!(
        "{name}: no {what}: not a complete uringcast-load --json report"
    ))
}

/// One report's figures, read back by JSON pointer.
pub(super) struct Fields<'a> {
    name: &'a str,
    report: &'a Value,
}

impl<'a> Fields<'a> {
    /// Reads report `name`.
    pub(super) fn new(name: &'a str, report: &'a Value) -> Self {
        Self { name, report }
    }

    fn get(&self, pointer: &str) -> Option<&Value> {
        self.report.pointer(pointer)
    }

    /// `/a/b` as people read it: `a.b`.
    fn key(pointer: &str) -> String {
        pointer.trim_start_matches('/').replace('/', ".")
    }

    fn u64(&self, pointer: &str) -> Result<u64, LoadError> {
        self.get(pointer).and_then(Value::as_u64).ok_or_else(|| {
            missing(
                self.name,
                &format!("{} (a whole number)", Self::key(pointer)),
            )
        })
    }

    fn f64(&self, pointer: &str) -> Result<f64, LoadError> {
        self.get(pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| missing(self.name, &format!("{} (a number)", Self::key(pointer))))
    }

    /// A count by key (`"detail" → n`), absent or `null` as none.
    fn counts(&self, pointer: &str) -> Result<BTreeMap<String, u64>, LoadError> {
        let Some(map) = self.get(pointer).and_then(Value::as_object) else {
            return Ok(BTreeMap::new());
        };
        map.iter()
            .map(|(k, v)| {
                v.as_u64().map(|n| (k.clone(), n)).ok_or_else(|| {
                    missing(
                        self.name,
                        &format!("{}.{k} (a whole number)", Self::key(pointer)),
                    )
                })
            })
            .collect()
    }

    /// The histogram `key` of `histograms`, in [`new_histogram`]'s bounds.
    fn histogram(&self, key: &str) -> Result<Histogram<u64>, LoadError> {
        let read = histograms::read(self.report, key)
            .map_err(|e| LoadError::Usage(format!("{}: {e}", self.name)))?;
        let mut histogram = new_histogram();
        add_histogram(&mut histogram, &read, self.name, key)?;
        Ok(histogram)
    }

    /// The deliveries by node (`nodes`, absent or `null` as none), each with its histogram.
    fn nodes(&self) -> Result<Vec<NodeTally>, LoadError> {
        let Some(nodes) = self.get("/nodes").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        let mut all = Vec::with_capacity(nodes.len());
        for i in 0..nodes.len() {
            let at = |key: &str| format!("/nodes/{i}/{key}");
            let address = self
                .get(&at("address"))
                .and_then(Value::as_str)
                .ok_or_else(|| missing(self.name, &format!("nodes.{i}.address (a string)")))?;
            let mut node = NodeTally::new(address.to_owned());
            node.subscribers = self.u64(&at("subscribers"))?;
            node.received = self.u64(&at("received"))?;
            node.expected = self.u64(&at("expected"))?;
            node.missing = self.u64(&at("missing"))?;
            node.latency = self.histogram(&node_key(address))?;
            all.push(node);
        }
        Ok(all)
    }

    /// The report as an [`Outcome`].
    pub(super) fn outcome(&self) -> Result<Outcome, LoadError> {
        let mut failed = Vec::with_capacity(Failure::ALL.len());
        for kind in Failure::ALL {
            failed.push((
                kind,
                self.u64(&format!("/connections/failed/{}", kind.name()))?,
            ));
        }
        let diagnostic = |key: &str| self.u64(&format!("/diagnostics/{key}"));
        let latency = self.histogram("latency_us")?;
        Ok(Outcome {
            tally: Tally {
                sent: self.u64("/sent")?,
                received: self.u64("/received")?,
                expected: self.u64("/expected")?,
                missing: self.u64("/missing")?,
                duplicated: self.u64("/duplicated")?,
                out_of_order: self.u64("/out_of_order")?,
                corrupt: self.u64("/corrupt")?,
                latency,
                interval: new_histogram(),
                nodes: self.nodes()?,
                streams: Default::default(),
            },
            deflate: deflate(&self.report["settings"]),
            wire: WireTally {
                deflate_connections: self.u64("/deflate_connections")?,
                wire_bytes_in: self.u64("/wire_bytes_in")?,
                payload_bytes_in: self.u64("/payload_bytes_in")?,
                messages_in: self.u64("/messages_in")?,
                compressed_in: self.u64("/messages_compressed_in")?,
                wire_bytes_out: self.u64("/wire_bytes_out")?,
                payload_bytes_out: self.u64("/payload_bytes_out")?,
                messages_out: self.u64("/messages_out")?,
                compressed_out: self.u64("/messages_compressed_out")?,
            },
            target: self.u64("/connections/target")?,
            reached: self.u64("/connections/reached")?,
            held: 0,
            established: self.u64("/connections/established")?,
            failed: Failures::from_counts(failed, self.counts("/connections/failure_details")?),
            // Drops are reported as a total and their details, not by kind.
            dropped: Failures::from_counts(
                [(Failure::Other, self.u64("/connections/dropped")?)],
                self.counts("/connections/drop_details")?,
            ),
            closed_clean: self.u64("/connections/closed_clean")?,
            closed_forced: self.u64("/connections/closed_forced")?,
            closed_abandoned: self.u64("/connections/closed_abandoned")?,
            handshake: self.histogram("handshake_latency_us")?,
            tcp_connect: self.histogram("connect_latency_us")?,
            tls_handshake: self.histogram("tls_handshake_latency_us")?,
            tls_resumed: self
                .get("/tls_resumed")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            closing: self.histogram("close_latency_us")?,
            ramp: Duration::ZERO,
            duration: Duration::try_from_secs_f64(self.f64("/duration_s")?)
                .map_err(|_| missing(self.name, "duration_s (seconds)"))?,
            started_at_unix_s: self.f64("/started_at_unix_s")?,
            elapsed: Duration::ZERO,
            interrupted: self
                .get("/interrupted")
                .and_then(Value::as_bool)
                .ok_or_else(|| missing(self.name, "interrupted (true or false)"))?,
            server: None,
            client_cpu_s: self.f64("/client/cpu_s")?,
            client_rss_bytes: self.get("/client/rss_bytes").and_then(Value::as_u64),
            slab: None,
            diagnostics: Diagnostics {
                stale_completions: diagnostic("stale_completions")?,
                recv_buffer_starvation: diagnostic("recv_buffer_starvation")?,
                cq_overflow: diagnostic("cq_overflow")?,
                rings_leaked: diagnostic("rings_leaked")?,
                threads_missing: diagnostic("threads_missing")?,
            },
            sender_errors: self.u64("/publish_errors")?,
            reconnect: ReconnectTally::default(),
        })
    }
}
