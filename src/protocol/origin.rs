//! Which `Origin`s may open a WebSocket: the defence against cross-site WebSocket hijacking.
//!
//! Browsers attach cookies to a WebSocket upgrade whatever page starts it, and the same-origin
//! policy does not apply to WebSockets, so a server that trusts cookies and accepts any
//! `Origin` lets every website act as its users. RFC 6455 §10.2 tells servers to check the
//! `Origin` header (RFC 6454) a browser sends. Clients that are not browsers send none; they
//! are allowed, since they carry no ambient credentials of a user.

use std::fmt;

/// A parsed allow-list of origins, e.g. `https://app.example.com, https://*.example.com`.
///
/// # Examples
///
/// ```
/// use uringcast::protocol::origin::AllowedOrigins;
///
/// let allowed = AllowedOrigins::parse("https://app.example.com,https://*.example.org").unwrap();
/// assert!(allowed.allows(Some(b"https://app.example.com")));
/// assert!(allowed.allows(Some(b"https://eu.example.org")));
/// assert!(!allowed.allows(Some(b"https://example.org")));
/// assert!(!allowed.allows(Some(b"https://evil.com")));
/// assert!(allowed.allows(None)); // not a browser
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    any: bool,
    /// `null` (an opaque origin: a sandboxed frame, a `file:` page) is allowed only if listed.
    null: bool,
    exact: Vec<Origin>,
    /// Patterns `scheme://*.suffix[:port]`: `host` holds the suffix without the `*.`.
    subdomains: Vec<Origin>,
}

/// An entry of an origin list that is not `*`, `null`, `scheme://host[:port]` or
/// `scheme://*.host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad origin {entry:?}: {why} (expected scheme://host[:port], scheme://*.domain or *)")]
pub struct OriginError {
    /// The entry as given.
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl AllowedOrigins {
    /// Every origin (the default).
    pub fn any() -> Self {
        Self {
            any: true,
            ..Self::default()
        }
    }

    /// Parses a comma-separated list. Hosts and schemes compare without regard to ASCII case,
    /// and a scheme's default port (80, 443) may be written or left out.
    ///
    /// # Errors
    ///
    /// An [`OriginError`] naming the first entry that is not an origin or pattern, including
    /// an empty list and entries with a path (`https://example.com/`).
    pub fn parse(list: &str) -> Result<Self, OriginError> {
        let mut allowed = Self::default();
        for entry in list.split(',').map(str::trim) {
            let error = |why| OriginError {
                entry: entry.to_owned(),
                why,
            };
            match entry {
                "" => return Err(error("empty entry")),
                "*" => allowed.any = true,
                "null" => allowed.null = true,
                _ => {
                    let origin = Origin::parse(entry).map_err(error)?;
                    match origin.host.strip_prefix("*.") {
                        Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                            allowed.subdomains.push(Origin {
                                host: suffix.to_owned(),
                                ..origin
                            });
                        }
                        _ if origin.host.contains('*') => {
                            return Err(error("a wildcard may only be a leading `*.`"))
                        }
                        _ => allowed.exact.push(origin),
                    }
                }
            }
        }
        Ok(allowed)
    }

    /// Whether a request with this `Origin` header value (`None`: no header) may upgrade.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.trim();
        if origin == "null" {
            return self.null;
        }
        let Ok(origin) = Origin::parse(origin) else {
            return false;
        };
        if origin.host.contains('*') {
            return false;
        }
        self.exact.contains(&origin)
            || self.subdomains.iter().any(|pattern| {
                pattern.scheme == origin.scheme
                    && pattern.port == origin.port
                    && origin.host.len() > pattern.host.len() + 1
                    && origin.host.ends_with(&pattern.host)
                    && origin.host.as_bytes()[origin.host.len() - pattern.host.len() - 1] == b'.'
            })
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("*");
        }
        let mut entries: Vec<String> = Vec::new();
        if self.null {
            entries.push("null".into());
        }
        entries.extend(self.exact.iter().map(|o| o.render("")));
        entries.extend(self.subdomains.iter().map(|o| o.render("*.")));
        f.write_str(&entries.join(","))
    }
}

impl Origin {
    /// `scheme://host[:port]` (RFC 6454 §6.1's serialization), lower-cased, the scheme's
    /// default port dropped.
    fn parse(text: &str) -> Result<Self, &'static str> {
        let (scheme, rest) = text.split_once("://").ok_or("no `://`")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err("bad scheme");
        }
        if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
            return Err("an origin has no path, query, user or trailing slash");
        }
        let (host, port) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains(']') => {
                let port: u16 = rest[colon + 1..].parse().map_err(|_| "bad port")?;
                (&rest[..colon], Some(port))
            }
            _ => (rest, None),
        };
        if host.is_empty() {
            return Err("no host");
        }
        let default = match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port: port.filter(|p| Some(*p) != default),
            scheme,
        })
    }

    fn render(&self, prefix: &str) -> String {
        match self.port {
            Some(port) => format!("{}://{prefix}{}:{port}", self.scheme, self.host),
            None => format!("{}://{prefix}{}", self.scheme, self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_as_subdomains() {
        let allowed =
            AllowedOrigins::parse("https://App.Example.com, https://*.example.org:8443, null")
                .expect("valid list");
        for (origin, expected) in [
            (Some("https://app.example.com"), true),
            (Some("HTTPS://APP.EXAMPLE.COM"), true),
            (Some("https://app.example.com:443"), true),
            (Some("http://app.example.com"), false),
            (Some("https://app.example.com:8443"), false),
            (Some("https://example.com"), false),
            (Some("https://app.example.com.evil.com"), false),
            (Some("https://evilapp.example.com"), false),
            (Some("https://eu.example.org:8443"), true),
            (Some("https://a.b.example.org:8443"), true),
            (Some("https://example.org:8443"), false),
            (Some("https://evilexample.org:8443"), false),
            (Some("https://eu.example.org"), false),
            (Some("https://*.example.org:8443"), false),
            (Some("null"), true),
            (Some("garbage"), false),
            (None, true),
        ] {
            assert_eq!(
                allowed.allows(origin.map(str::as_bytes)),
                expected,
                "{origin:?}"
            );
        }
        assert!(!AllowedOrigins::parse("https://a.com")
            .expect("valid")
            .allows(Some(b"null")));
        assert!(AllowedOrigins::any().allows(Some(b"https://anything.example")));
        assert!(!AllowedOrigins::parse("https://a.com")
            .expect("valid")
            .allows(Some(&[0xff, 0xfe])));
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for entry in [
            "",
            "https://example.com/",
            "example.com",
            "https://",
            "https://ex*ample.com",
            "https://*.",
            "https://example.com:99999",
            "https://example.com/path",
            "https://a.com,,https://b.com",
        ] {
            let error = AllowedOrigins::parse(entry).expect_err(entry);
            assert!(error.to_string().contains("bad origin"), "{error}");
        }
    }

    #[test]
    fn lists_print_back_as_parsed() {
        let allowed =
            AllowedOrigins::parse("https://a.com:443,http://*.b.org:8080").expect("valid");
        assert_eq!(allowed.to_string(), "https://a.com,http://*.b.org:8080");
        assert_eq!(AllowedOrigins::any().to_string(), "*");
    }
}
