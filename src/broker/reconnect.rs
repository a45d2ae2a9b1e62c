//! What both link tasks (the pub/sub one and Kafka's) do between connections to the broker:
//! the first outcome reported to whoever waits for the link to start, reconnects counted, the
//! `connected` gauge, an exponential backoff with jitter that starts over only after a
//! connection that held, and the rate of warnings.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{backoff, random_u64, BrokerStats};

/// A connection that stayed up this long resets the reconnection backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Warnings about an unreachable broker, at most one per this.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One link's reconnection state.
pub(super) struct Reconnection {
    stats: Arc<BrokerStats>,
    /// Told the outcome of the first attempt, then dropped.
    ready: Option<mpsc::Sender<Result<(), String>>>,
    attempt: u32,
    was_connected: bool,
    connected_at: Option<Instant>,
}

impl Reconnection {
    pub(super) fn new(stats: Arc<BrokerStats>, ready: mpsc::Sender<Result<(), String>>) -> Self {
        Self {
            stats,
            ready: Some(ready),
            attempt: 0,
            was_connected: false,
            connected_at: None,
        }
    }

    /// A connection is up: counted as a reconnect unless it is the first, and the link's
    /// starter told.
    pub(super) fn connected(&mut self) {
        if self.was_connected {
            BrokerStats::add(&self.stats.reconnects, 1);
        }
        self.was_connected = true;
        self.connected_at = Some(Instant::now());
        self.stats.connected.store(true, Ordering::Relaxed);
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
        }
    }

    /// The connection is over. Backoff starts over only after one that held: one that dies at
    /// once keeps backing off.
    pub(super) fn lost(&mut self) {
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE)
        {
            self.attempt = 0;
        }
        self.stats.connected.store(false, Ordering::Relaxed);
    }

    /// An attempt failed. The first is told to the link's starter (who decides whether a
    /// broker unreachable at start ends the server); a later one is handed back to be warned.
    pub(super) fn failed(&mut self, message: String) -> Option<String> {
        self.stats.connected.store(false, Ordering::Relaxed);
        match self.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(message));
                None
            }
            None => Some(message),
        }
    }

    /// How long to wait before the next attempt.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = backoff(self.attempt, random_u64());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

/// Warnings at most one per [`WARN_EVERY`]; the rest go to debug. The caller logs, so that
/// each line keeps its own module as its target (`RUST_LOG=uringcast::broker::kafka=debug`).
#[derive(Default)]
pub(super) struct Warnings {
    last: Option<Instant>,
}

impl Warnings {
    /// Whether a warning now goes out as one (and starts the next quiet period).
    pub(super) fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self.last.is_none_or(|at| now - at >= WARN_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Waits until `at`, or for ever without one: a link task's optional timers (a refused
/// subscription's retry, the next head check) in one `select!`.
pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outcome_goes_to_the_starter_and_later_failures_come_back() {
        let stats = Arc::new(BrokerStats::default());
        let (tx, rx) = mpsc::channel();
        let mut r = Reconnection::new(Arc::clone(&stats), tx);
        assert_eq!(r.failed("refused".into()), None);
        assert_eq!(rx.recv().unwrap(), Err("refused".into()));
        assert_eq!(r.failed("again".into()), Some("again".into()));
        r.connected();
        assert!(stats.connected.load(Ordering::Relaxed));
        assert_eq!(
            stats.reconnects.load(Ordering::Relaxed),
            0,
            "the first is no reconnect"
        );
        r.lost();
        assert!(!stats.connected.load(Ordering::Relaxed));
        r.connected();
        assert_eq!(stats.reconnects.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_warning_per_period() {
        let mut w = Warnings::default();
        assert!(w.due());
        assert!(!w.due(), "the second within the period goes to debug");
    }

    #[test]
    fn backoff_grows_until_a_connection_holds() {
        let (tx, _rx) = mpsc::channel();
        let mut r = Reconnection::new(Arc::new(BrokerStats::default()), tx);
        let delays: Vec<Duration> = (0..4).map(|_| r.next_delay()).collect();
        assert!(delays[3] >= Duration::from_millis(400), "{delays:?}");
        // A connection that dies at once keeps the backoff where it was.
        r.connected();
        r.lost();
        assert!(r.next_delay() >= Duration::from_millis(800));
        // One that held starts it over.
        r.connected();
        let Some(held) = Instant::now().checked_sub(STABLE) else {
            return; // a machine up for less than STABLE: nothing to test against
        };
        r.connected_at = Some(held);
        r.lost();
        assert!(r.next_delay() <= Duration::from_millis(100));
    }
}
