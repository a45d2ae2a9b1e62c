//! Which connections each client thread owns, and which addresses each connection uses.

/// Which of the run's connections a thread owns: global indices `first, first + step, ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The thread's first global connection index.
    pub first: u64,
    /// The number of threads.
    pub step: u64,
    /// How many connections the thread owns.
    pub count: u64,
}

impl Plan {
    /// Thread `id`'s share of `connections` over `threads` threads (every `threads`-th
    /// connection from `id` on, so the shares differ by at most one).
    pub fn of_thread(id: usize, threads: usize, connections: u64) -> Self {
        Self {
            first: id as u64,
            step: threads as u64,
            count: connections
                .saturating_sub(id as u64)
                .div_ceil(threads as u64),
        }
    }

    /// The global index of local connection `local`.
    pub fn global(&self, local: usize) -> u64 {
        self.first + local as u64 * self.step
    }
}

/// The (source, target) address indices of global connection `global` with `sources` source
/// addresses (0: the kernel picks, `None`) and `targets` (at least 1) server addresses: sources
/// turn fastest, then targets, so any `sources x targets` consecutive connections use every
/// pair once.
pub(super) fn address_pair(global: u64, sources: usize, targets: usize) -> (Option<usize>, usize) {
    let source = (sources > 0).then(|| (global % sources as u64) as usize);
    let target = (global / sources.max(1) as u64 % targets.max(1) as u64) as usize;
    (source, target)
}

/// The index in [`Settings::targets`](super::Settings::targets) of global connection `global`
/// (a subscriber's node), with `sources` source addresses and `targets` server addresses: as
/// [`address_pair`] picks it.
pub fn target_of(global: u64, sources: usize, targets: usize) -> usize {
    address_pair(global, sources, targets).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_use_every_address_pair_evenly() {
        for (sources, targets) in [(0, 1), (0, 3), (1, 1), (3, 1), (2, 3), (4, 2)] {
            let pairs = sources.max(1) * targets;
            let mut count = std::collections::HashMap::new();
            for global in 0..(pairs * 5) as u64 {
                let (source, target) = address_pair(global, sources, targets);
                assert_eq!(source.is_none(), sources == 0);
                assert!(source.unwrap_or(0) < sources.max(1) && target < targets);
                *count.entry((source, target)).or_insert(0) += 1;
            }
            assert_eq!(count.len(), pairs, "{sources} x {targets}: every pair used");
            assert!(
                count.values().all(|&n| n == 5),
                "{sources} x {targets}: {count:?}"
            );
        }
    }

    #[test]
    fn plans_cover_every_connection_once() {
        for (connections, threads) in [(10_001u64, 2usize), (7, 3), (1, 1), (5, 5)] {
            let mut seen = vec![false; connections as usize];
            for id in 0..threads {
                let plan = Plan::of_thread(id, threads, connections);
                for local in 0..plan.count as usize {
                    let global = plan.global(local) as usize;
                    assert!(!seen[global]);
                    seen[global] = true;
                }
            }
            assert!(seen.iter().all(|s| *s));
        }
    }

    #[test]
    fn plans_split_connections_evenly() {
        let counts: Vec<u64> = (0..6)
            .map(|id| Plan::of_thread(id, 6, 100_000).count)
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 100_000);
        assert!(counts.iter().all(|&n| n == 16_666 || n == 16_667));
    }
}
