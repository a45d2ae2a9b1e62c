//! Redis as a [`Broker`]: standalone pub/sub (`PUBLISH`/`SUBSCRIBE`), and Redis Cluster's
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7), where each channel lives on the master
//! of its slot so that a publish costs one shard, not the whole cluster.
//!
//! The `redis` crate (redis-rs) speaks RESP3, in which one multiplexed connection carries
//! commands and subscription pushes together; for a cluster it routes each sharded command to
//! the master of its channel's slot, follows `MOVED`, and re-subscribes a node's channels when it
//! reconnects to that node. A channel is `PREFIX:TOPIC`, byte for byte.
//!
//! With history (`--history`), Redis gives the positions: the node loads [`LIBRARY`] (a Redis
//! Function library) at each connection, and every publish is one `FCALL` that takes the
//! topic's next offset, appends the message to the topic's stream and publishes it with its
//! position. The topic's keys and its channel are then hash-tagged, `{PREFIX:TOPIC}`, so that
//! all of them share one cluster slot (see docs/BROKERS.md, "Positions from Redis").

use bytes::Bytes;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};

use super::{Broker, Events, IO_TIMEOUT};
use crate::broadcast::Position;
use crate::protocol::OpCode;

/// The Redis Function library that gives positions, loaded by every node at each connection
/// (`FUNCTION LOAD REPLACE`). `uringcast_publish` publishes with `PUBLISH` (a standalone
/// server), `uringcast_spublish` with `SPUBLISH` (a cluster). Their one key is the topic's
/// base `{PREFIX:TOPIC}`; their arguments the payload, then optionally the kind (`text`,
/// `binary` or `auto`, the default), the entries kept and the idle seconds before the
/// stream is dropped (defaults: the loading node's `--history` and `--history-ttl`). Keys:
/// `BASE:offset` (the last offset), `BASE:epoch` (the stream's incarnation: the server's
/// clock in microseconds when the stream was made), `BASE:stream` (a stream whose entry ids
/// are `OFFSET-0` and whose field `m` is the envelope). Returns `EPOCH:OFFSET`.
pub(crate) const LIBRARY: &str = r"#!lua name=uringcast
local function append(keys, args, command)
  local base = keys[1]
  local payload = args[1]
  local kind = args[2] or 'auto'
  local max_len = tonumber(args[3] or '__MAX_LEN__')
  local ttl = tonumber(args[4] or '__TTL__')
  local extra = args[5]
  if not base or not payload then
    return redis.error_reply('ERR uringcast: one key {PREFIX:TOPIC} and a payload')
  end
  if kind ~= 'text' and kind ~= 'binary' and kind ~= 'auto' then
    return redis.error_reply('ERR uringcast: kind is text, binary or auto')
  end
  if not max_len or max_len < 1 or not ttl or ttl < 1 then
    return redis.error_reply('ERR uringcast: entries and seconds are positive integers')
  end
  if extra and not string.match(extra, '^except=%d+%.%d+%.%d+%.%d+$') then
    return redis.error_reply('ERR uringcast: the fifth argument is except=NODE.WORKER.KEY.GENERATION')
  end
  local offset_key = base .. ':offset'
  local epoch_key = base .. ':epoch'
  local stream_key = base .. ':stream'
  local offset = redis.call('INCR', offset_key)
  local epoch = redis.call('GET', epoch_key)
  if offset == 1 or not epoch then
    -- A new stream (never made, expired or evicted): a new epoch, from offset 1.
    local now = redis.call('TIME')
    epoch = now[1] .. string.format('%06d', tonumber(now[2]))
    offset = 1
    redis.call('SET', offset_key, 1)
    redis.call('SET', epoch_key, epoch)
    redis.call('DEL', stream_key)
  end
  local head = 'UC1 ' .. kind .. ' @' .. epoch .. ':' .. offset
  if extra then
    head = head .. ' ' .. extra
  end
  local message = head .. '\n' .. payload
  redis.call('XADD', stream_key, 'MAXLEN', max_len, offset .. '-0', 'm', message)
  redis.call('EXPIRE', offset_key, ttl)
  redis.call('EXPIRE', epoch_key, ttl)
  redis.call('EXPIRE', stream_key, ttl)
  redis.call(command, base, message)
  return epoch .. ':' .. offset
end
redis.register_function('uringcast_publish', function(keys, args)
  return append(keys, args, 'PUBLISH')
end)
redis.register_function('uringcast_spublish', function(keys, args)
  return append(keys, args, 'SPUBLISH')
end)
";

/// How a node with history keeps its topics' streams at the broker.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamSettings {
    /// Entries kept per topic (`--history`).
    pub(crate) max_len: usize,
    /// Seconds a topic's stream outlives its last publish (`--history-ttl`, at least 1).
    pub(crate) ttl_secs: u64,
}

/// A Redis broker: a standalone server or a cluster.
pub(crate) struct Redis {
    target: Target,
    prefix: String,
    /// With history: the streams' settings (and the broker gives the positions).
    history: Option<StreamSettings>,
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
            history: None,
            connection: None,
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }
}

use redis::IntoConnectionInfo as _;

impl Redis {
    /// Gives positions from the broker, keeping each topic's stream as `settings` say.
    pub(crate) fn with_history(mut self, settings: StreamSettings) -> Self {
        self.history = Some(settings);
        self
    }

    /// The library, with this node's settings as its defaults.
    fn library(settings: StreamSettings) -> String {
        LIBRARY
            .replace("__MAX_LEN__", &settings.max_len.to_string())
            .replace("__TTL__", &settings.ttl_secs.to_string())
    }

    /// Loads (or replaces) the library. As one command, not a pipeline, so that a cluster's
    /// client sends it to every master.
    async fn load_library(&mut self, settings: StreamSettings) -> redis::RedisResult<()> {
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(Self::library(settings));
        match self.connection.as_mut() {
            Some(Connection::Standalone(c)) => load.query_async::<()>(c).await,
            Some(Connection::Cluster(c)) => load.query_async::<()>(c).await,
            None => Ok(()),
        }
    }

    /// The topic's base key and channel with history: `{PREFIX:TOPIC}`.
    fn base(&self, topic: &str) -> String {
        format!("{{{}:{topic}}}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, String> {
        let result = match self.connection.as_mut() {
            Some(Connection::Standalone(c)) => pipe.query_async(c).await,
            Some(Connection::Cluster(c)) => pipe.query_async(c).await,
            None => return Err("not connected".into()),
        };
        result.map_err(|e| self.failed(what, &e))
    }
}

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
        if self.history.is_some() {
            return self.base(topic);
        }
        format!("{}:{topic}", self.prefix)
    }

    fn topic_of(&self, channel: &[u8]) -> Option<String> {
        if self.history.is_some() {
            let rest = channel.strip_prefix(b"{")?.strip_suffix(b"}")?;
            let topic = rest
                .strip_prefix(self.prefix.as_bytes())?
                .strip_prefix(b":")?;
            return String::from_utf8(topic.to_vec()).ok();
        }
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
        if let Some(settings) = self.history {
            if let Err(error) = self.load_library(settings).await {
                self.connection = None;
                return Err(format!("FUNCTION LOAD: {error}"));
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

    async fn append(&mut self, batch: &[(String, OpCode, Bytes)]) -> Vec<Result<(), String>> {
        let batch: Vec<super::Appended> = batch
            .iter()
            .map(|(channel, opcode, payload)| (channel.clone(), *opcode, payload.clone(), None))
            .collect();
        self.append_except(&batch).await
    }

    async fn append_except(&mut self, batch: &[super::Appended]) -> Vec<Result<(), String>> {
        let Some(settings) = self.history else {
            return vec![Err("no history".into()); batch.len()];
        };
        let mut results = self.fcall(batch, settings).await;
        // A master that came back empty (restarted without persistence) has lost the library,
        // and a cluster's client re-made its connection without the link knowing: load it
        // again and retry once. A function that ran is never retried: only a batch the server
        // refused before running anything is.
        let missing = |r: &redis::RedisResult<()>| {
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("Function not found"))
        };
        if results.iter().any(missing) && self.load_library(settings).await.is_ok() {
            let retry: Vec<super::Appended> = batch
                .iter()
                .zip(&results)
                .filter(|(_, r)| missing(r))
                .map(|(item, _)| item.clone())
                .collect();
            let mut again = self.fcall(&retry, settings).await.into_iter();
            for result in results.iter_mut().filter(|r| missing(r)) {
                if let Some(next) = again.next() {
                    *result = next;
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.map_err(|e| self.failed("FCALL", &e)))
            .collect()
    }
    async fn range(&mut self, topic: &str, after: u64, up_to: u64) -> Result<Vec<Bytes>, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(format!("{}:stream", self.base(topic)))
            .arg(format!("{}-0", after + 1))
            .arg(format!("{up_to}-0"));
        let (entries,): (Vec<StreamEntry>,) = self.query("XRANGE", &pipe).await?;
        Ok(messages(entries))
    }

    async fn tail(
        &mut self,
        topic: &str,
        count: usize,
    ) -> Result<(Option<Position>, Vec<Bytes>), String> {
        let base = self.base(topic);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(format!("{base}:epoch"));
        pipe.cmd("GET").arg(format!("{base}:offset"));
        if count > 0 {
            pipe.cmd("XREVRANGE")
                .arg(format!("{base}:stream"))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count);
        }
        let (epoch, offset, entries): (Option<String>, Option<u64>, Option<Vec<StreamEntry>>) =
            if count > 0 {
                self.query("XREVRANGE", &pipe).await?
            } else {
                let (epoch, offset) = self.query("GET", &pipe).await?;
                (epoch, offset, None)
            };
        let head = match (epoch, offset) {
            (Some(epoch), Some(offset)) => {
                epoch.parse().ok().map(|epoch| Position { epoch, offset })
            }
            _ => None,
        };
        let mut entries = messages(entries.unwrap_or_default());
        entries.reverse();
        Ok((head, entries))
    }

    async fn heads(
        &mut self,
        topics: &[std::sync::Arc<str>],
    ) -> Result<Vec<Option<Position>>, String> {
        let bases: Vec<String> = topics.iter().map(|t| self.base(t)).collect();
        let head = |pipe: &mut redis::Pipeline, base: &str| {
            pipe.cmd("GET").arg(format!("{base}:epoch"));
            pipe.cmd("GET").arg(format!("{base}:offset"));
        };
        let pairs: Vec<(Option<String>, Option<u64>)> = match self.connection.as_ref() {
            Some(Connection::Standalone(c)) => {
                // Every topic in one pipeline: one round trip.
                let mut pipe = redis::pipe();
                for base in &bases {
                    head(&mut pipe, base);
                }
                let values: Vec<Option<String>> = pipe
                    .query_async(&mut c.clone())
                    .await
                    .map_err(|e| self.failed("GET", &e))?;
                values
                    .chunks(2)
                    .map(|pair| {
                        let offset = pair.get(1).cloned().flatten().and_then(|o| o.parse().ok());
                        (pair.first().cloned().flatten(), offset)
                    })
                    .collect()
            }
            Some(Connection::Cluster(c)) => {
                // One pipeline per topic (one slot each), all at once.
                let results = join_all(bases.iter().map(|base| {
                    let mut c = c.clone();
                    let mut pipe = redis::pipe();
                    head(&mut pipe, base);
                    async move {
                        pipe.query_async::<(Option<String>, Option<u64>)>(&mut c)
                            .await
                    }
                }))
                .await;
                let mut pairs = Vec::with_capacity(results.len());
                for result in results {
                    pairs.push(result.map_err(|e| self.failed("GET", &e))?);
                }
                pairs
            }
            None => return Err("not connected".into()),
        };
        Ok(pairs
            .into_iter()
            .map(|(epoch, offset)| match (epoch, offset) {
                (Some(epoch), Some(offset)) => {
                    epoch.parse().ok().map(|epoch| Position { epoch, offset })
                }
                _ => None,
            })
            .collect())
    }

    fn is_connected(&self) -> bool {
        self.connection.is_some() && self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn close(&mut self) {
        self.connection = None;
        self.up.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Redis {
    /// One `FCALL` per publication: one pipeline on a standalone server, one per topic (so
    /// per slot) on a cluster; one result per publication.
    async fn fcall(
        &mut self,
        batch: &[super::Appended],
        settings: StreamSettings,
    ) -> Vec<redis::RedisResult<()>> {
        let function = match self.connection {
            Some(Connection::Cluster(_)) => "uringcast_spublish",
            _ => "uringcast_publish",
        };
        let command = |pipe: &mut redis::Pipeline,
                       base: &str,
                       opcode: OpCode,
                       payload: &[u8],
                       except: Option<&crate::broadcast::Peer>| {
            let kind = if opcode == OpCode::Text {
                "text"
            } else {
                "binary"
            };
            let cmd = pipe
                .cmd("FCALL")
                .arg(function)
                .arg(1)
                .arg(base)
                .arg(payload)
                .arg(kind)
                .arg(settings.max_len)
                .arg(settings.ttl_secs);
            if let Some(peer) = except {
                cmd.arg(super::wire::except_field(peer));
            }
            cmd.ignore();
        };
        let results: Vec<Result<(), redis::RedisError>> = match self.connection.as_ref() {
            Some(Connection::Standalone(c)) => {
                // One pipeline, in order: one round trip for the batch.
                let mut pipe = redis::pipe();
                for (base, opcode, payload, except) in batch {
                    command(&mut pipe, base, *opcode, payload, except.as_ref());
                }
                let result = pipe.query_async::<()>(&mut c.clone()).await;
                batch.iter().map(|_| result.clone()).collect()
            }
            Some(Connection::Cluster(c)) => {
                // A cluster's pipeline must keep to one slot: one per topic (its base is its
                // slot), in order, all at once.
                let mut bases: Vec<&str> = Vec::new();
                for (base, _, _, _) in batch {
                    if !bases.contains(&base.as_str()) {
                        bases.push(base);
                    }
                }
                let per_base = join_all(bases.iter().map(|&name| {
                    let mut c = c.clone();
                    let mut pipe = redis::pipe();
                    for (base, opcode, payload, except) in
                        batch.iter().filter(|(b, _, _, _)| b == name)
                    {
                        command(&mut pipe, base, *opcode, payload, except.as_ref());
                    }
                    async move { (name, pipe.query_async::<()>(&mut c).await) }
                }))
                .await;
                batch
                    .iter()
                    .map(|(base, _, _, _)| {
                        per_base
                            .iter()
                            .find(|(name, _)| *name == base)
                            .map_or(Ok(()), |(_, result)| result.clone())
                    })
                    .collect()
            }
            None => {
                let error = redis::RedisError::from((redis::ErrorKind::Io, "not connected"));
                return batch.iter().map(|_| Err(error.clone())).collect();
            }
        };
        results
    }
}

/// One entry of a stream as `XRANGE` returns it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The envelopes of stream entries (field `m`), in the order given.
fn messages(entries: Vec<StreamEntry>) -> Vec<Bytes> {
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .into_iter()
                .find(|(name, _)| name == "m")
                .map(|(_, value)| Bytes::from(value))
        })
        .collect()
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
