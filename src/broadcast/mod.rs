//! The broadcast engine: topics, encode-once fan-out on every worker, the cross-core hand-off,
//! and the slow-consumer policy. It is a [`driver::Service`](crate::driver::Service) that runs
//! the embedder's [`Handler`].
//!
//! A publish encodes its frame once. The publishing worker appends a clone (one reference
//! count) to each local subscriber's queue and pushes one clone into every other worker's
//! bounded mailbox, waking it through its eventfd only when it is not already due to wake.
//! Each worker then fans out to its own subscribers; at the end of the loop turn every dirty
//! connection gets one vectored send, however many frames it was given. With
//! permessage-deflate, each worker compresses a publish the first time one of its subscribers
//! needs it compressed (once per window size in use), and shares that frame too.

pub mod cluster;
mod endpoints;
mod handler;
#[cfg(test)]
mod harness;
pub mod history;
mod mailbox;
pub(crate) mod metrics;
pub mod publication;
mod stream;
mod topic;
pub(crate) mod uplink;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use handler::{
    Connection, Decision, Handler, HttpCall, HttpHead, Message, Peer, Resumed, SubscribeError,
};
use history::Resuming;
pub use history::{HistoryLimits, Log, Recovery};
use mailbox::Mail;
pub(crate) use mailbox::Mailboxes;
pub use mailbox::{MAILBOX_CAPACITY, MAILBOX_MAX_BYTES};
pub use metrics::BroadcastStats;
pub use publication::{Epoch, Position, Publication, Stamp};
use topic::{Subscriptions, TopicId, Topics};

use crate::config::{Config, SlowConsumer};
use crate::driver::{Admission, ConnId, EncodedMessage, SendError, Service, WorkerView};
use crate::protocol::frame::encode_frame;
use crate::protocol::handshake::Request;
use crate::protocol::{CloseCode, OpCode};

/// Per-connection state of the broadcast service.
#[derive(Debug, Default)]
pub struct ConnState<D> {
    subs: Subscriptions,
    user: D,
}

/// A connection's share under the caps (see [`crate::limits`]).
#[derive(Debug, Default)]
struct Fair {
    /// Its place on the server and in its address's count, given back when it is dropped.
    _admitted: Option<crate::limits::Admitted>,
    budget: crate::limits::ConnBudget,
    /// Closed for going past its budget: what it still sends is ignored.
    over: bool,
}

/// The broadcast service of one worker, running the embedder's handler `H`.
pub(crate) struct Broadcast<H: Handler> {
    handler: H,
    topics: Topics,
    hub: Arc<Mailboxes>,
    worker: usize,
    policy: SlowConsumer,
    endpoints: endpoints::Endpoints,
    /// The mailbox drained into, kept to reuse its capacity.
    scratch_mail: Vec<Mail>,
    /// The handler's action list, kept to reuse its capacity: no allocation per message.
    scratch_actions: handler::Actions,
    last_panic_warning: Option<Instant>,
    limits: crate::config::TopicLimits,
    origins: crate::protocol::origin::AllowedOrigins,
    /// Each open connection's place under the caps and its send budget, when any cap is set:
    /// kept beside the slab rather than in it, so a server without caps pays no byte per
    /// connection for them.
    fair: std::collections::HashMap<ConnId, Fair>,
    /// Who may subscribe (the JWT check of an SSE request; upgrades ask the handler).
    access: Arc<crate::auth::Authorizer>,
    /// Publications replayed at most by one recovery.
    max_recover: usize,
    /// Server-Sent Events are served.
    sse: bool,
    /// Caps per server, address and connection.
    caps: Arc<crate::limits::Limits>,
    /// The place admitted for the upgrade in progress: `on_open` of the same request, which
    /// the driver calls right after `on_request` on this worker, moves it into the
    /// connection; any other request drops (frees) it first.
    admitted: Option<crate::limits::Admitted>,
    /// The position an event stream admitted without one was told it starts from (in its
    /// response head), for `on_open` of the same request to subscribe it from.
    stream_start: Option<Position>,
    /// Subscribers that resumed from a position this node's log had not reached yet (they
    /// read further on another node; this node's link is behind the broker): nothing up to
    /// that position is sent to them. An entry goes when a publication passes it, at a
    /// reset, an unsubscribe or a close; empty but for those moments.
    ahead: std::collections::HashMap<(ConnId, TopicId), Position>,
}

impl<H: Handler> Broadcast<H> {
    pub(crate) fn new(handler: H, hub: Arc<Mailboxes>, worker: usize, config: &Config) -> Self {
        Self {
            handler,
            topics: Topics::default(),
            hub,
            worker,
            policy: config.slow_consumer,
            endpoints: endpoints::Endpoints::from_config(config),
            scratch_mail: Vec::new(),
            scratch_actions: handler::Actions::default(),
            last_panic_warning: None,
            limits: config.topic_limits,
            origins: config.allowed_origins.clone(),
            fair: std::collections::HashMap::new(),
            access: Arc::clone(&config.authorizer),
            max_recover: config.history.map_or(0, |h| h.max_recover),
            sse: config.sse,
            caps: Arc::clone(&config.limits),
            admitted: None,
            stream_start: None,
            ahead: std::collections::HashMap::new(),
        }
    }

    /// Publishes a message: with history, it gets its position and reaches this worker's
    /// subscribers through its own mailbox, in offset order with every other publish to the
    /// topic; without, local fan-out now and other workers through their mailboxes.
    fn publish(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        topic: &str,
        opcode: OpCode,
        payload: Bytes,
    ) -> Arc<Publication> {
        self.publish_except(ctx, topic, opcode, payload, None, None)
    }

    /// [`publish`](Self::publish), skipping the subscriber `except` wherever it is: the
    /// publication is still encoded once, and the excluded connection is passed over by its
    /// id during the fan-out of its node's worker. With `stamp`, the payload subscribers get
    /// is made from the position the publish is given ([`Publication::stamped`]).
    fn publish_except(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        topic: &str,
        opcode: OpCode,
        payload: Bytes,
        except: Option<Peer>,
        stamp: Option<publication::Stamp>,
    ) -> Arc<Publication> {
        let stats = &self.hub.stats[self.worker];
        stats.publishes.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = match self.topics.id(topic).and_then(|id| self.topics.name(id)) {
            Some(name) => Arc::clone(name),
            None => Arc::from(topic),
        };
        let (publication, _) =
            self.hub
                .publish_except(&name, opcode, payload, Some(self.worker), except, stamp);
        if self.hub.log.is_some() {
            self.drain_mailbox(ctx);
        } else {
            self.fan_out(ctx, &publication);
        }
        publication
    }

    /// Closes every subscriber of `topic` on every worker, through the mailboxes so that it
    /// stays in order with the publishes before it, and on every node through the broker.
    fn close_subscribers(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        topic: &str,
        code: CloseCode,
        reason: &str,
    ) {
        let name: Arc<str> = match self.topics.id(topic).and_then(|id| self.topics.name(id)) {
            Some(name) => Arc::clone(name),
            None => Arc::from(topic),
        };
        let closing = Publication::closing(name, code, reason);
        self.hub.post(&closing, Some(self.worker));
        if let Some(uplink) = self.hub.uplink() {
            uplink.publish(&closing);
        }
        self.fan_out(ctx, &closing);
    }

    /// Fans out everything waiting in this worker's mailbox.
    fn drain_mailbox(&mut self, ctx: &mut WorkerView<'_, ConnState<H::Data>>) {
        let mut mail = std::mem::take(&mut self.scratch_mail);
        while let Some(item) = self.hub.take(self.worker) {
            mail.push(item);
        }
        for item in mail.drain(..) {
            self.fan_out(ctx, &item);
        }
        self.scratch_mail = mail;
    }

    /// Queues a publication for every local subscriber of its topic, applying the
    /// slow-consumer policy. With a position, a publication this worker's subscribers have
    /// already been given is skipped, and one that follows a gap is preceded by what the gap
    /// held (from the log) or by a reset, so subscribers never see a topic out of order.
    fn fan_out(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        publication: &Mail,
    ) -> usize {
        let Some(id) = self.topics.id(publication.topic()) else {
            return 0;
        };
        if let Some((code, reason)) = publication.close_reason() {
            // A closing publication (`close_subscribers`): no frame, no position.
            let subscribers: Vec<ConnId> = self.topics.subscribers(id).to_vec();
            for sub in subscribers {
                ctx.close(sub, code, reason);
            }
            return 0;
        }
        if publication.is_head_only() {
            if let Some(head) = publication.position() {
                // A gap's head may be unknown (nothing of the topic read yet): the
                // subscribers are told where they stand.
                let known = !head.epoch.is_unknown();
                let told = known && self.move_head(ctx, id, head);
                if publication.is_gap() && !told {
                    let at = if known {
                        head
                    } else {
                        self.topics.cursor(id).unwrap_or(head)
                    };
                    self.hub.stats[self.worker]
                        .gaps_reported
                        .fetch_add(1, Ordering::Relaxed);
                    self.reset(ctx, id, at, true);
                }
            }
            return 0;
        }
        if let Some(position) = publication.position() {
            let before = Position {
                offset: publication
                    .previous()
                    .unwrap_or(position.offset.saturating_sub(1)),
                ..position
            };
            self.advance(ctx, id, before);
            if self
                .topics
                .cursor(id)
                .is_some_and(|c| c.epoch == position.epoch && c.offset >= position.offset)
            {
                tracing::trace!(?position, cursor = ?self.topics.cursor(id), "already given");
                return 0;
            }
            self.topics.set_cursor(id, position);
        }
        self.deliver(ctx, id, publication)
    }

    /// Sends a publication to every local subscriber of topic `id`, with no position check.
    fn deliver(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        id: TopicId,
        publication: &Mail,
    ) -> usize {
        let stats = &self.hub.stats[self.worker];
        let mut delivered = 0;
        // Compressed at most once here per window size, for every subscriber that takes it.
        let mut message = encoded_message(publication);
        let except = publication
            .except()
            .filter(|p| p.node == self.hub.node && p.worker == self.worker)
            .map(|p| p.conn);
        let position = publication.position();
        let mut passed = Vec::new();
        for &sub in self.topics.subscribers(id) {
            if Some(sub) == except {
                continue;
            }
            if !self.ahead.is_empty() {
                if let Some(floor) = self.ahead.get(&(sub, id)) {
                    if position.is_some_and(|p| p.epoch == floor.epoch && p.offset <= floor.offset)
                    {
                        continue;
                    }
                    passed.push(sub);
                }
            }
            match ctx.send_message(sub, &mut message) {
                Ok(()) => delivered += 1,
                Err(SendError::Backlog) => match self.policy {
                    SlowConsumer::Disconnect => ctx.close_slow_consumer(sub),
                    SlowConsumer::Drop => {
                        stats.drops.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(SendError::Closed) => {}
            }
        }
        for sub in passed {
            self.ahead.remove(&(sub, id));
        }
        stats
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    fn subscribe(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        topic: &str,
    ) -> bool {
        let Some(state) = ctx.data(conn) else {
            return false;
        };
        let gate = handler::Gate {
            limits: self.limits,
            topics: &self.topics,
            subs: &state.subs,
            log: None,
        };
        let stats = &self.hub.stats[self.worker];
        if let Err(refusal) = gate.check(topic, &mut handler::Pending::default()) {
            // Checked when the handler asked, so only a caller inside the engine gets here.
            stats.subscribe_refusals.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%refusal, "subscription refused");
            return false;
        }
        let known = self.topics.id(topic).is_some();
        let (id, new) = self
            .topics
            .subscribe(conn, &mut state.subs, topic, &stats.topics);
        if !known {
            // New on this worker: its subscribers start from the stream's head; what the
            // mailbox still holds of the topic up to there is not for them.
            if let Some(log) = &self.hub.log {
                let head = log.read(topic, None, 0).head();
                self.topics.set_cursor(id, head);
            }
        }
        new
    }

    fn unsubscribe(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        topic: &str,
    ) -> bool {
        let Some(id) = self.topics.id(topic) else {
            return false;
        };
        self.ahead.remove(&(conn, id));
        let Some(mut subs) = ctx.data(conn).map(|s| std::mem::take(&mut s.subs)) else {
            return false;
        };
        let counts = &self.hub.stats[self.worker].topics;
        let removed = self.topics.unsubscribe(
            conn,
            &mut subs,
            id,
            |other| ctx.data(other).map(|s| &mut s.subs),
            counts,
        );
        if let Some(state) = ctx.data(conn) {
            state.subs = subs;
        }
        removed
    }
}

impl<H: Handler> Service for Broadcast<H> {
    type Data = ConnState<H::Data>;

    fn on_request(&mut self, request: &Request) -> Admission {
        // An upgrade admitted earlier that never opened (it failed validation) frees its place.
        self.admitted = None;
        // Any WebSocket header makes it an upgrade attempt, so a broken one gets its 400 or
        // 426 rather than being served as a page.
        let websocket = request.is_upgrade()
            || request.header("sec-websocket-key").is_some()
            || request.header("sec-websocket-version").is_some();
        if !websocket {
            let handler = &mut self.handler;
            match catch_unwind(AssertUnwindSafe(|| handler.on_http_head(request))) {
                Ok(Some(HttpHead::Read { max_body_bytes })) => {
                    return Admission::Http { max_body_bytes }
                }
                Ok(Some(HttpHead::Respond(response))) => return Admission::Respond(response),
                Ok(None) => {}
                Err(_) => {
                    self.handler_panicked("on_http_head");
                    return Admission::Reject(500);
                }
            }
            if self.sse && crate::sse::is_event_stream(request) {
                if let Some(admission) = self.admit_stream(request) {
                    return admission;
                }
            }
            return self
                .endpoints
                .admit(request, &self.hub.stats[self.worker].refusals);
        }
        if !self.origins.allows(request.header("origin")) {
            // Cross-site WebSocket hijacking: a page of another site, with the user's cookies.
            self.hub.stats[self.worker]
                .origin_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Admission::Reject(403);
        }
        if self.caps.caps_upgrades() {
            // Before any token is checked: the caps are what keeps that work bounded.
            match self.caps.admit(request, Instant::now()) {
                Ok(admitted) => self.admitted = Some(admitted),
                Err(refusal) => {
                    self.hub.stats[self.worker].refusals.count(refusal.reason);
                    return Admission::Respond(refusal.response());
                }
            }
        }
        let handler = &mut self.handler;
        let decision = catch_unwind(AssertUnwindSafe(|| handler.on_upgrade(request)));
        let Ok(decision) = decision else {
            self.admitted = None;
            self.handler_panicked("on_upgrade");
            return Admission::Reject(500);
        };
        match decision {
            Decision::Accept => Admission::Upgrade { protocol: None },
            Decision::AcceptProtocol(protocol) => Admission::Upgrade {
                protocol: Some(protocol),
            },
            Decision::Reject(status) => {
                self.admitted = None;
                Admission::Reject(status)
            }
            Decision::Refuse(refusal) => {
                self.admitted = None;
                self.hub.stats[self.worker].refusals.count(refusal.reason);
                Admission::Respond(refusal.response())
            }
        }
    }

    fn on_open(&mut self, ctx: &mut WorkerView<'_, Self::Data>, conn: ConnId, request: &Request) {
        if ctx.is_stream(conn) {
            return self.open_stream(ctx, conn, request);
        }
        let mut actions = std::mem::take(&mut self.scratch_actions);
        if let Some(state) = ctx.data(conn) {
            if self.caps.caps_upgrades() || self.caps.caps_messages() {
                self.fair.insert(
                    conn,
                    Fair {
                        _admitted: self.admitted.take(),
                        ..Fair::default()
                    },
                );
            }
            let gate = handler::Gate {
                limits: self.limits,
                topics: &self.topics,
                subs: &state.subs,
                log: self.hub.log.as_ref().map(|log| (log, self.max_recover)),
            };
            let mut connection = Connection::new(conn, &mut state.user, &mut actions, Some(gate))
                .on_worker(self.hub.node, self.worker);
            let handler = &mut self.handler;
            if catch_unwind(AssertUnwindSafe(|| {
                handler.on_open(&mut connection, request)
            }))
            .is_err()
            {
                return self.close_after_panic(ctx, conn, actions, "on_open");
            }
        }
        self.apply(ctx, conn, actions);
    }

    fn on_message(
        &mut self,
        ctx: &mut WorkerView<'_, Self::Data>,
        conn: ConnId,
        opcode: OpCode,
        payload: &[u8],
    ) {
        self.hub.stats[self.worker]
            .bytes_in
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        if self.caps.caps_messages() && !self.within_budget(ctx, conn, payload.len()) {
            return;
        }
        let mut actions = std::mem::take(&mut self.scratch_actions);
        if let Some(state) = ctx.data(conn) {
            let gate = handler::Gate {
                limits: self.limits,
                topics: &self.topics,
                subs: &state.subs,
                log: self.hub.log.as_ref().map(|log| (log, self.max_recover)),
            };
            let mut connection = Connection::new(conn, &mut state.user, &mut actions, Some(gate))
                .on_worker(self.hub.node, self.worker);
            let handler = &mut self.handler;
            let message = Message { opcode, payload };
            if catch_unwind(AssertUnwindSafe(|| {
                handler.on_message(&mut connection, message)
            }))
            .is_err()
            {
                return self.close_after_panic(ctx, conn, actions, "on_message");
            }
        }
        self.apply(ctx, conn, actions);
    }

    fn on_close(
        &mut self,
        ctx: &mut WorkerView<'_, Self::Data>,
        conn: ConnId,
        mut data: Self::Data,
    ) {
        // Its place on the server and in its address's count is given back.
        self.fair.remove(&conn);
        if !self.ahead.is_empty() {
            self.ahead.retain(|(c, _), _| *c != conn);
        }
        let counts = &self.hub.stats[self.worker].topics;
        for entry in std::mem::take(&mut data.subs).into_entries() {
            self.topics.remove_entry(
                conn,
                entry,
                |other| ctx.data(other).map(|s| &mut s.subs),
                counts,
            );
        }
        if ctx.is_stream(conn) {
            // An event stream is the engine's own: the handler never saw it open.
            return;
        }
        let mut actions = handler::Actions::default();
        let mut connection = Connection::new(conn, &mut data.user, &mut actions, None)
            .on_worker(self.hub.node, self.worker);
        let handler = &mut self.handler;
        if catch_unwind(AssertUnwindSafe(|| handler.on_close(&mut connection))).is_err() {
            // The connection is gone already; what the handler asked for before it panicked
            // is dropped with it.
            self.handler_panicked("on_close");
            return;
        }
        // A closed connection can still publish (a "left the room" message), nothing else.
        for action in actions.list {
            match action {
                handler::Action::Publish(topic, opcode, payload) => {
                    self.publish(ctx, &topic, opcode, payload);
                }
                handler::Action::PublishExcept(topic, opcode, payload, except, stamp) => {
                    self.publish_except(ctx, &topic, opcode, payload, except, stamp);
                }
                _ => {}
            }
        }
    }

    fn on_http(
        &mut self,
        ctx: &mut WorkerView<'_, Self::Data>,
        request: &Request,
        body: &[u8],
    ) -> Vec<u8> {
        let mut actions = handler::Actions::default();
        let handler = &mut self.handler;
        let served = catch_unwind(AssertUnwindSafe(|| {
            handler.on_http(&mut HttpCall::new(&mut actions), request, body)
        }));
        match served {
            Ok(Some(response)) => {
                self.apply_http(ctx, actions);
                return response;
            }
            Ok(None) if request.method() == "GET" && request.path() == "/metrics" => {
                let mut text = metrics::render(&self.hub);
                self.handler.render_metrics(&mut text);
                return crate::protocol::handshake::http_response(
                    200,
                    "OK",
                    &[],
                    Some("text/plain; version=0.0.4; charset=utf-8"),
                    text.as_bytes(),
                );
            }
            Ok(None) => {}
            Err(_) => {
                self.handler_panicked("on_http");
                return crate::protocol::handshake::http_response(
                    500,
                    "Internal Server Error",
                    &[],
                    None,
                    b"",
                );
            }
        }
        match self.endpoints.route(request, body, &self.hub) {
            endpoints::Routed::Response(response) => response,
            endpoints::Routed::Publish {
                topic,
                opcode,
                payload,
            } => {
                // Subscribers as counted when the publish left: the other workers deliver it
                // in their next turn.
                let reached = self.hub.subscriber_count(&topic);
                let publication = self.publish(ctx, &topic, opcode, payload);
                endpoints::Endpoints::published(reached, publication.position())
            }
            endpoints::Routed::History {
                topic,
                since,
                limit,
            } => self.endpoints.history(
                self.hub.log.as_deref(),
                &topic,
                since,
                limit.min(self.max_recover),
            ),
        }
    }

    fn keepalive(&self) -> crate::driver::Keepalive {
        self.handler.keepalive()
    }

    fn on_wake(&mut self, ctx: &mut WorkerView<'_, Self::Data>) {
        // Clear first: a publish racing with the drain then wakes us again rather than waiting.
        self.hub.wake_pending[self.worker].store(false, Ordering::Release);
        self.drain_mailbox(ctx);
    }
}

impl<H: Handler> Broadcast<H> {
    /// Charges a message to its connection's budget; past it, closes the connection with
    /// 1008 (RFC 6455 §7.4.1, policy) and counts it, once, and returns `false`.
    fn within_budget(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        bytes: usize,
    ) -> bool {
        let Some(fair) = self.fair.get_mut(&conn) else {
            return true;
        };
        if fair.over {
            return false;
        }
        let Err(reason) = fair.budget.charge(&self.caps, bytes, Instant::now()) else {
            return true;
        };
        fair.over = true;
        self.hub.stats[self.worker].refusals.count(reason);
        tracing::debug!(reason = reason.label(), "connection over its rate");
        ctx.close(conn, CloseCode::POLICY_VIOLATION, reason.label());
        false
    }

    /// A handler callback panicked for `conn`: what it asked for is dropped, and the
    /// connection is closed with 1011 (RFC 6455 §7.4.1: an unexpected condition) while the
    /// worker goes on serving its other connections.
    fn close_after_panic(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        mut actions: handler::Actions,
        callback: &'static str,
    ) {
        actions.clear();
        self.scratch_actions = actions;
        self.handler_panicked(callback);
        ctx.close(conn, CloseCode::INTERNAL_ERROR, "internal error");
    }

    /// Counts a handler panic, and logs it at most every 10 s.
    fn handler_panicked(&mut self, callback: &'static str) {
        self.hub.stats[self.worker]
            .handler_panics
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if self
            .last_panic_warning
            .is_none_or(|at| now - at >= Duration::from_secs(10))
        {
            self.last_panic_warning = Some(now);
            tracing::warn!(
                callback,
                "handler panicked; its connection is closed with 1011 (logged at most every 10 s)"
            );
        }
    }

    /// Carries out what a handler asked for, in the order it asked.
    fn apply(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        mut actions: handler::Actions,
    ) {
        if actions.refused > 0 {
            self.hub.stats[self.worker]
                .subscribe_refusals
                .fetch_add(std::mem::take(&mut actions.refused), Ordering::Relaxed);
        }
        if let Some(reason) = actions.refusal.take() {
            self.hub.stats[self.worker].refusals.count(reason);
        }
        for action in actions.list.drain(..) {
            match action {
                handler::Action::Send {
                    opcode,
                    frame,
                    payload,
                } => {
                    let mut message = EncodedMessage::new(opcode, payload, frame);
                    if let Err(SendError::Backlog) = ctx.send_message(conn, &mut message) {
                        ctx.close_slow_consumer(conn);
                    }
                }
                handler::Action::Subscribe(topic) => {
                    self.subscribe(ctx, conn, &topic);
                }
                handler::Action::SubscribeFrom(topic, recovery, resuming) => {
                    self.subscribe_from(ctx, conn, &topic, *recovery, resuming);
                }
                handler::Action::Unsubscribe(topic) => {
                    self.unsubscribe(ctx, conn, &topic);
                }
                handler::Action::Publish(topic, opcode, payload) => {
                    self.publish(ctx, &topic, opcode, payload);
                }
                handler::Action::Close(code, reason) => ctx.close(conn, code, &reason),
                handler::Action::PublishExcept(topic, opcode, payload, except, stamp) => {
                    self.publish_except(ctx, &topic, opcode, payload, except, stamp);
                }
                handler::Action::CloseSubscribers(topic, code, reason) => {
                    self.close_subscribers(ctx, &topic, code, &reason);
                }
            }
        }
        actions.clear();
        self.scratch_actions = actions;
    }

    /// Carries out what a handler serving an HTTP request asked for: publishes and closes.
    fn apply_http(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        actions: handler::Actions,
    ) {
        for action in actions.list {
            match action {
                handler::Action::Publish(topic, opcode, payload) => {
                    self.publish(ctx, &topic, opcode, payload);
                }
                handler::Action::PublishExcept(topic, opcode, payload, except, stamp) => {
                    self.publish_except(ctx, &topic, opcode, payload, except, stamp);
                }
                handler::Action::CloseSubscribers(topic, code, reason) => {
                    self.close_subscribers(ctx, &topic, code, &reason);
                }
                // An HTTP request has no connection to send to or subscribe.
                handler::Action::Send { .. }
                | handler::Action::Subscribe(_)
                | handler::Action::SubscribeFrom(..)
                | handler::Action::Unsubscribe(_)
                | handler::Action::Close(..) => {}
            }
        }
    }
}

impl<H: Handler> Broadcast<H> {
    /// Brings this worker's subscribers of topic `id` to `target`: what lies between their
    /// cursor and it is given to them from the log, or, if the log no longer has it, they
    /// are told with a reset that they cannot have it. In a new epoch, they are told that the
    /// old one is lost, then given the new stream from its start if the log has all of it.
    /// Counted as a gap filled or reported; returns whether the subscribers were told of a
    /// loss.
    fn advance(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        id: TopicId,
        target: Position,
    ) -> bool {
        let Some(cursor) = self.topics.cursor(id).filter(|c| !c.epoch.is_unknown()) else {
            self.topics.set_cursor(id, target);
            return false;
        };
        if cursor.epoch == target.epoch && cursor.offset >= target.offset {
            return false;
        }
        let stats = &self.hub.stats[self.worker];
        let log = self.hub.log.clone();
        let name = self.topics.name(id).cloned();
        // Another epoch (the broker's stream was made anew, as after a restart): what came
        // before it is lost to these subscribers, but the new stream may still be there
        // from its start, which this node missed while it was away.
        let from = if cursor.epoch == target.epoch {
            cursor
        } else {
            Position {
                epoch: target.epoch,
                offset: 0,
            }
        };
        let recovery = match (log, name) {
            (Some(log), Some(name)) => Some(log.read(&name, Some(from), usize::MAX)),
            _ => None,
        };
        // In another epoch, the new stream is of use only whole, from its start to target.
        let whole = |publications: &[Arc<Publication>]| {
            let offset = |p: Option<&Arc<Publication>>| {
                p.and_then(|p| p.position())
                    .filter(|p| p.epoch == target.epoch)
                    .map(|p| p.offset)
            };
            from == cursor
                || target.offset == 0
                || (offset(publications.first()).is_some()
                    && publications.first().and_then(|p| p.previous()) == Some(0)
                    && offset(publications.last()).is_some_and(|o| o >= target.offset))
        };
        tracing::debug!(
            topic = ?self.topics.name(id),
            ?cursor,
            ?target,
            outcome = match &recovery {
                Some(Recovery::Recovered { publications, .. }) if whole(publications) =>
                    "filled",
                Some(_) | None => "reset",
            },
            "a gap before a publication"
        );
        let told = match recovery {
            Some(Recovery::Recovered { publications, .. }) if whole(&publications) => {
                let told = from != cursor;
                if !told {
                    stats.gaps_filled.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
                    // A new stream, given whole; but whether the old one went on past this
                    // node's cursor (publications another node saw before the broker lost
                    // them) is unknown, so a subscriber with no reset message is told too.
                    self.reset(ctx, id, from, true);
                }
                for publication in publications
                    .iter()
                    .filter(|p| p.position().is_some_and(|p| p.offset <= target.offset))
                {
                    self.deliver(ctx, id, publication);
                }
                told
            }
            Some(Recovery::Recovered { .. } | Recovery::NotRecovered { .. }) | None => {
                stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
                self.reset(ctx, id, target, true);
                true
            }
        };
        self.topics.set_cursor(id, target);
        told
    }

    /// Brings topic `id` to a stream head learned without a publication (see
    /// [`Publication::head_only`]): as [`advance`](Self::advance), and a cursor ahead of the
    /// head in its epoch (a position a client made up, or one the broker lost) is reset to it.
    /// Returns whether the subscribers were told of a loss (a reset that counts as one).
    fn move_head(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        id: TopicId,
        head: Position,
    ) -> bool {
        let ahead = self
            .topics
            .cursor(id)
            .is_some_and(|c| c.epoch == head.epoch && c.offset > head.offset);
        if ahead {
            self.hub.stats[self.worker]
                .gaps_reported
                .fetch_add(1, Ordering::Relaxed);
            // The broker lost what this node gave: positions go back, nothing is owed.
            self.reset(ctx, id, head, false);
            self.topics.set_cursor(id, head);
            false
        } else {
            self.advance(ctx, id, head)
        }
    }

    /// Tells this worker's subscribers of topic `id` that what came before `head` is lost to
    /// them: an SSE `reset` event on each event stream, the handler's
    /// [`reset_notice`](Handler::reset_notice) on each WebSocket. When publications were
    /// `lost` and the handler has no notice (rooms by path), a WebSocket is closed with
    /// [`CloseCode::NOT_RECOVERED`]: it is never left to go on as if nothing were missing,
    /// and its reconnect is its notice. (Without a loss, a reset only moves positions, which
    /// such a subscriber never sees.)
    fn reset(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        id: TopicId,
        head: Position,
        lost: bool,
    ) {
        if !self.ahead.is_empty() {
            // What they waited for may never come: after a reset they take what follows.
            self.ahead.retain(|(_, t), _| *t != id);
        }
        let event = crate::sse::reset_event(head.epoch.as_str(), head.offset);
        let notice = self
            .topics
            .name(id)
            .and_then(|topic| self.handler.reset_notice(topic, head))
            .map(|text| encode_frame(OpCode::Text, true, text.as_bytes(), None));
        let mut slow = Vec::new();
        let mut unnoticed = Vec::new();
        for &sub in self.topics.subscribers(id) {
            let frame = if ctx.is_stream(sub) {
                event.clone()
            } else if let Some(notice) = &notice {
                notice.clone()
            } else {
                if lost {
                    unnoticed.push(sub);
                }
                continue;
            };
            if let Err(SendError::Backlog) = ctx.send_frame(sub, frame) {
                slow.push(sub);
            }
        }
        for sub in slow {
            ctx.close_slow_consumer(sub);
        }
        for sub in unnoticed {
            ctx.close(sub, CloseCode::NOT_RECOVERED, "not recovered");
        }
    }

    /// Subscribes `conn` to `topic` and gives it what `recovery` (read from the log just
    /// before, on this thread) holds for it. This worker's other subscribers are first
    /// brought to the same head, so the topic's cursor here is the head the recovery was read
    /// at: what the mailbox still holds up to it is skipped, and what follows reaches every
    /// subscriber, `conn` included, once and in order.
    ///
    /// `resuming`: whether the client presented a position (`Last-Event-ID`, `?since=`, a
    /// handler's `since`). Only then is the outcome a recovery, counted in `/metrics`; a
    /// stream that starts from the position its own head gave it is a new subscriber. A
    /// recovery from the start of another epoch than the client's
    /// ([`Resuming::EpochStart`]) counts as failed, and an event stream is sent a reset to
    /// that start before it.
    fn subscribe_from(
        &mut self,
        ctx: &mut WorkerView<'_, ConnState<H::Data>>,
        conn: ConnId,
        topic: &str,
        recovery: Recovery,
        resuming: Resuming,
    ) -> bool {
        let mut head = recovery.head();
        // A client ahead of this node's log (it read further on another node, and this
        // node's link is behind the broker): the worker's other subscribers are brought only
        // as far as the log reaches, and the client is sent nothing up to its own position.
        // Advancing the topic to the client's position would pass over, for everyone here,
        // what the link has not handed on yet.
        let mut floor = None;
        if let (Some(log), Recovery::Recovered { publications, .. }) = (&self.hub.log, &recovery) {
            let reached = log.read(topic, None, 0).head();
            if publications.is_empty()
                && reached.epoch == head.epoch
                && head.offset > reached.offset
            {
                floor = Some(head);
                head = reached;
            }
        }
        if let Some(id) = self.topics.id(topic) {
            self.advance(ctx, id, head);
        }
        let already = self
            .topics
            .id(topic)
            .zip(ctx.data(conn))
            .is_some_and(|(id, state)| state.subs.contains(id));
        if already {
            return false;
        }
        if !self.subscribe(ctx, conn, topic) {
            return false;
        }
        let Some(id) = self.topics.id(topic) else {
            return false;
        };
        // New on this worker (`subscribe` set the cursor to the head it read, which may be
        // later than this recovery's): the recovery's head is the one the replay reaches.
        if self.topics.subscribers(id).len() == 1 {
            self.topics.set_cursor(id, head);
        }
        let stats = &self.hub.stats[self.worker];
        match recovery {
            Recovery::Recovered {
                mut publications, ..
            } => {
                // The worker's other subscribers may be past the head read for `conn` (a
                // publish applied earlier in the same handler call): `conn` needs that span
                // too, since the mailbox will not bring it again.
                if let (Some(cursor), Some(log)) = (self.topics.cursor(id), &self.hub.log) {
                    if cursor.epoch == head.epoch && cursor.offset > head.offset {
                        if let Recovery::Recovered {
                            publications: more, ..
                        } = log.read(topic, Some(head), usize::MAX)
                        {
                            publications.extend(more.into_iter().filter(|p| {
                                p.position().is_some_and(|p| p.offset <= cursor.offset)
                            }));
                        }
                    }
                }
                // If the log could not give that span (a broker's log that has not loaded the
                // topic yet, while another subscriber here waits from a later position), say
                // so rather than skip it.
                let reached = publications
                    .last()
                    .and_then(|p| p.position())
                    .filter(|p| p.epoch == head.epoch)
                    .map_or(head.offset, |p| p.offset.max(head.offset));
                let short = self
                    .topics
                    .cursor(id)
                    .filter(|c| c.epoch == head.epoch && c.offset > reached);
                if let Some(cursor) = short {
                    if resuming != Resuming::New {
                        stats.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if ctx.is_stream(conn) {
                        let event = crate::sse::reset_event(cursor.epoch.as_str(), cursor.offset);
                        if let Err(SendError::Backlog) = ctx.send_frame(conn, event) {
                            ctx.close_slow_consumer(conn);
                        }
                    }
                    return true;
                }
                match resuming {
                    Resuming::New => {}
                    Resuming::Presented => {
                        stats.recoveries_exact.fetch_add(1, Ordering::Relaxed);
                    }
                    Resuming::EpochStart => {
                        stats.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                        if ctx.is_stream(conn) {
                            let event = crate::sse::reset_event(head.epoch.as_str(), 0);
                            if let Err(SendError::Backlog) = ctx.send_frame(conn, event) {
                                ctx.close_slow_consumer(conn);
                                return true;
                            }
                        }
                    }
                }
                if resuming != Resuming::New {
                    stats
                        .replayed
                        .fetch_add(publications.len() as u64, Ordering::Relaxed);
                }
                if let Some(floor) = floor {
                    self.ahead.insert((conn, id), floor);
                }
                for publication in &publications {
                    let mut message = encoded_message(publication);
                    match ctx.send_message(conn, &mut message) {
                        Ok(()) => {}
                        Err(SendError::Backlog) => {
                            ctx.close_slow_consumer(conn);
                            break;
                        }
                        Err(SendError::Closed) => break,
                    }
                }
            }
            Recovery::NotRecovered { head } => {
                if resuming != Resuming::New {
                    stats.recoveries_failed.fetch_add(1, Ordering::Relaxed);
                }
                if ctx.is_stream(conn) {
                    let event = crate::sse::reset_event(head.epoch.as_str(), head.offset);
                    if let Err(SendError::Backlog) = ctx.send_frame(conn, event) {
                        ctx.close_slow_consumer(conn);
                    }
                }
            }
        }
        true
    }
}

/// A publication as the driver sends it: its frame, and what its other formats are made
/// from (with its position as an SSE id).
fn encoded_message(publication: &Publication) -> EncodedMessage {
    EncodedMessage::new(
        publication.opcode(),
        publication.payload().clone(),
        publication.frame().clone(),
    )
    .with_event_id(publication.position().and_then(crate::sse::EventId::new))
}

/// The topic a path names: the path without its leading `/`, and `/` for the root, so that
/// `ws://host/room-a` and `POST /publish/room-a` meet in topic `room-a`.
pub fn topic_of_path(path: &str) -> &str {
    match path.strip_prefix('/') {
        Some("") | None => "/",
        Some(topic) => topic,
    }
}

/// Encodes a server frame once, for any number of receivers.
pub(crate) fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_frame(opcode, true, payload, None)
}
