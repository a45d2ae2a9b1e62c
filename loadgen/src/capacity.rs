//! How many connections a run can hold, before it starts: direct descriptor slots (threads x
//! each ring's table, which `RLIMIT_NOFILE` bounds per ring, not per process) and local ports
//! (source addresses x target addresses x the ephemeral port range).

use std::io;

/// `IORING_MAX_FIXED_FILES`: the kernel's cap on one ring's registered file table.
pub const IORING_MAX_FIXED_FILES: u64 = 1 << 20;

/// The machine's limits that bound a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemLimits {
    /// `RLIMIT_NOFILE` soft limit (after raising it to the hard one): the largest table one
    /// ring may register.
    pub nofile: u64,
    /// `fs.nr_open`, which caps `RLIMIT_NOFILE` itself.
    pub nr_open: u64,
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub port_range: (u16, u16),
}

impl SystemLimits {
    /// Reads the limits in force now.
    ///
    /// # Errors
    ///
    /// `getrlimit` or one of the `/proc/sys` files failed.
    pub fn read() -> io::Result<Self> {
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_err(io::Error::from)?;
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")?
            .trim()
            .parse()
            .map_err(|_| io::Error::other("/proc/sys/fs/nr_open is not a number"))?;
        let ranges = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
        let port_range = parse_port_range(&ranges)
            .ok_or_else(|| io::Error::other(format!("unreadable port range {ranges:?}")))?;
        Ok(Self {
            nofile: soft,
            nr_open,
            port_range,
        })
    }

    /// The most direct descriptor slots one ring may register.
    pub fn table_slots(&self) -> u64 {
        self.nofile.min(self.nr_open).min(IORING_MAX_FIXED_FILES)
    }

    /// Ephemeral ports per source address towards one server address.
    pub fn ports_per_source(&self) -> u64 {
        let (low, high) = self.port_range;
        u64::from(high.saturating_sub(low)) + 1
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the (soft, hard) now in force.
///
/// # Errors
///
/// `getrlimit` or `setrlimit` failed.
pub fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((hard.max(soft), hard))
}

/// `"32768\t60999\n"` → `(32768, 60999)`.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    (low <= high).then_some((low, high))
}

/// What a run with given threads and addresses can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Client threads, one ring and table each.
    pub threads: u64,
    /// The largest table one ring may register.
    pub slots_per_thread: u64,
    /// Source addresses; with none given the kernel picks one, which counts as one.
    pub sources: u64,
    /// Server addresses connected to (at least one).
    pub targets: u64,
    /// Whether each (source, target) pair has ports of its own: true when the port is chosen
    /// at connect time by the 4-tuple (no `--source`, or `IP_BIND_ADDRESS_NO_PORT`); false
    /// when `bind()` reserves a source's port against every target.
    pub ports_by_pair: bool,
    /// Whether a bound source would keep ports per pair (`IP_BIND_ADDRESS_NO_PORT` is
    /// available): what the advice to add `--source` addresses counts on.
    pub bind_no_port: bool,
    /// Ephemeral ports per (source, target) address pair.
    pub ports_per_source: u64,
}

/// The first limit a target would exceed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapacityError {
    /// A thread would need more slots than its ring's table may hold.
    #[error(
        "cannot hold {target} connections with {threads} threads: each thread would need \
         {per_thread} direct descriptor slots, but one ring's table holds at most \
         {slots_per_thread} (RLIMIT_NOFILE); use --threads {threads_needed} or more"
    )]
    Slots {
        /// Connections asked for.
        target: u64,
        /// Threads given.
        threads: u64,
        /// Slots each thread would need.
        per_thread: u64,
        /// Slots one ring may hold.
        slots_per_thread: u64,
        /// The fewest threads that suffice.
        threads_needed: u64,
    },
    /// The address pairs lack ports for the target.
    #[error(
        "cannot hold {target} connections over {pairs} (source, target) address pair(s): \
         {pairs} x {ports_per_source} ephemeral ports = {ports}; spread them with --source \
         over at least {sources_needed} loopback addresses (e.g. --source \
         127.0.0.2-127.0.0.{last}){targets_help}"
    )]
    Ports {
        /// Connections asked for.
        target: u64,
        /// Address pairs with ports of their own (1 when the kernel picks the source and there
        /// is one target).
        pairs: u64,
        /// Ports per pair.
        ports_per_source: u64,
        /// Ports in all.
        ports: u64,
        /// The fewest source addresses that suffice, with the target addresses given.
        sources_needed: u64,
        /// Last octet of the example range.
        last: u64,
        /// Whether adding target addresses would help, as words for the message.
        targets_help: &'static str,
    },
}

impl Capacity {
    /// Direct descriptor slots over all threads.
    pub fn slots(&self) -> u64 {
        self.threads * self.slots_per_thread
    }

    /// Address pairs with ports of their own.
    pub fn pairs(&self) -> u64 {
        let sources = self.sources.max(1);
        if self.ports_by_pair {
            sources * self.targets.max(1)
        } else {
            sources
        }
    }

    /// Local ports over all address pairs.
    pub fn ports(&self) -> u64 {
        self.pairs() * self.ports_per_source
    }

    /// Connections this run can hold at most.
    pub fn reachable(&self) -> u64 {
        self.slots().min(self.ports())
    }

    /// Connections per address pair when `target` is past half the port range: the
    /// kernel's `connect()` port search favours one parity and skips every port that any
    /// process has bound with `bind()`, so past about half the range (less on a busy machine)
    /// connects slow down to seconds or fail. `None` when the target stays below.
    pub fn crowded_sources(&self, target: u64) -> Option<u64> {
        let per_pair = target.div_ceil(self.pairs());
        (per_pair > self.ports_per_source / 2).then_some(per_pair)
    }

    /// Whether `target` connections fit, split evenly over the threads.
    ///
    /// # Errors
    ///
    /// [`CapacityError`] naming the limit and the flag that lifts it.
    pub fn check(&self, target: u64) -> Result<(), CapacityError> {
        let per_thread = target.div_ceil(self.threads.max(1));
        if per_thread > self.slots_per_thread {
            return Err(CapacityError::Slots {
                target,
                threads: self.threads,
                per_thread,
                slots_per_thread: self.slots_per_thread,
                threads_needed: target.div_ceil(self.slots_per_thread.max(1)),
            });
        }
        if target > self.ports() {
            // Advice for a run with --source: each source then pairs with every target only if
            // the port is still chosen at connect time.
            let pairs_needed = target.div_ceil(self.ports_per_source.max(1));
            let per_source = if self.bind_no_port {
                self.targets.max(1)
            } else {
                1
            };
            let sources_needed = pairs_needed.div_ceil(per_source);
            return Err(CapacityError::Ports {
                target,
                pairs: self.pairs(),
                targets_help: if self.bind_no_port {
                    ", or over several server addresses with --target-addresses"
                } else {
                    " (bound sources share their ports among targets on this kernel)"
                },
                ports_per_source: self.ports_per_source,
                ports: self.ports(),
                sources_needed,
                last: (1 + sources_needed).min(254),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} threads x {} table slots = {} descriptors; {} source x {} target address(es) = \
             {} pair(s) with ports of their own x {} ports = {} ports; at most {} connections",
            self.threads,
            self.slots_per_thread,
            self.slots(),
            self.sources,
            self.targets,
            self.pairs(),
            self.ports_per_source,
            self.ports(),
            self.reachable()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> SystemLimits {
        SystemLimits {
            nofile: 20_000,
            nr_open: 1 << 20,
            port_range: (32768, 60999),
        }
    }

    fn capacity(threads: u64, sources: u64) -> Capacity {
        Capacity {
            threads,
            slots_per_thread: machine().table_slots(),
            sources,
            targets: 1,
            ports_by_pair: true,
            bind_no_port: true,
            ports_per_source: machine().ports_per_source(),
        }
    }

    #[test]
    fn target_addresses_multiply_ports_only_when_pairs_have_their_own() {
        let four_targets = Capacity {
            targets: 4,
            ..capacity(6, 1)
        };
        assert_eq!(four_targets.pairs(), 4);
        assert_eq!(four_targets.ports(), 4 * 28_232);
        assert!(four_targets.check(100_000).is_ok());
        assert_eq!(four_targets.crowded_sources(100_000), Some(25_000));
        // bind() without IP_BIND_ADDRESS_NO_PORT takes a source's port for every target, so
        // the advice counts one pair per source and does not offer more targets.
        let reserved = Capacity {
            ports_by_pair: false,
            bind_no_port: false,
            ..four_targets
        };
        let advice = reserved
            .check(100_000)
            .expect_err("out of ports")
            .to_string();
        assert!(!advice.contains("--target-addresses"), "{advice}");
        assert_eq!(reserved.pairs(), 1);
        assert!(matches!(
            reserved.check(100_000),
            Err(CapacityError::Ports {
                pairs: 1,
                sources_needed: 4,
                ..
            })
        ));
        // Two sources x two targets: 4 pairs; 5 pairs' worth needs 3 sources at 2 targets each.
        let two_by_two = Capacity {
            targets: 2,
            ..capacity(8, 2)
        };
        assert_eq!(two_by_two.pairs(), 4);
        assert!(matches!(
            two_by_two.check(5 * 28_232),
            Err(CapacityError::Ports {
                sources_needed: 3,
                ..
            })
        ));
    }

    #[test]
    fn reads_port_ranges() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("a b"), None);
    }

    #[test]
    fn table_slots_take_the_smallest_limit() {
        assert_eq!(machine().table_slots(), 20_000);
        let roomy = SystemLimits {
            nofile: 10_000_000,
            nr_open: 5_000_000,
            ..machine()
        };
        assert_eq!(roomy.table_slots(), IORING_MAX_FIXED_FILES);
        assert_eq!(machine().ports_per_source(), 28_232);
    }

    #[test]
    fn this_machine_holds_what_the_docs_say() {
        // Two threads and the kernel's choice of source: ports bind first.
        let two = capacity(2, 1);
        assert_eq!(two.slots(), 40_000);
        assert_eq!(two.ports(), 28_232);
        assert_eq!(two.reachable(), 28_232);
        assert!(two.check(28_232).is_ok());
        assert!(matches!(
            two.check(30_000),
            Err(CapacityError::Ports {
                sources_needed: 2,
                ..
            })
        ));
        // 100k needs 6 threads and 4 addresses.
        let big = capacity(6, 8);
        assert_eq!(big.reachable(), 120_000);
        assert!(big.check(100_000).is_ok());
        assert!(big.check(120_000).is_ok());
        assert!(matches!(
            capacity(4, 8).check(100_000),
            Err(CapacityError::Slots {
                per_thread: 25_000,
                threads_needed: 5,
                ..
            })
        ));
        assert!(matches!(
            capacity(6, 3).check(100_000),
            Err(CapacityError::Ports {
                sources_needed: 4,
                ..
            })
        ));
        assert_eq!(big.crowded_sources(100_000), None);
        assert_eq!(capacity(6, 4).crowded_sources(100_000), Some(25_000));
        assert_eq!(two.crowded_sources(14_116), None);
        assert_eq!(two.crowded_sources(14_117), Some(14_117));
        // An uneven split rounds up: 40,001 over 2 threads needs 20,001 slots in one.
        assert!(matches!(
            capacity(2, 2).check(40_001),
            Err(CapacityError::Slots { .. })
        ));
    }
}
