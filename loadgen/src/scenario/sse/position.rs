//! Each stream's position, checked event by event: ids `EPOCH:OFFSET` must follow each other
//! (the next offset of the same epoch), a `reset` event announces a jump, and the first event
//! after a reconnect with `Last-Event-ID` says whether the stream recovered exactly, was told
//! it could not (`reset`), or lost events without being told (a silent loss).

/// A position `EPOCH:OFFSET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The stream's epoch: a restart or a new stream is another one.
    pub epoch: String,
    /// The publication's offset in its epoch.
    pub offset: u64,
}

/// `EPOCH:OFFSET` as its epoch (borrowed) and offset (the epoch may hold colons; the offset is
/// after the last).
fn split(id: &str) -> Option<(&str, u64)> {
    let (epoch, offset) = id.rsplit_once(':')?;
    Some((epoch, offset.parse().ok()?))
}

/// The position checks' counts, summed over streams and threads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamTally {
    /// Events with data (deliveries, resets included).
    pub events: u64,
    /// Id-only blocks (the server's position at the start of a stream).
    pub positions: u64,
    /// Events with data and no id (a server without history).
    pub without_id: u64,
    /// Ids that are not `EPOCH:OFFSET`.
    pub bad_ids: u64,
    /// `event: reset` received.
    pub resets: u64,
    /// Jumps forward (or to another epoch) with no reset before them.
    pub gaps: u64,
    /// Offsets skipped by those jumps (within one epoch).
    pub gap_events: u64,
    /// Events at or before the position already reached.
    pub repeated: u64,
    /// Reconnects that presented a position (`Last-Event-ID`).
    pub resumes: u64,
    /// Resumes whose next event continued the offsets: exact recovery.
    pub recovered: u64,
    /// Resumes answered with `reset`: not recovered, and told so.
    pub reset_on_resume: u64,
    /// Resumes followed by a gap without a reset: silent loss.
    pub silent_losses: u64,
    /// Resumes followed by a repeated event.
    pub repeated_on_resume: u64,
    /// Resumes that saw no event before the end.
    pub unconfirmed: u64,
    /// `--reconnect-window`: streams closed in the reconnect storm.
    pub storm_streams: u64,
    /// Storm streams that received a publication sent after they began to reconnect: live
    /// again, with everything they missed before it.
    pub storm_live: u64,
    /// Publications storm streams received after reconnecting that were sent before it (what
    /// they missed, replayed from history), until each was live again.
    pub storm_replayed: u64,
    /// The storm's first reopen (`CLOCK_MONOTONIC` ns).
    pub storm_first_reopen_ns: Option<u64>,
    /// The storm's last reopen.
    pub storm_last_reopen_ns: Option<u64>,
    /// When the last storm stream was live again.
    pub storm_last_live_ns: Option<u64>,
}

impl StreamTally {
    /// Adds another count.
    pub fn merge(&mut self, other: &Self) {
        self.events += other.events;
        self.positions += other.positions;
        self.without_id += other.without_id;
        self.bad_ids += other.bad_ids;
        self.resets += other.resets;
        self.gaps += other.gaps;
        self.gap_events += other.gap_events;
        self.repeated += other.repeated;
        self.resumes += other.resumes;
        self.recovered += other.recovered;
        self.reset_on_resume += other.reset_on_resume;
        self.silent_losses += other.silent_losses;
        self.repeated_on_resume += other.repeated_on_resume;
        self.unconfirmed += other.unconfirmed;
        self.storm_streams += other.storm_streams;
        self.storm_live += other.storm_live;
        self.storm_replayed += other.storm_replayed;
        self.storm_first_reopen_ns =
            earliest(self.storm_first_reopen_ns, other.storm_first_reopen_ns);
        self.storm_last_reopen_ns = latest(self.storm_last_reopen_ns, other.storm_last_reopen_ns);
        self.storm_last_live_ns = latest(self.storm_last_live_ns, other.storm_last_live_ns);
    }

    /// A storm stream began to reconnect: it opens again at `at_ns`.
    pub fn storm_reopen(&mut self, at_ns: u64) {
        self.storm_streams += 1;
        self.storm_first_reopen_ns = earliest(self.storm_first_reopen_ns, Some(at_ns));
        self.storm_last_reopen_ns = latest(self.storm_last_reopen_ns, Some(at_ns));
    }

    /// A storm stream was live again at `now_ns`.
    pub fn storm_live_at(&mut self, now_ns: u64) {
        self.storm_live += 1;
        self.storm_last_live_ns = latest(self.storm_last_live_ns, Some(now_ns));
    }

    /// Seconds from the storm's first reopen to the moment its last stream was live again
    /// (`None` before every storm stream is).
    pub fn storm_all_live_after_s(&self) -> Option<f64> {
        if self.storm_live < self.storm_streams {
            return None;
        }
        let (first, last) = (self.storm_first_reopen_ns?, self.storm_last_live_ns?);
        Some(last.saturating_sub(first) as f64 / 1e9)
    }

    /// Seconds from the storm's first reopen to its last.
    pub fn storm_reopen_spread_s(&self) -> Option<f64> {
        let (first, last) = (self.storm_first_reopen_ns?, self.storm_last_reopen_ns?);
        Some(last.saturating_sub(first) as f64 / 1e9)
    }

    /// Counts that mean the stream broke its promise: a gap or a repeat no reset explains, an
    /// id that is not a position.
    pub fn errors(&self) -> u64 {
        self.gaps + self.repeated + self.bad_ids
    }
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.max(b)
}

/// One stream's position.
#[derive(Debug, Default)]
pub struct Track {
    last: Option<Position>,
    /// Reconnected with a position, no event seen since.
    resuming: bool,
}

impl Track {
    /// Whether the stream has seen a position (and so presents one when it reconnects).
    pub fn has_position(&self) -> bool {
        self.last.is_some()
    }

    /// The stream reconnected; `with_position`: it presented its last id.
    pub fn reconnected(&mut self, with_position: bool, tally: &mut StreamTally) {
        if self.resuming {
            tally.unconfirmed += 1;
        }
        self.resuming = with_position;
        if with_position {
            tally.resumes += 1;
        }
    }

    /// The run ended: a resume still waiting for an event is unconfirmed.
    pub fn finish(&mut self, tally: &mut StreamTally) {
        if std::mem::take(&mut self.resuming) {
            tally.unconfirmed += 1;
        }
    }

    /// An event with `id` (if any) of type `kind`, with data or (`has_data` false) an id-only
    /// block. Returns whether the event is new (its data should be checked as a delivery).
    pub fn event(
        &mut self,
        id: Option<&str>,
        kind: &str,
        has_data: bool,
        tally: &mut StreamTally,
    ) -> bool {
        if has_data {
            tally.events += 1;
        } else {
            tally.positions += 1;
        }
        let Some(id) = id else {
            if has_data {
                tally.without_id += 1;
            }
            return has_data;
        };
        // Borrowed: the epoch is copied only when it changes, not for every event.
        let Some((epoch, offset)) = split(id) else {
            tally.bad_ids += 1;
            return has_data;
        };
        if kind == "reset" {
            tally.resets += 1;
            if std::mem::take(&mut self.resuming) {
                tally.reset_on_resume += 1;
            }
            self.move_to(epoch, offset);
            return false;
        }
        let Some(last) = &self.last else {
            self.move_to(epoch, offset);
            return has_data;
        };
        let same_epoch = last.epoch == epoch;
        if !has_data && same_epoch && offset == last.offset {
            // The position repeated (a stream's first block, after a reconnect): nothing new.
            return false;
        }
        let resuming = std::mem::take(&mut self.resuming);
        if same_epoch && offset <= last.offset {
            tally.repeated += 1;
            if resuming {
                tally.repeated_on_resume += 1;
            }
            return false;
        }
        if !same_epoch || offset > last.offset + 1 {
            tally.gaps += 1;
            if same_epoch {
                tally.gap_events += offset - last.offset - 1;
            }
            if resuming {
                tally.silent_losses += 1;
            }
        } else if resuming {
            tally.recovered += 1;
        }
        self.move_to(epoch, offset);
        has_data
    }

    /// The stream's position is now `epoch:offset`.
    fn move_to(&mut self, epoch: &str, offset: u64) {
        match &mut self.last {
            Some(last) if last.epoch == epoch => last.offset = offset,
            _ => {
                self.last = Some(Position {
                    epoch: epoch.to_owned(),
                    offset,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(track: &mut Track, events: &[(&str, &str, bool)]) -> StreamTally {
        let mut tally = StreamTally::default();
        for (id, kind, data) in events {
            let id = (!id.is_empty()).then_some(*id);
            track.event(id, kind, *data, &mut tally);
        }
        tally
    }

    #[test]
    fn offsets_that_follow_each_other_are_clean() {
        let mut track = Track::default();
        let t = run(
            &mut track,
            &[
                ("e:4", "", false),
                ("e:5", "", true),
                ("e:6", "binary", true),
            ],
        );
        assert_eq!((t.events, t.positions, t.errors()), (2, 1, 0));
        assert_eq!(split("a:b:7"), Some(("a:b", 7)));
        assert!(split("nope").is_none());
    }

    #[test]
    fn gaps_repeats_and_bad_ids_are_errors() {
        let mut track = Track::default();
        let t = run(
            &mut track,
            &[
                ("e:1", "", true),
                ("e:3", "", true),
                ("e:3", "", true),
                ("f:1", "", true),
                ("x", "", true),
                ("", "", true),
            ],
        );
        assert_eq!((t.gaps, t.gap_events, t.repeated, t.bad_ids), (2, 1, 1, 1));
        assert_eq!(t.without_id, 1);
    }

    #[test]
    fn a_storm_is_live_when_its_last_stream_is() {
        let mut a = StreamTally::default();
        a.storm_reopen(1_000_000_000);
        a.storm_reopen(1_500_000_000);
        a.storm_live_at(1_700_000_000);
        assert_eq!(a.storm_all_live_after_s(), None, "one of two is not live");
        a.storm_live_at(1_600_000_000);
        assert_eq!(a.storm_all_live_after_s(), Some(0.7));
        let mut b = StreamTally::default();
        b.storm_reopen(1_200_000_000);
        let mut all = StreamTally::default();
        all.merge(&a);
        all.merge(&b);
        assert_eq!(
            all.storm_all_live_after_s(),
            None,
            "another thread's is not live"
        );
        b.storm_live_at(2_250_000_000);
        let mut all = StreamTally::default();
        all.merge(&a);
        all.merge(&b);
        assert_eq!((all.storm_streams, all.storm_live), (3, 3));
        assert_eq!(all.storm_all_live_after_s(), Some(1.25));
        assert_eq!(all.storm_reopen_spread_s(), Some(0.5));
    }

    #[test]
    fn a_resume_is_exact_reset_or_a_silent_loss() {
        let mut tally = StreamTally::default();
        let mut exact = Track::default();
        exact.event(Some("e:1"), "", true, &mut tally);
        exact.reconnected(true, &mut tally);
        exact.event(Some("e:2"), "", true, &mut tally);
        let mut reset = Track::default();
        reset.event(Some("e:1"), "", true, &mut tally);
        reset.reconnected(true, &mut tally);
        reset.event(Some("e:9"), "reset", true, &mut tally);
        reset.event(Some("e:10"), "", true, &mut tally);
        let mut lost = Track::default();
        lost.event(Some("e:1"), "", true, &mut tally);
        lost.reconnected(true, &mut tally);
        lost.event(Some("e:3"), "", true, &mut tally);
        let mut quiet = Track::default();
        quiet.event(Some("e:1"), "", true, &mut tally);
        quiet.reconnected(true, &mut tally);
        quiet.finish(&mut tally);
        assert_eq!(tally.resumes, 4);
        assert_eq!(
            (
                tally.recovered,
                tally.reset_on_resume,
                tally.silent_losses,
                tally.unconfirmed
            ),
            (1, 1, 1, 1)
        );
        assert_eq!((tally.resets, tally.gaps), (1, 1));
    }
}
