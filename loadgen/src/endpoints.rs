//! A run's endpoints as they are printed at its start: the address the URL resolved to, the
//! server addresses connections take, and the source addresses they leave from. Also the
//! check that every `--source` address belongs to this machine. Nothing here sends a packet:
//! the kernel's choice of source address is read from a UDP socket's `connect()`, which only
//! consults the routing table.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use crate::error::LoadError;
use crate::target::Target;

/// Addresses a list line shows before it elides the middle.
const SHOWN: usize = 4;

/// The lines printed before a run starts: `target: URL → ADDRESS`, the `--target-addresses`
/// when given, and the sources (`--source`'s, or the one the kernel's route picks).
pub fn describe(target: &Target, sources: &[IpAddr], targets: &[SocketAddr]) -> String {
    let mut out = format!("target: {}\n", target.describe());
    if targets.len() > 1 || targets.first().is_some_and(|t| *t != target.addr) {
        out.push_str(&format!("target addresses: {}\n", list(targets)));
    }
    let first = targets.first().copied().unwrap_or(target.addr);
    if sources.is_empty() {
        match routed_source(first) {
            Ok(ip) => out.push_str(&format!(
                "sources: {ip} (the kernel's choice for {})\n",
                first.ip()
            )),
            Err(error) => out.push_str(&format!(
                "sources: the kernel's choice (no route to {} known: {error})\n",
                first.ip()
            )),
        }
    } else {
        out.push_str(&format!("sources: {}\n", list(sources)));
    }
    out
}

/// Refuses a `--source` address this machine does not have: binding to it would fail for
/// every connection.
///
/// # Errors
///
/// [`LoadError::Usage`] naming the address and the kernel's answer.
pub fn check_local(sources: &[IpAddr]) -> Result<(), LoadError> {
    for ip in sources {
        if let Err(error) = UdpSocket::bind(SocketAddr::new(*ip, 0)) {
            return Err(LoadError::Usage(format!(
                "--source {ip} is not an address of this machine (cannot bind to it: {error})"
            )));
        }
    }
    Ok(())
}

/// The source address the kernel's routing table picks for `to`. A UDP `connect()` sets the
/// socket's peer and local address and sends nothing.
fn routed_source(to: SocketAddr) -> io::Result<IpAddr> {
    let any = match to {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(to)?;
    Ok(socket.local_addr()?.ip())
}

/// `a`; `N, round-robin: a, b, c` in full up to [`SHOWN`], else the first ones, `...` and
/// the last.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let text = |items: &[T]| {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        short if short.len() <= SHOWN => format!("{}, round-robin: {}", short.len(), text(short)),
        [.., last] => format!(
            "{}, round-robin: {}, ..., {last}",
            items.len(),
            text(&items[..SHOWN - 1])
        ),
    }
}

#[cfg(test)]
mod tests {
    //! Loopback only: a UDP connect to 127.0.0.1 sends nothing, and neither would any other.
    use super::*;

    fn target(url: &str) -> Target {
        url.parse().unwrap()
    }

    #[test]
    fn lists_elide_the_middle() {
        let ips: Vec<IpAddr> = (2..=40)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
            .collect();
        assert_eq!(list(&ips[..1]), "127.0.0.2");
        assert_eq!(list(&ips[..2]), "2, round-robin: 127.0.0.2, 127.0.0.3");
        assert_eq!(
            list(&ips),
            "39, round-robin: 127.0.0.2, 127.0.0.3, 127.0.0.4, ..., 127.0.0.40"
        );
    }

    #[test]
    fn describes_the_target_and_the_sources() {
        let t = target("ws://localhost:9001/room");
        let lines = describe(&t, &[], &[t.addr]);
        assert_eq!(
            lines,
            "target: ws://localhost:9001/room → 127.0.0.1:9001\n\
             sources: 127.0.0.1 (the kernel's choice for 127.0.0.1)\n"
        );
        let sources = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        let targets = [t.addr, "127.0.0.4:9001".parse().unwrap()];
        let lines = describe(&t, &sources, &targets);
        assert!(
            lines.contains("target addresses: 2, round-robin: 127.0.0.1:9001, 127.0.0.4:9001\n"),
            "{lines}"
        );
        assert!(
            lines.ends_with("sources: 2, round-robin: 127.0.0.2, 127.0.0.3\n"),
            "{lines}"
        );
    }

    #[test]
    fn sources_must_be_this_machines() {
        // Any address of 127.0.0.0/8 is this machine's (IPv6 may be off: ::1 is not asked).
        assert!(check_local(&["127.0.0.2".parse().unwrap(), "127.9.9.9".parse().unwrap()]).is_ok());
        // A documentation address (RFC 5737) no interface has: refused by bind, locally.
        let error = check_local(&["192.0.2.77".parse().unwrap()]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("192.0.2.77 is not an address of this machine"),
            "{error}"
        );
    }
}
