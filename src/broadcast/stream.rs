//! Server-Sent Events as a client protocol over the engine: `GET /<topic>` with
//! `Accept: text/event-stream` becomes a receive-only subscriber of the topic. The driver
//! keeps the connection in its stream stage and sends each publication's SSE event (made at
//! most once per worker, see `driver::EncodedMessage`); this layer decides the admission and
//! subscribes the stream from the position it presents (`Last-Event-ID` or `?since=`).

use std::sync::atomic::Ordering;

use super::{Broadcast, ConnState, Handler, Position};
use crate::driver::{Admission, ConnId, WorkerView};
use crate::protocol::handshake::{http_response, Request};
use crate::sse;

impl<H: Handler> Broadcast<H> {
    /// The admission of an event-stream request, or `None` for a path that is not a topic
    /// (`/healthz`, `/metrics`, `/publish/…`, `/history/…`: the endpoints answer those).
    pub(super) fn admit_stream(&mut self, request: &Request) -> Option<Admission> {
        let path = request.path();
        let reserved = matches!(path, "/healthz" | "/metrics")
            || path.starts_with("/publish/")
            || path.starts_with("/history/");
        if reserved {
            return None;
        }
        let origin = request.origin();
        if !self.origins.allows(request.header("origin")) {
            self.hub.stats[self.worker]
                .origin_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Some(Admission::Respond(text(403, "origin not allowed\n")));
        }
        let topic = super::topic_of_path(path);
        if topic.len() > self.limits.max_topic_bytes {
            return Some(Admission::Respond(text(
                414,
                &format!(
                    "topic name of {} bytes is longer than the limit of {}\n",
                    topic.len(),
                    self.limits.max_topic_bytes
                ),
            )));
        }
        if let Some(since) = sse::resume_from(request) {
            if since.parse::<Position>().is_err() {
                return Some(Admission::Respond(text(
                    400,
                    "Last-Event-ID or since= must be a position EPOCH:OFFSET\n",
                )));
            }
        }
        let refusals = &self.hub.stats[self.worker].refusals;
        if self.caps.caps_upgrades() {
            // As for an upgrade: the caps first, so that the token check's work is bounded.
            match self.caps.admit(request, std::time::Instant::now()) {
                Ok(admitted) => self.admitted = Some(admitted),
                Err(refusal) => {
                    refusals.count(refusal.reason);
                    return Some(Admission::Respond(refusal.response()));
                }
            }
        }
        if let Err(refusal) =
            self.access
                .authorize_subscribe(request, topic, crate::auth::UnixTime::now())
        {
            self.admitted = None;
            refusals.count(refusal.reason);
            return Some(Admission::Respond(refusal.response()));
        }
        let mut head = sse::response_head(origin);
        self.stream_start = None;
        if sse::resume_from(request).is_none() {
            // Tell the client where it starts, so that a reconnect before any event still
            // resumes from here: an id-only event, in the same bytes as the head, so the
            // connection's queue holds one buffer, as an upgrade's does (a second would make
            // it keep a list for good). `on_open` subscribes from exactly this position, so
            // what is published in between is replayed, not skipped. (A broker's log that
            // has not heard of the topic yet does not know; the first event will say.)
            if let Some(log) = &self.hub.log {
                let start = log.read(topic, None, 0).head();
                if let (false, Some(id)) = (start.epoch.is_unknown(), sse::EventId::new(start)) {
                    head.extend_from_slice(&sse::position_only(&id));
                    self.stream_start = Some(start);
                }
            }
        }
        Some(Admission::Stream { head })
    }

    /// A stream whose head has been queued: subscribe it from the position it presents.
    pub(super) fn open_stream(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        request: &Request,
    ) {
        self.hub.stats[self.worker]
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        if let Some(admitted) = self.admitted.take() {
            // Its place on the server and in its address's count, held while it is open.
            self.fair.insert(
                conn,
                super::Fair {
                    _admitted: Some(admitted),
                    ..super::Fair::default()
                },
            );
        }
        let topic = super::topic_of_path(request.path());
        let start = self.stream_start.take();
        let presented = sse::resume_from(request).and_then(|s| s.parse::<Position>().ok());
        let since = presented.or(start);
        let Some(log) = self.hub.log.clone() else {
            if !self.subscribe(ctx, conn, topic) {
                ctx.close(conn, crate::protocol::CloseCode::POLICY_VIOLATION, "");
            }
            return;
        };
        let (recovery, resuming) = match presented {
            Some(_) => super::history::read_resume(log.as_ref(), topic, since, self.max_recover),
            None => (
                log.read(topic, since, self.max_recover),
                super::history::Resuming::New,
            ),
        };
        if !self.subscribe_from(ctx, conn, topic, recovery, resuming) {
            ctx.close(conn, crate::protocol::CloseCode::POLICY_VIOLATION, "");
        }
    }
}

fn text(status: u16, body: &str) -> Vec<u8> {
    http_response(
        status,
        crate::protocol::handshake::reason_phrase(status),
        &[("Connection", "close")],
        Some("text/plain; charset=utf-8"),
        body.as_bytes(),
    )
}
