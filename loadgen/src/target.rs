//! The URL a scenario connects to: `ws://` or `wss://HOST[:PORT][/PATH][?QUERY]`, loopback
//! only.
//!
//! Load is sent only to this machine: a host must be an address in `127.0.0.0/8`, `[::1]`, or
//! `localhost` (taken as `127.0.0.1`, without a resolver, so a hosts file cannot redirect it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// Port of a `ws://` URL that names none (RFC 6455 §3).
const DEFAULT_WS_PORT: u16 = 80;
/// Port of a `wss://` URL that names none (RFC 6455 §3).
const DEFAULT_WSS_PORT: u16 = 443;

/// A parsed, loopback-only WebSocket URL.
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
    /// A host that is neither an IP literal nor `localhost`.
    #[error("{url:?}: host {host:?} must be an IP address or localhost (names are not resolved)")]
    Name {
        /// The URL.
        url: String,
        /// The host text.
        host: String,
    },
    /// A host outside the loopback range.
    #[error(
        "{url:?}: {ip} is not a loopback address; uringcast-load only targets 127.0.0.0/8, \
         [::1] or localhost"
    )]
    NotLoopback {
        /// The URL.
        url: String,
        /// The address.
        ip: IpAddr,
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
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().map_err(|_| TargetError::Name {
                url: owned(),
                host: host.to_owned(),
            })?
        };
        if !ip.is_loopback() {
            return Err(TargetError::NotLoopback { url: owned(), ip });
        }
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host: authority.to_owned(),
            path,
            secure,
            server_name: host.to_owned(),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host, self.path)
    }
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
    use super::*;

    fn parse(url: &str) -> Result<Target, TargetError> {
        url.parse()
    }

    #[test]
    fn parses_loopback_urls() {
        let t = parse("ws://127.0.0.1:9001/path?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path, "/path?x=1");

        let t = parse("ws://localhost").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.host, "localhost");
        assert_eq!(t.path, "/");

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
    fn refuses_other_hosts_and_schemes() {
        assert!(matches!(
            parse("ws://10.0.0.1:9001/"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            parse("ws://[2001:db8::1]/"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            parse("ws://example.com/"),
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
