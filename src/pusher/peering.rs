//! The node's side of the cluster (with `--broker`): it tells the other nodes of its own
//! changes over the broker's side channel, merges theirs into each app's state, beats, syncs,
//! and drops the nodes that fell silent. The merging itself is sans IO ([`super::cluster`],
//! [`super::state`]); this module only moves messages and runs the clock, on a thread of its
//! own and on the broker link's thread.
//!
//! What the merged view changes is acted on by every node for its own connections:
//! `member_added` and `member_removed` go to this node's subscribers only (each node derives
//! them from its own view, so a user's tabs on several nodes make one `member_added`, and a
//! dead node's members a `member_removed` on every node). Webhooks are sent by one node, the
//! leader ([`Peers::leader`]), from its view.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, warn};

use super::app::App;
use super::channel::Channel;
use super::cluster::{
    Bounds, Heard, NodeId, Peers, SyncChannel, Wire, BEAT, BEAT_CHUNK, SYNC_CHUNK_BYTES,
    SYNC_INTERVAL,
};
use super::handler::{topic, Node};
use super::message;
use super::state::{AppState, Change};
use super::webhook;
use crate::broadcast::cluster::{ClusterBus, ClusterSink};
use crate::broadcast::Peer;
use crate::protocol::OpCode;

/// The cluster side of a [`Node`].
#[derive(Debug)]
pub(crate) struct Peering {
    bus: ClusterBus,
    me: NodeId,
    peers: Mutex<Peers>,
    /// Wakes the clock's thread for a sync now (a node it did not know spoke).
    wake: mpsc::Sender<()>,
    round: AtomicU64,
    /// Messages or entries from other nodes that were malformed or over a bound.
    pub(crate) refused: AtomicU64,
}

/// What the broker link hands the other nodes' messages to.
#[derive(Debug)]
struct Sink {
    node: Weak<Node>,
}

impl ClusterSink for Sink {
    fn receive(&self, payload: &[u8]) {
        if let Some(node) = self.node.upgrade() {
            node.receive(payload);
        }
    }
}

/// Joins `node` to the cluster: starts its clock and returns what hears the others.
pub(crate) fn join(node: &Arc<Node>, bus: ClusterBus) -> Option<Arc<dyn ClusterSink>> {
    let (wake, woken) = mpsc::channel();
    let me = node_id();
    let peering = Peering {
        bus,
        me,
        peers: Mutex::new(Peers::new(me)),
        wake,
        round: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    };
    if node.peering.set(peering).is_err() {
        return None;
    }
    for app in node.apps.iter() {
        node.state(app).set_clustered();
    }
    let weak = Arc::downgrade(node);
    let started = std::thread::Builder::new()
        .name("uringcast-pusher-cluster".into())
        .spawn(move || clock(&weak, &woken));
    if let Err(error) = started {
        warn!(%error, "the cluster's clock did not start: presence stays per node");
        return None;
    }
    debug!(
        node = format_args!("{me:016x}"),
        "pusher presence joined the cluster"
    );
    let sink: Arc<dyn ClusterSink> = Arc::new(Sink {
        node: Arc::downgrade(node),
    });
    Some(sink)
}

/// Beats every [`BEAT`], syncs every [`SYNC_INTERVAL`] or when woken, and expires silent
/// nodes; ends with the node.
fn clock(node: &Weak<Node>, woken: &mpsc::Receiver<()>) {
    let mut next_beat = Instant::now();
    let mut next_sync = Instant::now() + SYNC_INTERVAL;
    loop {
        let wait = next_beat.saturating_duration_since(Instant::now());
        let sync_now = match woken.recv_timeout(wait) {
            Ok(()) => {
                while woken.try_recv().is_ok() {}
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let Some(node) = node.upgrade() else {
            return;
        };
        let now = Instant::now();
        if sync_now || now >= next_sync {
            node.sync();
            next_sync = now + SYNC_INTERVAL;
        }
        if now >= next_beat {
            node.beat(now);
            next_beat = now + BEAT;
        }
    }
}

impl Node {
    fn peering_ref(&self) -> Option<&Peering> {
        self.peering.get()
    }

    /// Whether this node sends webhooks for what the cluster does: always without a broker,
    /// else when it leads.
    pub(crate) fn fires_webhooks(&self) -> bool {
        self.peering_ref()
            .is_none_or(|p| p.peers.lock().map(|peers| peers.leader()).unwrap_or(false))
    }

    /// Whether the node is in a cluster (member events are then made by each node for its
    /// own subscribers).
    pub(crate) fn clustered(&self) -> bool {
        self.peering.get().is_some()
    }

    /// Tells the other nodes of a local subscription. Call with the app's lock held, so
    /// that the app's messages leave in the order of its changes.
    pub(crate) fn share_join(
        &self,
        app: &App,
        channel: &str,
        local_first: Option<(&str, &serde_json::value::RawValue)>,
        local_occupied: bool,
    ) {
        let Some(peering) = self.peering_ref() else {
            return;
        };
        let node = peering.me();
        if let Some((user_id, info)) = local_first {
            peering.send(&Wire::Join {
                node,
                app: app.id.clone(),
                channel: channel.to_owned(),
                user_id: user_id.to_owned(),
                info: info.get().to_owned(),
            });
        }
        if local_occupied {
            peering.send(&Wire::Beat {
                node,
                counts: vec![(app.id.clone(), channel.to_owned(), 1)],
                learned: None,
            });
        }
    }

    /// Tells the other nodes of a local unsubscription (with the app's lock held).
    pub(crate) fn share_leave(
        &self,
        app: &App,
        channel: &str,
        local_last: Option<&str>,
        local_vacated: bool,
    ) {
        let Some(peering) = self.peering_ref() else {
            return;
        };
        let node = peering.me();
        if let Some(user_id) = local_last {
            peering.send(&Wire::Leave {
                node,
                app: app.id.clone(),
                channel: channel.to_owned(),
                user_id: user_id.to_owned(),
            });
        }
        if local_vacated {
            peering.send(&Wire::Beat {
                node,
                counts: vec![(app.id.clone(), channel.to_owned(), 0)],
                learned: None,
            });
        }
    }

    /// Delivers a member event to this node's subscribers of the channel, but `except`
    /// (with the app's lock held, so that events keep the order of the view's changes).
    pub(crate) fn deliver_local(
        &self,
        app: &App,
        channel: &str,
        event: &str,
        except: Option<Peer>,
    ) {
        if let Some(peering) = self.peering_ref() {
            peering
                .bus
                .deliver_local(&topic(app, channel), OpCode::Text, event.as_bytes(), except);
        }
    }

    /// A message from another node.
    fn receive(&self, payload: &[u8]) {
        let Some(peering) = self.peering_ref() else {
            return;
        };
        let Some(wire) = Wire::decode(payload) else {
            peering.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // Until a node's whole state has arrived once, what its messages change is news to
        // this node only: no webhook for it.
        let (heard, news) = match peering.peers.lock() {
            Ok(mut peers) => {
                let heard = peers.heard(wire.node(), Instant::now());
                (heard, peers.is_learned(wire.node()))
            }
            Err(_) => return,
        };
        match heard {
            Heard::Me => return,
            Heard::Full => {
                peering.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The newcomer learns this node's state at once.
            Heard::New => {
                let _ = peering.wake.send(());
            }
            Heard::Known => {}
        }
        if let Wire::Beat {
            learned: Some(learned),
            ..
        } = &wire
        {
            if !learned.contains(&peering.me()) {
                // It lacks this node's state: sent again (once per beat of it at most).
                let _ = peering.wake.send(());
            }
        }
        match wire {
            Wire::Beat { node, counts, .. } => {
                if counts.len() > BEAT_CHUNK {
                    peering.refused.fetch_add(1, Ordering::Relaxed);
                }
                for (app_id, channel, subs) in counts.into_iter().take(BEAT_CHUNK) {
                    let Some(app) = self.checked(peering, &app_id, &channel, false) else {
                        continue;
                    };
                    let mut state = self.state(&app);
                    let (changes, result) = state.remote_count(node, &channel, subs);
                    if result.is_err() {
                        peering.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    self.act(&app, &state, changes, news);
                }
            }
            Wire::Join {
                node,
                app,
                channel,
                user_id,
                info,
            } => {
                let Some(app) = self.checked(peering, &app, &channel, true) else {
                    return;
                };
                let mut state = self.state(&app);
                let bounds = bounds(&app);
                let (changes, result) = state.remote_join(node, &channel, &user_id, &info, bounds);
                if result.is_err() {
                    peering.refused.fetch_add(1, Ordering::Relaxed);
                }
                self.act(&app, &state, changes, news);
            }
            Wire::Leave {
                node,
                app,
                channel,
                user_id,
            } => {
                let Some(app) = self.checked(peering, &app, &channel, true) else {
                    return;
                };
                let mut state = self.state(&app);
                let changes = state.remote_leave(node, &channel, &user_id);
                self.act(&app, &state, changes, news);
            }
            Wire::Sync {
                node,
                app,
                round,
                channels,
                last,
            } => {
                let Some(app) = self.apps.by_id(&app).cloned() else {
                    peering.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let before = channels.len();
                let channels: Vec<SyncChannel> = channels
                    .into_iter()
                    .filter(|c| {
                        Channel::parse(&c.channel)
                            .is_ok_and(|parsed| parsed.is_presence() || c.members.is_empty())
                    })
                    .collect();
                let mut refused = (before - channels.len()) as u64;
                let mut state = self.state(&app);
                let (changes, over) = state.remote_sync(node, round, channels, last, bounds(&app));
                refused += over as u64;
                if refused > 0 {
                    peering.refused.fetch_add(refused, Ordering::Relaxed);
                }
                self.act(&app, &state, changes, news);
                drop(state);
                if last {
                    if let Ok(mut peers) = peering.peers.lock() {
                        peers.learned(node);
                    }
                }
            }
        }
    }

    /// The app of a remote change, if it is ours and names a valid channel (a presence one
    /// for a member).
    fn checked(
        &self,
        peering: &Peering,
        app_id: &str,
        channel: &str,
        presence: bool,
    ) -> Option<Arc<App>> {
        let app = self.apps.by_id(app_id)?;
        let valid = Channel::parse(channel).is_ok_and(|c| !presence || c.is_presence());
        if !valid {
            peering.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Arc::clone(app))
    }

    /// Acts on changes of the cluster's view (with the app's lock held): member events to
    /// this node's subscribers, webhooks from the leader when the changes are `news` to the
    /// cluster.
    fn act(&self, app: &App, _state: &AppState, changes: Vec<Change>, news: bool) {
        if changes.is_empty() {
            return;
        }
        let webhooks = news && self.fires_webhooks();
        for change in changes {
            match change {
                Change::MemberAdded {
                    channel,
                    user_id,
                    info,
                } => {
                    let info =
                        serde_json::value::RawValue::from_string(info).unwrap_or_else(|_| null());
                    let added = message::encode_member_added(&channel, &user_id, &info);
                    self.deliver_local(app, &channel, &added, None);
                    if webhooks {
                        self.webhook(app, || webhook::Event::MemberAdded { channel, user_id });
                    }
                }
                Change::MemberRemoved { channel, user_id } => {
                    let removed = message::encode_member_removed(&channel, &user_id);
                    self.deliver_local(app, &channel, &removed, None);
                    if webhooks {
                        self.webhook(app, || webhook::Event::MemberRemoved { channel, user_id });
                    }
                }
                Change::Occupied(channel) => {
                    if webhooks {
                        self.webhook(app, || webhook::Event::ChannelOccupied { channel });
                    }
                }
                Change::Vacated(channel) => {
                    if webhooks {
                        self.webhook(app, || webhook::Event::ChannelVacated { channel });
                    }
                }
            }
        }
    }

    /// Says this node is alive, with the counts that changed (one message per app that has
    /// any, sent under its lock), then drops the nodes silent for the expiry.
    fn beat(&self, now: Instant) {
        let Some(peering) = self.peering_ref() else {
            return;
        };
        let node = peering.me();
        let mut full = false;
        for app in self.apps.iter() {
            let mut state = self.state(app);
            let Some(dirty) = state.take_dirty() else {
                full = true;
                continue;
            };
            for chunk in dirty.chunks(BEAT_CHUNK) {
                let counts = chunk
                    .iter()
                    .map(|(channel, subs)| (app.id.clone(), channel.clone(), *subs))
                    .collect();
                peering.send(&Wire::Beat {
                    node,
                    counts,
                    learned: None,
                });
            }
        }
        if full {
            self.sync();
        }
        let learned = peering.peers.lock().map(|p| p.learned_ids()).ok();
        peering.send(&Wire::Beat {
            node,
            counts: Vec::new(),
            learned,
        });
        let dead = match peering.peers.lock() {
            Ok(mut peers) => peers.expire(now),
            Err(_) => Vec::new(),
        };
        for gone in dead {
            debug!(
                node = format_args!("{gone:016x}"),
                "a node fell silent: its members and counts are dropped"
            );
            for app in self.apps.iter() {
                let mut state = self.state(app);
                let changes = state.drop_node(gone);
                self.act(app, &state, changes, true);
            }
        }
    }

    /// Sends this node's whole state, app by app, each under its lock.
    fn sync(&self) {
        let Some(peering) = self.peering_ref() else {
            return;
        };
        let node = peering.me();
        let round = peering.round.fetch_add(1, Ordering::Relaxed);
        for app in self.apps.iter() {
            let mut state = self.state(app);
            // The sync carries every count: the changed ones need no beat.
            let _ = state.take_dirty();
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for channel in state.sync_channels() {
                bytes += channel.channel.len()
                    + 16
                    + channel
                        .members
                        .iter()
                        .map(|(id, info)| id.len() + info.len() + 8)
                        .sum::<usize>();
                chunk.push(channel);
                if bytes >= SYNC_CHUNK_BYTES {
                    peering.send(&Wire::Sync {
                        node,
                        app: app.id.clone(),
                        round,
                        channels: std::mem::take(&mut chunk),
                        last: false,
                    });
                    bytes = 0;
                }
            }
            peering.send(&Wire::Sync {
                node,
                app: app.id.clone(),
                round,
                channels: chunk,
                last: true,
            });
        }
    }

    /// Appends the cluster's gauges to `/metrics`.
    pub(crate) fn render_cluster_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(peering) = self.peering_ref() else {
            return;
        };
        let nodes = peering.peers.lock().map_or(0, |p| p.learned_count());
        let _ = writeln!(
            out,
            "# HELP uringcast_pusher_cluster_nodes Other nodes alive whose state this node has.\n\
             # TYPE uringcast_pusher_cluster_nodes gauge\n\
             uringcast_pusher_cluster_nodes {nodes}\n\
             # HELP uringcast_pusher_cluster_refused_total Messages or entries from other nodes dropped: malformed or over a bound.\n\
             # TYPE uringcast_pusher_cluster_refused_total counter\n\
             uringcast_pusher_cluster_refused_total {}",
            peering.refused.load(Ordering::Relaxed)
        );
    }
}

impl Peering {
    fn me(&self) -> NodeId {
        self.me
    }

    fn send(&self, wire: &Wire) {
        self.bus.send(Bytes::from(wire.encode()));
    }
}

fn bounds(app: &App) -> Bounds {
    Bounds {
        max_members: app.limits.max_presence_members,
        max_info_bytes: app.limits.max_presence_info_bytes,
    }
}

/// A random id for this node (ids only need to differ between the nodes of a cluster).
fn node_id() -> NodeId {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    // A failing system generator leaves the time: still distinct between nodes in practice.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return u64::from(nanos) | 1;
    }
    u64::from_le_bytes(bytes)
}

fn null() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".to_owned()).expect("null is JSON")
}
