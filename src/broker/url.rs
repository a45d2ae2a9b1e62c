//! Where the broker is: `--broker` URLs (credentials kept out of what is shown) and the
//! broker settings of a server.

use std::fmt;
use std::str::FromStr;

/// The default `--broker-prefix`.
pub const DEFAULT_PREFIX: &str = "uringcast";
/// The longest `--broker-prefix`.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Where the broker is, from `--broker URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerUrl {
    /// `redis://HOST:PORT[/DB]`: standalone Redis, `PUBLISH`/`SUBSCRIBE`.
    Redis(String),
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]`: Redis Cluster (7 or later), sharded pub/sub
    /// (`SPUBLISH`/`SSUBSCRIBE`); the nodes given are seeds, the rest are discovered.
    RedisCluster(Vec<String>),
    /// `nats://HOST:PORT[,HOST:PORT...]`: NATS core subjects.
    Nats(Vec<String>),
    /// `kafka://HOST:PORT[,HOST:PORT...]`: a Kafka topic named by the prefix, read whole by
    /// every node (no consumer group); the bootstrap brokers given. Needs `--history`.
    Kafka(Vec<String>),
}

/// A `--broker` URL that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--broker {url:?}: {why}")]
pub struct BrokerUrlError {
    url: String,
    why: &'static str,
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let error = |why| BrokerUrlError {
            url: redact_url(url),
            why,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| error("expected redis://, redis+cluster://, nats:// or kafka://"))?;
        let hosts = |rest: &str| -> Result<Vec<String>, BrokerUrlError> {
            let hosts: Vec<String> = rest.split(',').map(str::to_owned).collect();
            if hosts.iter().any(|h| h.is_empty() || h.contains('/')) {
                return Err(error("expected HOST:PORT[,HOST:PORT...]"));
            }
            Ok(hosts)
        };
        match scheme {
            "redis" => {
                let host = rest.split('/').next().unwrap_or_default();
                if host.is_empty() || rest.contains(',') {
                    return Err(error("expected redis://HOST:PORT[/DB]"));
                }
                Ok(Self::Redis(url.to_owned()))
            }
            "redis+cluster" => Ok(Self::RedisCluster(hosts(rest)?)),
            "nats" => Ok(Self::Nats(hosts(rest)?)),
            "kafka" => Ok(Self::Kafka(hosts(rest)?)),
            _ => Err(error(
                "expected redis://, redis+cluster://, nats:// or kafka://",
            )),
        }
    }
}

/// The URL without its credentials (`user:password@` becomes `***@`): what logs, errors and
/// metrics show.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match self {
            Self::Redis(url) => url.clone(),
            Self::RedisCluster(hosts) => format!("redis+cluster://{}", hosts.join(",")),
            Self::Nats(hosts) => format!("nats://{}", hosts.join(",")),
            Self::Kafka(hosts) => format!("kafka://{}", hosts.join(",")),
        };
        f.write_str(&redact_url(&url))
    }
}

/// A URL as given, each host's credentials redacted.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let hosts: Vec<String> = rest.split(',').map(redact).collect();
            format!("{scheme}://{}", hosts.join(","))
        }
        None => redact(url),
    }
}

/// `user:password@host...` as `***@host...`.
fn redact(authority: &str) -> String {
    let host_end = authority.find('/').unwrap_or(authority.len());
    match authority[..host_end].rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_owned(),
    }
}

/// The broker settings of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    pub(crate) url: BrokerUrl,
    /// The first part of every channel name.
    pub(crate) prefix: String,
    /// Start without the broker (local delivery only, with a warning) if it cannot be reached.
    pub(crate) optional: bool,
}

impl BrokerConfig {
    /// A broker at `url`, with the default prefix, required at start.
    pub fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_owned(),
            optional: false,
        }
    }

    /// Whether `prefix` can start every broker's channel names: 1 to [`MAX_PREFIX_BYTES`] of
    /// ASCII letters, digits, `_` and `-` (no NATS token separator or wildcard, no space).
    pub fn valid_prefix(prefix: &str) -> bool {
        (1..=MAX_PREFIX_BYTES).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_broker() {
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse(),
            Ok(BrokerUrl::Redis("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001".parse(),
            Ok(BrokerUrl::RedisCluster(vec![
                "127.0.0.1:7000".into(),
                "127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            "nats://127.0.0.1:4222".parse(),
            Ok(BrokerUrl::Nats(vec!["127.0.0.1:4222".into()]))
        );
        for bad in [
            "127.0.0.1:6379",
            "kafka://",
            "kafka://a:1/t",
            "redis://",
            "redis://a:1,b:2",
            "nats://a:1,,b:2",
            "redis+cluster://a:1/0",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
        assert_eq!(
            "kafka://127.0.0.1:9092,127.0.0.1:9093".parse(),
            Ok(BrokerUrl::Kafka(vec![
                "127.0.0.1:9092".into(),
                "127.0.0.1:9093".into()
            ]))
        );
        let url: BrokerUrl = "nats://a:1,b:2".parse().unwrap();
        assert_eq!(url.to_string(), "nats://a:1,b:2");
        let secret: BrokerUrl = "redis://:hunter2@h:6379/0".parse().unwrap();
        assert_eq!(secret.to_string(), "redis://***@h:6379/0");
        let secret: BrokerUrl = "nats://u:hunter2@a:1,b:2".parse().unwrap();
        assert_eq!(secret.to_string(), "nats://***@a:1,b:2");
    }

    #[test]
    fn prefixes_are_safe_in_every_brokers_names() {
        assert!(BrokerConfig::valid_prefix("uringcast"));
        assert!(BrokerConfig::valid_prefix("app_1-prod"));
        for bad in ["", "a.b", "a b", "a*", "a>", "a:b", &"x".repeat(65)] {
            assert!(!BrokerConfig::valid_prefix(bad), "{bad:?}");
        }
    }
}
