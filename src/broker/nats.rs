//! NATS core subjects as a [`Broker`], through `async-nats`, the NATS maintainers' own client.
//!
//! The client reconnects by itself (with the link's backoff) and re-subscribes its
//! subscriptions, so a lost server is not a lost link: publishes made while it is away fail
//! and are counted, and the link's gauge follows the client's own connection events. It
//! connects with `no_echo`, so the server does not send this node its own publishes back.
//!
//! A subject is `PREFIX.TOPIC`, the topic escaped so that it is one token: every byte outside
//! `A-Z a-z 0-9 _ -` becomes `%XX` (`room-a` stays `room-a`, `/` becomes `%2F`), since `.`
//! separates tokens, `*` and `>` are wildcards and spaces end a subject.
//!
//! With history (`--history`), JetStream gives the positions (`jetstream.rs`): the node
//! publishes through the stream and subscribes to the stream's republished copies instead of
//! the subjects themselves.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::jetstream::Jet;
use super::redis::StreamSettings;
use super::{backoff, random_u64, Broker, Events, IO_TIMEOUT};
use crate::broadcast::Position;
use crate::protocol::OpCode;

/// A NATS broker.
pub(crate) struct Nats {
    servers: Vec<async_nats::ServerAddr>,
    prefix: String,
    client: Option<async_nats::Client>,
    /// Each subscription's reader, which forwards to the link's events; aborting it drops
    /// the subscription, which unsubscribes.
    readers: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Where the readers forward, from the last `connect`.
    events: Option<Events>,
    /// With history: the JetStream stream that gives the positions.
    jet: Option<Jet>,
}

impl Nats {
    /// The servers `HOST:PORT` each.
    pub(crate) fn new(servers: &[String], prefix: String) -> Result<Self, String> {
        let servers = servers
            .iter()
            .map(|s| {
                format!("nats://{s}")
                    .parse()
                    .map_err(|e| format!("bad server {s:?}: {e}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            servers,
            prefix,
            client: None,
            readers: HashMap::new(),
            events: None,
            jet: None,
        })
    }

    /// Gives positions from a JetStream stream over the prefix's subjects, kept as
    /// `settings` say.
    pub(crate) fn with_history(mut self, settings: StreamSettings) -> Self {
        self.jet = Some(Jet::new(&self.prefix, settings));
        self
    }

    /// Subscribes to one subject, with a task that forwards what arrives on it.
    async fn subscribe_one(&mut self, channel: &str) -> Result<(), String> {
        let client = self.client.as_ref().ok_or("not connected")?;
        // With history, the stream's copy of the subject: it carries the position.
        let subject = match &self.jet {
            Some(jet) => jet.live_subject(channel),
            None => channel.to_owned(),
        };
        let mut subscriber = client.subscribe(subject).await.map_err(|e| e.to_string())?;
        let events = self.events.clone().ok_or("not connected")?;
        let live = self.jet.as_ref().map(Jet::live);
        let channel_bytes = Bytes::copy_from_slice(channel.as_bytes());
        let reader = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                match &live {
                    Some(live) => {
                        // A copy without the stream's headers is not one of the stream's.
                        if let Some(envelope) = live.envelope(&message) {
                            events.message(channel_bytes.clone(), envelope);
                        }
                    }
                    None => events.message(
                        Bytes::copy_from_slice(message.subject.as_bytes()),
                        message.payload,
                    ),
                }
            }
        });
        if let Some(old) = self.readers.insert(channel.to_owned(), reader) {
            old.abort();
        }
        Ok(())
    }
}

impl Nats {
    /// Whether the client is connected now (it reconnects by itself): with history, a
    /// request made meanwhile would wait for the connection, so none is made.
    fn up(&self) -> Result<(), String> {
        match self.client.as_ref() {
            None => Err("not connected".to_owned()),
            Some(client)
                if client.connection_state() != async_nats::connection::State::Connected =>
            {
                Err("disconnected".to_owned())
            }
            Some(_) => Ok(()),
        }
    }
}

impl Broker for Nats {
    fn channel(&self, topic: &str) -> String {
        let mut subject = String::with_capacity(self.prefix.len() + 1 + topic.len());
        subject.push_str(&self.prefix);
        subject.push('.');
        for byte in topic.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                subject.push(char::from(byte));
            } else {
                let _ = write!(subject, "%{byte:02X}");
            }
        }
        subject
    }

    fn topic_of(&self, channel: &[u8]) -> Option<String> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let escaped = rest.strip_prefix(b".")?;
        let mut topic = Vec::with_capacity(escaped.len());
        let mut bytes = escaped.iter();
        while let Some(&byte) = bytes.next() {
            if byte == b'%' {
                let hex = [*bytes.next()?, *bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                topic.push(u8::from_str_radix(hex, 16).ok()?);
            } else {
                topic.push(byte);
            }
        }
        String::from_utf8(topic).ok()
    }

    async fn connect(&mut self, events: &Events) -> Result<(), String> {
        self.close().await;
        let callback_events = events.clone();
        let client = async_nats::ConnectOptions::new()
            .name("uringcast")
            .no_echo()
            // Messages a subscription holds before its reader takes them (default 65,536):
            // the reader forwards at once into the link's own bounded queue.
            .subscription_capacity(1024)
            .connection_timeout(IO_TIMEOUT)
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| {
                backoff(u32::try_from(attempt).unwrap_or(u32::MAX), random_u64())
            })
            .event_callback(move |event| {
                let events = callback_events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => events.connected(true),
                        async_nats::Event::Disconnected => events.connected(false),
                        _ => {}
                    }
                }
            })
            .connect(self.servers.as_slice())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(jet) = self.jet.as_mut() {
            if let Err(message) = jet.connect(&client).await {
                let _ = client.drain().await;
                return Err(message);
            }
        }
        self.client = Some(client);
        self.events = Some(events.clone());
        Ok(())
    }

    async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        // A NATS SUB has no reply: the client queues each one for its connection task.
        for channel in channels {
            self.subscribe_one(channel).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String> {
        for channel in channels {
            if let Some(reader) = self.readers.remove(channel) {
                reader.abort();
            }
        }
        Ok(())
    }

    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Vec<Result<(), String>> {
        let mut results = Vec::with_capacity(batch.len());
        for (channel, message) in batch {
            let result = match self.client.as_ref() {
                None => Err("not connected".to_owned()),
                Some(client)
                    if client.connection_state() != async_nats::connection::State::Connected =>
                {
                    Err("disconnected".to_owned())
                }
                // Into the client's bounded queue, which its connection task writes out.
                Some(client) => client
                    .publish(channel.clone(), message.clone())
                    .await
                    .map_err(|e| e.to_string()),
            };
            results.push(result);
        }
        results
    }

    async fn append(&mut self, batch: &[(String, OpCode, Bytes)]) -> Vec<Result<(), String>> {
        let batch: Vec<super::Appended> = batch
            .iter()
            .map(|(subject, opcode, payload)| (subject.clone(), *opcode, payload.clone(), None))
            .collect();
        self.append_except(&batch).await
    }

    /// Through the stream, the skipped connection in a `Uc-Except` header.
    async fn append_except(&mut self, batch: &[super::Appended]) -> Vec<Result<(), String>> {
        if let Err(message) = self.up() {
            return vec![Err(message); batch.len()];
        }
        match self.jet.as_mut() {
            Some(jet) => jet.append(batch).await,
            None => vec![Err("no history".into()); batch.len()],
        }
    }

    async fn range(&mut self, topic: &str, after: u64, up_to: u64) -> Result<Vec<Bytes>, String> {
        self.up()?;
        let subject = self.channel(topic);
        let jet = self.jet.as_mut().ok_or("no history")?;
        jet.range(&subject, after, up_to).await
    }

    async fn tail(
        &mut self,
        topic: &str,
        count: usize,
    ) -> Result<(Option<Position>, Vec<Bytes>), String> {
        self.up()?;
        let subject = self.channel(topic);
        let jet = self.jet.as_mut().ok_or("no history")?;
        jet.tail(&subject, count).await
    }

    async fn heads(
        &mut self,
        topics: &[std::sync::Arc<str>],
    ) -> Result<Vec<Option<Position>>, String> {
        self.up()?;
        let subjects: Vec<String> = topics.iter().map(|t| self.channel(t)).collect();
        let jet = self.jet.as_mut().ok_or("no history")?;
        jet.heads(&subjects).await
    }

    fn is_connected(&self) -> bool {
        // The client reconnects by itself: the link never needs to.
        self.client.is_some()
    }

    async fn close(&mut self) {
        for (_, reader) in self.readers.drain() {
            reader.abort();
        }
        if let Some(jet) = self.jet.as_mut() {
            jet.close();
        }
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(IO_TIMEOUT, client.flush()).await;
            let _ = client.drain().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_one_token_and_maps_back() {
        let nats = Nats::new(&["127.0.0.1:1".into()], "uc".into()).unwrap();
        for (topic, subject) in [
            ("room-a", "uc.room-a"),
            ("/", "uc.%2F"),
            ("a.b c*>", "uc.a%2Eb%20c%2A%3E"),
            ("é", "uc.%C3%A9"),
        ] {
            assert_eq!(nats.channel(topic), subject);
            assert_eq!(nats.topic_of(subject.as_bytes()).as_deref(), Some(topic));
        }
        assert_eq!(nats.topic_of(b"other.room"), None);
        assert_eq!(nats.topic_of(b"uc.%4"), None, "a cut escape");
    }
}
