//! Lists of addresses: the source addresses to bind connections to (`--source`) and the server
//! addresses to connect to (`--target-addresses`). Each (source, target) address
//! pair has its own ~28,000 ephemeral ports, so spreading connections over several of either
//! lifts the port limit of a single address pair.
//!
//! Syntax: a comma list of items, each an address (`127.0.0.2`), an inclusive IPv4 range
//! (`127.0.0.2-127.0.0.40`), or a range ending in a last octet (`127.0.0.2-40`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

/// More addresses than this is a typo, not a plan: 64 addresses already give 1.8
/// million ports, far beyond what one machine's memory holds.
pub const MAX_SOURCES: usize = 4096;

/// Why an address list was refused (the flag's name is added where it is parsed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// An empty item (`a,,b` or an empty list).
    #[error("empty item in {0:?}")]
    Empty(String),
    /// An item that is not an address or range.
    #[error("{0:?} is not an IP address or an IPv4 range A-B")]
    Syntax(String),
    /// A range whose end precedes its start.
    #[error("range {0:?} ends before it starts")]
    Reversed(String),
    /// The same address twice.
    #[error("{0} is listed twice")]
    Duplicate(IpAddr),
    /// Too many addresses.
    #[error("{count} addresses exceed the limit of {MAX_SOURCES}")]
    TooMany {
        /// How many were listed.
        count: u64,
    },
}

/// Parses an address list into addresses, in the order given.
///
/// # Errors
///
/// [`SourceError`] for the first bad item.
pub fn parse_addresses(spec: &str) -> Result<Vec<IpAddr>, SourceError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for item in spec.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(SourceError::Empty(spec.to_owned()));
        }
        let (first, last) = match item.split_once('-') {
            None => {
                let ip = item
                    .parse::<IpAddr>()
                    .map_err(|_| SourceError::Syntax(item.to_owned()))?;
                push(&mut out, &mut seen, ip)?;
                continue;
            }
            Some((a, b)) => (a.trim(), b.trim()),
        };
        let first = first
            .parse::<Ipv4Addr>()
            .map_err(|_| SourceError::Syntax(item.to_owned()))?;
        let last = match last_octet(last) {
            Some(octet) => {
                let [a, b, c, _] = first.octets();
                Ipv4Addr::new(a, b, c, octet)
            }
            None => last
                .parse::<Ipv4Addr>()
                .map_err(|_| SourceError::Syntax(item.to_owned()))?,
        };
        let (start, end) = (u32::from(first), u32::from(last));
        if end < start {
            return Err(SourceError::Reversed(item.to_owned()));
        }
        let count = u64::from(end - start) + 1 + out.len() as u64;
        if count > MAX_SOURCES as u64 {
            return Err(SourceError::TooMany { count });
        }
        for ip in start..=end {
            push(&mut out, &mut seen, IpAddr::V4(Ipv4Addr::from(ip)))?;
        }
    }
    Ok(out)
}

/// The short form of a range's end: a bare last octet.
fn last_octet(text: &str) -> Option<u8> {
    (!text.contains('.') && !text.contains(':'))
        .then(|| text.parse().ok())
        .flatten()
}

fn push(out: &mut Vec<IpAddr>, seen: &mut HashSet<IpAddr>, ip: IpAddr) -> Result<(), SourceError> {
    if !seen.insert(ip) {
        return Err(SourceError::Duplicate(ip));
    }
    if out.len() >= MAX_SOURCES {
        return Err(SourceError::TooMany {
            count: out.len() as u64 + 1,
        });
    }
    out.push(ip);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn parses_ranges_and_lists() {
        assert_eq!(
            parse_addresses("127.0.0.2-127.0.0.4").unwrap(),
            [v4(2), v4(3), v4(4)]
        );
        assert_eq!(parse_addresses("127.0.0.2-3").unwrap(), [v4(2), v4(3)]);
        assert_eq!(
            parse_addresses("127.0.0.9, 127.0.0.2-127.0.0.3").unwrap(),
            [v4(9), v4(2), v4(3)]
        );
        assert_eq!(parse_addresses("127.0.0.5-127.0.0.5").unwrap(), [v4(5)]);
        assert_eq!(
            parse_addresses("::1").unwrap(),
            [IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)]
        );
        // A range may cross an octet boundary.
        let crossing = parse_addresses("127.0.0.255-127.0.1.1").unwrap();
        assert_eq!(crossing.len(), 3);
        assert_eq!(crossing[2], "127.0.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_addresses("127.0.0.2-127.0.0.40").unwrap().len(), 39);
        // Addresses of other networks (a load machine's own, a server's): parsed alike.
        assert_eq!(
            parse_addresses("192.0.2.10-11,2001:db8::5").unwrap(),
            [
                "192.0.2.10".parse::<IpAddr>().unwrap(),
                "192.0.2.11".parse().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn refuses_bad_lists() {
        assert!(matches!(parse_addresses(""), Err(SourceError::Empty(_))));
        assert!(matches!(
            parse_addresses("127.0.0.2,"),
            Err(SourceError::Empty(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.x"),
            Err(SourceError::Syntax(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.2-foo"),
            Err(SourceError::Syntax(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.2-300"),
            Err(SourceError::Syntax(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.9-127.0.0.2"),
            Err(SourceError::Reversed(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.9-2"),
            Err(SourceError::Reversed(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.2,127.0.0.1-3"),
            Err(SourceError::Duplicate(_))
        ));
        assert!(matches!(
            parse_addresses("127.0.0.0-127.1.0.0"),
            Err(SourceError::TooMany { .. })
        ));
    }
}
