//! The client's address behind trusted proxies: `Forwarded` (RFC 7239) or `X-Forwarded-For`
//! are believed only when the TCP peer is one of `--trusted-proxies`, and then read from the
//! right: the first address that is not itself a trusted proxy is the client.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::protocol::handshake::Request;

/// An address block, as `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(
            addr.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{text:?} is not an address or address/prefix"))?,
        );
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// Parses `--trusted-proxies`: comma-separated blocks.
///
/// # Errors
///
/// A block that does not parse, named.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// The client's address for a request from `peer`: the peer itself, unless it is a trusted
/// proxy, in which case the forwarding headers are read from the right.
pub fn client_address(request: &Request, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // `Forwarded` is the standard; `X-Forwarded-For` only when it is absent.
    let hops: Vec<IpAddr> = if request.header("forwarded").is_some() {
        request
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("forwarded"))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .filter_map(forwarded_for)
            .collect()
    } else {
        request
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .filter_map(|hop| parse_node(hop.trim()))
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// The `for=` address of one `Forwarded` element (RFC 7239 §4, §6).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// An address as a proxy writes it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`. Obfuscated and `unknown` nodes are no address.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(canonical)
}

/// An IPv4-mapped IPv6 address as its IPv4 address; anything else as it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::ServerHandshake;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut head = "GET / HTTP/1.1\r\nHost: x\r\n".to_owned();
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        ServerHandshake::default()
            .feed(head.as_bytes())
            .expect("valid")
            .1
            .expect("complete")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn blocks_parse_and_contain() {
        let list = parse_list("10.0.0.0/8, 192.0.2.7 ,2001:db8::/32").expect("valid");
        assert!(list[0].contains(ip("10.1.2.3")));
        assert!(!list[0].contains(ip("11.0.0.1")));
        assert!(list[1].contains(ip("192.0.2.7")));
        assert!(!list[1].contains(ip("192.0.2.8")));
        assert!(list[2].contains(ip("2001:db8:1::5")));
        assert!(list[0].contains(ip("::ffff:10.0.0.1")));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .expect("all")
            .contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_peers() {
        let trusted = parse_list("10.0.0.0/8").expect("valid");
        let spoofed = request(&[("X-Forwarded-For", "203.0.113.9")]);
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_address(&spoofed, ip("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(&spoofed, ip("10.0.0.2"), &trusted),
            ip("203.0.113.9")
        );
        // Read from the right: a client cannot hide behind an address it wrote itself.
        let chained = request(&[("X-Forwarded-For", "1.2.3.4, 203.0.113.9, 10.0.0.3")]);
        assert_eq!(
            client_address(&chained, ip("10.0.0.2"), &trusted),
            ip("203.0.113.9")
        );
        let forwarded = request(&[
            (
                "Forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8::17]:4711\"",
            ),
            ("X-Forwarded-For", "6.6.6.6"),
        ]);
        assert_eq!(
            client_address(&forwarded, ip("10.0.0.2"), &trusted),
            ip("2001:db8::17")
        );
        // Nothing usable: the proxy's own address.
        let junk = request(&[("X-Forwarded-For", "unknown, _hidden")]);
        assert_eq!(
            client_address(&junk, ip("10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(&request(&[]), ip("10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
    }
}
