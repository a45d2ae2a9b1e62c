//! NATS JetStream as the position source (`--broker nats://…` with `--history`).
//!
//! One stream, `UC_<PREFIX>`, holds every topic's subject (`PREFIX.>`), made or brought in
//! line by each node when it connects: `max_msgs_per_subject` is `--history`, `max_age`
//! is `--history-ttl`, file storage, direct gets allowed. The stream republishes each message
//! it stores to `_uringcast.PREFIX.TOPIC`, with the headers JetStream adds to a republished
//! message: `Nats-Sequence` (its stream sequence) and `Nats-Last-Sequence` (the stream
//! sequence of the previous message of the same subject, 0 if none). Nodes subscribe to those
//! copies, so:
//!
//! - a position is `EPOCH:SEQUENCE`, the stream's sequence: every node reads the same one,
//!   and a backend's plain `nats pub PREFIX.TOPIC …` gets one like any publish;
//! - the offsets of one topic are not consecutive (the sequence is the whole stream's), but
//!   each copy names its topic's previous one, given by the server when it stored the
//!   message: a node that handed on sequence 7 and receives 12 whose predecessor is 9 knows
//!   that 9 is missing, reads it (direct get, next message of the subject from 8), and hands
//!   it on first;
//! - the epoch is the stream's creation time in microseconds: a stream deleted and made
//!   again (by a node, at its next publish) starts a new epoch, and resets follow.
//!
//! A node's own publishes go through JetStream (`Uc-Kind: text|binary` says the opcode; a
//! message without it is text if it is UTF-8) and come back to it by the republished copy,
//! like everyone else's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, Republish, StorageType, Stream};
use async_nats::jetstream::Context;
use async_nats::RequestErrorKind;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::join_all;

use super::redis::StreamSettings;
use super::{wire, Appended, IO_TIMEOUT};
use crate::broadcast::{Epoch, Position};
use crate::protocol::OpCode;

/// The header that says a publish's WebSocket opcode.
const KIND: &str = "Uc-Kind";
/// The header that names the connection a publish skips (Pusher's `socket_id`):
/// `NODE.WORKER.KEY.GENERATION`, as [`wire::peer_text`] writes it.
const EXCEPT: &str = "Uc-Except";
/// The first token of the subjects the stream republishes to.
const LIVE: &str = "_uringcast";

/// The node's JetStream side: the stream, and the epoch its republished copies carry.
pub(crate) struct Jet {
    name: String,
    prefix: String,
    settings: StreamSettings,
    context: Option<Context>,
    stream: Option<Stream>,
    epoch: Arc<Mutex<Epoch>>,
}

/// What a subscription's reader needs to turn a republished copy into an envelope.
#[derive(Clone)]
pub(crate) struct Live {
    epoch: Arc<Mutex<Epoch>>,
}

impl Live {
    /// The envelope of a copy the stream republished: `UC1 KIND @EPOCH:SEQ prev=LAST`.
    pub(crate) fn envelope(&self, message: &async_nats::Message) -> Option<Bytes> {
        let headers = message.headers.as_ref()?;
        let sequence: u64 = headers.get("Nats-Sequence")?.as_str().parse().ok()?;
        let previous: u64 = headers
            .get("Nats-Last-Sequence")
            .map_or(Some(0), |v| v.as_str().parse().ok())?;
        let epoch = *self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        Some(envelope(
            headers.get(KIND).map(|v| v.as_str()),
            headers.get(EXCEPT).map(|v| v.as_str()),
            epoch,
            sequence,
            previous,
            &message.payload,
        ))
    }
}

/// `UC1 KIND @EPOCH:SEQUENCE prev=PREVIOUS[ except=PEER]\n` and the payload. An `except`
/// header that does not name a connection is left out.
fn envelope(
    kind: Option<&str>,
    except: Option<&str>,
    epoch: Epoch,
    sequence: u64,
    previous: u64,
    payload: &[u8],
) -> Bytes {
    let kind = match kind {
        Some("text") => "text",
        Some("binary") => "binary",
        _ => "auto",
    };
    let except = except
        .and_then(wire::parse_peer)
        .map(|peer| format!(" {}", wire::except_field(&peer)))
        .unwrap_or_default();
    let head = format!("UC1 {kind} @{epoch}:{sequence} prev={previous}{except}\n");
    let mut out = BytesMut::with_capacity(head.len() + payload.len());
    out.put_slice(head.as_bytes());
    out.put_slice(payload);
    out.freeze()
}

/// The epoch of the stream `info` describes: the time it was made, in microseconds since
/// 1970, in decimal.
fn epoch_of(info: async_nats::jetstream::stream::Info) -> Epoch {
    let micros = info.created.unix_timestamp_nanos() / 1000;
    micros.to_string().parse().unwrap_or(Epoch::UNKNOWN)
}

impl Jet {
    pub(crate) fn new(prefix: &str, settings: StreamSettings) -> Self {
        Self {
            name: format!("UC_{prefix}"),
            prefix: prefix.to_owned(),
            settings,
            context: None,
            stream: None,
            epoch: Arc::new(Mutex::new(Epoch::UNKNOWN)),
        }
    }

    /// The subject the stream republishes `channel`'s messages to.
    pub(crate) fn live_subject(&self, channel: &str) -> String {
        format!("{LIVE}.{channel}")
    }

    pub(crate) fn live(&self) -> Live {
        Live {
            epoch: Arc::clone(&self.epoch),
        }
    }

    /// The stream as this node wants it.
    fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            max_messages_per_subject: i64::try_from(self.settings.max_len).unwrap_or(i64::MAX),
            max_age: Duration::from_secs(self.settings.ttl_secs),
            storage: StorageType::File,
            allow_direct: true,
            republish: Some(Republish {
                source: format!("{}.>", self.prefix),
                destination: format!("{LIVE}.{}.>", self.prefix),
                headers_only: false,
            }),
            ..Config::default()
        }
    }

    /// Checks that the server has JetStream, and makes the stream or brings its limits in
    /// line with this node's.
    pub(crate) async fn connect(&mut self, client: &async_nats::Client) -> Result<(), String> {
        // The account's JetStream info, unparsed (older servers' answers differ): no
        // responder means JetStream is off.
        let asked =
            tokio::time::timeout(IO_TIMEOUT, client.request("$JS.API.INFO", Bytes::new())).await;
        match asked {
            Ok(Ok(_)) => {}
            Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
                return Err(
                    "JetStream is not enabled on the NATS server (start nats-server with -js)"
                        .to_owned(),
                );
            }
            Ok(Err(error)) => return Err(format!("JetStream: {error}")),
            Err(_) => return Err(format!("JetStream: no answer within {IO_TIMEOUT:?}")),
        }
        let mut context = async_nats::jetstream::new(client.clone());
        context.set_timeout(IO_TIMEOUT);
        self.context = Some(context);
        self.ensure_stream().await
    }

    pub(crate) fn close(&mut self) {
        self.stream = None;
        self.context = None;
    }

    /// Gets or makes the stream, updates what differs from this node's settings, and takes
    /// its epoch.
    async fn ensure_stream(&mut self) -> Result<(), String> {
        let context = self.context.as_ref().ok_or("not connected")?;
        let wanted = self.config();
        let mut stream = context
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| format!("JetStream stream {}: {e}", self.name))?;
        let have = stream.cached_info().config.clone();
        if have.subjects != wanted.subjects
            || have.max_messages_per_subject != wanted.max_messages_per_subject
            || have.max_age != wanted.max_age
            || have.republish != wanted.republish
            || !have.allow_direct
        {
            let mut config = have;
            config.subjects = wanted.subjects;
            config.max_messages_per_subject = wanted.max_messages_per_subject;
            config.max_age = wanted.max_age;
            config.republish = wanted.republish;
            config.allow_direct = true;
            context
                .update_stream(&config)
                .await
                .map_err(|e| format!("JetStream stream {}: cannot update it: {e}", self.name))?;
            stream
                .info()
                .await
                .map_err(|e| format!("JetStream stream {}: {e}", self.name))?;
        }
        self.set_epoch(epoch_of(stream.cached_info().clone()));
        self.stream = Some(stream);
        Ok(())
    }

    fn set_epoch(&self, epoch: Epoch) {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
    }

    fn epoch(&self) -> Epoch {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a batch through the stream, in order, and waits for every acknowledgement;
    /// a stream that was deleted meanwhile is made again (a new epoch) and the batch's
    /// refused publishes tried once more.
    pub(crate) async fn append(&mut self, batch: &[Appended]) -> Vec<Result<(), String>> {
        let mut results = self.publish(batch).await;
        let missing =
            |r: &Result<(), PublishErrorKind>| matches!(r, Err(PublishErrorKind::StreamNotFound));
        if results.iter().any(missing) && self.ensure_stream().await.is_ok() {
            let retry: Vec<Appended> = batch
                .iter()
                .zip(&results)
                .filter(|(_, r)| missing(r))
                .map(|(item, _)| item.clone())
                .collect();
            let mut again = self.publish(&retry).await.into_iter();
            for result in results.iter_mut().filter(|r| missing(r)) {
                if let Some(next) = again.next() {
                    *result = next;
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.map_err(|kind| format!("JetStream publish: {kind}")))
            .collect()
    }

    async fn publish(&self, batch: &[Appended]) -> Vec<Result<(), PublishErrorKind>> {
        let Some(context) = self.context.as_ref() else {
            return vec![Err(PublishErrorKind::BrokenPipe); batch.len()];
        };
        // Every publish is written before the first acknowledgement is awaited: one round
        // trip for the batch, in order on the one connection.
        let mut pending = Vec::with_capacity(batch.len());
        for (subject, opcode, payload, except) in batch {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(peer) = except {
                headers.insert(EXCEPT, wire::peer_text(peer).as_str());
            }
            headers.insert(
                KIND,
                if *opcode == OpCode::Text {
                    "text"
                } else {
                    "binary"
                },
            );
            pending.push(
                context
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await,
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            results.push(match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.kind()),
                Err(error) => Err(error.kind()),
            });
        }
        results
    }

    fn stream(&self) -> Result<&Stream, String> {
        self.stream
            .as_ref()
            .ok_or_else(|| "not connected".to_owned())
    }

    /// The envelopes of `subject`'s messages after sequence `after` up to `up_to`, each
    /// naming the one before it. Only if `after` is still in the stream: otherwise what
    /// followed it may have gone too, and none is given (the gap is then reported).
    pub(crate) async fn range(
        &mut self,
        subject: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<Bytes>, String> {
        let epoch = self.epoch();
        let stream = self.stream()?;
        let mut out = Vec::new();
        if after > 0 {
            match next_of(stream, subject, after).await? {
                Some(anchor) if anchor.sequence == after => {}
                _ => return Ok(out),
            }
        }
        let mut previous = after;
        // Never more than the stream keeps of one subject (and a margin for a node with a
        // larger --history).
        let bound = self.settings.max_len.saturating_mul(4).max(1);
        while previous < up_to && out.len() < bound {
            let Some(message) = next_of(stream, subject, previous + 1).await? else {
                break;
            };
            if message.sequence > up_to {
                break;
            }
            out.push(stored_envelope(&message, epoch, previous));
            previous = message.sequence;
        }
        Ok(out)
    }

    /// `subject`'s head, and its last messages (at most `count`, oldest first) that follow
    /// one another from a message still in the stream.
    pub(crate) async fn tail(
        &mut self,
        subject: &str,
        count: usize,
    ) -> Result<(Option<Position>, Vec<Bytes>), String> {
        let epoch = self.epoch();
        let stream = self.stream()?;
        let head = match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => message.sequence,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok((None, Vec::new())),
            Err(e) => return Err(format!("JetStream direct get: {e}")),
        };
        let head_position = Position {
            epoch,
            offset: head,
        };
        if count == 0 {
            return Ok((Some(head_position), Vec::new()));
        }
        // From the subject's first message kept: it is the anchor the rest follow.
        let mut out: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
        let Some(first) = next_of(stream, subject, 1).await? else {
            return Ok((Some(head_position), Vec::new()));
        };
        let mut previous = first.sequence;
        let bound = self.settings.max_len.saturating_mul(4).max(count);
        let mut read = 0;
        while previous < head && read < bound {
            let Some(message) = next_of(stream, subject, previous + 1).await? else {
                break;
            };
            if message.sequence > head {
                break;
            }
            out.push_back(stored_envelope(&message, epoch, previous));
            if out.len() > count {
                out.pop_front();
            }
            previous = message.sequence;
            read += 1;
        }
        Ok((Some(head_position), out.into()))
    }

    /// The heads of `subjects` (one direct get each, all at once), after taking the stream's
    /// epoch again: a stream made anew shows here.
    pub(crate) async fn heads(
        &mut self,
        subjects: &[String],
    ) -> Result<Vec<Option<Position>>, String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        let info = stream
            .info()
            .await
            .map_err(|e| format!("JetStream stream info: {e}"))?
            .clone();
        self.set_epoch(epoch_of(info));
        let epoch = self.epoch();
        let stream = self.stream()?;
        let heads = join_all(
            subjects
                .iter()
                .map(|subject| stream.direct_get_last_for_subject(subject.clone())),
        )
        .await;
        heads
            .into_iter()
            .map(|head| match head {
                Ok(message) => Ok(Some(Position {
                    epoch,
                    offset: message.sequence,
                })),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("JetStream direct get: {e}")),
            })
            .collect()
    }
}

/// The first message of `subject` at or after `sequence`, if any.
async fn next_of(
    stream: &Stream,
    subject: &str,
    sequence: u64,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, String> {
    match stream
        .direct_get_next_for_subject(subject.to_owned(), Some(sequence))
        .await
    {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("JetStream direct get: {e}")),
    }
}

/// The envelope of a message read from the stream, which follows `previous`.
fn stored_envelope(
    message: &async_nats::jetstream::message::StreamMessage,
    epoch: Epoch,
    previous: u64,
) -> Bytes {
    envelope(
        message.headers.get(KIND).map(|v| v.as_str()),
        message.headers.get(EXCEPT).map(|v| v.as_str()),
        epoch,
        message.sequence,
        previous,
        &message.payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_names_the_position_and_the_previous_one() {
        let epoch: Epoch = "1765000000000000".parse().unwrap();
        let decoded =
            wire::decode(envelope(Some("binary"), None, epoch, 12, 9, b"\x00hi")).unwrap();
        assert_eq!(decoded.opcode, OpCode::Binary);
        assert_eq!(decoded.position, Some(Position { epoch, offset: 12 }));
        assert_eq!(decoded.previous, Some(9));
        assert_eq!(&decoded.payload[..], b"\x00hi");
        // A backend's plain publish: no kind, text if it is UTF-8.
        let plain = wire::decode(envelope(None, None, epoch, 1, 0, b"hello")).unwrap();
        assert_eq!(plain.opcode, OpCode::Text);
        assert_eq!(plain.previous, Some(0));
        // The skipped connection rides along; a header that names none is left out.
        let skip = wire::decode(envelope(None, Some("7.1.2.3"), epoch, 5, 4, b"x")).unwrap();
        assert_eq!(
            skip.except.map(|p| wire::peer_text(&p)).as_deref(),
            Some("7.1.2.3")
        );
        assert_eq!(skip.previous, Some(4));
        let junk = wire::decode(envelope(None, Some("1 2\nUC1"), epoch, 5, 4, b"x")).unwrap();
        assert_eq!((junk.except, &junk.payload[..]), (None, &b"x"[..]));
    }
}
