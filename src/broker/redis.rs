//! Redis as a [`Broker`]: standalone pub/sub (`PUBLISH`/`SUBSCRIBE`), and Redis Cluster's
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7), where each channel lives on the master
//! of its slot so that a publish costs one shard, not the whole cluster.
//!
//! The `redis` crate (redis-rs) speaks RESP3, in which one multiplexed connection carries
//! commands and subscription pushes together; for a cluster it routes each sharded command to
//! the master of its channel's slot, follows `MOVED`, and re-subscribes a node's channels when it
//! reconnects to that node. A channel is `PREFIX:TOPIC`, byte for byte.

use bytes::Bytes;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};

use super::{Broker, Events, IO_TIMEOUT};

/// A Redis broker: a standalone server or a cluster.
pub(crate) struct Redis {
    target: Target,
    prefix: String,
    connection: Option<Connection>,
    /// Set by the push callback when the connection closes (standalone only).
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

enum Target {
    Standalone(redis::Client),
    Cluster(Vec<String>),
}

enum Connection {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Redis {
    /// A standalone server at `url` (`redis://HOST:PORT[/DB]`).
    pub(crate) fn standalone(url: &str, prefix: String) -> Result<Self, String> {
        let info: redis::ConnectionInfo = url
            .into_connection_info()
            .map_err(|e| format!("bad URL: {e}"))?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(resp3);
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        Ok(Self::new(Target::Standalone(client), prefix))
    }

    /// A cluster reached through any of `seeds` (`HOST:PORT` each).
    pub(crate) fn cluster(seeds: &[String], prefix: String) -> Result<Self, String> {
        let nodes: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
        // Checked here, so that a bad seed is a start-up error and not a retry loop.
        redis::cluster::ClusterClient::new(nodes.clone()).map_err(|e| e.to_string())?;
        Ok(Self::new(Target::Cluster(nodes), prefix))
    }

    fn new(target: Target, prefix: String) -> Self {
        Self {
            target,
            prefix,
            connection: None,
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }
}

use redis::IntoConnectionInfo as _;

/// Turns the client's pushes into the link's events: messages, and the connection's end.
fn on_push(events: &Events, up: &std::sync::atomic::AtomicBool, push: PushInfo) {
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            if let (Some(channel), Some(payload)) = (data.next(), data.next()) {
                if let (Some(channel), Some(payload)) = (bulk(channel), bulk(payload)) {
                    events.message(channel, payload);
                }
            }
        }
        // Only while this connection is the current one: a connection the link already
        // replaced has had its flag cleared, and its late news must not end the new one.
        PushKind::Disconnection if up.swap(false, std::sync::atomic::Ordering::AcqRel) => {
            events.lost();
        }
        _ => {}
    }
}

/// Sends `command CHANNEL MESSAGE` for each item as one pipeline.
async fn pipeline<'a>(
    connection: &mut impl redis::aio::ConnectionLike,
    command: &str,
    items: impl Iterator<Item = &'a (String, Bytes)>,
) -> Result<(), redis::RedisError> {
    let mut pipe = redis::pipe();
    for (channel, message) in items {
        pipe.cmd(command).arg(channel).arg(&message[..]).ignore();
    }
    pipe.query_async::<()>(connection).await
}

fn bulk(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::from(bytes)),
        Value::SimpleString(text) => Some(Bytes::from(text)),
        _ => None,
    }
}

impl Redis {
    /// An error's message; one that says the connection is broken marks it down, so that the
    /// link re-makes it. For a cluster too: its client's own recovery retries without pause
    /// while every node is down, so the link drops the client and waits out its backoff.
    fn failed(&self, command: &str, error: &redis::RedisError) -> String {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.up.store(false, std::sync::atomic::Ordering::Release);
        }
        format!("{command}: {error}")
    }
}

impl Broker for Redis {
    fn channel(&self, topic: &str) -> String {
        format!("{}:{topic}", self.prefix)
    }

    fn topic_of(&self, channel: &[u8]) -> Option<String> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let topic = rest.strip_prefix(b":")?;
        String::from_utf8(topic.to_vec()).ok()
    }

    async fn connect(&mut self, events: &Events) -> Result<(), String> {
        self.close().await;
        // A flag of its own for each connection (see `on_push`), up from the start so that a
        // disconnection while connecting is reported too.
        self.up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let up = std::sync::Arc::clone(&self.up);
        match &self.target {
            Target::Standalone(client) => {
                let events = events.clone();
                let push_up = std::sync::Arc::clone(&up);
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(IO_TIMEOUT))
                    .set_response_timeout(Some(IO_TIMEOUT))
                    .set_push_sender(move |push: PushInfo| {
                        on_push(&events, &push_up, push);
                        Ok::<(), std::convert::Infallible>(())
                    });
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                self.connection = Some(Connection::Standalone(connection));
            }
            Target::Cluster(nodes) => {
                let events = events.clone();
                // A cluster's client re-makes a node's connection and its subscriptions by
                // itself, so a node's disconnection is not the loss of the whole link.
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(IO_TIMEOUT)
                    .response_timeout(IO_TIMEOUT)
                    .push_sender(move |push: PushInfo| {
                        if push.kind != PushKind::Disconnection {
                            on_push(&events, &std::sync::atomic::AtomicBool::new(true), push);
                        }
                        Ok::<(), std::convert::Infallible>(())
                    })
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut connection = client
                    .get_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                // The seeds may answer while the cluster is down: ask it.
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                if !info.contains("cluster_state:ok") {
                    return Err("cluster_state is not ok".into());
                }
                self.connection = Some(Connection::Cluster(connection));
            }
        }
        up.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        let result = match self.connection.as_mut() {
            // One SUBSCRIBE names them all: one round trip.
            Some(Connection::Standalone(c)) => c.subscribe(channels).await,
            // SSUBSCRIBE takes channels of one slot only: one command per channel, all sent
            // at once (each to its master), so still one round trip in all.
            Some(Connection::Cluster(c)) => {
                each_channel(c, channels, |mut c, channel| async move {
                    c.ssubscribe(channel).await
                })
                .await
            }
            None => return Err("not connected".into()),
        };
        result.map_err(|e| self.failed("SUBSCRIBE", &e))
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String> {
        let result = match self.connection.as_mut() {
            Some(Connection::Standalone(c)) => c.unsubscribe(channels).await,
            Some(Connection::Cluster(c)) => {
                each_channel(c, channels, |mut c, channel| async move {
                    c.sunsubscribe(channel).await
                })
                .await
            }
            None => return Err("not connected".into()),
        };
        result.map_err(|e| self.failed("UNSUBSCRIBE", &e))
    }

    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Vec<Result<(), String>> {
        // A pipeline writes every command before the first reply is read, in order: one round
        // trip per batch instead of one per publish.
        let results: Vec<Result<(), redis::RedisError>> = match self.connection.as_ref() {
            Some(Connection::Standalone(c)) => {
                let result = pipeline(&mut c.clone(), "PUBLISH", batch.iter()).await;
                batch.iter().map(|_| result.clone()).collect()
            }
            Some(Connection::Cluster(c)) => {
                // One pipeline per channel (so per slot and master), in order; channels at once.
                let mut channels: Vec<&str> = Vec::new();
                for (channel, _) in batch {
                    if !channels.contains(&channel.as_str()) {
                        channels.push(channel);
                    }
                }
                let per_channel = join_all(channels.iter().map(|&name| {
                    let mut c = c.clone();
                    async move {
                        let items = batch.iter().filter(|(channel, _)| channel == name);
                        (name, pipeline(&mut c, "SPUBLISH", items).await)
                    }
                }))
                .await;
                batch
                    .iter()
                    .map(|(channel, _)| {
                        per_channel
                            .iter()
                            .find(|(name, _)| *name == channel)
                            .map_or(Ok(()), |(_, result)| result.clone())
                    })
                    .collect()
            }
            None => return vec![Err("not connected".into()); batch.len()],
        };
        results
            .into_iter()
            .map(|r| r.map_err(|e| self.failed("PUBLISH", &e)))
            .collect()
    }

    fn is_connected(&self) -> bool {
        self.connection.is_some() && self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn close(&mut self) {
        self.connection = None;
        self.up.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Runs `command` for each channel at once on clones of the cluster's connection (which
/// share its node connections); the first error, if any.
async fn each_channel<'a, F, Fut>(
    connection: &ClusterConnection,
    channels: &'a [String],
    command: F,
) -> redis::RedisResult<()>
where
    F: Fn(ClusterConnection, &'a str) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<()>>,
{
    join_all(
        channels
            .iter()
            .map(|channel| command(connection.clone(), channel.as_str())),
    )
    .await
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_the_prefix_and_the_topic() {
        let redis = Redis::standalone("redis://127.0.0.1:1", "uc".into()).unwrap();
        assert_eq!(redis.channel("room/a b"), "uc:room/a b");
        assert_eq!(redis.topic_of(b"uc:room/a b").as_deref(), Some("room/a b"));
        assert_eq!(redis.topic_of(b"other:room"), None);
        assert_eq!(redis.topic_of(b"ucx:room"), None);
    }
}
