//! Fair shares: caps per server, per client address and per connection, checked before an
//! upgrade (503, 429 with `Retry-After`) or on each message (close 1008).
//!
//! Sans-IO in its parts ([`rate`], [`proxies`]): the caller passes the request and `now`. The
//! counts shared by every worker are atomics (the server's count) or one short-held lock
//! ([`addresses::AddressTable`]), taken once per upgrade and once per close, never per message.

pub mod addresses;
pub mod proxies;
pub mod rate;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use addresses::{AddressCaps, AddressTable, AddressTicket};
pub use proxies::Cidr;
pub use rate::{Bucket, Rate};

use crate::protocol::handshake::Request;
use crate::refusal::{Reason, Refusal};

/// Seconds a client refused by a full server is told to wait.
pub const SERVER_FULL_RETRY_AFTER: u32 = 5;

/// Every cap of a server, shared by its workers.
#[derive(Debug, Default)]
pub struct Limits {
    server: Option<ServerSlots>,
    addresses: Option<Arc<AddressTable>>,
    trusted_proxies: Vec<Cidr>,
    messages: Option<Rate>,
    bytes: Option<Rate>,
}

/// What [`Limits::new`] takes: each cap, or `None` for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitSettings {
    /// Connections (WebSocket and, later, SSE) the server holds at once.
    pub max_connections: Option<usize>,
    /// Connections one client address holds at once.
    pub max_connections_per_ip: Option<u32>,
    /// Upgrades one client address may start per second.
    pub max_handshakes_per_ip: Option<u32>,
    /// Messages a connection may send per second.
    pub max_messages_per_second: Option<u32>,
    /// Payload bytes a connection may send per second.
    pub max_bytes_per_second: Option<u64>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<Cidr>,
}

impl LimitSettings {
    /// Whether a cap needs each connection's peer address.
    pub fn needs_addresses(&self) -> bool {
        self.max_connections_per_ip.is_some() || self.max_handshakes_per_ip.is_some()
    }
}

impl Limits {
    /// The caps of `settings`.
    pub fn new(settings: &LimitSettings) -> Self {
        let caps = AddressCaps {
            max_connections: settings.max_connections_per_ip,
            max_handshakes: settings
                .max_handshakes_per_ip
                .map(|r| Rate::per_second(u64::from(r))),
        };
        Self {
            server: settings.max_connections.map(|max| ServerSlots {
                max,
                open: AtomicUsize::new(0),
            }),
            addresses: settings
                .needs_addresses()
                .then(|| Arc::new(AddressTable::new(caps))),
            trusted_proxies: settings.trusted_proxies.clone(),
            messages: settings
                .max_messages_per_second
                .map(|r| Rate::per_second(u64::from(r))),
            bytes: settings.max_bytes_per_second.map(Rate::per_second),
        }
    }

    /// Admits one long-lived connection (a WebSocket upgrade, an SSE stream) at `now`: a
    /// place on the server and in its client address's count, held until the returned value
    /// is dropped (keep it in the connection's state).
    ///
    /// # Errors
    ///
    /// 503 with `Retry-After` when the server is full, 429 with `Retry-After` when the
    /// client address is past its caps.
    pub fn admit(self: &Arc<Self>, request: &Request, now: Instant) -> Result<Admitted, Refusal> {
        let server = match &self.server {
            Some(slots) => Some(slots.take().ok_or(Refusal {
                reason: Reason::ServerFull,
                retry_after: Some(SERVER_FULL_RETRY_AFTER),
            })?),
            None => None,
        };
        let address = match (&self.addresses, self.client_address(request)) {
            (Some(table), Some(ip)) => Some(table.admit(ip, now)?),
            _ => None,
        };
        Ok(Admitted {
            _server: server.map(|()| ServerTicket {
                limits: Arc::clone(self),
            }),
            _address: address,
        })
    }

    /// Whether any cap applies at the upgrade (else [`admit`](Self::admit) always passes).
    pub fn caps_upgrades(&self) -> bool {
        self.server.is_some() || self.addresses.is_some()
    }

    /// The client's address: the peer's, or behind a trusted proxy the one it forwards.
    pub fn client_address(&self, request: &Request) -> Option<IpAddr> {
        let peer = request.peer_addr()?.ip();
        Some(proxies::client_address(
            request,
            peer,
            &self.trusted_proxies,
        ))
    }

    /// Whether a connection's messages are rate-limited.
    pub fn caps_messages(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// Connections open on the server, when it is capped.
    pub fn open_connections(&self) -> Option<usize> {
        self.server.as_ref().map(|s| s.open.load(Ordering::Relaxed))
    }

    /// Addresses in the table, when addresses are capped.
    pub fn addresses(&self) -> Option<usize> {
        self.addresses.as_ref().map(|t| t.len())
    }
}

/// A connection's place on the server and in its address's count; dropping it frees both.
#[derive(Debug)]
pub struct Admitted {
    _server: Option<ServerTicket>,
    _address: Option<AddressTicket>,
}

#[derive(Debug)]
struct ServerSlots {
    max: usize,
    open: AtomicUsize,
}

impl ServerSlots {
    fn take(&self) -> Option<()> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ())
    }
}

#[derive(Debug)]
struct ServerTicket {
    limits: Arc<Limits>,
}

impl Drop for ServerTicket {
    fn drop(&mut self) {
        if let Some(slots) = &self.limits.server {
            slots.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What one connection may still send: a message bucket and a byte bucket (32 bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnBudget {
    messages: Bucket,
    bytes: Bucket,
}

impl ConnBudget {
    /// Charges one message of `bytes` payload bytes at `now`.
    ///
    /// # Errors
    ///
    /// [`Reason::MessageRate`] or [`Reason::ByteRate`]: the connection is past its cap, and
    /// is to be closed with 1008.
    pub fn charge(&mut self, limits: &Limits, bytes: usize, now: Instant) -> Result<(), Reason> {
        if let Some(rate) = limits.messages {
            self.messages
                .take(rate, 1, now)
                .map_err(|_| Reason::MessageRate)?;
        }
        if let Some(rate) = limits.bytes {
            self.bytes
                .take(rate, bytes as u64, now)
                .map_err(|_| Reason::ByteRate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::ServerHandshake;
    use std::time::Duration;

    fn request_from(peer: &str, headers: &str) -> Request {
        let head = format!("GET /t HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let mut request = ServerHandshake::default()
            .feed(head.as_bytes())
            .expect("valid")
            .1
            .expect("complete");
        request.set_peer_addr(Some(peer.parse().expect("an address")));
        request
    }

    #[test]
    fn the_server_cap_frees_a_place_when_a_connection_goes() {
        let limits = Arc::new(Limits::new(&LimitSettings {
            max_connections: Some(2),
            ..LimitSettings::default()
        }));
        let now = Instant::now();
        let r = request_from("192.0.2.1:1000", "");
        let a = limits.admit(&r, now).expect("first");
        let _b = limits.admit(&r, now).expect("second");
        let full = limits.admit(&r, now).expect_err("full");
        assert_eq!(full.status(), 503);
        assert_eq!(full.retry_after, Some(SERVER_FULL_RETRY_AFTER));
        drop(a);
        assert_eq!(limits.open_connections(), Some(1));
        limits.admit(&r, now).expect("a place came free");
    }

    #[test]
    fn the_address_comes_from_a_trusted_proxy_only() {
        let limits = Arc::new(Limits::new(&LimitSettings {
            max_connections_per_ip: Some(1),
            trusted_proxies: proxies::parse_list("127.0.0.0/8").expect("valid"),
            ..LimitSettings::default()
        }));
        let now = Instant::now();
        let via_proxy = |client: &str| {
            request_from("127.0.0.1:5000", &format!("X-Forwarded-For: {client}\r\n"))
        };
        let _a = limits.admit(&via_proxy("203.0.113.1"), now).expect("a");
        let _b = limits.admit(&via_proxy("203.0.113.2"), now).expect("b");
        assert_eq!(
            limits
                .admit(&via_proxy("203.0.113.1"), now)
                .expect_err("a again")
                .status(),
            429
        );
        // From an untrusted peer, the header is ignored: the peer is the client.
        let direct = request_from("198.51.100.7:5000", "X-Forwarded-For: 203.0.113.3\r\n");
        let _c = limits.admit(&direct, now).expect("c");
        let spoof = request_from("198.51.100.7:5001", "X-Forwarded-For: 203.0.113.4\r\n");
        assert_eq!(
            limits.admit(&spoof, now).expect_err("same peer").status(),
            429
        );
    }

    #[test]
    fn a_connections_share_is_small() {
        // What a connection's boxed share holds: its tickets, two buckets and a flag.
        let share = size_of::<Option<Admitted>>() + size_of::<ConnBudget>() + 8;
        assert!(share <= 80, "{share} bytes");
    }

    #[test]
    fn a_connection_past_its_rates_is_refused() {
        let limits = Limits::new(&LimitSettings {
            max_messages_per_second: Some(5),
            max_bytes_per_second: Some(1000),
            ..LimitSettings::default()
        });
        let now = Instant::now();
        let mut budget = ConnBudget::default();
        for _ in 0..5 {
            budget.charge(&limits, 10, now).expect("within both");
        }
        assert_eq!(budget.charge(&limits, 10, now), Err(Reason::MessageRate));
        let mut budget = ConnBudget::default();
        budget
            .charge(&limits, 1000, now)
            .expect("one second's worth");
        assert_eq!(budget.charge(&limits, 1, now), Err(Reason::ByteRate));
        assert!(budget
            .charge(&limits, 1, now + Duration::from_millis(10))
            .is_ok());
    }
}
