//! What a run measured, as text for people and JSON for scripts: the parts every report
//! shares here, [`connect`]'s report and the message scenarios' ([`traffic`]) in their own
//! modules.

mod connect;
pub mod histograms;
pub mod reconnect;
mod traffic;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

pub use self::connect::{
    ConnectHistograms, ConnectReport, SampleEcho, ServerUsage, SettingsSummary,
};
pub use self::traffic::{node_key, Loop, TrafficReport};
use crate::error::LoadError;

/// A `--json` report read back from its file (for `merge` and `plot`).
///
/// # Errors
///
/// The file cannot be read ([`LoadError::Io`]) or is not JSON ([`LoadError::Usage`]).
pub fn read_json(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        what: format!("cannot read {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        LoadError::Usage(format!(
            "{}: not a uringcast-load --json report: {e}",
            path.display()
        ))
    })
}

/// Why a connection never reached a verified 101.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// `ECONNREFUSED`: nothing listening, or the accept queue overflowed with resets on.
    Refused,
    /// No verified response within the handshake timeout, or `ETIMEDOUT`.
    Timeout,
    /// A response that is not a valid 101 for our request.
    BadHandshake,
    /// Reset or closed by the server before the response.
    Reset,
    /// No local port left on the source address (`EADDRINUSE`, `EADDRNOTAVAIL`).
    NoPort,
    /// Anything else; the details name the operation and errno.
    Other,
}

impl Failure {
    /// Every kind, in report order.
    pub const ALL: [Self; 6] = [
        Self::Refused,
        Self::Timeout,
        Self::BadHandshake,
        Self::Reset,
        Self::NoPort,
        Self::Other,
    ];

    /// The JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::BadHandshake => "bad_handshake",
            Self::Reset => "reset",
            Self::NoPort => "no_port",
            Self::Other => "other",
        }
    }
}

/// Failures counted by kind, with a few words on each distinct cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    counts: [u64; Failure::ALL.len()],
    /// `"connect: Connection refused (os error 111)"` → count.
    pub details: BTreeMap<String, u64>,
}

impl Failures {
    /// Counts one failure of `kind` for `detail`.
    pub fn add(&mut self, kind: Failure, detail: String) {
        self.counts[kind as usize] += 1;
        *self.details.entry(detail).or_default() += 1;
    }

    /// The count of one kind.
    pub fn count(&self, kind: Failure) -> u64 {
        self.counts[kind as usize]
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Failures from their counts by kind and their details (a report read back).
    pub fn from_counts(
        counts: impl IntoIterator<Item = (Failure, u64)>,
        details: BTreeMap<String, u64>,
    ) -> Self {
        let mut failures = Self {
            details,
            ..Self::default()
        };
        for (kind, count) in counts {
            failures.counts[kind as usize] += count;
        }
        failures
    }

    /// Adds another thread's failures.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        for (detail, count) in &other.details {
            *self.details.entry(detail.clone()).or_default() += count;
        }
    }
}

/// The usual quantiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest value.
    pub max: u64,
    /// Number of values.
    pub count: u64,
}

impl LatencySummary {
    /// Summarises `histogram` (values in microseconds).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
            count: histogram.len(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999,
            "p9999": self.p9999, "max": self.max, "count": self.count,
        })
    }
}

fn per_conn(before: u64, after: u64, open: u64) -> Option<f64> {
    (open > 0).then(|| (after as f64 - before as f64) / open as f64)
}

/// Internal counters that should stay at 0; reported so a bug cannot hide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Completions for a slot already reused.
    pub stale_completions: u64,
    /// Multishot receives ended by an empty buffer ring (re-armed).
    pub recv_buffer_starvation: u64,
    /// Completions the kernel dropped (completion queue overflow).
    pub cq_overflow: u64,
    /// Rings closed with operations still in flight (their buffers leaked on purpose).
    pub rings_leaked: u64,
    /// Client threads that never reported: the report lacks their figures.
    pub threads_missing: u64,
}

impl Diagnostics {
    /// Adds another thread's counters.
    pub fn merge(&mut self, other: &Self) {
        self.stale_completions += other.stale_completions;
        self.recv_buffer_starvation += other.recv_buffer_starvation;
        self.cq_overflow += other.cq_overflow;
        self.rings_leaked += other.rings_leaked;
        self.threads_missing += other.threads_missing;
    }

    fn json(&self) -> Value {
        json!({
            "stale_completions": self.stale_completions,
            "recv_buffer_starvation": self.recv_buffer_starvation,
            "cq_overflow": self.cq_overflow,
            "rings_leaked": self.rings_leaked,
            "threads_missing": self.threads_missing,
        })
    }

    /// A line of the text summary, `label` first, when any counter is not 0.
    fn write_if_any(&self, out: &mut String, label: &str) {
        if *self != Self::default() {
            let _ = writeln!(
                out,
                "{label:<9} stale completions {}, buffer starvation {}, CQ overflow {}, rings \
                 leaked {}, threads missing {}",
                self.stale_completions,
                self.recv_buffer_starvation,
                self.cq_overflow,
                self.rings_leaked,
                self.threads_missing
            );
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn bytes_per_conn(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0} B"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_merge() {
        let mut a = Failures::default();
        a.add(Failure::Reset, "x".into());
        let mut b = Failures::default();
        b.add(Failure::Reset, "x".into());
        b.add(Failure::Other, "y".into());
        a.merge(&b);
        assert_eq!(a.count(Failure::Reset), 2);
        assert_eq!(a.total(), 3);
        assert_eq!(a.details["x"], 2);
    }
}
