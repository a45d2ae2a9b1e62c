//! The URL a scenario connects to: `ws://` or `wss://HOST[:PORT][/PATH][?QUERY]`, where HOST
//! is an IPv4 address, a bracketed IPv6 address or a DNS name.
//!
//! Parsing ([`Url`]) is pure: it checks the syntax and sends nothing. Resolution
//! ([`Url::resolve`]) turns a name into addresses with the system's resolver (or the one a
//! test passes in); an address literal is taken as written. `localhost` is `127.0.0.1`
//! without asking a resolver (RFC 6761 §6.3: it names the loopback interface), so a hosts file
//! that lists `::1` first cannot move a run to another family.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;

/// Port of a `ws://` URL that names none (RFC 6455 §3).
const DEFAULT_WS_PORT: u16 = 80;
/// Port of a `wss://` URL that names none (RFC 6455 §3).
const DEFAULT_WSS_PORT: u16 = 443;
/// The longest DNS name, without its trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_BYTES: usize = 253;
/// The longest label of a DNS name (RFC 1035 §2.3.4).
const MAX_LABEL_BYTES: usize = 63;

/// A resolved WebSocket URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as written (port included when given).
    pub host: String,
    /// The request target: path and query, at least `/`.
    pub path: String,
    /// `wss://`: TLS first.
    pub secure: bool,
    /// The host without its port, the name TLS checks the certificate against (SNI).
    pub server_name: String,
    /// Every address the host resolved to, in the resolver's order (`addr` is one of them);
    /// one address for a literal or `localhost`.
    pub addresses: Vec<SocketAddr>,
    /// The host was a DNS name that a resolver answered (not a literal nor `localhost`).
    pub resolved: bool,
}

/// A parsed WebSocket URL whose host is not resolved yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// The host: an address, or a name to resolve.
    pub host: Host,
    /// The port: the URL's, or the scheme's default.
    pub port: u16,
    /// The URL's authority as written: the `Host` header.
    pub authority: String,
    /// The request target: path and query, at least `/`.
    pub path: String,
    /// `wss://`: TLS first.
    pub secure: bool,
    /// The host without its port or brackets, for TLS's SNI.
    pub server_name: String,
}

/// The host of a [`Url`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An address literal, or `localhost` (`127.0.0.1`).
    Ip(IpAddr),
    /// A DNS name, as written (checked for syntax only).
    Name(String),
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// An `https://` publish URL: the HTTP publishers speak plain HTTP only.
    #[error("{0:?}: the HTTP publishers do not speak TLS; use an http:// publish URL or WebSocket publishers")]
    HttpsPublish(String),
    /// A publish URL that is not `http://`.
    #[error("{0:?} is not an http:// publish URL (expected http://HOST[:PORT]/publish/TOPIC)")]
    PublishScheme(String),
    /// Not a `ws://` or `wss://` URL.
    #[error("{0:?} is not a ws:// or wss:// URL (expected ws://HOST[:PORT][/PATH])")]
    Scheme(String),
    /// No host between `ws://` and the path.
    #[error("{0:?} names no host")]
    NoHost(String),
    /// `user@host`: nothing to authenticate with.
    #[error("{0:?}: user information in a ws:// URL is not supported")]
    UserInfo(String),
    /// A port that is not a number in 1..=65535.
    #[error("{url:?}: invalid port {port:?} (expected 1..=65535)")]
    Port {
        /// The URL.
        url: String,
        /// The port text.
        port: String,
    },
    /// A host that is neither an IP literal nor a well-formed DNS name.
    #[error(
        "{url:?}: host {host:?} is not an IP address or a DNS name (letters, digits, '-' \
         and '_' in dot-separated labels of at most 63 bytes, 253 in all)"
    )]
    Name {
        /// The URL.
        url: String,
        /// The host text.
        host: String,
    },
    /// A name the resolver could not turn into an address.
    #[error("{url:?}: cannot resolve {host:?}: {reason}")]
    Resolve {
        /// The URL.
        url: String,
        /// The name.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
    /// A fragment (`#...`), which RFC 6455 §3 forbids in WebSocket URIs.
    #[error("{0:?}: a WebSocket URL has no fragment (RFC 6455 §3)")]
    Fragment(String),
    /// Whitespace or control characters in the path, which would break the request line.
    #[error("{0:?}: the path contains whitespace or control characters")]
    BadPath(String),
}

impl FromStr for Target {
    type Err = TargetError;

    /// Parses `url` and resolves its host with the system's resolver.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        url.parse::<Url>()?.resolve(system_resolver)
    }
}

impl Target {
    /// Connects to the first resolved address of the family of `ip` (that of `--source`'s
    /// addresses), when the name resolved to one; otherwise leaves the target as it is.
    pub fn prefer_family_of(&mut self, ip: IpAddr) {
        if let Some(addr) = self.addresses.iter().find(|a| a.is_ipv4() == ip.is_ipv4()) {
            self.addr = *addr;
        }
    }

    /// One line for the start of a run: the URL, the address it connects to, and for a name
    /// what it resolved to.
    pub fn describe(&self) -> String {
        if !self.resolved {
            return format!("{self} → {}", self.addr);
        }
        let all: Vec<String> = self.addresses.iter().map(|a| a.ip().to_string()).collect();
        format!(
            "{self} → {} ({} resolved to {})",
            self.addr,
            self.server_name,
            all.join(", ")
        )
    }
}

impl Url {
    /// The target: the host's addresses from `resolver` (called only for a name, with the
    /// name and port), the first one to connect to.
    ///
    /// # Errors
    ///
    /// [`TargetError::Resolve`] when the resolver fails or returns no address.
    pub fn resolve(
        self,
        resolver: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
    ) -> Result<Target, TargetError> {
        let (addresses, resolved) = match &self.host {
            Host::Ip(ip) => (vec![SocketAddr::new(*ip, self.port)], false),
            Host::Name(name) => {
                let error = |reason: String| TargetError::Resolve {
                    url: self.to_string(),
                    host: name.clone(),
                    reason,
                };
                let found = resolver(name, self.port).map_err(|e| error(e.to_string()))?;
                if found.is_empty() {
                    return Err(error("no address".into()));
                }
                (found, true)
            }
        };
        Ok(Target {
            addr: addresses[0],
            host: self.authority,
            path: self.path,
            secure: self.secure,
            server_name: self.server_name,
            addresses,
            resolved,
        })
    }
}

/// The system's resolver (`getaddrinfo`), in its order of preference, without repeats.
pub fn system_resolver(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in (name, port).to_socket_addrs()? {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

impl FromStr for Url {
    type Err = TargetError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let owned = || url.to_owned();
        let scheme_end = url
            .find("://")
            .ok_or_else(|| TargetError::Scheme(owned()))?;
        let scheme = &url[..scheme_end];
        let secure = scheme.eq_ignore_ascii_case("wss");
        if !secure && !scheme.eq_ignore_ascii_case("ws") {
            return Err(TargetError::Scheme(owned()));
        }
        let rest = &url[scheme_end + 3..];
        if rest.contains('#') {
            return Err(TargetError::Fragment(owned()));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(TargetError::UserInfo(owned()));
        }
        if authority.is_empty() {
            return Err(TargetError::NoHost(owned()));
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TargetError::BadPath(owned()));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| TargetError::Port {
            url: owned(),
            port: authority.to_owned(),
        })?;
        if host.is_empty() {
            return Err(TargetError::NoHost(owned()));
        }
        let port = match port {
            None if secure => DEFAULT_WSS_PORT,
            None => DEFAULT_WS_PORT,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(TargetError::Port {
                        url: owned(),
                        port: text.to_owned(),
                    })
                }
            },
        };
        let bracketed = authority.starts_with('[');
        let parsed = if host.eq_ignore_ascii_case("localhost") {
            Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            // An IPv6 literal only in brackets (split_host_port saw to it), IPv4 never.
            if ip.is_ipv6() != bracketed {
                return Err(TargetError::Name {
                    url: owned(),
                    host: host.to_owned(),
                });
            }
            Host::Ip(ip)
        } else if !bracketed && is_dns_name(host) {
            Host::Name(host.to_owned())
        } else {
            return Err(TargetError::Name {
                url: owned(),
                host: host.to_owned(),
            });
        };
        Ok(Self {
            host: parsed,
            port,
            authority: authority.to_owned(),
            path,
            secure,
            server_name: host.to_owned(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host, self.path)
    }
}

/// A DNS name as hosts are written: dot-separated labels of letters, digits, `-` and `_`
/// (which service names use), none empty or longer than 63 bytes, 253 bytes in all; one
/// trailing dot (a fully qualified name) allowed. An all-numeric name is refused: it would be
/// a mistyped address.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_BYTES
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Splits `host[:port]` or `[v6][:port]`; `None` when brackets are unbalanced or a port
/// separator is misplaced.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(inner) = authority.strip_prefix('[') {
        let close = inner.find(']')?;
        let host = &inner[..close];
        return match &inner[close + 1..] {
            "" => Some((host, None)),
            tail => tail.strip_prefix(':').map(|port| (host, Some(port))),
        };
    }
    match authority.split_once(':') {
        // A bare IPv6 address without brackets is ambiguous with a port: refuse it.
        Some((_, port)) if port.contains(':') => None,
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    //! Nothing here sends a packet: names are parsed, or resolved by a resolver the test
    //! passes in; the system's resolver is asked only for `localhost` (the hosts file).
    use super::*;

    fn parse(url: &str) -> Result<Target, TargetError> {
        url.parse()
    }

    fn url(text: &str) -> Url {
        text.parse().unwrap()
    }

    /// A resolver that must not be called.
    fn no_resolver(name: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        panic!("{name} is an address, not a name to resolve")
    }

    #[test]
    fn parses_loopback_urls() {
        let t = parse("ws://127.0.0.1:9001/path?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path, "/path?x=1");
        assert!(!t.resolved);

        let t = parse("ws://localhost").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.host, "localhost");
        assert_eq!(t.path, "/");
        assert_eq!(t.addresses, [t.addr]);

        let t = parse("WS://[::1]:9001").unwrap();
        assert_eq!(t.addr, "[::1]:9001".parse().unwrap());
        assert_eq!(t.host, "[::1]:9001");

        let t = parse("ws://127.9.8.7:1?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert_eq!(t.to_string(), "ws://127.9.8.7:1/?q");
    }

    #[test]
    fn wss_urls_speak_tls_on_443_by_default() {
        let t = parse("wss://localhost/feed").unwrap();
        assert!(t.secure);
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.server_name, "localhost");
        assert_eq!(t.to_string(), "wss://localhost/feed");
        let t = parse("wss://[::1]:9443").unwrap();
        assert_eq!((t.addr.port(), t.server_name.as_str()), (9443, "::1"));
        assert!(!parse("ws://127.0.0.1/").unwrap().secure);
    }

    #[test]
    fn addresses_off_this_machine_are_taken_as_written() {
        // Documentation ranges (RFC 5737, RFC 3849): resolving a literal sends nothing.
        let t = url("ws://192.0.2.10:9001/room")
            .resolve(no_resolver)
            .unwrap();
        assert_eq!(t.addr, "192.0.2.10:9001".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("192.0.2.10:9001", "/room")
        );
        assert_eq!(t.describe(), "ws://192.0.2.10:9001/room → 192.0.2.10:9001");
        let t = url("wss://[2001:db8::7]/feed?x")
            .resolve(no_resolver)
            .unwrap();
        assert_eq!(t.addr, "[2001:db8::7]:443".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.server_name.as_str()),
            ("[2001:db8::7]", "2001:db8::7")
        );
        // The FromStr path takes literals without a resolver too.
        assert_eq!(
            parse("ws://10.1.2.3:8080").unwrap().addr,
            "10.1.2.3:8080".parse().unwrap()
        );
    }

    #[test]
    fn names_parse_without_resolving() {
        let u = url("wss://ws.Example.com:8443/chat?room=1");
        assert_eq!(u.host, Host::Name("ws.Example.com".into()));
        assert_eq!(u.port, 8443);
        assert_eq!(u.authority, "ws.Example.com:8443");
        assert_eq!(u.server_name, "ws.Example.com");
        assert_eq!(u.path, "/chat?room=1");
        assert_eq!(u.to_string(), "wss://ws.Example.com:8443/chat?room=1");
        assert_eq!(url("ws://feed/").port, 80);
        assert_eq!(
            url("ws://a-b.c_d.example.").host,
            Host::Name("a-b.c_d.example.".into())
        );
        assert_eq!(
            url("ws://LOCALHOST:1/").host,
            Host::Ip(Ipv4Addr::LOCALHOST.into())
        );
        let long = format!("ws://{}.example/", "a".repeat(63));
        assert!(long.parse::<Url>().is_ok());
    }

    #[test]
    fn names_resolve_through_the_resolver_given() {
        let mut asked = None;
        let t = url("ws://feed.example.net:9001/room")
            .resolve(|name, port| {
                asked = Some((name.to_owned(), port));
                Ok(vec![
                    "[2001:db8::1]:9001".parse().unwrap(),
                    "192.0.2.1:9001".parse().unwrap(),
                ])
            })
            .unwrap();
        assert_eq!(asked, Some(("feed.example.net".to_owned(), 9001)));
        assert!(t.resolved);
        assert_eq!(t.addr, "[2001:db8::1]:9001".parse().unwrap());
        assert_eq!(t.host, "feed.example.net:9001");
        assert_eq!(t.server_name, "feed.example.net");
        assert_eq!(
            t.describe(),
            "ws://feed.example.net:9001/room → [2001:db8::1]:9001 \
             (feed.example.net resolved to 2001:db8::1, 192.0.2.1)"
        );
        // --source of IPv4: the first IPv4 address; of a family the name lacks: unchanged.
        let mut v4 = t.clone();
        v4.prefer_family_of("192.0.2.99".parse().unwrap());
        assert_eq!(v4.addr, "192.0.2.1:9001".parse().unwrap());
        v4.prefer_family_of("::1".parse().unwrap());
        assert_eq!(v4.addr, "[2001:db8::1]:9001".parse().unwrap());

        let failed = url("ws://nowhere.example/")
            .resolve(|_, _| Err(io::Error::other("Name or service not known")))
            .unwrap_err();
        assert!(matches!(&failed, TargetError::Resolve { host, .. } if host == "nowhere.example"));
        assert!(
            failed.to_string().contains("Name or service not known"),
            "{failed}"
        );
        let empty = url("ws://empty.example/").resolve(|_, _| Ok(Vec::new()));
        assert!(
            matches!(empty, Err(TargetError::Resolve { reason, .. }) if reason == "no address")
        );
    }

    #[test]
    fn the_system_resolver_answers_localhost_from_the_hosts_file() {
        let found = system_resolver("localhost", 9001).unwrap();
        assert!(!found.is_empty());
        for addr in &found {
            assert!(addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), 9001);
        }
        assert_eq!(
            system_resolver("192.0.2.5", 7).unwrap(),
            ["192.0.2.5:7".parse().unwrap()]
        );
    }

    #[test]
    fn refuses_malformed_hosts_and_schemes() {
        for bad in [
            "ws://exa$mple.com/",
            "ws://a..b/",
            "ws://-a.example/",
            "ws://a-.example/",
            "ws://./",
            "ws://1.2.3/",
            "ws://256.1.1.1/",
            "ws://[example.com]/",
            "ws://[127.0.0.1]/",
            "ws://ex%61mple.com/",
        ] {
            assert!(
                matches!(bad.parse::<Url>(), Err(TargetError::Name { .. })),
                "{bad}: {:?}",
                bad.parse::<Url>()
            );
        }
        let long_label = format!("ws://{}.example/", "a".repeat(64));
        assert!(matches!(
            long_label.parse::<Url>(),
            Err(TargetError::Name { .. })
        ));
        let long_name = format!("ws://{}/", ["abcdefghi"; 26].join("."));
        assert!(matches!(
            long_name.parse::<Url>(),
            Err(TargetError::Name { .. })
        ));
        assert!(matches!(
            parse("http://127.0.0.1/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            parse("127.0.0.1:9001"),
            Err(TargetError::Scheme(_))
        ));
    }

    #[test]
    fn refuses_malformed_urls() {
        assert!(matches!(parse("ws:///x"), Err(TargetError::NoHost(_))));
        assert!(matches!(parse("ws://:9001/"), Err(TargetError::NoHost(_))));
        assert!(matches!(
            parse("ws://127.0.0.1:0/"),
            Err(TargetError::Port { .. })
        ));
        assert!(matches!(
            parse("ws://127.0.0.1:70000/"),
            Err(TargetError::Port { .. })
        ));
        assert!(matches!(
            parse("ws://127.0.0.1:x/"),
            Err(TargetError::Port { .. })
        ));
        assert!(matches!(parse("ws://::1/"), Err(TargetError::Port { .. })));
        assert!(matches!(parse("ws://[::1/"), Err(TargetError::Port { .. })));
        assert!(matches!(
            parse("ws://u@127.0.0.1/"),
            Err(TargetError::UserInfo(_))
        ));
        assert!(matches!(
            parse("ws://127.0.0.1/#f"),
            Err(TargetError::Fragment(_))
        ));
        assert!(matches!(
            parse("ws://127.0.0.1/a b"),
            Err(TargetError::BadPath(_))
        ));
        assert!(matches!(
            parse("ws://127.0.0.1/a\r\nX: y"),
            Err(TargetError::BadPath(_))
        ));
    }
}
