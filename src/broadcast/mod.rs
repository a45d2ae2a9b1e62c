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

mod endpoints;
mod handler;
mod mailbox;
pub(crate) mod metrics;
mod topic;
pub(crate) mod uplink;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use handler::{Connection, Decision, Handler, Message, SubscribeError};
pub(crate) use mailbox::Hub;
use mailbox::Mail;
pub use mailbox::{MAILBOX_CAPACITY, MAILBOX_MAX_BYTES};
pub use metrics::BroadcastStats;
use topic::{Subscriptions, Topics};

use crate::config::{Config, SlowConsumer};
use crate::driver::{Admission, ConnId, Ctx, Outgoing, SendError, Service};
use crate::protocol::frame::encode_frame;
use crate::protocol::handshake::Request;
use crate::protocol::{CloseCode, OpCode};

/// Per-connection state of the broadcast service.
#[derive(Debug, Default)]
pub struct ConnState<D> {
    subs: Subscriptions,
    user: D,
    /// The connection's place under the caps and its send budget, when any cap is set
    /// (boxed: 8 bytes per connection when none is).
    fair: Option<Box<Fair>>,
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
    hub: Arc<Hub>,
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
    /// Caps per server, address and connection.
    caps: Arc<crate::limits::Limits>,
    /// The place admitted for the upgrade in progress: `on_open` of the same request, which
    /// the driver calls right after `on_request` on this worker, moves it into the
    /// connection; any other request drops (frees) it first.
    admitted: Option<crate::limits::Admitted>,
}

impl<H: Handler> Broadcast<H> {
    pub(crate) fn new(handler: H, hub: Arc<Hub>, worker: usize, config: &Config) -> Self {
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
            caps: Arc::clone(&config.limits),
            admitted: None,
        }
    }

    /// Publishes an encoded frame: local fan-out now, other workers through their mailboxes.
    /// Returns the subscribers reached on this worker.
    fn publish(
        &mut self,
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
        topic: &str,
        frame: Bytes,
    ) -> usize {
        let stats = &self.hub.stats[self.worker];
        stats.publishes.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = match self.topics.id(topic).and_then(|id| self.topics.name(id)) {
            Some(name) => Arc::clone(name),
            None => Arc::from(topic),
        };
        self.hub.post(&name, &frame, Some(self.worker));
        self.hub.publish_out(&name, &frame);
        self.fan_out(ctx, &name, &frame)
    }

    /// Queues `frame` for every local subscriber of `topic`, applying the slow-consumer policy.
    fn fan_out(
        &mut self,
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
        topic: &str,
        frame: &Bytes,
    ) -> usize {
        let Some(id) = self.topics.id(topic) else {
            return 0;
        };
        let stats = &self.hub.stats[self.worker];
        let mut delivered = 0;
        // Compressed at most once here per window size, for every subscriber that takes it.
        let mut message = Outgoing::new(frame.clone());
        for &sub in self.topics.subscribers(id) {
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
        stats
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    fn subscribe(
        &mut self,
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
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
        };
        let stats = &self.hub.stats[self.worker];
        if let Err(refusal) = gate.check(topic, &mut handler::Pending::default()) {
            // Checked when the handler asked, so only a caller inside the engine gets here.
            stats.subscribe_refusals.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%refusal, "subscription refused");
            return false;
        }
        let (_, new) = self
            .topics
            .subscribe(conn, &mut state.subs, topic, &stats.topics);
        new
    }

    fn unsubscribe(
        &mut self,
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
        conn: ConnId,
        topic: &str,
    ) -> bool {
        let Some(id) = self.topics.id(topic) else {
            return false;
        };
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

    fn on_open(&mut self, ctx: &mut Ctx<'_, Self::Data>, conn: ConnId, request: &Request) {
        let mut actions = std::mem::take(&mut self.scratch_actions);
        if let Some(state) = ctx.data(conn) {
            if self.caps.caps_upgrades() || self.caps.caps_messages() {
                state.fair = Some(Box::new(Fair {
                    _admitted: self.admitted.take(),
                    ..Fair::default()
                }));
            }
            let gate = handler::Gate {
                limits: self.limits,
                topics: &self.topics,
                subs: &state.subs,
            };
            let mut connection = Connection::new(conn, &mut state.user, &mut actions, Some(gate));
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
        ctx: &mut Ctx<'_, Self::Data>,
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
            };
            let mut connection = Connection::new(conn, &mut state.user, &mut actions, Some(gate));
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

    fn on_close(&mut self, ctx: &mut Ctx<'_, Self::Data>, conn: ConnId, mut data: Self::Data) {
        let counts = &self.hub.stats[self.worker].topics;
        for entry in std::mem::take(&mut data.subs).into_entries() {
            self.topics.remove_entry(
                conn,
                entry,
                |other| ctx.data(other).map(|s| &mut s.subs),
                counts,
            );
        }
        let mut actions = handler::Actions::default();
        let mut connection = Connection::new(conn, &mut data.user, &mut actions, None);
        let handler = &mut self.handler;
        if catch_unwind(AssertUnwindSafe(|| handler.on_close(&mut connection))).is_err() {
            // The connection is gone already; what the handler asked for before it panicked
            // is dropped with it.
            self.handler_panicked("on_close");
            return;
        }
        // A closed connection can still publish (a "left the room" message), nothing else.
        for action in actions.list {
            if let handler::Action::Publish(topic, frame) = action {
                self.publish(ctx, &topic, frame);
            }
        }
    }

    fn on_http(
        &mut self,
        ctx: &mut Ctx<'_, Self::Data>,
        request: &Request,
        body: &[u8],
    ) -> Vec<u8> {
        match self.endpoints.route(request, body, &self.hub) {
            endpoints::Routed::Response(response) => response,
            endpoints::Routed::Publish { topic, frame } => {
                // Subscribers as counted when the publish left: the other workers deliver it
                // in their next turn.
                let reached = self.hub.subscriber_count(&topic);
                self.publish(ctx, &topic, frame);
                endpoints::Endpoints::published(reached)
            }
        }
    }

    fn on_wake(&mut self, ctx: &mut Ctx<'_, Self::Data>) {
        // Clear first: a publish racing with the drain then wakes us again rather than waiting.
        self.hub.wake_pending[self.worker].store(false, Ordering::Release);
        let mut mail = std::mem::take(&mut self.scratch_mail);
        while let Some(item) = self.hub.take(self.worker) {
            mail.push(item);
        }
        for item in mail.drain(..) {
            self.fan_out(ctx, &item.topic, &item.frame);
        }
        self.scratch_mail = mail;
    }
}

impl<H: Handler> Broadcast<H> {
    /// Charges a message to its connection's budget; past it, closes the connection with
    /// 1008 (RFC 6455 §7.4.1, policy) and counts it, once, and returns `false`.
    fn within_budget(
        &mut self,
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
        conn: ConnId,
        bytes: usize,
    ) -> bool {
        let Some(fair) = ctx.data(conn).and_then(|s| s.fair.as_deref_mut()) else {
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
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
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
        ctx: &mut Ctx<'_, ConnState<H::Data>>,
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
                handler::Action::Send(frame) => {
                    let mut message = Outgoing::new(frame);
                    if let Err(SendError::Backlog) = ctx.send_message(conn, &mut message) {
                        ctx.close_slow_consumer(conn);
                    }
                }
                handler::Action::Subscribe(topic) => {
                    self.subscribe(ctx, conn, &topic);
                }
                handler::Action::Unsubscribe(topic) => {
                    self.unsubscribe(ctx, conn, &topic);
                }
                handler::Action::Publish(topic, frame) => {
                    self.publish(ctx, &topic, frame);
                }
                handler::Action::Close(code, reason) => ctx.close(conn, code, &reason),
            }
        }
        actions.clear();
        self.scratch_actions = actions;
    }
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
