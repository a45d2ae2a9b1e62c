//! A subscriber's record of what it received from one publisher: a sliding window of
//! sequence numbers, which tells a new number from a repeat and from one out of order.

/// Sequence numbers remembered per (subscriber, publisher): one cache line of bits.
const WINDOW: u64 = 512;

/// What a subscriber received from one publisher: a sliding window of sequence numbers.
#[derive(Clone, Debug, Default)]
pub struct SeqWindow {
    /// Numbers below `base` are out of the window.
    base: u64,
    /// Bit `seq % WINDOW` for each `seq` in `base..base + WINDOW` received.
    bits: [u64; (WINDOW / 64) as usize],
    /// The lowest and highest numbers received.
    first: Option<u64>,
    max: Option<u64>,
    /// Distinct numbers received.
    unique: u64,
}

/// How a sequence number was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// For the first time; `late` if a higher number came before it.
    New {
        /// Out of order.
        late: bool,
    },
    /// Again (or so far behind the window that it cannot be told apart from a repeat).
    Duplicate,
}

impl SeqWindow {
    /// Records `seq`.
    pub fn record(&mut self, seq: u64) -> Seen {
        if seq < self.base {
            return Seen::Duplicate;
        }
        if seq >= self.base + WINDOW {
            let new_base = seq + 1 - WINDOW;
            if new_base - self.base >= WINDOW {
                self.bits = [0; (WINDOW / 64) as usize];
            } else {
                for old in self.base..new_base {
                    self.clear(old);
                }
            }
            self.base = new_base;
        }
        let (word, bit) = (((seq % WINDOW) / 64) as usize, seq % 64);
        if self.bits[word] & (1 << bit) != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        self.unique += 1;
        let late = self.max.is_some_and(|max| seq < max);
        self.max = Some(self.max.map_or(seq, |max| max.max(seq)));
        self.first = Some(self.first.map_or(seq, |first| first.min(seq)));
        Seen::New { late }
    }

    /// Distinct numbers received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Numbers from the first to the last received: what an outside publisher sent meanwhile.
    pub fn span(&self) -> u64 {
        match (self.first, self.max) {
            (Some(first), Some(max)) => max - first + 1,
            _ => 0,
        }
    }

    fn clear(&mut self, seq: u64) {
        self.bits[((seq % WINDOW) / 64) as usize] &= !(1 << (seq % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_each_case_once() {
        let mut w = SeqWindow::default();
        assert_eq!(w.record(0), Seen::New { late: false });
        assert_eq!(w.record(2), Seen::New { late: false });
        assert_eq!(w.record(1), Seen::New { late: true });
        assert_eq!(w.record(1), Seen::Duplicate);
        assert_eq!(w.unique, 3);
        assert_eq!(w.span(), 3);
        // Far ahead: the window slides; what fell out of it counts as a repeat.
        assert_eq!(w.record(10_000), Seen::New { late: false });
        assert_eq!(w.record(10_000), Seen::Duplicate);
        assert_eq!(w.record(3), Seen::Duplicate);
        assert_eq!(w.record(10_000 - 511), Seen::New { late: true });
        assert_eq!(w.record(10_000 - 512), Seen::Duplicate);
        // A long run in order, sliding one at a time.
        let mut w = SeqWindow::default();
        for seq in 0..5000 {
            assert_eq!(w.record(seq), Seen::New { late: false });
        }
        assert_eq!(w.record(4999 - 100), Seen::Duplicate);
        assert_eq!(w.unique, 5000);
        assert_eq!(w.span(), 5000);
    }
}
