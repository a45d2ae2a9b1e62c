//! Presence and channel counts across nodes, sans IO: what the nodes tell each other over the
//! broker's side channel ([`Wire`]), what a node knows of the others ([`RemoteView`], one per
//! app) and which of them are alive ([`Peers`]).
//!
//! Each node tells the others of its own changes only, and the others merge them:
//!
//! - a user's first connection to a presence channel on a node (`join`, with the member's
//!   info) and their last one there (`leave`), at once;
//! - its subscription count of a channel (`beat`): at once when the channel becomes occupied
//!   or vacated on the node, and otherwise every [`BEAT`] for the channels that changed;
//! - its whole state (`sync`, in chunks of about [`SYNC_CHUNK_BYTES`]) every
//!   [`SYNC_INTERVAL`], and as soon as it hears of a node it did not know, so that a node that
//!   starts, or a message lost on the way, is caught up;
//! - every [`BEAT`] it sends a `beat`, even an empty one, with the nodes whose state it has
//!   (a node not listed sends its state again): a node silent for [`EXPIRY`] is taken for
//!   dead, and whatever it held is dropped (`member_removed` follows on each node).
//!
//! A node's messages arrive in the order it sent them (one publisher on one broker channel),
//! and a node sends the messages of one app under that app's lock: a `sync` never overtakes a
//! change made after it was taken.
//!
//! Everything a remote node can make this node hold is bounded: [`MAX_NODES`] nodes, at most
//! [`MAX_REMOTE_CHANNELS`] channels per node and app, members per channel by the app's
//! `max_presence_members`, a member's info by `max_presence_info_bytes`, a user id by
//! [`MAX_USER_ID_BYTES`]. What is over a bound is dropped and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::presence::MAX_USER_ID_BYTES;

/// How often a node says it is alive, and sends its changed counts.
pub const BEAT: Duration = Duration::from_secs(1);
/// How long a node may stay silent before the others drop its members and counts.
pub const EXPIRY: Duration = Duration::from_secs(5);
/// How often a node sends its whole state, to repair what a lost message left wrong.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Other nodes known at most; a message from one more is dropped.
pub const MAX_NODES: usize = 64;
/// Channels of one app a node is believed to hold, at most, per node.
pub const MAX_REMOTE_CHANNELS: usize = 100_000;
/// A `sync` message is cut after about this many bytes of channels: well below NATS's
/// default `max_payload` (1 MiB), even with a channel of 100 members of 2 KB each over it.
pub const SYNC_CHUNK_BYTES: usize = 256 << 10;
/// Counts in one `beat`, at most (the rest go in the next message).
pub const BEAT_CHUNK: usize = 1024;

/// A node's id on the side channel: random per process.
pub type NodeId = u64;

/// What one node tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Wire {
    /// Alive, with subscription counts that changed.
    Beat {
        /// The sender.
        node: NodeId,
        /// `(app, channel, subscriptions on the sender)`.
        #[serde(default)]
        counts: Vec<(String, String, usize)>,
        /// In the beat of every [`BEAT`]: the nodes whose whole state the sender has. A node
        /// not listed sends its state again (its sync was lost, or sent before the sender
        /// listened).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        learned: Option<Vec<NodeId>>,
    },
    /// A user's first connection to a presence channel on the sender.
    Join {
        /// The sender.
        node: NodeId,
        /// The app id.
        app: String,
        /// The channel.
        channel: String,
        /// The member.
        user_id: String,
        /// Its `user_info`, as JSON text.
        info: String,
    },
    /// A user's last connection to a presence channel on the sender ended.
    Leave {
        /// The sender.
        node: NodeId,
        /// The app id.
        app: String,
        /// The channel.
        channel: String,
        /// The member.
        user_id: String,
    },
    /// Part of the sender's whole state of an app: each channel listed replaces what was
    /// known of it; after the `last` part of a round, channels not listed in that round are
    /// dropped.
    Sync {
        /// The sender.
        node: NodeId,
        /// The app id.
        app: String,
        /// The sender's count of rounds.
        round: u64,
        /// The channels of this part.
        channels: Vec<SyncChannel>,
        /// Whether this is the round's last part.
        last: bool,
    },
}

/// One channel in a `sync`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncChannel {
    /// Its name.
    pub channel: String,
    /// Subscriptions on the sender.
    pub subs: usize,
    /// `(user_id, user_info as JSON text)` of its members on the sender.
    #[serde(default)]
    pub members: Vec<(String, String)>,
}

impl Wire {
    /// The sender.
    pub fn node(&self) -> NodeId {
        match self {
            Self::Beat { node, .. }
            | Self::Join { node, .. }
            | Self::Leave { node, .. }
            | Self::Sync { node, .. } => *node,
        }
    }

    /// The message as it crosses the broker.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Wire has only strings and numbers")
    }

    /// Reads a message; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The limits of the app a change is for.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Members of one channel, per node.
    pub max_members: usize,
    /// Bytes of one member's info.
    pub max_info_bytes: usize,
}

/// Why a remote change was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A user id, an info or a count over its bound.
    #[error("a member or count over its bound")]
    Bound,
    /// The node holds [`MAX_REMOTE_CHANNELS`] channels already.
    #[error("the node holds too many channels")]
    Channels,
}

/// What the other nodes hold of one app's channels.
#[derive(Debug, Default)]
pub struct RemoteView {
    nodes: HashMap<NodeId, NodeChannels>,
}

#[derive(Debug, Default)]
struct NodeChannels {
    channels: HashMap<String, RemoteChannel>,
    /// The `sync` round being received and the channels it listed so far.
    round: Option<(u64, HashSet<String>)>,
}

#[derive(Debug, Default)]
struct RemoteChannel {
    subs: usize,
    members: BTreeMap<String, Box<RawValue>>,
}

impl RemoteView {
    /// Subscriptions to `channel` on the other nodes.
    pub fn subs(&self, channel: &str) -> usize {
        self.nodes
            .values()
            .filter_map(|n| n.channels.get(channel))
            .map(|c| c.subs)
            .fold(0, usize::saturating_add)
    }

    /// Whether `user_id` is a member of `channel` on another node.
    pub fn has_member(&self, channel: &str, user_id: &str) -> bool {
        self.nodes
            .values()
            .filter_map(|n| n.channels.get(channel))
            .any(|c| c.members.contains_key(user_id))
    }

    /// The members of `channel` on the other nodes (a user on two nodes comes twice).
    pub fn members<'a>(
        &'a self,
        channel: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a RawValue)> {
        self.nodes
            .values()
            .filter_map(move |n| n.channels.get(channel))
            .flat_map(|c| c.members.iter().map(|(id, info)| (id.as_str(), &**info)))
    }

    /// Channels with a subscription on another node.
    pub fn occupied(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .values()
            .flat_map(|n| n.channels.iter())
            .filter(|(_, c)| c.subs > 0)
            .map(|(name, _)| name.as_str())
    }

    /// The channels a change from a node touches; the ones it drops are found by
    /// [`sync_drops`](Self::sync_drops) or by this before and after the change.
    pub fn node_channels(&self, node: NodeId) -> Vec<String> {
        self.nodes
            .get(&node)
            .map(|n| n.channels.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The channels the `last` part of `node`'s round `round` would drop.
    pub fn sync_drops(&self, node: NodeId, round: u64) -> Vec<String> {
        let Some(n) = self.nodes.get(&node) else {
            return Vec::new();
        };
        let seen = match &n.round {
            Some((r, seen)) if *r == round => Some(seen),
            _ => None,
        };
        n.channels
            .keys()
            .filter(|name| seen.is_none_or(|seen| !seen.contains(*name)))
            .cloned()
            .collect()
    }

    /// `node` holds `subs` subscriptions to `channel`.
    ///
    /// # Errors
    ///
    /// The node holds too many channels.
    pub fn count(&mut self, node: NodeId, channel: &str, subs: usize) -> Result<(), Refused> {
        let n = self.nodes.entry(node).or_default();
        if let Some(c) = n.channels.get_mut(channel) {
            c.subs = subs;
        } else if subs > 0 {
            if n.channels.len() >= MAX_REMOTE_CHANNELS {
                return Err(Refused::Channels);
            }
            n.channels.insert(
                channel.to_owned(),
                RemoteChannel {
                    subs,
                    ..RemoteChannel::default()
                },
            );
        }
        n.tidy(channel);
        self.tidy_node(node);
        Ok(())
    }

    /// `user_id` joined `channel` on `node`.
    ///
    /// # Errors
    ///
    /// Over a bound; nothing is changed then.
    pub fn join(
        &mut self,
        node: NodeId,
        channel: &str,
        user_id: &str,
        info: &str,
        bounds: Bounds,
    ) -> Result<(), Refused> {
        let info = member_info(user_id, info, bounds)?;
        let n = self.nodes.entry(node).or_default();
        if !n.channels.contains_key(channel) && n.channels.len() >= MAX_REMOTE_CHANNELS {
            self.tidy_node(node);
            return Err(Refused::Channels);
        }
        let c = n.channels.entry(channel.to_owned()).or_default();
        if !c.members.contains_key(user_id) && c.members.len() >= bounds.max_members {
            n.tidy(channel);
            self.tidy_node(node);
            return Err(Refused::Bound);
        }
        c.members.insert(user_id.to_owned(), info);
        Ok(())
    }

    /// `user_id` left `channel` on `node`.
    pub fn leave(&mut self, node: NodeId, channel: &str, user_id: &str) {
        if let Some(n) = self.nodes.get_mut(&node) {
            if let Some(c) = n.channels.get_mut(channel) {
                c.members.remove(user_id);
            }
            n.tidy(channel);
        }
        self.tidy_node(node);
    }

    /// One part of a `sync` from `node`: each channel listed replaces what was known of it.
    /// Channels or members over a bound are left out, and counted in the result.
    pub fn sync(
        &mut self,
        node: NodeId,
        round: u64,
        channels: Vec<SyncChannel>,
        bounds: Bounds,
    ) -> usize {
        let mut refused = 0;
        let n = self.nodes.entry(node).or_default();
        if n.round.as_ref().is_none_or(|(r, _)| *r != round) {
            n.round = Some((round, HashSet::new()));
        }
        for listed in channels {
            let mut members = BTreeMap::new();
            for (user_id, info) in listed.members {
                if members.len() >= bounds.max_members {
                    refused += 1;
                    break;
                }
                match member_info(&user_id, &info, bounds) {
                    Ok(info) => {
                        members.insert(user_id, info);
                    }
                    Err(_) => refused += 1,
                }
            }
            if !n.channels.contains_key(&listed.channel) && n.channels.len() >= MAX_REMOTE_CHANNELS
            {
                refused += 1;
                continue;
            }
            if let Some((_, seen)) = &mut n.round {
                // Bounded by the node's channels: only taken ones are remembered.
                seen.insert(listed.channel.clone());
            }
            let name = listed.channel.clone();
            n.channels.insert(
                listed.channel,
                RemoteChannel {
                    subs: listed.subs,
                    members,
                },
            );
            n.tidy(&name);
        }
        self.tidy_node(node);
        refused
    }

    /// The `last` part of `node`'s round `round` arrived: drops the channels it did not list.
    pub fn end_sync(&mut self, node: NodeId, round: u64) {
        let drops = self.sync_drops(node, round);
        if let Some(n) = self.nodes.get_mut(&node) {
            for name in drops {
                n.channels.remove(&name);
            }
            n.round = None;
        }
        self.tidy_node(node);
    }

    /// Forgets `node` (dead); returns the channels it held.
    pub fn drop_node(&mut self, node: NodeId) -> Vec<String> {
        self.nodes
            .remove(&node)
            .map(|n| n.channels.into_keys().collect())
            .unwrap_or_default()
    }

    fn tidy_node(&mut self, node: NodeId) {
        if self
            .nodes
            .get(&node)
            .is_some_and(|n| n.channels.is_empty() && n.round.is_none())
        {
            self.nodes.remove(&node);
        }
    }
}

impl NodeChannels {
    /// Forgets a channel with neither subscription nor member.
    fn tidy(&mut self, channel: &str) {
        if self
            .channels
            .get(channel)
            .is_some_and(|c| c.subs == 0 && c.members.is_empty())
        {
            self.channels.remove(channel);
        }
    }
}

/// A member's info from the wire, within bounds.
fn member_info(user_id: &str, info: &str, bounds: Bounds) -> Result<Box<RawValue>, Refused> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES || info.len() > bounds.max_info_bytes
    {
        return Err(Refused::Bound);
    }
    RawValue::from_string(info.to_owned()).map_err(|_| Refused::Bound)
}

/// The other nodes this node has heard from, and when.
#[derive(Debug)]
pub struct Peers {
    me: NodeId,
    nodes: HashMap<NodeId, Seen>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    last: Instant,
    /// Its first whole sync arrived: what it holds is known.
    learned: bool,
}

/// What a message from a node says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Known already.
    Known,
    /// Not known until now: it has to learn this node's state.
    New,
    /// This node itself (a broker that keeps streams sends a node its own messages).
    Me,
    /// [`MAX_NODES`] are known already: dropped.
    Full,
}

impl Peers {
    /// No other node known yet.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            nodes: HashMap::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// A message from `node` arrived at `now`.
    pub fn heard(&mut self, node: NodeId, now: Instant) -> Heard {
        if node == self.me {
            return Heard::Me;
        }
        if let Some(seen) = self.nodes.get_mut(&node) {
            seen.last = now;
            return Heard::Known;
        }
        if self.nodes.len() >= MAX_NODES {
            return Heard::Full;
        }
        self.nodes.insert(
            node,
            Seen {
                last: now,
                learned: false,
            },
        );
        Heard::New
    }

    /// The last part of a whole sync from `node` arrived.
    pub fn learned(&mut self, node: NodeId) {
        if let Some(seen) = self.nodes.get_mut(&node) {
            seen.learned = true;
        }
    }

    /// Whether `node`'s whole state has arrived once. Until it has, what its messages change
    /// is news to this node only, not to the cluster: no webhook is sent for it.
    pub fn is_learned(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|s| s.learned)
    }

    /// Forgets the nodes silent for [`EXPIRY`] at `now`, and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.last) >= EXPIRY)
            .map(|(&node, _)| node)
            .collect();
        for node in &dead {
            self.nodes.remove(node);
        }
        dead
    }

    /// Whether this node sends the cluster's webhooks: it has the lowest id of the nodes it
    /// knows. Two nodes lead together only while one has not heard the other yet (a
    /// node's first beat goes out as it starts, and the others answer with their state).
    pub fn leader(&self) -> bool {
        self.nodes.keys().all(|&node| node > self.me)
    }

    /// Nodes known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes whose state is known.
    pub fn learned_count(&self) -> usize {
        self.nodes.values().filter(|s| s.learned).count()
    }

    /// The ids of the nodes whose state is known, at most [`MAX_NODES`].
    pub fn learned_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.learned)
            .map(|(&node, _)| node)
            .collect()
    }

    /// Whether no other node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_members: 3,
        max_info_bytes: 64,
    };

    #[test]
    fn wire_round_trips_and_refuses_garbage() {
        let messages = [
            Wire::Beat {
                node: u64::MAX,
                counts: vec![("1".into(), "presence-a".into(), 3)],
                learned: None,
            },
            Wire::Beat {
                node: 1,
                counts: Vec::new(),
                learned: Some(vec![2, 3]),
            },
            Wire::Join {
                node: 7,
                app: "1".into(),
                channel: "presence-a".into(),
                user_id: "u".into(),
                info: r#"{"name":"x"}"#.into(),
            },
            Wire::Leave {
                node: 7,
                app: "1".into(),
                channel: "presence-a".into(),
                user_id: "u".into(),
            },
            Wire::Sync {
                node: 7,
                app: "1".into(),
                round: 2,
                channels: vec![SyncChannel {
                    channel: "presence-a".into(),
                    subs: 2,
                    members: vec![("u".into(), "null".into())],
                }],
                last: true,
            },
        ];
        for message in messages {
            assert_eq!(Wire::decode(&message.encode()), Some(message.clone()));
        }
        for bad in [
            &b""[..],
            b"{}",
            b"{\"t\":\"beat\"}",
            b"[1]",
            b"{\"t\":\"x\",\"node\":1}",
        ] {
            assert_eq!(Wire::decode(bad), None);
        }
    }

    #[test]
    fn members_and_counts_merge_per_node() {
        let mut view = RemoteView::default();
        view.count(1, "presence-a", 2).unwrap();
        view.count(2, "presence-a", 1).unwrap();
        view.join(1, "presence-a", "u", "null", BOUNDS).unwrap();
        view.join(2, "presence-a", "u", "null", BOUNDS).unwrap();
        assert_eq!(view.subs("presence-a"), 3);
        assert_eq!(view.members("presence-a").count(), 2, "one per node");
        view.leave(1, "presence-a", "u");
        assert!(view.has_member("presence-a", "u"), "still on node 2");
        view.leave(2, "presence-a", "u");
        assert!(!view.has_member("presence-a", "u"));
        assert_eq!(view.drop_node(1), vec!["presence-a".to_owned()]);
        assert_eq!(view.subs("presence-a"), 1);
        view.count(2, "presence-a", 0).unwrap();
        assert!(view.nodes.is_empty(), "nothing kept for an empty node");
    }

    #[test]
    fn remote_bounds_hold() {
        let mut view = RemoteView::default();
        for user in ["a", "b", "c"] {
            view.join(1, "presence-a", user, "null", BOUNDS).unwrap();
        }
        assert_eq!(
            view.join(1, "presence-a", "d", "null", BOUNDS),
            Err(Refused::Bound)
        );
        view.join(1, "presence-a", "a", "1", BOUNDS).unwrap();
        let long = "u".repeat(MAX_USER_ID_BYTES + 1);
        assert_eq!(
            view.join(1, "presence-b", &long, "null", BOUNDS),
            Err(Refused::Bound)
        );
        assert_eq!(
            view.join(1, "presence-b", "u", &"1".repeat(65), BOUNDS),
            Err(Refused::Bound)
        );
        assert_eq!(
            view.join(1, "presence-b", "u", "{not json", BOUNDS),
            Err(Refused::Bound)
        );
        assert_eq!(view.node_channels(1), vec!["presence-a".to_owned()]);
        for i in 0..MAX_REMOTE_CHANNELS {
            view.count(2, &format!("c{i}"), 1).unwrap();
        }
        assert_eq!(view.count(2, "one-more", 1), Err(Refused::Channels));
        view.count(2, "c0", 5).unwrap();
        let refused = view.sync(
            3,
            1,
            vec![SyncChannel {
                channel: "presence-a".into(),
                subs: 1,
                members: (0..5).map(|i| (i.to_string(), "null".into())).collect(),
            }],
            BOUNDS,
        );
        assert_eq!(refused, 1);
        assert_eq!(view.members("presence-a").count(), 3 + 3);
    }

    #[test]
    fn a_sync_round_replaces_and_drops_what_it_leaves_out() {
        let mut view = RemoteView::default();
        view.join(1, "presence-gone", "u", "null", BOUNDS).unwrap();
        view.count(1, "presence-kept", 4).unwrap();
        let kept = |subs| SyncChannel {
            channel: "presence-kept".into(),
            subs,
            members: vec![("v".into(), "null".into())],
        };
        view.sync(1, 9, vec![kept(2)], BOUNDS);
        assert_eq!(view.sync_drops(1, 9), vec!["presence-gone".to_owned()]);
        view.end_sync(1, 9);
        assert_eq!(view.node_channels(1), vec!["presence-kept".to_owned()]);
        assert_eq!(view.subs("presence-kept"), 2);
        assert!(view.has_member("presence-kept", "v"));
        // An empty round drops all.
        view.end_sync(1, 10);
        assert!(view.node_channels(1).is_empty());
    }

    #[test]
    fn silent_nodes_expire_and_the_lowest_node_leads() {
        let t0 = Instant::now();
        let mut peers = Peers::new(5);
        assert!(peers.leader(), "alone");
        assert_eq!(peers.heard(5, t0), Heard::Me);
        assert_eq!(peers.heard(3, t0), Heard::New);
        assert_eq!(peers.heard(9, t0), Heard::New);
        assert!(!peers.leader(), "3 is lower");
        assert!(!peers.is_learned(3));
        peers.learned(3);
        assert!(peers.is_learned(3));
        assert_eq!(peers.learned_count(), 1);
        assert_eq!(peers.heard(3, t0 + BEAT), Heard::Known);
        assert_eq!(peers.heard(9, t0 + 4 * BEAT), Heard::Known);
        assert!(peers
            .expire(t0 + BEAT + EXPIRY - Duration::from_millis(1))
            .is_empty());
        assert_eq!(peers.expire(t0 + BEAT + EXPIRY), vec![3]);
        assert!(peers.leader(), "3 is gone");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers.heard(3, t0 + 9 * BEAT), Heard::New, "back, as new");
        let mut full = Peers::new(0);
        for node in 1..=MAX_NODES as u64 {
            assert_eq!(full.heard(node, t0), Heard::New);
        }
        assert_eq!(full.heard(1000, t0), Heard::Full);
    }
}
