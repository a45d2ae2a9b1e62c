//! Connections and handshakes per client address, counted across all workers in one table.
//!
//! An IPv4 address is its own entry; an IPv6 address counts with its /64, the block one
//! machine usually holds. An entry leaves the table as soon as it is idle: no connection open
//! and its handshake bucket full again (at most one second after its last handshake). The
//! table is bounded besides: past [`MAX_ADDRESSES`] entries still active, a new address is
//! refused with 503.
//!
//! Memory: [`ENTRY_BYTES`] per address (key, counts and bucket, plus the hash table's
//! control byte and load-factor slack), so the worst case is `MAX_ADDRESSES` x that.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rate::{Bucket, Rate};
use crate::refusal::{Reason, Refusal};

/// Addresses the table holds at most: 1,048,576, about 50 MiB at [`ENTRY_BYTES`] each. Only
/// addresses with a connection open or a handshake in the last second count, so reaching it
/// takes a million machines (or /64s) at once.
pub const MAX_ADDRESSES: usize = 1 << 20;

/// Bytes one address costs in the table: 40 of key and entry, one control byte, and the
/// table's 1/8 of empty slots (hashbrown's load factor of 7/8).
pub const ENTRY_BYTES: usize = 48;

/// The caps per address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressCaps {
    /// Connections one address may hold open at once.
    pub max_connections: Option<u32>,
    /// Upgrades one address may start per second (burst: as many).
    pub max_handshakes: Option<Rate>,
}

/// The table of addresses, shared by every worker.
#[derive(Debug)]
pub struct AddressTable {
    caps: AddressCaps,
    max_addresses: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    /// Sweep idle entries when the map reaches this many.
    sweep_at: usize,
    /// When a sweep last found the table full of active entries: no new sweep for
    /// [`FULL_RESWEEP`] after it, so a flood of new addresses against a full table costs a
    /// lookup each, not a scan each.
    full_at: Option<Instant>,
}

/// An address as counted: IPv4 whole, IPv6 by its /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl Key {
    fn of(ip: IpAddr) -> Self {
        match super::proxies::canonical(ip) {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    connections: u32,
    handshakes: Bucket,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.connections == 0 && self.handshakes.is_full(now)
    }
}

/// The first sweep comes at this many entries; later ones at twice what the last left (or
/// at the table's bound, whichever is less).
const FIRST_SWEEP: usize = 1024;
/// After a sweep that found the table full, the next one waits this long.
const FULL_RESWEEP: Duration = Duration::from_millis(100);

impl AddressTable {
    /// A table enforcing `caps`.
    pub fn new(caps: AddressCaps) -> Self {
        Self::with_capacity(caps, MAX_ADDRESSES)
    }

    fn with_capacity(caps: AddressCaps, max_addresses: usize) -> Self {
        Self {
            caps,
            max_addresses,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                sweep_at: FIRST_SWEEP,
                full_at: None,
            }),
        }
    }

    /// Admits one connection from `ip` at `now`: counts its handshake and reserves its place
    /// until the returned ticket is dropped.
    ///
    /// # Errors
    ///
    /// 429 with `Retry-After` past either cap, 503 when the table is full.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<AddressTicket, Refusal> {
        let key = Key::of(ip);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let threshold = entries.sweep_at.min(self.max_addresses);
        if !entries.map.contains_key(&key) && entries.map.len() >= threshold {
            let recently_full = entries
                .full_at
                .is_some_and(|at| now.saturating_duration_since(at) < FULL_RESWEEP);
            if !recently_full {
                entries.map.retain(|_, entry| !entry.idle(now));
                entries.sweep_at = (entries.map.len() * 2).max(FIRST_SWEEP);
            }
            if entries.map.len() >= self.max_addresses {
                entries.full_at = entries.full_at.filter(|_| recently_full).or(Some(now));
                return Err(Refusal {
                    reason: Reason::AddressTableFull,
                    retry_after: Some(1),
                });
            }
        }
        let entry = entries.map.entry(key).or_default();
        if let Some(max) = self.caps.max_connections {
            if entry.connections >= max {
                // Nothing tells when one of its connections will close: a short wait.
                return Err(Refusal {
                    reason: Reason::ConnectionsPerIp,
                    retry_after: Some(1),
                });
            }
        }
        if let Some(rate) = self.caps.max_handshakes {
            // A new entry's bucket is full and passes: a refused entry is never idle, so
            // nothing is left behind by a refusal.
            if let Err(wait) = entry.handshakes.take(rate, 1, now) {
                return Err(Refusal {
                    reason: Reason::HandshakesPerIp,
                    retry_after: Some(seconds_up(wait)),
                });
            }
        }
        entry.connections += 1;
        Ok(AddressTicket {
            table: Arc::clone(self),
            key,
        })
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.map.len())
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, key: Key) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.map.get_mut(&key) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.idle(now) {
                entries.map.remove(&key);
            }
        }
    }
}

/// One connection's place in its address's count; dropping it gives the place back.
#[derive(Debug)]
pub struct AddressTicket {
    table: Arc<AddressTable>,
    key: Key,
}

impl Drop for AddressTicket {
    fn drop(&mut self) {
        self.table.release(self.key);
    }
}

fn seconds_up(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn one_address_over_its_cap_while_another_is_served() {
        let table = Arc::new(AddressTable::new(AddressCaps {
            max_connections: Some(2),
            max_handshakes: None,
        }));
        let now = Instant::now();
        let a1 = table.admit(ip("192.0.2.1"), now).expect("first");
        let _a2 = table.admit(ip("192.0.2.1"), now).expect("second");
        let refusal = table.admit(ip("192.0.2.1"), now).expect_err("third");
        assert_eq!(refusal.reason, Reason::ConnectionsPerIp);
        assert_eq!(refusal.status(), 429);
        let _b = table.admit(ip("192.0.2.2"), now).expect("another address");
        // IPv4-mapped IPv6 is the same address.
        assert!(table.admit(ip("::ffff:192.0.2.1"), now).is_err());
        drop(a1);
        let _a3 = table
            .admit(ip("192.0.2.1"), now)
            .expect("a place came free");
    }

    #[test]
    fn handshakes_are_rate_limited_per_address_and_ipv6_by_its_64() {
        let table = Arc::new(AddressTable::new(AddressCaps {
            max_connections: None,
            max_handshakes: Some(Rate::per_second(3)),
        }));
        let now = Instant::now();
        let tickets: Vec<_> = (0..3)
            .map(|i| {
                table
                    .admit(ip(&format!("2001:db8::{i}")), now)
                    .expect("burst")
            })
            .collect();
        let refusal = table
            .admit(ip("2001:db8::ffff"), now)
            .expect_err("same /64");
        assert_eq!(refusal.reason, Reason::HandshakesPerIp);
        assert_eq!(refusal.retry_after, Some(1));
        assert!(
            table.admit(ip("2001:db8:0:1::1"), now).is_ok(),
            "another /64"
        );
        drop(tickets);
        assert!(table
            .admit(ip("2001:db8::1"), now + Duration::from_millis(334))
            .is_ok());
    }

    #[test]
    fn idle_addresses_leave_and_the_table_stays_bounded() {
        let table = Arc::new(AddressTable::with_capacity(
            AddressCaps {
                max_connections: Some(10),
                max_handshakes: Some(Rate::per_second(100)),
            },
            FIRST_SWEEP,
        ));
        let now = Instant::now();
        // Handshakes from many addresses, each closed at once: their entries stay until
        // their buckets refill, then a sweep clears them.
        for i in 0..FIRST_SWEEP as u32 {
            drop(
                table
                    .admit(IpAddr::from(i.to_be_bytes()), now)
                    .expect("room"),
            );
        }
        assert_eq!(table.len(), FIRST_SWEEP);
        let full = table
            .admit(ip("203.0.113.1"), now)
            .expect_err("every entry still active");
        assert_eq!(full.reason, Reason::AddressTableFull);
        let later = now + Duration::from_secs(1);
        let ticket = table
            .admit(ip("203.0.113.1"), later)
            .expect("the sweep made room");
        assert_eq!(table.len(), 1);
        drop(ticket);
        // Its bucket is not full yet (10 ms after its handshake): it waits for a sweep.
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn an_entry_is_as_small_as_documented() {
        let raw = std::mem::size_of::<(Key, Entry)>();
        assert!(raw < ENTRY_BYTES, "{raw} bytes per entry");
        // With one control byte and 1/8 empty slots.
        assert!((raw + 1) * 8 / 7 <= ENTRY_BYTES, "{raw}");
    }
}
